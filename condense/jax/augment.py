"""Differentiable siamese augmentation (DSA) in JAX: the transforms, ranges and semantics of
:mod:`condense.augment` (read its module docstring; this one only adds what differs).

A :class:`Draw` is a pytree of arrays (leading size n = 1 for a per-batch draw, B for a
per-image one) plus static facts (groups, mode, cutout box, per_image, shared_group), so it can be an
argument of a jitted function and stacked along a leading axis for ``lax.scan``. Draws come
from two places:

- :func:`from_torch` converts a torch :class:`~condense.augment.DSADraw`: replaying the same
  draw in both backends gives the same images up to float rounding (the parity tests), and
  lets the JAX methods use the torch side's (seed, iteration, step) keyed sampling, so a JAX
  run sees the augmentations a torch run with the same seed sees;
- :func:`sample_dsa` draws from a JAX PRNG key, with the same distributions, for use inside
  jit (a different random stream than torch's, same semantics).

:func:`apply_dsa` is differentiable in the pixels. Siamese = one draw applied to several
batches. With mode 'S' and one group for the whole batch (a per-batch draw, or share
``'image'``) ``lax.switch`` runs only that transform; draws with a group per image (share
``'view'``) evaluate every group and select per image.
Scale and rotate are ``affine_grid`` + bilinear ``grid_sample`` with ``align_corners=True`` and
zero padding, written out here.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..augment import DSAConfig, DSADraw


@struct.dataclass
class Draw:
    """One DSA draw; array fields have leading size n (1 = per batch), as :class:`~condense.augment.DSADraw`."""

    active: jax.Array      # bool [n, G]
    flip: jax.Array        # bool [n]
    scale: jax.Array       # float [n, 2]: (sx, sy)
    rotate: jax.Array      # float [n]: radians
    crop: jax.Array        # int [n, 2]: (dy, dx)
    cutout: jax.Array      # int [n, 2]: (cy, cx) box centre
    brightness: jax.Array  # float [n]
    saturation: jax.Array  # float [n]
    contrast: jax.Array    # float [n]
    groups: tuple[str, ...] = struct.field(pytree_node=False)
    mode: str = struct.field(pytree_node=False)           # 'S' one group per draw, 'M' all groups
    cutout_size: tuple[int, int] = struct.field(pytree_node=False)
    per_image: bool = struct.field(pytree_node=False)
    shared_group: bool = struct.field(pytree_node=False)  # one active group row for every image


def from_torch(draw: DSADraw, dtype=None) -> Draw:
    """The JAX twin of a torch draw (same parameters; floats as ``dtype``, default JAX's float)."""
    if draw.rrc is not None:
        from condense.runtime.errors import ConfigError

        raise ConfigError("the JAX backend has no random-resized crop (rrc): use a DSA strategy or --backend torch")
    active = draw.active.cpu().numpy()
    mode = "M" if active.all() else "S"
    shared = bool((active == active[:1]).all())

    def arr(t, float_=True):
        a = t.detach().cpu().numpy()
        return jnp.asarray(a, dtype=dtype or jnp.result_type(float)) if float_ else jnp.asarray(a.astype(np.int32))

    return Draw(active=jnp.asarray(active), flip=jnp.asarray(draw.flip.cpu().numpy()), scale=arr(draw.scale),
                rotate=arr(draw.rotate), crop=arr(draw.crop, False), cutout=arr(draw.cutout, False),
                brightness=arr(draw.brightness), saturation=arr(draw.saturation), contrast=arr(draw.contrast),
                groups=tuple(draw.groups), mode=mode, cutout_size=tuple(draw.cutout_size), per_image=draw.per_image,
                shared_group=shared)


def stack(draws: Sequence[Draw]) -> Draw:
    """Draws with the same static facts stacked along a new leading axis (e.g. one per inner step)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *draws)


def sample_dsa(config: DSAConfig, key: jax.Array, batch_size: int, image_shape: Sequence[int]) -> Draw:
    """Draw DSA parameters from ``key`` with :func:`condense.augment.sample_dsa`'s distributions
    and sharing (``config.share``)."""
    groups = config.groups
    H, W = int(image_shape[1]), int(image_shape[2])
    per_image = config.share != "batch"
    n = int(batch_size) if per_image else 1
    keys = jax.random.split(key, 12)
    fdt = jnp.result_type(float)

    def uniform(k, lo, hi):
        return jax.random.uniform(keys[k], (n,), fdt, lo, hi)

    def integers(k, lo, hi):  # inclusive bounds
        return jax.random.randint(keys[k], (n,), lo, hi + 1, dtype=jnp.int32)

    if config.mode == "M":
        active = jnp.ones((n, len(groups)), bool)
    else:
        u = jax.random.uniform(keys[0], (1 if config.share == "image" else n,), fdt)
        choice = jnp.minimum((u * len(groups)).astype(jnp.int32), max(len(groups) - 1, 0))
        active = jnp.broadcast_to(choice[:, None] == jnp.arange(len(groups))[None, :], (n, len(groups)))
    r = config.ratio_scale
    sh, sw = int(H * config.ratio_crop_pad + 0.5), int(W * config.ratio_crop_pad + 0.5)
    ch, cw = int(H * config.ratio_cutout + 0.5), int(W * config.ratio_cutout + 0.5)
    return Draw(active=active, flip=uniform(1, 0.0, 1.0) < config.prob_flip,
                scale=jnp.stack([uniform(2, 1.0 / r, r), uniform(3, 1.0 / r, r)], axis=1),
                rotate=uniform(4, -config.ratio_rotate, config.ratio_rotate) * (math.pi / 180.0),
                crop=jnp.stack([integers(5, -sh, sh), integers(6, -sw, sw)], axis=1),
                cutout=jnp.stack([integers(7, 0, H - ch % 2), integers(8, 0, W - cw % 2)], axis=1),
                brightness=(uniform(9, 0.0, 1.0) - 0.5) * config.brightness,
                saturation=uniform(10, 0.0, 1.0) * config.saturation,
                contrast=uniform(11, 0.0, 1.0) + config.contrast,
                groups=groups, mode="M" if len(groups) <= 1 else config.mode, cutout_size=(ch, cw),
                per_image=per_image, shared_group=config.share != "view")


# --- the transforms: x [B, C, H, W], p a Draw with leading size n in {1, B} ---------------------------

def _col(v: jax.Array) -> jax.Array:
    return v.reshape(-1, 1, 1, 1)


def _gather(x: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """``out[b, c, i, j] = x[b, c, rows[b, i, j], cols[b, i, j]]``; rows/cols [n, H, W], n in {1, B}."""
    B = x.shape[0]
    rows = jnp.broadcast_to(rows, (B, *rows.shape[1:]))
    cols = jnp.broadcast_to(cols, (B, *cols.shape[1:]))
    return jax.vmap(lambda img, r, c: img[:, r, c])(x, rows, cols)


def _affine(x: jax.Array, theta: jax.Array) -> jax.Array:
    """``grid_sample(x, affine_grid(theta), bilinear, zeros, align_corners=True)``; theta [n, 2, 3]."""
    _, _, H, W = x.shape
    dt = x.dtype
    xs, ys = jnp.linspace(-1.0, 1.0, W, dtype=dt), jnp.linspace(-1.0, 1.0, H, dtype=dt)
    t = theta.astype(dt)[:, :, :, None, None]  # [n, 2, 3, 1, 1]
    gx = t[:, 0, 0] * xs[None, None, :] + t[:, 0, 1] * ys[None, :, None] + t[:, 0, 2]  # [n, H, W]
    gy = t[:, 1, 0] * xs[None, None, :] + t[:, 1, 1] * ys[None, :, None] + t[:, 1, 2]
    ix, iy = (gx + 1) / 2 * (W - 1), (gy + 1) / 2 * (H - 1)
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    out = jnp.zeros_like(x)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - jnp.abs(ix - xi)) * (1 - jnp.abs(iy - yi))  # bilinear weight of this corner
            ok = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
            r = jnp.clip(yi, 0, H - 1).astype(jnp.int32)
            c = jnp.clip(xi, 0, W - 1).astype(jnp.int32)
            out = out + _gather(x, r, c) * jnp.where(ok, w, 0.0)[:, None]
    return out


def _scale(x, p):
    sx, sy = p.scale[:, 0], p.scale[:, 1]
    zero = jnp.zeros_like(sx)
    return _affine(x, jnp.stack([jnp.stack([sx, zero, zero], 1), jnp.stack([zero, sy, zero], 1)], 1))


def _rotate(x, p):
    c, s = jnp.cos(p.rotate), jnp.sin(p.rotate)
    zero = jnp.zeros_like(c)
    return _affine(x, jnp.stack([jnp.stack([c, -s, zero], 1), jnp.stack([s, c, zero], 1)], 1))


def _flip(x, p):
    return jnp.where(_col(p.flip), x[..., ::-1], x)


def _crop(x, p):
    _, _, H, W = x.shape
    rows = jnp.arange(H)[None, :] + p.crop[:, :1]  # [n, H] source rows
    cols = jnp.arange(W)[None, :] + p.crop[:, 1:]  # [n, W] source cols
    ok = ((rows >= 0) & (rows < H))[:, None, :, None] & ((cols >= 0) & (cols < W))[:, None, None, :]
    r = jnp.broadcast_to(jnp.clip(rows, 0, H - 1)[:, :, None], (rows.shape[0], H, W))
    c = jnp.broadcast_to(jnp.clip(cols, 0, W - 1)[:, None, :], (cols.shape[0], H, W))
    return _gather(x, r, c) * ok.astype(x.dtype)


def _cutout(x, p):
    _, _, H, W = x.shape
    bh, bw = p.cutout_size
    top, left = p.cutout[:, :1] - bh // 2, p.cutout[:, 1:] - bw // 2
    r, c = jnp.arange(H)[None, :], jnp.arange(W)[None, :]
    box = ((r >= top) & (r < top + bh))[:, None, :, None] & ((c >= left) & (c < left + bw))[:, None, None, :]
    return x * (~box).astype(x.dtype)


def _color(x, p):
    x = x + _col(p.brightness.astype(x.dtype))
    m = x.mean(axis=1, keepdims=True)
    x = (x - m) * _col(p.saturation.astype(x.dtype)) + m
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - m) * _col(p.contrast.astype(x.dtype)) + m


_APPLY = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate}


def apply_dsa(x: jax.Array, draw: Draw | None) -> jax.Array:
    """Apply ``draw`` to ``x`` ``[B, C, H, W]`` (None: identity); differentiable w.r.t. ``x``."""
    if draw is None or not draw.groups:
        return x
    if draw.mode == "M":
        for name in draw.groups:
            x = _APPLY[name](x, draw)
        return x
    if draw.shared_group:  # one active group for the whole batch: run only that transform
        branches = [lambda v, f=_APPLY[name]: f(v, draw) for name in draw.groups]
        return jax.lax.switch(jnp.argmax(draw.active[0]), branches, x)
    for g, name in enumerate(draw.groups):
        x = jnp.where(_col(draw.active[:, g]), _APPLY[name](x, draw), x)
    return x


def siamese(xs: Sequence[jax.Array], draw: Draw | None) -> list[jax.Array]:
    """One draw applied to every batch in ``xs`` (e.g. a real and a synthetic batch)."""
    return [apply_dsa(x, draw) for x in xs]
