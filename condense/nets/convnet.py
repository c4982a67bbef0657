"""The field's ConvNet (DC, DSA, DM, MTT, DataDAM, ...).

``depth`` blocks of: conv 3x3 (``width`` channels, bias) -> norm -> activation ->
2x2 pool (stride 2), then one ``Linear(width * h * w, num_classes)`` on the flattened
maps. Options and defaults: ``width=128``, ``depth=3``, ``norm=instance``
(``GroupNorm(W, W, affine=True)``; also ``batch``, ``layer`` over (C, H, W), ``none``),
``pool=avg`` (also ``max``, ``none``), ``act=relu`` (also ``leakyrelu``, ``sigmoid``,
``swish``).

Compatibility with the reference code, kept on purpose:

- For a 1-channel input the first convolution has padding 3, so a 28x28 image gives
  32x32 maps (the references treat MNIST-like images as 32x32): ConvNet D3 W32 on
  Fashion-MNIST has 4x4 maps before the classifier and 24,138 parameters.
- Parameter names and order are the reference's (``features.{i}.weight`` with the
  same layer indices, then ``classifier``), i.e. per block conv weight, conv bias, norm
  weight, norm bias, then classifier weight and bias: the order of MTT replay buffers,
  and reference state dicts load as they are.

``convnet-circular`` is the same network with circular padding in every convolution (and no
extra padding for 1-channel inputs, which would wrap an image onto itself): its feature maps of
a canvas shifted with wrap-around by a multiple of 2^depth are the shifted maps, so it sees a
tileable texture without seams (``condense synth tm --texture``).

Unlike the reference, the map sizes are computed from the real input shape (the
reference assumes 32x32 unless the height is 28), and a depth at which the maps vanish
raises ArchError. Average pooling is :class:`~condense.nets.pool.AvgPool2x2` (same
result as ``nn.AvgPool2d(2, 2)``, several times faster on a CPU). ``embed`` is the flattened last maps (what DM uses); ``feature_maps``
is each block's output after pooling.
"""
from __future__ import annotations

from condense.nets.base import SequentialConvNet, Stage


class ConvNet(SequentialConvNet):
    """ConvNet for inputs ``[B, channels, H, W]``; see the module docstring."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 width: int = 128, depth: int = 3, norm: str = "instance",
                 pool: str = "avg", act: str = "relu", padding_mode: str = "zeros") -> None:
        super().__init__(channels, num_classes, image_size, [Stage(((width, 3, 1),), pool)] * depth,
                         norm=norm, act=act, arch=f"convnet depth {depth}", stage_word="block",
                         hint="use a smaller depth or larger images", padding_mode=padding_mode)


def build_convnet(channels: int, num_classes: int, image_size: tuple[int, int],
                  **options) -> ConvNet:
    """Registry factory for ``convnet``."""
    return ConvNet(channels, num_classes, image_size, **options)


def build_convnet_circular(channels: int, num_classes: int, image_size: tuple[int, int],
                           **options) -> ConvNet:
    """Registry factory for ``convnet-circular``."""
    return ConvNet(channels, num_classes, image_size, padding_mode="circular", **options)


DEFAULTS = {"width": 128, "depth": 3, "norm": "instance", "pool": "avg", "act": "relu"}
CHOICES = {
    "width": range(1, 1 << 16),
    "depth": range(1, 65),
    "norm": ("instance", "batch", "layer", "none"),
    "pool": ("avg", "max", "none"),
    "act": ("relu", "leakyrelu", "sigmoid", "swish"),
}
