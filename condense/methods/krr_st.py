"""`krr-st`'s configuration and registration (the method itself is JAX only: :mod:`condense.jax.krr_st`).

Torch-side and free of JAX imports, like :mod:`condense.methods.frepo`, so the registry lists the
method and parses its flags on a machine without jax.
"""
from __future__ import annotations

from typing import Any

from ..config import configclass, setting
from ..config.parts import MAX_IPC, Data, Loop, Pool, Run, Synthesis
from ..runtime.errors import ConfigError

INITS = ("real", "noise")


@configclass(Data, Run, Loop, Synthesis, Pool, part="krr-st",
             drop=("val_size", "trajectories", "ipc"),
             defaults={"lr_img": 1e-3, "batch_real": 1024, "out": "runs/krr_st.h5", "iters": 1000,
                       "max_online_steps": 1000, "lr_online": 0.1, "online_batch": None},
             choices={"init": INITS},
             helps={"arch": "the pool's networks (kernel features: their penultimate layer; their heads regress "
                            "the targets)",
                    "teacher": "self-supervised teacher file (condense teacher --ssl): its representation of an "
                               "image is the target",
                    "iters": "synthesis iterations (also the horizon of the linear lr decay)",
                    "lr_img": "learning rate of the images and targets (one Adam, decayed linearly to a thousandth)",
                    "init": "initial images: real (random training images, no labels read) or noise",
                    "batch_real": "real images per iteration, drawn from the whole training split",
                    "lr_online": "SGD learning rate of the pool networks",
                    "online_batch": "synthetic images per online step of a pool network (default: all, as the "
                                    "reference)"})
class KRRSTConfig:
    """KRR-ST (Lee et al., ICLR 2024): an unlabelled dataset distilled into images and target representations
    by kernel ridge regression on the features of a model pool, against a self-supervised teacher."""

    images: int = setting(100, "synthetic images (the budget; no classes: 100 is IPC 10's storage on a "
                               "10-class dataset)", gt=0, le=MAX_IPC * 100, unit="images")
    momentum_online: float = setting(0.9, "SGD momentum of the pool networks", ge=0, lt=1)
    weight_decay_online: float = setting(1e-3, "weight decay of the pool networks", ge=0)
    ridge: float = setting(1e-6, "the ridge is this * trace(K_ss), held fixed in the gradient (the reference's)", ge=0)
    real_aug: bool = setting(True, "random crop (pad 1/8 of the side) + flip of the real batch before the teacher "
                                   "sees it (the reference's loader)")
    learn_targets: bool = setting(True, "learn the target representations with the images")

    def validate(self) -> None:
        """What the declarations cannot say: a teacher is required."""
        if not self.teacher:
            raise ConfigError("krr-st needs --teacher: a self-supervised teacher file (condense teacher --ssl "
                              "barlow-twins --dataset ... --out teacher.h5)")


def run_krr_st_torch(cfg: KRRSTConfig, device=None, **_: Any):
    """``--backend torch``: krr-st has no torch version (one error line)."""
    raise ConfigError("method 'krr-st' runs only in JAX: use --backend jax (its default) instead of --backend torch")
