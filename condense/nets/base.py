"""What every built-in network shares: the interface, shape arithmetic and norm layers.

Every network built by :func:`condense.nets.build_net` answers three questions about
an input batch ``x`` of shape ``[B, C, H, W]``:

- ``forward(x)`` -> logits ``[B, K]``;
- ``embed(x)`` -> penultimate features ``[B, D]`` (what distribution matching compares);
- ``feature_maps(x)`` -> the output of every stage/block, shallow to deep (what
  attention matching compares).

The shape arithmetic is done in plain integers before any layer exists, so a network
that cannot take an input shape fails with an :class:`~condense.runtime.errors.ArchError`
naming the stage where the maps vanish, instead of a matrix-size error at the first
forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from condense.nets.pool import AvgPool2x2
from condense.runtime.errors import ArchError

NORMS = ("instance", "batch", "layer", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid", "swish")


class Net(nn.Module):
    """Base class of the built-in networks.

    Attributes: ``num_classes`` (K), ``input_shape`` ((C, H, W) the net was built for),
    ``embed_dim`` (D, the width of :meth:`embed`) and ``head`` (the final ``Linear``;
    its name inside the module follows the reference code: ``classifier``, ``fc`` or
    ``fc_{depth}``).
    """

    num_classes: int
    input_shape: tuple[int, int, int]
    embed_dim: int

    @property
    def head(self) -> nn.Linear:
        """The final linear layer: ``forward(x) == head(embed(x))``."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: ``[B, C, H, W]`` -> ``[B, D]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``[B, C, H, W]`` -> ``[B, num_classes]``."""
        return self.head(self.embed(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage/block, shallow to deep: ``[B, C, H, W]`` -> list."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ArchError unless ``x`` is ``[B, *input_shape]``.

        Without this a wrong image size surfaces as a matrix-size error in the classifier.
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            want = ", ".join(str(s) for s in self.input_shape)
            raise ArchError(
                f"{type(self).__name__} was built for inputs [B, {want}], "
                f"got a tensor of shape {list(x.shape)}"
            )


class SequentialConvNet(Net):
    """A net whose body is ``self.features`` (an ``nn.Sequential`` of conv stages) followed by
    one linear head on the flattened last maps (ConvNet, VGG, AlexNet).

    The body comes from :func:`conv_stack`; subclasses name their head as the reference code
    does (``head_name``) and describe their stages to ``__init__``.
    """

    head_name = "classifier"
    features: nn.Sequential
    _stage_ends: list[int]

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], stages: Sequence[Stage], *,
                 norm: str, act: str, arch: str, stage_word: str, hint: str, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, image_size[0], image_size[1])
        self.features, self._stage_ends, out_ch, (h, w) = conv_stack(
            channels, image_size, stages, norm=norm, act=act, arch=arch, stage_word=stage_word, hint=hint,
            padding_mode=padding_mode)
        self.embed_dim = out_ch * h * w
        setattr(self, self.head_name, nn.Linear(self.embed_dim, num_classes))  # registered after the body: MTT's order

    @property
    def head(self) -> nn.Linear:
        return getattr(self, self.head_name)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output: ``[B, C, H, W]`` -> one ``[B, c_i, h_i, w_i]`` per stage."""
        self.check_input(x)
        return outputs_at(self.features, x, self._stage_ends)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened last maps: ``[B, C, H, W]`` -> ``[B, embed_dim]``."""
        self.check_input(x)
        return self.features(x).flatten(1)


@dataclass(frozen=True)
class Stage:
    """One stage of a conv stack: conv -> norm -> activation per ``(out_channels, kernel, padding)``
    in ``convs``, then a 2x2 ``pool`` (``avg``, ``max`` or ``none``); its output is a feature map."""

    convs: tuple[tuple[int, int, int], ...]
    pool: str = "max"


