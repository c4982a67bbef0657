"""``--eval-every``'s callback: how well a set trains a network, on the validation split only."""
from __future__ import annotations

from typing import Any, Callable


def validation_evaluator(cfg: Any, device) -> Callable[[Any], float]:
    """A callback ``set -> accuracy``: a short training run (``cfg.eval_epochs``) on the set, scored
    on the validation split (selection and tuning never see the test set). The dataset is loaded
    once, on the first call."""
    from condense.data import load_dataset
    from condense.train import TrainProtocol, evaluate_synset

    protocol = TrainProtocol(epochs=cfg.eval_epochs, dsa_share=getattr(cfg, "dsa_share", "image"))
    cache = {}

    def evaluate_fn(s):
        if "ds" not in cache:
            cache["ds"] = load_dataset(s.dataset, getattr(cfg, "data_root", None), zca=s.transform.kind == "zca",
                                       val_size=s.data.get("val_size"), val_seed=s.data.get("val_seed", 0))
        ds = cache["ds"]
        return evaluate_synset(s, s.config["arch"], protocol, cfg.seed, test=(ds.x_val, ds.y_val), device=device)

    return evaluate_fn
