"""Differentiable siamese augmentation (DSA).

DSA (Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation",
ICML 2021) augments the real and the synthetic batch with the *same* random
transform, and every transform is differentiable w.r.t. the pixels, so gradients
reach the synthetic images through the augmentation. The math and parameter ranges
follow the reference code (VICO-UoE/DatasetCondensation and
GeorgeCazenavette/mtt-distillation, ``utils.py``: ``ParamDiffAug``/``DiffAugment``);
this is an independent, vectorised implementation.

Sampling is separated from applying:

* :func:`sample_dsa` draws a :class:`DSADraw` (plain tensors) from an explicit
  ``torch.Generator``; it depends only on sizes, never on pixel values, and never
  touches the global RNG.
* :func:`apply_dsa` applies a draw to a batch. "Siamese" is simply applying one
  draw to several batches (:func:`siamese`). A JAX backend can replay a draw.

Strategy and mode
    The strategy is a ``_``-separated list of transform groups from
    ``color, crop, cutout, flip, scale, rotate`` (``'none'`` or ``''`` = identity;
    the reference has no ``noise`` group in DSA, so neither do we). ``color`` is
    brightness, then saturation, then contrast. Mode ``'S'`` (the reference
    default) applies ONE group chosen uniformly at random per draw; mode ``'M'``
    applies every group in strategy order.

What is shared within a batch (``DSAConfig.share``)
    ``'image'`` (the default): the parameters are drawn per image, and in mode ``'S'`` ONE
    group is chosen per call for the whole batch. This is the reference's ``DiffAugment``
    called without a seed (``batchmode=False``), which is how DC/DSA and MTT augment
    whenever they *train* a network on a set: evaluation, expert recording, MTT's student
    steps, DC's inner network updates.
    ``'batch'``: every parameter, the group included, is drawn ONCE and shared by every
    image; such a draw broadcasts to any batch size. This is the reference's seeded call
    (``batchmode=True``), used where it pairs a real and a synthetic batch (DM, DataDAM,
    DC/DSA's matching: :func:`siamese`), and condense's behaviour for training before
    the semantics were fixed (still selectable by name).
    ``'view'``: nothing is shared: parameters and the group are drawn per image, so a
    draw of B images is distributed like B independent single-image draws. This is the
    semantics of per-view labels (:func:`view_draw`): an image's view must not depend on
    the batch it lands in, so not even the group can be chosen per call.
    A draw with per-image parameters (``'image'``, ``'view'``) only applies to a batch of
    its own size.

Transforms and ranges (defaults of :class:`DSAConfig` = the reference's values)
    flip        mirror along the width with probability ``prob_flip`` (0.5).
    scale       sampling grid scaled by sx (width), sy (height), each uniform in
                [1/ratio_scale, ratio_scale] (1.2); bilinear, zero padding.
    rotate      angle uniform in [-ratio_rotate, ratio_rotate] degrees (15);
                sampling-grid matrix [[cos, -sin], [sin, cos]]; bilinear, zeros.
                Scale and rotate use ``affine_grid``/``grid_sample`` with
                ``align_corners=True`` (as MTT does).
    crop        integer translation (dy, dx), each uniform in {-s..s} with
                s = int(size * ratio_crop_pad + 0.5) (0.125 -> 4 px at 32);
                out[i, j] = x[i + dy, j + dx], zero where that falls outside (the
                reference pads by one zero pixel and clamps, which is the same).
    cutout      zero a box of int(H*r + 0.5) x int(W*r + 0.5) pixels
                (r = ratio_cutout, 0.5) centred at (cy, cx), cy uniform in
                {0 .. H - (box_h % 2)} (likewise cx); the box is clipped at the
                border, so it may cover less than r^2 of the image.
    brightness  x + (u - 0.5) * brightness           (u ~ U[0, 1), brightness 1.0)
    saturation  (x - mean_c) * (u * saturation) + mean_c, mean over channels (2.0)
    contrast    (x - mean) * (u + contrast) + mean, mean over C, H, W per image (0.5)

Random-resized crop (``rrc``, not a DSA group)
    The view SRe2L/FKD/CDA/RDED train and relabel on: a crop covering a fraction
    ``rrc_scale`` (default U(0.08, 1)) of the area with aspect ratio in ``rrc_ratio``
    (log-uniform in [3/4, 4/3]), resized back to H x W (bilinear). ``'rrc+flip'`` applies
    the crop, then the flip, to every image: a ``'+'``-joined strategy applies all its
    groups in order, an ``'_'``-joined one (DSA's) picks one per draw in mode 'S'.

Clips
    A batch of clips [B, T, C, H, W] takes a draw made for its B clips: each clip's frames share
    its parameters, so a crop, flip or rotation moves every frame alike and the motion survives
    (colour's per-image means are taken per frame).

Random numbers are consumed in a fixed order whatever the strategy and mode:
group choice, flip, sx, sy, angle, dy, dx, cy, cx, brightness, saturation,
contrast (each a vector of n = 1 or batch_size values; the group choice is one value
under ``'image'``), then, only for a strategy with ``rrc``, its area, ratio, left, top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F

from condense.runtime.errors import ConfigError

__all__ = [
    "GROUPS",
    "SHARES",
    "DSAConfig",
    "DSADraw",
    "parse_strategy",
    "sample_dsa",
    "apply_dsa",
    "dsa",
    "siamese",
    "cat_draws",
]

GROUPS = ("color", "crop", "cutout", "flip", "scale", "rotate")  # DSA's transform groups
# Random-resized crop (torchvision's RandomResizedCrop as SRe2L/FKD/RDED augment: a crop of
# scale x the area and aspect ratio in [3/4, 4/3], resized back to H x W, bilinear). Not a DSA
# group; "rrc+flip" is the decoupled methods' view.
EXTRA_GROUPS = ("rrc",)
SHARES = ("image", "batch", "view")


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Split ``'color_crop_cutout'`` (one group per draw) or ``'rrc+flip'`` (every group, in
    order) into group names; ``'none'``/``''`` -> ``()``."""
    if not isinstance(strategy, str):
        raise ConfigError(f"DSA strategy must be a string, got {type(strategy).__name__}")
    s = strategy.strip()
    if s.lower() in ("", "none"):
        return ()
    if "_" in s and "+" in s:
        raise ConfigError(f"strategy {strategy!r} mixes '_' (one transform per draw) and '+' (all of them)")
    names = tuple(s.split("+" if "+" in s else "_"))
    unknown = [n for n in names if n not in GROUPS + EXTRA_GROUPS]
    if unknown:
        raise ConfigError(f"unknown DSA transform {unknown[0]!r} in strategy {strategy!r}; "
                          f"choose from {', '.join(GROUPS + EXTRA_GROUPS)} joined by '_' (one per draw) or "
                          "'+' (all, in order), or 'none'")
    if len(set(names)) != len(names):
        raise ConfigError(f"DSA strategy {strategy!r} names a transform twice")
    return names


