"""A model pool for kernel methods (FRePo, KRR-ST): networks trained online on the synthetic set,
each re-initialised after a number of steps, so the features the kernel is built on come from
networks of every age.

``size`` networks are kept as flat parameter vectors [P, D] (the canonical torch layout), with
their optimiser states (stacked over P) and online step counts; the i-th starts at step
``(max_steps // size) · i`` so their ages are spread. Iteration ``it`` uses the member
:meth:`ModelPool.pick` draws; after the synthetic set's step, :meth:`ModelPool.advance` trains that
member one step on the updated set (a random ``online_batch`` of it when larger) or, once it has
taken more than ``max_steps`` steps, re-initialises it. A member whose step leaves it non-finite is
re-initialised too. Every draw comes from (seed, it, stream); new networks come from ``fresh(*keys)``
(the evaluation networks' torch initialiser), so a resumed run continues the same pool.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import torch

from ..methods.loop import ImageSynthesizer
from ..nets import FlatLayout, build_net
from ..runtime.rng import generator
from .bridge import image_shape, to_jax, to_torch
from .nets import JaxNet

STREAM_PICK, STREAM_ONLINE, STREAM_RESET, STREAM_POOL = 31, 33, 34, 35

Tree = Any
PoolLoss = Callable[[JaxNet, jax.Array, jax.Array, jax.Array], jax.Array]


def pool_step(loss: PoolLoss, net: JaxNet, tx: optax.GradientTransformation, flat: jax.Array, state: Tree,
              images: jax.Array, targets: jax.Array) -> tuple[jax.Array, Tree, jax.Array]:
    """One online step of a pool network on (images, targets), which carry no gradient here:
    (new flat [D], new optimiser state, loss before the step). The optimisers used here are
    elementwise, so stepping the flat vector equals stepping the flax tree."""
    value, grad = jax.value_and_grad(loss, argnums=1)(net, flat, jax.lax.stop_gradient(images),
                                                      jax.lax.stop_gradient(targets))
    updates, state = tx.update(grad, state, flat)
    return optax.apply_updates(flat, updates), state, value


class ModelPool:
    """The pool (module docstring). ``step`` is a jitted :func:`pool_step` bound to its loss, net
    and ``tx``; ``fresh(*keys)`` returns a new network's flat parameters [D]."""

    def __init__(self, size: int, max_steps: int, online_batch: int, seed: int, tx: optax.GradientTransformation,
                 step: Callable[..., tuple[jax.Array, Tree, jax.Array]], fresh: Callable[..., jax.Array]):
        self.size, self.max_steps, self.online_batch, self.seed = size, max_steps, online_batch, seed
        self.tx, self.step, self.fresh = tx, step, fresh
        flats = jnp.stack([fresh(seed, i, STREAM_POOL) for i in range(size)])
        self.params, self.opt = flats, jax.vmap(tx.init)(flats)
        self.steps = jnp.asarray([(max_steps // size) * i for i in range(size)])

    def pick(self, it: int) -> int:
        """The member of iteration ``it``."""
        return int(torch.randint(self.size, (1,), generator=generator(self.seed, it, STREAM_PICK)))

    def advance(self, it: int, images: jax.Array, targets: jax.Array) -> None:
        """Train iteration ``it``'s member one step on the set (images [n, ...], targets [n, ...]),
        or re-initialise it when it has taken more than ``max_steps`` steps."""
        i = self.pick(it)
        if int(self.steps[i]) > self.max_steps:
            self.reset(i, it)
            return
        n = images.shape[0]
        if n > self.online_batch:
            idx = to_jax(torch.randperm(n, generator=generator(self.seed, it, STREAM_ONLINE))[:self.online_batch],
                         jnp.int32)
            images, targets = images[idx], targets[idx]
        member = jax.tree.map(lambda a: a[i], self.opt)
        flat, opt, _ = self.step(self.params[i], member, images, targets)
        if not bool(jnp.isfinite(flat).all()):  # a diverged pool network would poison later iterations
            self.reset(i, it)
            return
        self.put(i, flat, opt, self.steps[i] + 1)

    def reset(self, i: int, it: int) -> None:
        flat = self.fresh(self.seed, it, STREAM_RESET)
        self.put(i, flat, self.tx.init(flat), 0)

    def put(self, i: int, flat: jax.Array, opt: Tree, steps) -> None:
        """Member ``i`` becomes (flat parameters [D], optimiser state, online step count)."""
        self.params = self.params.at[i].set(flat)
        self.opt = jax.tree.map(lambda a, b: a.at[i].set(b), self.opt, opt)
        self.steps = self.steps.at[i].set(steps)

    def state(self) -> dict[str, torch.Tensor]:
        """The pool as tensors: parameters [P, D], online steps [P], the optimiser's leaves (stacked over P)."""
        leaves = jax.tree.leaves(self.opt)
        return {"pool_params": to_torch(self.params), "pool_steps": to_torch(self.steps),
                **{f"pool_opt_{j}": to_torch(leaf) for j, leaf in enumerate(leaves)}}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        treedef = jax.tree.structure(self.opt)
        self.opt = jax.tree.unflatten(treedef, [to_jax(state[f"pool_opt_{j}"]) for j in range(treedef.num_leaves)])
        self.params, self.steps = to_jax(state["pool_params"]), to_jax(state["pool_steps"])


class PooledSynthesizer(ImageSynthesizer):
    """A synthesis method with a :class:`ModelPool` (``self.pool``) of ``self.arch`` networks with
    ``self.outputs`` outputs (flax twin ``self.twin``) on images of ``self.ds``: the pool is its
    checkpoint's extra state, so a resumed run continues the same pool."""

    pool: ModelPool
    outputs: int

    def fresh_network(self, *keys: int) -> jax.Array:
        """A flat parameter vector [P] initialised by torch's initialiser (the evaluation networks')
        from generator(*keys), in the canonical layout the flax twin reads."""
        c, h, w = image_shape(self.ds)
        net = build_net(self.arch, c, self.outputs, (h, w), generator=generator(*keys))
        layout = FlatLayout.of(net)
        self.twin.layout.check_compatible(layout)
        return to_jax(layout.flatten(net), jnp.float32)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.pool.state()

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pool.load_state(state)


def compiled_step(loss: PoolLoss, net: JaxNet, tx: optax.GradientTransformation):
    """jit(pool_step) bound to ``loss``, ``net`` and ``tx``."""
    return jax.jit(partial(pool_step, loss, net, tx))
