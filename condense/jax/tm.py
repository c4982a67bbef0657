"""`tm` in JAX: trajectory matching (:mod:`condense.methods.tm`, math in
:mod:`condense.methods.tm_math`) with the student's inner loop a jit-compiled ``lax.scan``.

Per iteration the student starts at an expert's θ_s, takes N SGD steps with α = exp(ρ) on
synthetic batches (each with its DSA draw), and the loss is
Σ_k w_k ‖θ_{m_k} − θ*_k‖² / ‖θ_s − θ*_k‖² over the targets (MTT's single θ_{s+M} at step N,
plus AST's intermediate ones). ``jax.value_and_grad`` of that unrolled computation gives the
exact gradients with respect to the images, ρ and (DATM) the labels. ``--memory constant`` gives
the same numbers with one step's activations alive at a time (memory independent of N apart
from the N + 1 parameter vectors), in one of two ways chosen by :func:`constant_strategy`:

- ``"remat"`` (GPUs): the rolled scan with each step wrapped in ``jax.checkpoint``, so the
  backward pass recomputes a step's activations from its stored carry. One XLA program.
- ``"adjoint"`` (CPUs): the torch method's adjoint walk (:func:`condense.methods.tm_math.
  match_constant_memory`) with one jit-compiled program per step kind, forward and backward.
  XLA:CPU runs convolutions inside a rolled loop far slower, and in the unrolled loop it
  schedules all N steps' activations at once whatever the remat marks (measured: 6.6 GiB at
  40 steps), so on a CPU the loop over steps stays in Python; compile time is then also
  independent of N.

Everything else is the torch method's, reused as is by subclassing
:class:`~condense.methods.tm.TrajectoryMatching` and replacing only its ``match``: the store and
its checks, the initial images and labels (TESLA/DATM), the iteration itself (expert, start epoch,
MTT's batch order, DSA draws, all keyed by (seed, it); the start perturbation and intermediate
targets (AST), the balanced loss scale), FTD's EMA, the lr range check, and the set it writes. The torch-recorded
trajectory rows reach JAX through the flat-layout converter (:mod:`condense.jax.nets`). Images,
ρ and labels stay torch tensors for the shared loop (checkpoint/resume, NaN guard) and move by
optax SGD (momentum 0.5 for images and ρ with η_ρ = lr_lr / lr_init², 0.9 for labels).

Batches of unequal size (``--batch-syn`` not dividing the set) are padded to one size with a
zero-weight mask, so every step has the same shape inside the scan; the networks are
batch-independent, so padding changes nothing.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import torch

from ..augment import DSADraw, cat_draws, select_draw
from ..runtime.errors import ConfigError
from ..methods.tm import TMConfig, TrajectoryMatching, open_store_for
from ..methods.tm_math import Step, Target
from ..synset import SynSet
from .augment import Draw, apply_dsa, from_torch, stack
from .bridge import image_shape, mark_jax, to_jax, to_torch
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


def constant_strategy() -> str:
    """How ``--memory constant`` keeps one step's activations: "adjoint" on a CPU, "remat" elsewhere."""
    return "adjoint" if jax.default_backend() == "cpu" else "remat"


def step_grad(net: JaxNet, soft: bool, theta: Tree, images: jax.Array, labels: jax.Array, scale: jax.Array,
              plan: tuple, t: jax.Array) -> Tree:
    """g_t = ∇_θ L_t(θ) of step ``t`` of ``plan`` = (idx [N, b], mask [N, b], draws stacked over N or None)."""
    idx, mask, draw = jax.tree.map(lambda a: a[t], plan)
    return jax.grad(inner_loss, argnums=2)(net, soft, theta, images, labels, idx, mask, draw, scale)


