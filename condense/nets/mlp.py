"""A plain MLP on flattened images, as in the DC code.

``depth`` linear layers (default 3): ``C*H*W -> width -> ... -> width -> K`` with ReLU
between them; ``width`` defaults to 128. Names follow the reference (``fc_1`` ...
``fc_{depth}``). The reference sizes its first layer for 28x28x1 or 32x32x3 only; we use
the actual C*H*W. ``embed`` is the last hidden activation ``[B, width]``;
``feature_maps`` is every hidden activation (after ReLU), each ``[B, width]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from condense.nets.base import Net


class MLP(Net):
    """MLP for inputs ``[B, channels, H, W]``; see the module docstring."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], *,
                 width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (channels, image_size[0], image_size[1])
        self.depth = depth
        sizes = [channels * image_size[0] * image_size[1]] + [width] * (depth - 1) + [num_classes]
        for i in range(depth):
            self.add_module(f"fc_{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        self.embed_dim = width

    def _layer(self, i: int) -> nn.Linear:
        return getattr(self, f"fc_{i + 1}")

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Hidden activations: ``[B, C, H, W]`` -> ``depth - 1`` tensors ``[B, width]``."""
        self.check_input(x)
        out = x.flatten(1)
        hidden = []
        for i in range(self.depth - 1):
            out = F.relu(self._layer(i)(out))
            hidden.append(out)
        return hidden

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden activation: ``[B, C, H, W]`` -> ``[B, width]``."""
        return self.feature_maps(x)[-1]

    @property
    def head(self) -> nn.Linear:
        """The final linear layer."""
        return self._layer(self.depth - 1)


def build_mlp(channels: int, num_classes: int, image_size: tuple[int, int],
              **options) -> MLP:
    """Registry factory for ``mlp``."""
    return MLP(channels, num_classes, image_size, **options)


DEFAULTS = {"width": 128, "depth": 3}
# depth >= 2 so that there is a hidden layer for embed() to return
CHOICES = {"width": range(1, 1 << 16), "depth": range(2, 65)}
