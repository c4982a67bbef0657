"""Fixtures shared by several test modules."""
from __future__ import annotations

import pytest

from condense.methods.tm import TMConfig
from trajectories.record import BufferConfig, record_store


@pytest.fixture(scope="session")
def store_path(tmp_path_factory) -> str:
    """A tiny toy expert store: 2 experts x 4 epochs of ConvNet W8 (read-only for its users:
    the torch and JAX tm tests and the soft-label tests' teacher)."""
    out = tmp_path_factory.mktemp("experts") / "store"
    cfg = BufferConfig(dataset="toy", arch="convnet:width=8", experts=2, epochs=4, batch_size=32, out=str(out))
    record_store(cfg, progress=lambda s: None, bars=False)
    return str(out)


def tm_cfg(store_path: str, tmp_path, **over) -> TMConfig:
    """A tm config on :func:`store_path` small enough for tests (the torch and JAX tm tests share it)."""
    base = dict(trajectories=store_path, ipc=2, iters=6, syn_steps=4, expert_epochs=2, max_start_epoch=2,
                lr_img=10.0, checkpoint_every=3, out=str(tmp_path / "tm.h5"))
    return TMConfig(**{**base, **over})


def iteration_inputs(method, it: int) -> tuple[dict, dict]:
    """Run iteration ``it`` of a tm method; return its metrics and what it handed to ``match``
    (start, targets, steps, scale): the plan, start and targets the iteration drew."""
    seen, real = {}, method.match

    def spy(start, targets, steps, scale):
        seen.update(start=start, targets=targets, steps=steps, scale=scale)
        return real(start, targets, steps, scale)

    method.match = spy
    try:
        return method.compute_grads(it), seen
    finally:
        del method.match


class Killed(Exception):
    """Stands for a run killed from outside (:func:`kill_after`)."""


def kill_after(iteration: int):
    """An ``evaluate`` callback (a run with ``eval_every=1`` calls it after every iteration) that
    raises :class:`Killed` after ``iteration``: a kill between two checkpoints."""
    def evaluate(s):
        if s.provenance["iteration"] == iteration:
            raise Killed
        return 0.0

    return evaluate
