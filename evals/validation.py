"""Scoring a set on the validation split while it is being synthesized (``--eval-every``).

The synthesis loop takes the scorer as a callback, so methods never import this layer.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from condense.data import load_dataset
from condense.synset import SynSet
from condense.train import TrainProtocol, evaluate_synset


def validation_evaluator(cfg: Any, device: torch.device) -> Callable[[SynSet], float]:
    """``--eval-every``'s callback for a method config ``cfg`` (its ``eval_epochs``, ``seed``,
    ``data_root`` and ``dsa_share`` if it has them): a short training run on the set, accuracy (a
    fraction) on the validation split, so selection and tuning never see the test set. The
    dataset is loaded once, at the first call."""
    protocol = TrainProtocol(epochs=cfg.eval_epochs, dsa_share=getattr(cfg, "dsa_share", "image"))
    cache = {}

    def evaluate_fn(s: SynSet) -> float:
        if "ds" not in cache:
            cache["ds"] = load_dataset(s.dataset, getattr(cfg, "data_root", None), zca=s.transform.kind == "zca",
                                       val_size=s.data.get("val_size"), val_seed=s.data.get("val_seed", 0))
        ds = cache["ds"]
        return evaluate_synset(s, s.config["arch"], protocol, cfg.seed, test=(ds.x_val, ds.y_val), device=device)

    return evaluate_fn
