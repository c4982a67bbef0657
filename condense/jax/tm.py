"""`tm` in JAX: trajectory matching (:mod:`condense.methods.tm`, math in
:mod:`condense.methods.tm_math`) with the student's inner loop a jit-compiled ``lax.scan``.

Per iteration the student starts at an expert's θ_s, takes N SGD steps with α = exp(ρ) on
synthetic batches (each with its DSA draw), and the loss is
Σ_k w_k ‖θ_{m_k} − θ*_k‖² / ‖θ_s − θ*_k‖² over the targets (MTT's single θ_{s+M} at step N,
plus AST's intermediate ones). ``jax.value_and_grad`` of that unrolled computation gives the
exact gradients with respect to the images, ρ and (DATM) the labels. ``--memory constant``
wraps each step in ``jax.checkpoint``: the backward pass recomputes one step's activations
instead of storing all N (the same numbers; memory independent of N apart from the N + 1
parameter carries), the JAX counterpart of the torch adjoint path.

Everything else is the torch method's, reused as is by subclassing
:class:`~condense.methods.tm.TrajectoryMatching`: the store and its checks, the initial images
and labels (TESLA/DATM), the plan of iteration ``it`` (expert, start epoch, MTT's batch order,
DSA draws, all keyed by (seed, it)), the start perturbation and intermediate targets (AST), the
balanced loss scale, FTD's EMA, the lr range check, and the set it writes. The torch-recorded
trajectory rows reach JAX through the flat-layout converter (:mod:`condense.jax.nets`). Images,
ρ and labels stay torch tensors for the shared loop (checkpoint/resume, NaN guard) and move by
optax SGD (momentum 0.5 for images and ρ with η_ρ = lr_lr / lr_init², 0.9 for labels).

Batches of unequal size (``--batch-syn`` not dividing the set) are padded to one size with a
zero-weight mask, so every step has the same shape inside the scan; the networks are
batch-independent, so padding changes nothing.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache, partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import torch

from ..methods.tm import TMConfig, TrajectoryMatching, open_store_for
from ..methods.tm_math import Step
from ..synset import SynSet
from .augment import Draw, apply_dsa, from_torch, stack
from .bridge import mark_jax, to_jax, to_torch
from .nets import JaxNet, build_jax_net
from .optim import sgd

Tree = Any


# --- the math, as pure functions ------------------------------------------------------------------

def inner_loss(net: JaxNet, soft: bool, params: Tree, images: jax.Array, labels: jax.Array, idx: jax.Array,
               mask: jax.Array, draw: Draw | None, scale: jax.Array) -> jax.Array:
    """The student's loss on one batch: images[idx] [b, C, H, W] augmented by ``draw``, mean over
    the rows where ``mask`` [b] is 1 of cross-entropy with hard labels [N] or DATM's soft
    cross-entropy −Σ softmax(labels[idx]) · log_softmax(logits) with label logits [N, K]; × scale."""
    logp = jax.nn.log_softmax(net.apply(params, apply_dsa(images[idx], draw)), axis=-1)
    if soft:
        per_image = -(jax.nn.softmax(labels[idx], axis=-1) * logp).sum(-1)
    else:
        per_image = -jnp.take_along_axis(logp, labels[idx][:, None], axis=-1)[:, 0]
    return scale * (per_image * mask).sum() / mask.sum()


def student_steps(net: JaxNet, soft: bool, remat: bool, params: Tree, lr: jax.Array, images: jax.Array,
                  labels: jax.Array, scale: jax.Array, steps: tuple) -> Tree:
    """θ after the SGD steps ``steps`` = (idx [T, b], mask [T, b], draws stacked over T or None)."""
    def step(theta, xs):
        idx, mask, draw = xs
        g = jax.grad(inner_loss, argnums=2)(net, soft, theta, images, labels, idx, mask, draw, scale)
        return jax.tree.map(lambda p, d: p - lr * d, theta, g), None

    if remat:  # recompute each step's activations in the backward pass instead of storing them
        step = jax.checkpoint(step)
    return jax.lax.scan(step, params, steps, unroll=scan_unroll())[0]


def scan_unroll() -> bool | int:
    """How much of the inner scan to unroll: all of it on a CPU, none elsewhere.

    On XLA:CPU the convolutions inside a rolled loop run ~18x slower than the same steps
    unrolled (measured here: 10 student steps of ConvNet W32 on 100 Fashion-MNIST images,
    17.7 s rolled vs 0.95 s unrolled; with the outer gradient 55 s vs 5.6 s, torch 5 s), so
    a CPU pays compile time growing with the number of steps instead. GPUs keep the loop.
    """
    return True if jax.default_backend() == "cpu" else 1


def sq_dist(a: Tree, b: Tree) -> jax.Array:
    """‖a − b‖² over all leaves (the flax tree is a permutation of the flat vector: same norm)."""
    return sum(((x - y) ** 2).sum() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def match_loss(net: JaxNet, soft: bool, remat: bool, spec: tuple[tuple[int, float], ...], images: jax.Array,
               log_lr: jax.Array, labels: jax.Array, start: jax.Array, targets: Sequence[jax.Array],
               idx: jax.Array, mask: jax.Array, draws: Draw | None, scale: jax.Array) -> jax.Array:
    """Σ_k w_k ‖θ_{m_k} − T_k‖² / ‖θ_0 − T_k‖², as :func:`condense.methods.tm_math.match_exact`.

    start [P] and targets[k] [P] are flat vectors in the torch layout; ``spec`` lists (m_k, w_k)
    per target (static); idx/mask [N, b] and ``draws`` (stacked, or None) the N steps.
    """
    theta = net.params(start)
    lr = jnp.exp(log_lr)
    loss, done = jnp.zeros((), start.dtype), 0
    for boundary in sorted({m for m, _ in spec}):  # scan from one matched step to the next
        if boundary > done:
            window = jax.tree.map(lambda a: a[done:boundary], (idx, mask, draws))
            theta = student_steps(net, soft, remat, theta, lr, images, labels, scale, window)
            done = boundary
        for (m, w), target in zip(spec, targets):
            if m == boundary:
                loss = loss + w * sq_dist(theta, net.params(target)) / ((start - target) ** 2).sum()
    return loss


def padded_plan(steps: Sequence[Step], dtype=None) -> tuple[jax.Array, jax.Array, Draw | None]:
    """The steps as arrays: idx [N, b] (int32, padded with 0), mask [N, b] (1 real, 0 padding),
    and the draws stacked over N (None without DSA)."""
    b = max(len(s.indices) for s in steps)
    idx = torch.zeros(len(steps), b, dtype=torch.int32)
    mask = torch.zeros(len(steps), b, dtype=torch.float64)
    for t, s in enumerate(steps):
        idx[t, :len(s.indices)] = s.indices
        mask[t, :len(s.indices)] = 1
    draws = None if steps[0].draw is None else stack([from_torch(s.draw, dtype) for s in steps])
    return to_jax(idx), to_jax(mask, dtype or jnp.result_type(float)), draws


@lru_cache(maxsize=None)
def compiled_match(net: JaxNet, soft: bool, remat: bool, learned: bool):
    """``jit(value_and_grad(match_loss))`` with respect to images, ρ (and labels when learned), with
    the targets' spec static; cached, so every method instance of one setting shares its compilations."""
    objective = partial(match_loss, net, soft, remat)
    return jax.jit(jax.value_and_grad(objective, argnums=(1, 2, 3) if learned else (1, 2)), static_argnums=0)