@lru_cache(maxsize=None)
def compiled_adjoint_steps(net: JaxNet, soft: bool, learned: bool):
    """(forward, backward): one student step, and one step of the adjoint walk, each jit-compiled once
    for every step index (``t`` is traced), so compile time does not grow with N."""
    def forward(theta, lr, images, labels, scale, plan, t):
        g = step_grad(net, soft, theta, images, labels, scale, plan, t)
        return jax.tree.map(lambda p, d: p - lr * d, theta, g)

    def backward(theta, v, acc, lr, images, labels, scale, plan, t):
        # v = ∂ℓ/∂θ_{t+1}; acc = (∂ℓ/∂X, ∂ℓ/∂α[, ∂ℓ/∂Y]) so far. Returns v_t and acc with step t's terms.
        wrt = (theta, images, labels) if learned else (theta, images)
        g, pull = jax.vjp(lambda th, x, *y: step_grad(net, soft, th, x, y[0] if learned else labels, scale, plan, t),
                          *wrt)
        vjps = pull(v)
        acc = (acc[0] - lr * vjps[1], acc[1] - sum((a * b).sum() for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(g))),
               *((acc[2] - lr * vjps[2],) if learned else ()))
        return jax.tree.map(lambda a, b: a - lr * b, v, vjps[0]), acc

    return jax.jit(forward), jax.jit(backward)