def conv_stack(channels: int, image_size: tuple[int, int], stages: Sequence[Stage], *, norm: str, act: str,
               arch: str, stage_word: str, hint: str, padding_mode: str = "zeros"
               ) -> tuple[nn.Sequential, list[int], int, tuple[int, int]]:
    """(layers, indices of the stage outputs in them, last channel count, last map size) of ``stages``
    on ``[B, channels, *image_size]`` inputs.

    Layers are numbered as the reference code numbers them (every conv, norm, activation and pool
    counts), so parameter names are ``features.{i}.weight`` in the MTT buffer order. For 1-channel
    inputs the first convolution pads 2 more, as the references do (28x28 images give 32x32 maps),
    except with ``padding_mode="circular"``, where that padding would wrap the image onto itself.
    A stage after which the maps vanish raises ArchError naming it (``{stage_word} {k}``).
    """
    layers: list[nn.Module] = []
    ends: list[int] = []
    h, w = image_size
    trail = [(h, w)]
    in_ch = channels
    for k, stage in enumerate(stages, start=1):
        for out_ch, kernel, pad in stage.convs:
            first = not layers
            widen = first and channels == 1 and padding_mode == "zeros"
            block, (h, w) = conv_norm_act(in_ch, out_ch, kernel, pad + 2 if widen else pad, norm, act, (h, w),
                                          padding_mode)
            layers += block
            in_ch = out_ch
        if stage.pool != "none":
            layers.append(nn.MaxPool2d(2, 2) if stage.pool == "max" else AvgPool2x2())
            h, w = h // 2, w // 2
        trail.append((h, w))
        require_positive(arch, trail, f"after {stage_word} {k}", hint, channels, image_size)
        ends.append(len(layers) - 1)
    return nn.Sequential(*layers), ends, in_ch, (h, w)


def batch_independent(net: nn.Module) -> bool:
    """Whether each image's output depends on that image alone (no batch norm in training mode),
    so a batch may be split into chunks without changing any result."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())


def conv_out(size: int, kernel: int, padding: int, stride: int = 1) -> int:
    """Spatial size after a convolution (same formula as ``nn.Conv2d``)."""
    return (size + 2 * padding - kernel) // stride + 1


def shape_str(channels: int, image_size: tuple[int, int]) -> str:
    """``3x32x32``: how inputs are named in error messages."""
    return f"{channels}x{image_size[0]}x{image_size[1]}"


def require_positive(arch: str, trail: list[tuple[int, int]], what: str, hint: str,
                     channels: int, image_size: tuple[int, int]) -> None:
    """Raise ArchError if the last (h, w) in ``trail`` is not positive.

    ``trail`` lists the spatial sizes after each stage so the message can show
    where the maps vanished.
    """
    h, w = trail[-1]
    if h >= 1 and w >= 1:
        return
    path = " -> ".join(f"{a}x{b}" for a, b in trail)
    raise ArchError(
        f"{arch} cannot take {shape_str(channels, image_size)} inputs: the feature maps "
        f"vanish {what} ({path}); {hint}"
    )


def outputs_at(layers: nn.Sequential, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """Run ``layers`` on ``x``; return the outputs of the layers at ``indices``."""
    outs = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in indices:
            outs.append(x)
    return outs


def make_norm(kind: str, channels: int, hw: tuple[int, int]) -> nn.Module | None:
    """The norm layer the DC/MTT family means by ``kind`` (None for ``none``).

    ``instance`` is ``GroupNorm(C, C, affine=True)``, as in the reference code: one
    group per channel is instance norm with a per-channel affine, and, unlike
    ``InstanceNorm2d``, has weight and bias in the MTT buffer order. ``layer`` normalises
    over (C, H, W) with an elementwise affine of that shape, so it needs ``hw``.
    """
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.LayerNorm([channels, hw[0], hw[1]], elementwise_affine=True)
    if kind == "none":
        return None
    raise ArchError(f"unknown norm '{kind}'; valid: {', '.join(NORMS)}")


def conv_norm_act(in_ch: int, out_ch: int, kernel: int, pad: int, norm: str, act: str,
                  hw: tuple[int, int], padding_mode: str = "zeros") -> tuple[list[nn.Module], tuple[int, int]]:
    """The layers conv (zero or circular padding) -> norm (if any) -> activation, and the map size after the conv."""
    h, w = conv_out(hw[0], kernel, pad), conv_out(hw[1], kernel, pad)
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size=kernel, padding=pad, padding_mode=padding_mode)]
    norm_layer = make_norm(norm, out_ch, (h, w))
    if norm_layer is not None:
        layers.append(norm_layer)
    layers.append(make_act(act))
    return layers, (h, w)


def make_act(kind: str) -> nn.Module:
    """An activation module; never in-place, so functional_call and vmap stay valid."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01)
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "swish":
        return nn.SiLU()
    raise ArchError(f"unknown activation '{kind}'; valid: {', '.join(ACTIVATIONS)}")
