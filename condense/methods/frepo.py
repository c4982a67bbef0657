"""`frepo`'s configuration and registration (the method itself is JAX only: :mod:`condense.jax.frepo`).

This module is torch-side and imports no JAX, so the registry can list ``frepo`` and parse
its flags on a machine without jax; ``--backend torch`` is one error line.
"""
from __future__ import annotations

from typing import Any

from ..runtime.errors import ConfigError
from ..config import configclass, setting
from ..config.parts import Augmentation, Data, Loop, Pool, Run, Synthesis

INITS = ("real", "noise")
OPTIMIZERS = ("lamb", "adam")


@configclass(Data, Run, Loop, Synthesis, Pool, Augmentation, part="frepo",
             drop=("val_size", "trajectories", "teacher", "dsa", "dsa_strategy", "dsa_share", "min_scale"),
             defaults={"lr_img": 3e-4, "batch_real": 1024, "flip": False, "out": "runs/frepo.h5"},
             choices={"init": INITS},
             helps={"arch": "the pool's networks (features: their penultimate layer)",
                    "iters": "synthesis iterations (also the horizon of the cosine lr decay)",
                    "lr_img": "learning rate of images and labels (one optimiser; cosine decay to 0.1x)",
                    "batch_real": "real images per iteration (the reference's kernel batch)",
                    "lr_online": "Adam learning rate of the pool networks",
                    "flip": "mirrored copies of the images in the kernel (the reference: colour datasets)"})
class FRePoConfig:
    optimizer: str = setting("lamb", "optimiser of images and labels: lamb (reference) or adam", choices=OPTIMIZERS)
    learn_labels: bool = setting(True, "learn the labels with the images")
    reg: float = setting(1e-6, "ridge = reg * trace(K_ss) / n", ge=0)


def run_frepo_torch(cfg: FRePoConfig, device=None, **_: Any):
    """``--backend torch``: frepo has no torch version (one error line)."""
    raise ConfigError("method 'frepo' runs only in JAX: use --backend jax (its default) instead of --backend torch")
