"""AlexNet as in the DC code (a small-image AlexNet, not the ImageNet one).

conv 128 k5 (padding 4 for 1-channel inputs, else 2) -> ReLU -> max-pool 2,
conv 192 k5 p2 -> ReLU -> max-pool 2, conv 256 k3 p1 -> ReLU, conv 192 k3 p1 -> ReLU,
conv 192 k3 p1 -> ReLU -> max-pool 2, then ``Linear(192 * h * w, K)``. All
convolutions have a bias. Option ``norm``: ``none`` (default, the reference's AlexNet),
``batch`` (its AlexNetBN: BatchNorm after every convolution) or ``instance``.

Decision: the reference hard-codes ``192 * 4 * 4`` classifier inputs (32x32, or 28x28
with one channel); we compute it from the shape, and raise ArchError when the maps
vanish. Parameter names follow the reference's ``features.{i}`` and ``fc``. ``embed``
is the flattened last maps; ``feature_maps`` is the output of each of the three
pooling stages.
"""
from __future__ import annotations

from condense.nets.base import SequentialConvNet, Stage

STAGES = (Stage(((128, 5, 2),)), Stage(((192, 5, 2),)), Stage(((256, 3, 1), (192, 3, 1), (192, 3, 1))))


class AlexNet(SequentialConvNet):
    """AlexNet for inputs ``[B, channels, H, W]``; see the module docstring."""

    head_name = "fc"

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 norm: str = "none") -> None:
        super().__init__(channels, num_classes, image_size, STAGES, norm=norm, act="relu", arch="alexnet",
                         stage_word="pooling stage", hint="use larger images")


def build_alexnet(channels: int, num_classes: int, image_size: tuple[int, int],
                  **options) -> AlexNet:
    """Registry factory for ``alexnet``."""
    return AlexNet(channels, num_classes, image_size, **options)


DEFAULTS = {"norm": "none"}
CHOICES = {"norm": ("none", "batch", "instance")}
