"""VGG-11 as in the DC code.

Configuration 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M: each number is a
3x3 convolution (padding 1, bias) -> norm -> ReLU, each M a 2x2 max-pool; then one
``Linear(512 * h * w, K)`` on the flattened maps. As in the reference, the first
convolution has padding 3 for 1-channel inputs (28x28 -> 32x32 maps). Option ``norm``:
``instance`` (default, ``GroupNorm(C, C, affine=True)``, the reference's VGG11),
``batch`` (the reference's VGG11BN) or ``none``.

Decision: the reference hard-codes a 512-input classifier, which only fits 32x32
inputs; we compute the classifier's input from the shape (64x64 inputs give 2x2 maps,
so 2048 inputs) and raise ArchError when five poolings leave no map (below 32x32, or
below 28x28 for one channel). Parameter names follow the reference's
``features.{i}`` indices for the ``instance``/``batch`` variants. ``embed`` is the
flattened last maps; ``feature_maps`` is the output of each of the five pooling stages.
"""
from __future__ import annotations

from condense.nets.base import SequentialConvNet, Stage

VGG11 = tuple(Stage(tuple((c, 3, 1) for c in convs)) for convs in ((64,), (128,), (256, 256), (512, 512), (512, 512)))


class VGG(SequentialConvNet):
    """VGG-11 for inputs ``[B, channels, H, W]``; see the module docstring."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 norm: str = "instance") -> None:
        super().__init__(channels, num_classes, image_size, VGG11, norm=norm, act="relu", arch="vgg11",
                         stage_word="pooling stage", hint="use images of at least 32x32 (28x28 for one channel)")


def build_vgg11(channels: int, num_classes: int, image_size: tuple[int, int],
                **options) -> VGG:
    """Registry factory for ``vgg11``."""
    return VGG(channels, num_classes, image_size, **options)


DEFAULTS = {"norm": "instance"}
CHOICES = {"norm": ("instance", "batch", "none")}
