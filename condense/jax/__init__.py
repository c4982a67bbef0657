"""Layer 3: the JAX backend (flax networks, DSA, ``tm`` and ``dm`` with jit-compiled inner loops).

Nothing in the torch backend imports this package; ``condense synth --backend jax``
imports it lazily, so a missing jax, flax or optax is one clear error line
(:func:`require_jax`). The backend reads and writes the same files as the torch one: a
flat parameter vector in the canonical torch layout maps one-to-one onto a flax parameter
tree (:mod:`condense.jax.nets`), and the methods reuse the torch-side synthesis loop
(checkpoint/resume, NaN guard, run folder) with their state exposed as tensors.
"""
from __future__ import annotations

import importlib

from ..runtime.errors import ConfigError

REQUIRED = ("jax", "flax", "optax")


def require_jax() -> None:
    """Raise a one-line ConfigError unless jax, flax and optax import."""
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"--backend jax needs {', '.join(REQUIRED)} ({name} is not installed): "
                              "pip install jax flax optax") from None