# --- the method -----------------------------------------------------------------------------------

class JaxTrajectoryMatching(TrajectoryMatching):
    """The tm method with its matching loss and gradients computed in JAX (see the module docstring)."""

    def __init__(self, cfg: TMConfig, store, ds):
        super().__init__(cfg, store, ds, torch.device("cpu"))  # the torch side plans and holds state
        c, h, w = ds.info.shape
        self.twin = build_jax_net(self.arch, c, ds.info.num_classes, (h, w))
        self.twin.layout.check_compatible(store.layout)
        learned = cfg.labels == "learned"
        self.opts = {"images": sgd([self.images], cfg.lr_img, momentum=0.5),
                     "log_lr": sgd([self.log_lr], cfg.lr_lr / self.lr_init ** 2, momentum=0.5)}
        if learned:
            self.opts["labels"] = sgd([self.labels], cfg.lr_labels, momentum=0.9)
        self._value_and_grad = compiled_match(self.twin, cfg.labels != "hard", cfg.memory == "constant", learned)

    def compute_grads(self, it: int) -> dict[str, float]:
        expert, s, steps = self.plan(it)
        start, targets = self.start_and_targets(it, expert, s)
        spec = tuple((k.step, float(k.weight)) for k in targets)
        idx, mask, draws = padded_plan(steps)
        dtype = self.images.dtype  # trajectory rows (also of float16 stores) in the images' precision
        loss, grads = self._value_and_grad(
            spec, to_jax(self.images), to_jax(self.log_lr), to_jax(self.labels), to_jax(start.to(dtype)),
            [to_jax(k.params.to(dtype)) for k in targets], idx, mask, draws, jnp.asarray(self.loss_scale(s)))
        for tensor, g in zip(self.learnables().values(), grads):  # images, log_lr[, labels]: argnums order
            tensor.grad = to_torch(g, like=tensor)
        return {"loss": float(loss), "lr": float(self.log_lr.detach().exp()), "expert": expert, "start_epoch": s,
                "inner_images": sum(len(step.indices) for step in steps)}

    def synset(self, it: int) -> SynSet:
        return mark_jax(super().synset(it))


def run_tm(cfg: TMConfig, device=None, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) ``cfg.out`` by trajectory matching in JAX (JAX's default device)."""
    from ..methods.loop import synthesize

    store, ds = open_store_for(cfg)
    method = JaxTrajectoryMatching(cfg, store, ds)
    return synthesize(method, cfg.loop(), cfg.out, {"method": "tm", "backend": "jax", **asdict(cfg)},
                      progress=progress, bars=bars, evaluate=evaluate)