def check_share(share: str) -> str:
    """``share`` if it names a DSA sharing semantics, else a ConfigError."""
    if share not in SHARES:
        raise ConfigError(f"DSA share must be one of {', '.join(SHARES)} ('image': per-image parameters, one group "
                          f"per call, as the reference trains; 'batch': one draw per batch; 'view': nothing shared), "
                          f"got {share!r}")
    return share


@dataclass(frozen=True)
class DSAConfig:
    """DSA settings; defaults are the reference's ``ParamDiffAug`` values."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    share: str = "image"  # what a batch shares: 'image' (reference), 'batch' (siamese), 'view' (nothing)
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # rrc: area fraction of the crop (torchvision's default)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # rrc: aspect ratio w/h of the crop

    def __post_init__(self):
        parse_strategy(self.strategy)
        check_share(self.share)
        if self.mode not in ("S", "M"):
            raise ConfigError(f"DSA mode must be 'S' (one group per draw) or 'M' (all groups), "
                              f"got {self.mode!r}")
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ConfigError(f"DSA prob_flip must be in [0, 1], got {self.prob_flip}")
        if not self.ratio_scale >= 1.0:
            raise ConfigError(f"DSA ratio_scale must be >= 1, got {self.ratio_scale}")
        for name in ("ratio_rotate", "ratio_crop_pad", "brightness", "saturation", "contrast"):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"DSA {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ratio_cutout <= 1.0:
            raise ConfigError(f"DSA ratio_cutout must be in [0, 1], got {self.ratio_cutout}")
        lo, hi = self.rrc_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"rrc scale must satisfy 0 < min <= max <= 1, got {self.rrc_scale}")
        if not 0.0 < self.rrc_ratio[0] <= self.rrc_ratio[1]:
            raise ConfigError(f"rrc ratio must satisfy 0 < min <= max, got {self.rrc_ratio}")

    @property
    def groups(self) -> tuple[str, ...]:
        return parse_strategy(self.strategy)

    @property
    def all_groups(self) -> bool:
        """Whether every group applies to every image (mode 'M', or a '+'-joined strategy)."""
        return self.mode == "M" or "+" in self.strategy


@dataclass(frozen=True, eq=False)
class DSADraw:
    """One sampled augmentation. Tensor fields have leading size n (1 = per batch).

    ``active[:, g]`` says whether ``groups[g]`` is applied; all other fields hold
    the final transform parameters (not raw uniforms), so they can be replayed as is.
    """

    groups: tuple[str, ...]       # strategy groups, in application order
    image_size: tuple[int, int]   # (H, W) the draw was sampled for
    cutout_size: tuple[int, int]  # (box_h, box_w) in pixels
    per_image: bool
    active: torch.Tensor          # bool [n, len(groups)]
    flip: torch.Tensor            # bool [n]: mirror along the width
    scale: torch.Tensor           # float32 [n, 2]: (sx, sy) grid multipliers for width, height
    rotate: torch.Tensor          # float32 [n]: angle in radians
    crop: torch.Tensor            # int64 [n, 2]: (dy, dx) translation in pixels
    cutout: torch.Tensor          # int64 [n, 2]: (cy, cx) box centre
    brightness: torch.Tensor      # float32 [n]: additive shift
    saturation: torch.Tensor      # float32 [n]: factor around the channel mean
    contrast: torch.Tensor        # float32 [n]: factor around the image mean
    rrc: torch.Tensor | None = None  # float32 [n, 4]: crop (width, height, left, top) as fractions of W, H; rrc only

    @property
    def n(self) -> int:
        return int(self.active.shape[0])

    def to(self, device: str | torch.device) -> "DSADraw":
        return replace(self, **{f.name: getattr(self, f.name).to(device)
                                for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})


def sample_dsa(config: DSAConfig, batch_size: int, image_shape: Sequence[int],
               generator: torch.Generator) -> DSADraw:
    """Draw DSA parameters for a batch of ``batch_size`` images of shape (C, H, W), or clips of
    shape (T, C, H, W) (per-image parameters are then per clip, shared by its frames).

    What the batch shares follows ``config.share`` (module docstring). All randomness
    comes from ``generator``; tensors live on its device.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if len(image_shape) not in (3, 4) or min(int(s) for s in image_shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) or (T, C, H, W) with positive sizes, got {tuple(image_shape)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups = config.groups
    H, W = int(image_shape[-2]), int(image_shape[-1])
    per_image = config.share != "batch"
    n = int(batch_size) if per_image else 1
    dev = generator.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=dev) * (hi - lo) + lo

    def integers(lo: int, hi: int) -> torch.Tensor:  # inclusive bounds
        return torch.randint(lo, hi + 1, (n,), generator=generator, device=dev)

    u = torch.rand(1 if config.share == "image" else n, generator=generator, device=dev)
    if config.all_groups:
        active = torch.ones(n, len(groups), dtype=torch.bool, device=dev)
    else:  # under 'image' one group for the call, broadcast to every image
        choice = (u * len(groups)).long().clamp_(max=max(len(groups) - 1, 0)).expand(n)
        active = choice[:, None] == torch.arange(len(groups), device=dev)[None, :]

    flip = torch.rand(n, generator=generator, device=dev) < config.prob_flip
    r = config.ratio_scale
    scale = torch.stack([uniform(1.0 / r, r), uniform(1.0 / r, r)], dim=1)
    rotate = uniform(-config.ratio_rotate, config.ratio_rotate) * (math.pi / 180.0)
    sh, sw = int(H * config.ratio_crop_pad + 0.5), int(W * config.ratio_crop_pad + 0.5)
    crop = torch.stack([integers(-sh, sh), integers(-sw, sw)], dim=1)
    ch, cw = int(H * config.ratio_cutout + 0.5), int(W * config.ratio_cutout + 0.5)
    cutout = torch.stack([integers(0, H - ch % 2), integers(0, W - cw % 2)], dim=1)
    brightness = (torch.rand(n, generator=generator, device=dev) - 0.5) * config.brightness
    saturation = torch.rand(n, generator=generator, device=dev) * config.saturation
    contrast = torch.rand(n, generator=generator, device=dev) + config.contrast
    # Drawn last and only when asked for, so every DSA strategy's draws stay what they were.
    rrc = _sample_rrc(config, n, generator) if "rrc" in groups else None
    return DSADraw(groups=groups, image_size=(H, W), cutout_size=(ch, cw), per_image=per_image,
                   active=active, flip=flip, scale=scale, rotate=rotate, crop=crop, cutout=cutout,
                   brightness=brightness, saturation=saturation, contrast=contrast, rrc=rrc)


