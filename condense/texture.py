"""Tileable textures (MTT's ``--texture``): each synthetic image is a canvas larger than the
dataset's images, and training sees random crops of it taken on a torus.

A crop of size h x w at offset (dy, dx) of a canvas [C, Hc, Wc] holds pixel
canvas[:, (dy + i) mod Hc, (dx + j) mod Wc] at (i, j): crops that run over an edge continue at
the opposite one (MTT rolls the canvas by the offset and keeps the top-left corner, the same
crop). Every position of the torus is equally likely to be any pixel of a crop, so no seam is
special and the canvas tiles without one. Offsets are uniform over the whole canvas, drawn per
canvas and per sample from a generator the caller keys, so runs resume and shard exactly.

A set of textures records ``data["texture"] = {"crop": [h, w], "samples": S}``: S crops of every
canvas per training step, each labelled as its canvas (evaluation trains on the crops, the
students keep the dataset's image size).
"""
from __future__ import annotations

from typing import Sequence

import torch


def crop_offsets(n: int, canvas: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """[n, 2] offsets (dy, dx), uniform over a canvas of size ``canvas`` (Hc, Wc)."""
    return torch.stack([torch.randint(int(canvas[0]), (n,), generator=g),
                        torch.randint(int(canvas[1]), (n,), generator=g)], dim=1)


def toroidal_crops(canvases: torch.Tensor, offsets: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crops [N, C, h, w] of ``canvases`` [N, C, Hc, Wc] at ``offsets`` [N, 2], wrapping around the
    edges (differentiable in the canvases: the gradient of a pixel sums over the crops holding it)."""
    n, _, hc, wc = canvases.shape
    h, w = int(size[0]), int(size[1])
    offsets = offsets.to(canvases.device)
    rows = (offsets[:, :1] + torch.arange(h, device=canvases.device)) % hc  # [N, h]
    cols = (offsets[:, 1:] + torch.arange(w, device=canvases.device)) % wc  # [N, w]
    batch = torch.arange(n, device=canvases.device)[:, None, None]
    return canvases[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def texture_batch(canvases: torch.Tensor, samples: int, size: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """``samples`` crops of every canvas [N, C, Hc, Wc]: [samples · N, C, h, w], sample-major (the
    labels of the canvases repeat ``samples`` times in the same order)."""
    n = canvases.shape[0]
    offsets = crop_offsets(samples * n, canvases.shape[2:], g)
    return toroidal_crops(canvases.repeat(samples, 1, 1, 1), offsets, size)


def tile(images: torch.Tensor, n: int) -> torch.Tensor:
    """Each image [.., C, H, W] repeated n x n times: [.., C, nH, nW] (what a seamless texture looks like tiled)."""
    return images.repeat(*([1] * (images.ndim - 2)), n, n)


def texture_of(data: dict) -> tuple[tuple[int, int], int] | None:
    """((h, w), samples) of a set's ``data["texture"]``; None for a set of ordinary images."""
    t = (data or {}).get("texture")
    if not t:
        return None
    (h, w), samples = t["crop"], t["samples"]
    return (int(h), int(w)), int(samples)
