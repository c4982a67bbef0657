"""`frepo`'s configuration and registration (the method itself is JAX only: :mod:`condense.jax.frepo`).

This module is torch-side and imports no JAX, so the registry can list ``frepo`` and parse
its flags on a machine without jax; ``--backend torch`` is one error line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime.errors import ConfigError
from ..nets import parse_arch_flag
from .loop import LoopConfig

INITS = ("real", "noise")
OPTIMIZERS = ("lamb", "adam")


@dataclass
class FRePoConfig:
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    limit_train: int | None = None  # a class-balanced subset of the training split of this size (recorded)
    ipc: int = 1
    arch: str = "convnet"  # the pool's networks; features = their penultimate layer
    iters: int = 1000  # also the horizon of the cosine lr decay
    lr_img: float = 3e-4  # images and labels (one optimiser, as the reference), cosine decay to 0.1x
    optimizer: str = "lamb"  # lamb (reference) | adam
    batch_real: int = 1024  # real images per iteration (the reference's kernel batch)
    pool_size: int = 10
    max_online_steps: int = 100  # a pool network is re-initialised after this many online steps
    lr_online: float = 3e-4  # Adam lr of the pool networks
    online_batch: int = 1000  # synthetic images per online step (all when the set is smaller)
    learn_labels: bool = True
    flip: bool = False  # mirror images in the kernel (the reference: on for colour datasets)
    reg: float = 1e-6  # ridge = reg * trace(K_ss) / n
    init: str = "real"
    zca: bool = False
    checkpoint_every: int = 100
    eval_every: int = 0
    eval_epochs: int = 100
    max_bad_steps: int = 10
    skip_loss_above: float | None = None
    seed: int = 0
    out: str = "runs/frepo.h5"
    device: str | None = None

    def validate(self) -> None:
        """One-line ConfigError for a bad value."""
        for name in ("ipc", "batch_real", "pool_size", "max_online_steps", "online_batch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr_img", "lr_online"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.reg >= 0:
            raise ConfigError(f"--reg must be >= 0, got {self.reg}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.init not in INITS:
            raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        parse_arch_flag(self.arch)
        self.loop()

    def loop(self) -> LoopConfig:
        return LoopConfig.of(self)


def run_frepo_torch(cfg: FRePoConfig, device=None, **_: Any):
    """``--backend torch``: frepo has no torch version (one error line)."""
    raise ConfigError("method 'frepo' runs only in JAX: use --backend jax (its default) instead of --backend torch")
