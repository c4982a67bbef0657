"""An optax transformation behind the interface of a torch optimizer.

The shared synthesis loop (:mod:`condense.methods.loop`) steps, checkpoints
(``state_dict``), and rolls back (``load_state_dict``) the optimisers of a method. This
adapter lets a JAX method use optax for its learnables while the loop stays the one loop:
``step()`` reads the torch tensors and their ``.grad``, applies the optax update in JAX and
writes the result back into the tensors; the optax state travels as a flat list of tensors
(its tree structure is rebuilt from ``tx.init``), which ``torch.load(weights_only=True)`` reads.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import optax
import torch

from .bridge import to_jax, to_torch


class OptaxOptimizer:
    """``optax`` transformation ``tx`` updating the torch tensors ``params`` in place."""

    def __init__(self, params: Sequence[torch.Tensor], tx: optax.GradientTransformation):
        self.params, self.tx = list(params), tx
        self.state = tx.init(self._arrays())
        self._update = jax.jit(self._apply)

    def _arrays(self) -> list[jax.Array]:
        return [to_jax(p) for p in self.params]

    def _apply(self, params, grads, state):
        updates, state = self.tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def step(self) -> None:
        grads = [to_jax(p.grad.to(p.dtype)) for p in self.params]
        new, self.state = self._update(self._arrays(), grads, self.state)
        with torch.no_grad():
            for p, value in zip(self.params, new):
                p.copy_(to_torch(value, like=p))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"optax_leaves": [to_torch(leaf) for leaf in jax.tree.leaves(self.state)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        treedef = jax.tree.structure(self.tx.init(self._arrays()))
        leaves = [to_jax(t) for t in state["optax_leaves"]]
        if len(leaves) != treedef.num_leaves:
            raise ValueError(f"optax state has {len(leaves)} arrays, this optimiser needs {treedef.num_leaves}")
        self.state = jax.tree.unflatten(treedef, leaves)


def sgd(params: Sequence[torch.Tensor], lr: float, momentum: float) -> OptaxOptimizer:
    """optax SGD with heavy-ball momentum: the same update as ``torch.optim.SGD(lr, momentum)``
    (buffer = momentum · buffer + grad, starting from grad; param −= lr · buffer)."""
    return OptaxOptimizer(params, optax.sgd(lr, momentum=momentum))
