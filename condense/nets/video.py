"""Video networks: inputs are clips ``[B, T, C, H, W]``.

``convnet3d`` is the ConvNet3D of the static/dynamic video-distillation paper (Wang et al.,
"Dancing with Still Images", CVPR 2024; reference yuz1wan/video_distillation, ``networks.py``),
the only backbone its scripts distil and evaluate with. Three blocks of::

    Conv3d(k = 3 x 7 x 7, stride (1, s, s), padding (1, 3, 3)) -> ReLU -> MaxPool3d

with ``width // 2``, ``width``, ``width`` channels (the reference: 64, 128, 128), the first pool
spatial only (1 x 2 x 2), the next two 2 x 2 x 2; then an average pool over 2 frames (and 2 x 2
positions when the input is larger than 64 pixels, as the reference), dropout, a 1 x 1 x 1
convolution to the K classes and the maximum over the remaining positions and frames. No
normalisation layer. ``embed`` is the flattened map before the average pool (what distribution
matching compares: 256 numbers for 8 x 64 x 64 clips at width 128, 2048 for 16 x 112 x 112).

Options: ``width`` (128), ``stride`` (2, the reference's; 1 lets 32 x 32 clips through the
three pools), ``dropout`` (0.5, the reference's; dropout draws from torch's global generator,
so runs that must be reproduced bit for bit use ``dropout=0``). A net takes any number of frames
from 8 on (two temporal pools, then an average over 2); the parameter count does not depend on it.

``convnet-frames`` is the per-frame baseline network (the reference's ``VideoConvNetMean``): the
image ConvNet (instance norm, average pooling; options as ``convnet``) applied to every frame,
its embeddings averaged over time, one linear classifier. It cannot see motion, only what the
frames hold on average.

Both keep the names and order of their parameters fixed (registration order), so a flat
layout (:mod:`condense.nets.flat`) and trajectory matching work on them as on any net.
"""
from __future__ import annotations

import torch
from torch import nn

from condense.nets.base import conv_out, shape_str
from condense.nets.convnet import ConvNet
from condense.runtime.errors import ArchError

MIN_FRAMES = 8  # two temporal pools, then a temporal average over 2


def check_clips(net: nn.Module, x: torch.Tensor) -> None:
    """ArchError unless ``x`` is ``[B, T, *net.input_shape]`` with at least ``net.min_frames`` frames."""
    if x.dim() != 5 or tuple(x.shape[2:]) != net.input_shape or x.shape[1] < net.min_frames:
        want = ", ".join(str(s) for s in net.input_shape)
        raise ArchError(f"{type(net).__name__} takes clips [B, T >= {net.min_frames}, {want}], "
                        f"got a tensor of shape {list(x.shape)}")


class ConvNet3D(nn.Module):
    """See the module docstring. ``forward``: ``[B, T, C, H, W]`` -> ``[B, K]``."""

    min_frames = MIN_FRAMES

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 width: int = 128, stride: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ArchError(f"convnet3d dropout={dropout} must lie in [0, 1)")
        self.num_classes = num_classes
        self.input_shape = (channels, *image_size)
        widths = (max(1, width // 2), width, width)
        layers: list[nn.Module] = []
        h, w, c_in = image_size[0], image_size[1], channels
        for i, c_out in enumerate(widths):
            layers += [nn.Conv3d(c_in, c_out, (3, 7, 7), stride=(1, stride, stride), padding=(1, 3, 3)),
                       nn.ReLU(inplace=True), nn.MaxPool3d((1, 2, 2) if i == 0 else 2)]
            h, w = conv_out(h, 7, 3, stride) // 2, conv_out(w, 7, 3, stride) // 2
            if min(h, w) < 1:
                raise ArchError(f"convnet3d stride {stride}: {shape_str(channels, image_size)} frames vanish at "
                                f"block {i + 1}; use stride=1 or larger frames")
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self._block_ends = [2, 5, 8]
        self.map_hw = (h, w)
        # the reference averages 2 x 2 positions only for inputs above 64 pixels
        space = 2 if image_size[0] > 64 and min(h, w) >= 2 else 1
        self.avgpool = nn.AvgPool3d((2, space, space), stride=1)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Conv3d(width, num_classes, 1)

    def embed_dim_for(self, frames: int) -> int:
        """Width of :meth:`embed` for clips of ``frames`` frames."""
        return self.logits.in_channels * (frames // 4) * self.map_hw[0] * self.map_hw[1]

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        check_clips(self, x)
        return self.features(x.transpose(1, 2))  # [B, C, T, H, W], as Conv3d wants

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's maps, flattened: ``[B, T, C, H, W]`` -> ``[B, D]``."""
        return self._maps(x).flatten(1)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output ``[B, c_i, t_i, h_i, w_i]``, shallow to deep."""
        check_clips(self, x)
        out, maps = x.transpose(1, 2), []
        for i, layer in enumerate(self.features):
            out = layer(out)
            if i in self._block_ends:
                maps.append(out)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(self.dropout(self.avgpool(self._maps(x))))  # [B, K, t, h, w]
        return z.flatten(2).amax(dim=2)


class FrameConvNet(nn.Module):
    """See the module docstring. ``forward``: ``[B, T, C, H, W]`` -> ``[B, K]``."""

    min_frames = 1

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], **options) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, *image_size)
        self.frame = ConvNet(channels, num_classes, image_size, **options)
        self.embed_dim = self.frame.embed_dim

    def _per_frame(self, fn, x: torch.Tensor) -> torch.Tensor:
        check_clips(self, x)
        b, t = x.shape[:2]
        out = fn(x.reshape(b * t, *x.shape[2:]))
        return out.view(b, t, *out.shape[1:])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings averaged over time: ``[B, T, C, H, W]`` -> ``[B, D]``."""
        return self._per_frame(self.frame.embed, x).mean(1)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's per-frame maps averaged over time."""
        check_clips(self, x)
        b, t = x.shape[:2]
        return [m.view(b, t, *m.shape[1:]).mean(1) for m in self.frame.feature_maps(x.reshape(b * t, *x.shape[2:]))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frame.head(self.embed(x))


def build_convnet3d(channels: int, num_classes: int, image_size: tuple[int, int], **options) -> ConvNet3D:
    """Registry factory for ``convnet3d``."""
    return ConvNet3D(channels, num_classes, image_size, **options)


def build_convnet_frames(channels: int, num_classes: int, image_size: tuple[int, int], **options) -> FrameConvNet:
    """Registry factory for ``convnet-frames``."""
    return FrameConvNet(channels, num_classes, image_size, **options)


def is_video_net(net: nn.Module) -> bool:
    """Whether ``net`` takes clips ``[B, T, C, H, W]``."""
    return isinstance(net, (ConvNet3D, FrameConvNet))


CONVNET3D_DEFAULTS = {"width": 128, "stride": 2, "dropout": 0.5}
CONVNET3D_CHOICES = {"width": range(2, 1 << 16), "stride": range(1, 3)}