def match_constant_memory(net: JaxNet, soft: bool, learned: bool, spec: tuple[tuple[int, float], ...],
                          images: jax.Array, log_lr: jax.Array, labels: jax.Array, start: jax.Array,
                          targets: Sequence[jax.Array], idx: jax.Array, mask: jax.Array, draws: Draw | None,
                          scale: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """What ``jax.value_and_grad(match_loss)`` returns (loss, (∂/∂images, ∂/∂ρ[, ∂/∂labels])), by the
    adjoint walk of :func:`condense.methods.tm_math.match_constant_memory`: the N steps run forward
    keeping only θ_0..θ_N, then v_t = ∂ℓ/∂θ_t walks back, recomputing one step at a time."""
    forward, backward = compiled_adjoint_steps(net, soft, learned)
    lr, plan = jnp.exp(log_lr), (idx, mask, draws)
    thetas = [net.params(start)]
    for t in range(max(m for m, _ in spec)):
        thetas.append(forward(thetas[-1], lr, images, labels, scale, plan, jnp.int32(t)))
    goals = [(m, w, net.params(target), ((start - target) ** 2).sum()) for (m, w), target in zip(spec, targets)]
    loss = sum(w * sq_dist(thetas[m], goal) / d for m, w, goal, d in goals)
    v = jax.tree.map(jnp.zeros_like, thetas[0])
    acc = (jnp.zeros_like(images), jnp.zeros((), start.dtype), *((jnp.zeros_like(labels),) if learned else ()))
    for t in reversed(range(len(thetas) - 1)):
        for m, w, goal, d in goals:  # ∂ℓ/∂θ_{t+1} gains the direct term of every target matched there
            if m == t + 1:
                v = jax.tree.map(lambda a, th, g: a + w * 2.0 * (th - g) / d, v, thetas[t + 1], goal)
        v, acc = backward(thetas[t], v, acc, lr, images, labels, scale, plan, jnp.int32(t))
    return loss, (acc[0], acc[1] * lr, *acc[2:])  # dℓ/dρ = dℓ/dα · α


def padded_plan(steps: Sequence[Step], dtype=None) -> tuple[jax.Array, jax.Array, Draw | None]:
    """The steps as arrays: idx [N, b] (int32, padded with 0), mask [N, b] (1 real, 0 padding),
    and the draws stacked over N (None without DSA)."""
    b = max(len(s.indices) for s in steps)
    idx = torch.zeros(len(steps), b, dtype=torch.int32)
    mask = torch.zeros(len(steps), b, dtype=torch.float64)
    for t, s in enumerate(steps):
        idx[t, :len(s.indices)] = s.indices
        mask[t, :len(s.indices)] = 1
    draws = None
    if steps[0].draw is not None:
        jd = [from_torch(pad_draw(s.draw, b), dtype) for s in steps]
        shared = all(d.shared_group for d in jd)  # one static fact for the stack (a 1-image step is always shared)
        draws = stack([d.replace(shared_group=shared) for d in jd])
    return to_jax(idx), to_jax(mask, dtype or jnp.result_type(float)), draws


def pad_draw(draw: DSADraw, b: int) -> DSADraw:
    """A per-image draw padded to ``b`` images with copies of its first (the padding rows are masked)."""
    if not draw.per_image or draw.n == b:
        return draw
    pad = select_draw(draw, torch.zeros(b - draw.n, dtype=torch.int64))
    return cat_draws([draw, pad], [draw.n, b - draw.n])


@lru_cache(maxsize=None)
def compiled_match(net: JaxNet, soft: bool, remat: bool, learned: bool):
    """``jit(value_and_grad(match_loss))`` with respect to images, ρ (and labels when learned), with
    the targets' spec static; cached, so every method instance of one setting shares its compilations."""
    objective = partial(match_loss, net, soft, remat)
    return jax.jit(jax.value_and_grad(objective, argnums=(1, 2, 3) if learned else (1, 2)), static_argnums=0)


def matcher(net: JaxNet, soft: bool, memory: str, learned: bool):
    """f(spec, images, ρ, labels, start, targets, idx, mask, draws, scale) -> (loss, grads) for a memory mode."""
    if memory == "constant" and constant_strategy() == "adjoint":
        return partial(match_constant_memory, net, soft, learned)
    return compiled_match(net, soft, memory == "constant", learned)


# --- the method -----------------------------------------------------------------------------------

class JaxTrajectoryMatching(TrajectoryMatching):
    """The tm method with its matching loss and gradients computed in JAX (see the module docstring)."""

    def __init__(self, cfg: TMConfig, store, ds):
        unsupported = [flag for flag, on in (("--lr-param direct", cfg.lr_param == "direct"),
                                             ("--student-momentum", bool(cfg.student_momentum)),
                                             ("--texture", cfg.texture))
                       if on]
        if unsupported:
            raise ConfigError(f"{unsupported[0]} is not in the JAX backend of tm; use --backend torch")
        super().__init__(cfg, store, ds, torch.device("cpu"))  # the torch side plans and holds state
        c, h, w = image_shape(ds)
        self.twin = build_jax_net(self.arch, c, ds.info.num_classes, (h, w))
        self.twin.layout.check_compatible(store.layout)
        learned = cfg.labels == "learned"
        self.opts = {"images": sgd([self.images], cfg.lr_img, momentum=0.5),
                     "log_lr": sgd([self.lr_param], cfg.lr_lr / self.lr_init ** 2, momentum=0.5)}
        if learned:
            self.opts["labels"] = sgd([self.labels], cfg.lr_labels, momentum=0.9)
        self._value_and_grad = matcher(self.twin, cfg.labels != "hard", cfg.memory, learned)

    def match(self, start: torch.Tensor, targets: list[Target], steps: list[Step],
              scale: float) -> tuple[float, dict[str, torch.Tensor]]:
        """The torch method's ``match`` in JAX: ℓ and ∂ℓ (images, ρ, DATM's labels) by name."""
        spec = tuple((k.step, float(k.weight)) for k in targets)
        idx, mask, draws = padded_plan(steps)
        dtype = self.images.dtype  # trajectory rows (also of float16 stores) in the images' precision
        loss, grads = self._value_and_grad(
            spec, to_jax(self.images), to_jax(self.lr_param), to_jax(self.labels), to_jax(start.to(dtype)),
            [to_jax(k.params.to(dtype)) for k in targets], idx, mask, draws, jnp.asarray(scale))
        learn = self.learnables()  # images, log_lr[, labels]: the argnums order
        return float(loss), {name: to_torch(g, like=tensor) for (name, tensor), g in zip(learn.items(), grads)}

    def synset(self, it: int) -> SynSet:
        return mark_jax(super().synset(it))


def run_tm(cfg: TMConfig, device=None, *, progress=print, bars: bool = True, evaluate=None) -> SynSet:
    """Synthesize (or resume) ``cfg.out`` by trajectory matching in JAX (JAX's default device)."""
    from ..methods.loop import synthesize

    store, ds = open_store_for(cfg)
    method = JaxTrajectoryMatching(cfg, store, ds)
    return synthesize(method, cfg, cfg.out, {"method": "tm", "backend": "jax", **cfg.identity()},
                      progress=progress, bars=bars, evaluate=evaluate)
