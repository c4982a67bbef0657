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

from torch import nn

from condense.nets.base import SequentialConvNet, conv_norm_act, require_positive

# (out_channels, kernel, padding or None for the first layer's rule, pool after)
_LAYERS = ((128, 5, None, True), (192, 5, 2, True), (256, 3, 1, False),
           (192, 3, 1, False), (192, 3, 1, True))


class AlexNet(SequentialConvNet):
    """AlexNet for inputs ``[B, channels, H, W]``; see the module docstring."""

    head_name = "fc"

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 norm: str = "none") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, image_size[0], image_size[1])
        layers: list[nn.Module] = []
        self._stage_ends: list[int] = []
        h, w = image_size
        trail = [(h, w)]
        in_ch = channels
        for out_ch, kernel, pad, pool in _LAYERS:
            if pad is None:
                pad = 4 if channels == 1 else 2
            block, (h, w) = conv_norm_act(in_ch, out_ch, kernel, pad, norm, "relu", (h, w))
            layers += block
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                trail.append((h, w))
                require_positive("alexnet", trail, f"after pooling stage {len(trail) - 1}",
                                 "use larger images", channels, image_size)
                self._stage_ends.append(len(layers) - 1)
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.embed_dim = in_ch * h * w
        self.fc = nn.Linear(self.embed_dim, num_classes)


def build_alexnet(channels: int, num_classes: int, image_size: tuple[int, int],
                  **options) -> AlexNet:
    """Registry factory for ``alexnet``."""
    return AlexNet(channels, num_classes, image_size, **options)


DEFAULTS = {"norm": "none"}
CHOICES = {"norm": ("none", "batch", "instance")}
