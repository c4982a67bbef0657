"""2x2 average pooling (stride 2) written as two pairwise sums of strided views.

``nn.AvgPool2d(2, 2)`` on NCHW tensors is slow on CPUs: measured here (2 cores) it
takes 7.8 ms forward for a [256, 32, 32, 32] batch and 30 ms forward+backward, against
2.0 ms and 22 ms for this version, and the ConvNet pools after every block
(docs/BENCHMARKS.md, "Pooling"). The result equals ``F.avg_pool2d(x, 2)`` up to float
rounding, including for odd sizes (the last row/column is dropped, as there). The
backward spreads ``g / 4`` over each 2x2 window and is itself differentiable, so
second-order gradients (trajectory matching) and ``torch.func.vmap`` work.
"""
from __future__ import annotations

import torch
from torch import nn


class _Pool2x2(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        rows = x.unflatten(-2, (h, 2))
        rows = rows.select(-2, 0) + rows.select(-2, 1)  # [..., h, W]
        cols = rows.unflatten(-1, (w, 2))
        return (cols.select(-1, 0) + cols.select(-1, 1)).mul_(0.25)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        *lead, h, w = g.shape
        return (g * 0.25).unsqueeze(-1).unsqueeze(-3).expand(*lead, h, 2, w, 2).reshape(*lead, 2 * h, 2 * w)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` -> ``[..., H // 2, W // 2]``: mean of each 2x2 window."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    if (h, w) != tuple(x.shape[-2:]):
        x = x[..., :h, :w]
    return _Pool2x2.apply(x.contiguous())


class AvgPool2x2(nn.Module):
    """Drop-in for ``nn.AvgPool2d(2, 2)`` (no parameters, so buffer layouts are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)
