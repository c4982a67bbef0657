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

from torch import nn

from condense.nets.base import SequentialConvNet, conv_norm_act, require_positive

CFG_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(SequentialConvNet):
    """VGG for inputs ``[B, channels, H, W]``; see the module docstring."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 cfg: tuple = CFG_VGG11, norm: str = "instance", name: str = "vgg11") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, image_size[0], image_size[1])
        layers: list[nn.Module] = []
        self._stage_ends: list[int] = []
        h, w = image_size
        trail = [(h, w)]
        in_ch = channels
        for i, item in enumerate(cfg):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                trail.append((h, w))
                require_positive(name, trail, f"after pooling stage {len(trail) - 1}",
                                 "use images of at least 32x32 (28x28 for one channel)",
                                 channels, image_size)
                self._stage_ends.append(len(layers) - 1)
                continue
            pad = 3 if channels == 1 and i == 0 else 1
            block, (h, w) = conv_norm_act(in_ch, item, 3, pad, norm, "relu", (h, w))
            layers += block
            in_ch = item
        self.features = nn.Sequential(*layers)
        self.embed_dim = in_ch * h * w
        self.classifier = nn.Linear(self.embed_dim, num_classes)


def build_vgg11(channels: int, num_classes: int, image_size: tuple[int, int],
                **options) -> VGG:
    """Registry factory for ``vgg11``."""
    return VGG(channels, num_classes, image_size, cfg=CFG_VGG11, **options)


DEFAULTS = {"norm": "instance"}
CHOICES = {"norm": ("instance", "batch", "none")}
