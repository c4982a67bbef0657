"""`dm` in JAX: distribution matching (:mod:`condense.methods.dm`) with a jit-compiled loss.

The algorithm, options and randomness are the torch method's, and so is everything around
the loss: the method subclasses the torch :class:`~condense.methods.dm.MatchingBase`, so
iteration ``it`` uses the same randomly initialised network (drawn by torch from (seed, it)
and converted to the flax twin), the same real batches and the same siamese DSA draws
(replayed by :mod:`condense.jax.augment`); a JAX run and a torch run with one seed differ
only by float rounding. The shared loop (:mod:`condense.methods.loop`) runs it: the images
stay a torch tensor, the gradient comes from JAX, and optax's SGD (momentum 0.5, as the
reference) steps them through :class:`~condense.jax.optim.OptaxOptimizer`.

On a CPU the real batches' embeddings are computed ``real_chunk`` images at a time
(``lax.map``; default 32, as the torch method), elsewhere in one pass.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache, partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import torch

from ..methods.dm import DMConfig, MatchingBase, load_for
from ..nets import FlatLayout
from ..synset import SynSet
from .augment import Draw, apply_dsa, from_torch
from .bridge import image_shape, mark_jax, to_jax, to_torch
from .nets import JaxNet, build_jax_net
from .optim import sgd

Embed = Callable[[jax.Array], jax.Array]


def mean_embedding(embed: Embed, x: jax.Array, chunk: int = 0) -> jax.Array:
    """Mean of ``embed`` over the images ``x`` ``[B, C, H, W]`` -> ``[D]``; with ``chunk`` > 0 at
    most that many images go through at a time (valid for batch-independent networks)."""
    n = x.shape[0]
    if chunk <= 0 or n <= chunk:
        return embed(x).mean(0)
    full = n // chunk * chunk
    total = jax.lax.map(lambda part: embed(part).sum(0), x[:full].reshape(-1, chunk, *x.shape[1:])).sum(0)
    if full < n:
        total = total + embed(x[full:]).sum(0)
    return total / n


def dm_loss(embed: Embed, real_by_class: Sequence[jax.Array], syn_by_class: Sequence[jax.Array],
            chunk: int = 0) -> jax.Array:
    """Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖²; the real side carries no gradient. The
    synthetic images of all classes go through the network in one pass."""
    real = [jax.lax.stop_gradient(mean_embedding(embed, r, chunk)) for r in real_by_class]
    sizes = [s.shape[0] for s in syn_by_class]
    feats = embed(jnp.concatenate(list(syn_by_class)))
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    syn = [feats[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])]
    return sum(((r - s) ** 2).sum() for r, s in zip(real, syn))


def dm_objective(net: JaxNet, ipc: int, chunk: int, flat: jax.Array, images: jax.Array, x_train: jax.Array,
                 real_idx: Sequence[jax.Array], draws: Sequence[Draw | None]) -> jax.Array:
    """The loss of one iteration: network ``flat`` [P] (torch layout), images [K·ipc, C, H, W]
    (class c at rows c·ipc ...), class c's real batch ``x_train[real_idx[c]]`` and its draw."""
    params = net.params(flat)
    embed = partial(net.embed, params)
    reals = [apply_dsa(x_train[i], d) for i, d in zip(real_idx, draws)]
    syns = [apply_dsa(images[c * ipc:(c + 1) * ipc], d) for c, d in enumerate(draws)]
    return dm_loss(embed, reals, syns, chunk)


@lru_cache(maxsize=None)
def compiled_dm(net: JaxNet, ipc: int, chunk: int):
    """``jit(value_and_grad(dm_objective))`` with respect to the images; cached, so every method
    instance of one setting shares its compilations."""
    return jax.jit(jax.value_and_grad(partial(dm_objective, net, ipc, chunk), argnums=1))


class JaxDistributionMatching(MatchingBase):
    """The dm method with its loss and gradient computed in JAX (see the module docstring)."""

    method_name = "dm"

    def __init__(self, cfg: DMConfig, ds):
        super().__init__(cfg, ds, torch.device("cpu"))  # the torch side only samples and holds state
        c, h, w = image_shape(ds)
        self.twin = build_jax_net(self.arch, c, ds.info.num_classes, (h, w))
        self.opts = {"images": sgd([self.images], cfg.lr_img, momentum=0.5)}
        self.x_train_jax = to_jax(ds.x_train)
        chunk = cfg.real_chunk if cfg.real_chunk is not None else (32 if jax.default_backend() == "cpu" else 0)
        self._value_and_grad = compiled_dm(self.twin, cfg.ipc, chunk)

    def compute_grads(self, it: int) -> dict[str, float]:
        net = self.network(it)  # torch init from (seed, it): the torch method's network
        layout = FlatLayout.of(net)
        self.twin.layout.check_compatible(layout)
        k = len(self.members)
        draws = [self.draw(it, c) for c in range(k)]
        loss, grad = self._value_and_grad(
            to_jax(layout.flatten(net)), to_jax(self.images), self.x_train_jax,
            [to_jax(self.real_indices(it, c), jnp.int32) for c in range(k)],
            [None if d is None else from_torch(d) for d in draws])
        self.images.grad = to_torch(grad, like=self.images)
        return {"loss": float(loss)}

    def synset(self, it: int) -> SynSet:
        return mark_jax(super().synset(it))


def run_dm(cfg: DMConfig, device=None, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) ``cfg.out`` by distribution matching in JAX (JAX's default device)."""
    from ..methods.loop import synthesize

    cfg.validate()
    method = JaxDistributionMatching(cfg, load_for(cfg))
    return synthesize(method, cfg, cfg.out,
                      {"method": "dm", "backend": "jax", **asdict(cfg), "arch": method.arch},
                      progress=progress, bars=bars, evaluate=evaluate)