def _sample_rrc(config: DSAConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4] crops (w, h, left, top) as fractions: area ~ U(scale), log aspect ~ U(log ratio),
    sides clipped to the image (torchvision retries up to 10 times, then crops the centre; clipping
    keeps one draw per image and the same distribution whenever the first try fits)."""
    dev = generator.device
    area = torch.rand(n, generator=generator, device=dev) * (config.rrc_scale[1] - config.rrc_scale[0]) + config.rrc_scale[0]
    lo, hi = math.log(config.rrc_ratio[0]), math.log(config.rrc_ratio[1])
    ratio = torch.exp(torch.rand(n, generator=generator, device=dev) * (hi - lo) + lo)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    left = torch.rand(n, generator=generator, device=dev) * (1.0 - w)
    top = torch.rand(n, generator=generator, device=dev) * (1.0 - h)
    return torch.stack([w, h, left, top], dim=1)


def cat_draws(draws: Sequence[DSADraw], sizes: Sequence[int] | None = None) -> DSADraw:
    """Concatenate draws into one per-image draw, in order. Draw i covers ``sizes[i]``
    images (default 1): a per-batch draw is repeated that many times, a per-image draw
    must hold exactly that many (e.g. the K runs' draws of a stacked step)."""
    if not draws:
        raise ValueError("cat_draws needs at least one draw")
    sizes = [1] * len(draws) if sizes is None else [int(s) for s in sizes]
    if len(sizes) != len(draws):
        raise ValueError(f"cat_draws: {len(draws)} draws but {len(sizes)} sizes")
    d0 = draws[0]
    for d, size in zip(draws, sizes):
        if (d.groups, d.image_size, d.cutout_size) != (d0.groups, d0.image_size, d0.cutout_size):
            raise ValueError("cat_draws: draws differ in strategy or image size")
        if d.per_image and d.n != size:
            raise ValueError(f"cat_draws: a per-image draw of {d.n} images cannot cover {size}")
    names = [f.name for f in fields(d0) if isinstance(getattr(d0, f.name), torch.Tensor)]
    tensors = {k: torch.cat([getattr(d, k) if d.per_image else getattr(d, k).repeat_interleave(size, dim=0)
                             for d, size in zip(draws, sizes)]) for k in names}
    return replace(d0, per_image=True, **tensors)


# --- the transforms; p holds parameters on x's device, leading size n in {1, B} ---

def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    grid = F.affine_grid(theta, [theta.shape[0], C, H, W], align_corners=True)
    return F.grid_sample(x, grid.expand(B, H, W, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


def _scale(x, p):
    sx, sy = p.scale[:, 0], p.scale[:, 1]
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta)


def _rotate(x, p):
    c, s = torch.cos(p.rotate), torch.sin(p.rotate)
    zero = torch.zeros_like(c)
    theta = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)
    return _affine(x, theta)


def _flip(x, p):
    return torch.where(_col(p.flip), x.flip(3), x)


def _crop(x, p):
    B, C, H, W = x.shape
    rows = torch.arange(H, device=x.device)[None, :] + p.crop[:, :1]   # [n, H] source rows
    cols = torch.arange(W, device=x.device)[None, :] + p.crop[:, 1:]   # [n, W] source cols
    ok = ((rows >= 0) & (rows < H))[:, None, :, None] & ((cols >= 0) & (cols < W))[:, None, None, :]
    rows = rows.clamp(0, H - 1)[:, None, :, None].expand(B, C, H, W)
    cols = cols.clamp(0, W - 1)[:, None, None, :].expand(B, C, H, W)
    out = x.gather(2, rows).gather(3, cols)
    return out * ok.to(x.dtype)


def _cutout(x, p):
    B, C, H, W = x.shape
    (bh, bw) = p.cutout_size
    top = p.cutout[:, :1] - bh // 2
    left = p.cutout[:, 1:] - bw // 2
    r = torch.arange(H, device=x.device)[None, :]
    c = torch.arange(W, device=x.device)[None, :]
    in_rows = (r >= top) & (r < top + bh)                              # [n, H]
    in_cols = (c >= left) & (c < left + bw)                            # [n, W]
    box = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x * (~box).to(x.dtype)


def _color(x, p):
    x = x + _col(p.brightness)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * _col(p.saturation) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _col(p.contrast) + m


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crops of ``x`` [B, C, H, W] resized to ``size`` (h, w), bilinear; differentiable.

    boxes [n, 4] (n = 1 or B): (width, height, left, top) as fractions of W and H.
    """
    B, C = x.shape[:2]
    h_out, w_out = (int(v) for v in size)
    w, h, left, top = boxes.to(x.dtype).unbind(1)
    zero = torch.zeros_like(w)
    # output pixel u in [-1, 1] samples the source at left + (u + 1) / 2 * w (in [0, 1] units)
    theta = torch.stack([torch.stack([w, zero, 2 * left + w - 1], 1), torch.stack([zero, h, 2 * top + h - 1], 1)], 1)
    grid = F.affine_grid(theta, [theta.shape[0], C, h_out, w_out], align_corners=False)
    return F.grid_sample(x, grid.expand(B, h_out, w_out, 2), mode="bilinear", padding_mode="border",
                         align_corners=False)


def _rrc(x, p):
    return crop_resize(x, p.rrc, x.shape[2:])


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip,
          "scale": _scale, "rotate": _rotate, "rrc": _rrc}


def apply_dsa(x: torch.Tensor, draw: DSADraw) -> torch.Tensor:
    """Apply ``draw`` to ``x`` [B, C, H, W]; differentiable w.r.t. ``x``.

    Clips ``x`` [B, T, C, H, W] are augmented consistently: every frame of clip i gets clip i's
    parameters (the same flip, crop, rotation, colour change ...), so motion is left as it was.
    """
    if x.dim() == 5:
        b, t = x.shape[:2]
        if draw.per_image and draw.n != b:
            raise ValueError(f"per-clip DSA draw holds {draw.n} clips, batch has {b}")
        frames = select_draw(draw, torch.arange(b).repeat_interleave(t)) if draw.per_image else draw
        return apply_dsa(x.reshape(b * t, *x.shape[2:]), frames).view(x.shape)
    if x.dim() != 4:
        raise ValueError(f"apply_dsa expects a [B, C, H, W] batch or [B, T, C, H, W] clips, got shape {tuple(x.shape)}")
    if tuple(x.shape[2:]) != tuple(draw.image_size):
        raise ValueError(f"DSA draw was sampled for images of size {draw.image_size}, "
                         f"got {tuple(x.shape[2:])}")
    if draw.per_image and draw.n != x.shape[0]:
        raise ValueError(f"per-image DSA draw holds {draw.n} images, batch has {x.shape[0]}")
    if not draw.per_image and draw.n != 1:
        raise ValueError(f"per-batch DSA draw must hold one parameter set, holds {draw.n}")
    if not draw.groups:
        return x
    p = draw.to(x.device)
    p = replace(p, **{k: getattr(p, k).to(x.dtype)
                      for k in ("scale", "rotate", "brightness", "saturation", "contrast", "rrc")
                      if getattr(p, k) is not None})
    active = draw.active.cpu()
    for g, name in enumerate(draw.groups):
        on = active[:, g]
        if bool(on.all()):
            x = _APPLY[name](x, p)
        elif bool(on.any()):
            # Only the images this group is drawn for go through it (a per-image draw in
            # mode 'S' applies one group per image: 1/len(groups) of the work).
            idx = on.nonzero().squeeze(1).to(x.device)
            x = x.index_copy(0, idx, _APPLY[name](x.index_select(0, idx), select_draw(p, idx)))
    return x.contiguous()


def dsa(x: torch.Tensor, config: DSAConfig, generator: torch.Generator) -> torch.Tensor:
    """Sample a draw for ``x``'s sizes from ``generator`` and apply it."""
    return apply_dsa(x, sample_dsa(config, x.shape[0], tuple(x.shape[1:]), generator))


def siamese(xs: Sequence[torch.Tensor], config: DSAConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Apply ONE draw to every batch in ``xs`` (e.g. a real and a synthetic batch).

    The batches must share H and W; unless ``config.share`` is ``'batch'`` (what the
    reference's siamese calls use) also the batch size.
    """
    if not xs:
        return []
    draw = sample_dsa(config, xs[0].shape[0], tuple(xs[0].shape[1:]), generator)
    return [apply_dsa(x, draw) for x in xs]


def select_draw(draw: DSADraw, indices: torch.Tensor) -> DSADraw:
    """The per-image draw of images ``indices`` (int64 [B]) of a per-image ``draw``."""
    if not draw.per_image:
        raise ValueError("select_draw needs a per-image draw")
    idx = torch.as_tensor(indices, dtype=torch.int64, device=draw.active.device)
    return replace(draw, **{f.name: getattr(draw, f.name)[idx]
                            for f in fields(draw) if isinstance(getattr(draw, f.name), torch.Tensor)})


def view_draw(config: DSAConfig, view_seed: int, epoch: int, n: int, image_shape: Sequence[int]) -> DSADraw:
    """The views the ``n`` images of a set with per-view labels get in ``epoch``: one
    per-image draw from generator (view_seed, epoch), image i taking row i. A view thus
    depends on (view_seed, epoch, image index) and the set's size only, never on the batch
    an image lands in or the run that trains on it (select rows with :func:`select_draw`).
    """
    from .runtime.rng import generator

    return sample_dsa(replace(config, share="view"), n, image_shape, generator(view_seed, epoch))


def views(images: torch.Tensor, config: DSAConfig, view_seed: int, epoch: int) -> torch.Tensor:
    """The epoch-``epoch`` views of a whole set's ``images`` [N, C, H, W]; see :func:`view_draw`."""
    return apply_dsa(images, view_draw(config, view_seed, epoch, images.shape[0], tuple(images.shape[1:])))
