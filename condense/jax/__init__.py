"""Layer 3: the JAX backend (flax networks, DSA, ``tm`` and ``dm`` with jit-compiled inner loops).

jax, flax and optax are the ``condense[jax]`` extra. Nothing in the torch backend imports
this package; ``condense synth --backend jax`` imports it lazily, and without the extra
importing it is one clear error line (:func:`condense.runtime.extras.require_extra`). The
backend reads and writes the same files as the torch one: a flat parameter vector in the
canonical torch layout maps one-to-one onto a flax parameter tree (:mod:`condense.jax.nets`),
and the methods reuse the torch-side synthesis loop (checkpoint/resume, NaN guard, run
folder) with their state exposed as tensors.
"""
from ..runtime.extras import require_extra

require_extra("jax", "the JAX backend (condense.jax)")
