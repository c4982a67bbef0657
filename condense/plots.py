"""Pictures users look at before they read: PNG grids of synthetic images, the label storage curve."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .runtime.files import write_figure


def save_grid(pixels: torch.Tensor, classes: torch.Tensor, path: str | os.PathLike, *,
              class_names: Sequence[str] | None = None, max_per_class: int = 10, title: str = "") -> Path:
    """Save a PNG with one row per class and up to ``max_per_class`` images per row (one image per
    class: the classes side by side, five to a row, each titled).

    pixels: [N, C, H, W] in [0, 1] (C = 1 or 3), or clips [N, T, C, H, W], each shown as a filmstrip
    (its frames left to right); classes: int64 [N].
    """
    from matplotlib.figure import Figure

    if pixels.ndim == 5:
        pixels = filmstrips(pixels)

    num_classes = int(classes.max()) + 1 if classes.numel() else 0
    rows = [torch.nonzero(classes == c).flatten()[:max_per_class] for c in range(num_classes)]
    cols = max((len(r) for r in rows), default=1)
    if cols == 1 and num_classes > 1:
        return _save_one_per_class(pixels, [int(r[0]) for r in rows], path, class_names, title)
    h, w = pixels.shape[-2:]
    scale = 0.9 * max(1.0, 28 / max(h, w))
    title_in = 0.35 if title else 0.0  # room for the title, so it never covers the first row
    height = 0.2 + title_in + num_classes * scale * h / 28
    fig = Figure(figsize=(1.5 + cols * scale * w / 28, height))
    axes = fig.subplots(num_classes, cols, squeeze=False)
    for c, idx in enumerate(rows):
        for j in range(cols):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(idx):
                img = pixels[idx[j]].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
            if j == 0:
                name = class_names[c] if class_names and c < len(class_names) else str(c)
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - title_in / height))
    return write_figure(path, fig, dpi=100)


def filmstrips(clips: torch.Tensor, gap: int = 1) -> torch.Tensor:
    """Clips [N, T, C, H, W] -> images [N, C, H, T (W + gap) - gap]: the frames side by side, ``gap``
    white columns between them."""
    n, t, c, h, w = clips.shape
    strip = torch.ones(n, c, h, t * (w + gap) - gap, dtype=clips.dtype, device=clips.device)
    for k in range(t):
        strip[..., k * (w + gap):k * (w + gap) + w] = clips[:, k]
    return strip


def _save_one_per_class(pixels: torch.Tensor, first: list[int], path, class_names, title: str) -> Path:
    from matplotlib.figure import Figure

    n, h, w = len(first), *pixels.shape[-2:]
    cols = min(n, 5)
    rows = -(-n // cols)
    side = min(2.4, 0.9 * max(1.0, max(h, w) / 28))  # inches per image: a tiled canvas stays on a page
    height = 0.2 + (0.35 if title else 0.0) + rows * (side * h / max(h, w) + 0.3)
    fig = Figure(figsize=(0.4 + cols * side * w / max(h, w), height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(ax for row in axes for ax in row):
        ax.set_axis_off()
        if k < n:
            img = pixels[first[k]].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(class_names[k] if class_names and k < len(class_names) else str(k), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return write_figure(path, fig, dpi=100)


def save_set_grid(s, out: str | os.PathLike) -> Path:
    """The grid of set ``s`` beside its file ``out`` (``x.h5`` -> ``x.png``), titled with its
    method, dataset and IPC: what `condense synth` and every pipeline synthesis step write."""
    from .data import dataset_info

    if s.label_spec.kind == "representation":  # no classes: the first 100 images, ten to a row
        n = min(100, int(s.images.shape[0]))
        return save_grid(s.to_pixels()[:n], torch.arange(n) // 10, Path(out).with_suffix(".png"),
                         class_names=[f"{10 * r}-{10 * r + 9}" for r in range(10)],
                         title=f"{s.method}, {s.dataset}, {s.ipc_label}" + (f" (first {n})" if n < s.images.shape[0] else ""))
    return save_grid(s.to_pixels(), s.classes, Path(out).with_suffix(".png"),
                     class_names=dataset_info(s.dataset).class_names, title=f"{s.method}, {s.dataset}, {s.ipc_label}")


def save_label_curve(rows: Sequence[dict], path: str | os.PathLike, *, random: dict | None = None,
                     title: str = "Label bytes vs accuracy") -> Path:
    """Save a PNG of accuracy against label bytes (log x axis): one point per row (``variant``,
    ``label_bytes``, ``mean``, ``ci95`` or None) with its 95 % interval, and random real (``mean``,
    ``ci95``) as a horizontal band. What `condense labels --curve` draws."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    if random is not None:
        ax.axhline(random["mean"], color="gray", linestyle="--", linewidth=1, label="random real")
        if random.get("ci95") is not None:
            ax.axhspan(random["mean"] - random["ci95"], random["mean"] + random["ci95"], color="gray", alpha=0.15)
    for r in rows:
        ax.errorbar(r["label_bytes"], r["mean"], yerr=r.get("ci95") or 0, fmt="o", capsize=3)
        ax.annotate(r["variant"], (r["label_bytes"], r["mean"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    if random is not None:
        ax.legend(loc="best", fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel("label bytes (stored labels + label generator)")
    ax.set_ylabel("test accuracy % (mean, 95 % CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return write_figure(path, fig, dpi=120)
