"""``toy``: a small procedurally generated image dataset for tests and smoke runs.

Defaults: 4 classes, 3x16x16 images, 64 train and 32 test images per class, pixel
values in [0, 1], labels sorted by class. Everything is derived from ``seed`` through
``condense.runtime.rng.generator`` (prototypes, train draws and test draws use separate
streams), so the same seed gives the same tensors in any process.

What makes a class (its prototype, drawn once per seed):
- an oriented grating: orientation pi * k / K plus a little seeded jitter, a seeded
  spatial frequency;
- a soft blob at a class-specific position (on a circle, angle 2 pi k / K);
- a foreground colour (evenly spaced hues for 3 channels, seeded levels otherwise)
  over a dark background.
What varies per image: grating phase, blob position (shift up to +-2 px), contrast
(x0.8-1.2) and Gaussian pixel noise (sigma 0.08), then clamping to [0, 1].

So classes are separable by colour, orientation and layout, which a small ConvNet
learns in a few epochs, while no two images are identical.
"""
from __future__ import annotations

import colorsys
import math

import torch

from condense.runtime.errors import DataError
from condense.runtime.rng import generator

_TAG = 0x70E  # stream tag for toy data
_NOISE = 0.1
_TINT = 0.2
_MAX_SHIFT = 2.0


def _prototypes(g: torch.Generator, k: int, channels: int) -> dict[str, torch.Tensor]:
    """Per-class parameters: theta [K], freq [K], centre [K, 2], colour [K, C], background [C]."""
    theta = math.pi * torch.arange(k) / k + (torch.rand(k, generator=g) - 0.5) * (0.3 * math.pi / k)
    freq = 1.5 + 1.5 * torch.rand(k, generator=g)  # cycles per image
    angle = 2 * math.pi * torch.arange(k) / k + torch.rand(1, generator=g) * math.pi
    centre = 0.45 * torch.stack([torch.sin(angle), torch.cos(angle)], dim=1)  # in [-1, 1] units
    if channels == 3:
        h0 = float(torch.rand(1, generator=g))
        colour = torch.tensor([colorsys.hsv_to_rgb((h0 + i / k) % 1.0, 0.85, 0.95) for i in range(k)])
    else:
        colour = 0.45 + 0.55 * torch.rand(k, channels, generator=g)
    background = 0.1 + 0.1 * torch.rand(channels, generator=g)
    return {"theta": theta, "freq": freq, "centre": centre, "colour": colour.float(), "background": background}


def _render(p: dict[str, torch.Tensor], y: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Images [N, C, size, size] in [0, 1] for labels y [N]."""
    n = y.numel()
    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # [H, W]
    phase = 2 * math.pi * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (2 * _MAX_SHIFT / (size - 1))
    contrast = 0.8 + 0.4 * torch.rand(n, generator=g)
    tint = torch.randn(n, p["colour"].shape[1], generator=g) * _TINT
    noise = torch.randn(n, p["colour"].shape[1], size, size, generator=g) * _NOISE

    th, f = p["theta"][y].view(n, 1, 1), p["freq"][y].view(n, 1, 1)
    along = xx * torch.cos(th) + yy * torch.sin(th)
    grating = 0.5 + 0.5 * torch.cos(math.pi * f * along + phase.view(n, 1, 1))
    c = p["centre"][y] + shift
    d2 = (yy - c[:, 0].view(n, 1, 1)) ** 2 + (xx - c[:, 1].view(n, 1, 1)) ** 2
    blob = torch.exp(-d2 / (2 * 0.25**2))
    mask = (contrast.view(n, 1, 1) * (0.55 * grating + 0.6 * blob)).clamp(0, 1)  # [N, H, W]
    bg = p["background"].view(1, -1, 1, 1)
    fg = (p["colour"][y] + tint).view(n, -1, 1, 1)
    return (bg + (fg - bg) * mask.unsqueeze(1) + noise).clamp(0.0, 1.0)


def make_toy(
    seed: int = 0,
    *,
    num_classes: int = 4,
    channels: int = 3,
    size: int = 16,
    train_per_class: int = 64,
    test_per_class: int = 32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generate (x_train [K*train_per_class, C, size, size] float32 in [0, 1], y_train int64,
    x_test, y_test); labels sorted by class. Deterministic in all arguments."""
    if num_classes < 2 or channels < 1 or size < 4 or train_per_class < 1 or test_per_class < 0:
        raise DataError("make_toy needs num_classes >= 2, channels >= 1, size >= 4 and positive counts")
    proto = _prototypes(generator(seed, _TAG, 0), num_classes, channels)
    y_train = torch.arange(num_classes).repeat_interleave(train_per_class)
    y_test = torch.arange(num_classes).repeat_interleave(test_per_class)
    x_train = _render(proto, y_train, size, generator(seed, _TAG, 1))
    x_test = _render(proto, y_test, size, generator(seed, _TAG, 2))
    return x_train.float(), y_train, x_test.float(), y_test
