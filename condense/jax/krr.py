"""Kernel ridge regression in closed form, shared by the kernel methods (FRePo, KRR-ST)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def krr_solve(k_ss: jax.Array, k_ts: jax.Array, y_s: jax.Array, ridge: jax.Array | float) -> jax.Array:
    """Predictions K_ts (K_ss + ridge·I)⁻¹ y_s [m, T] of kernel ridge regression fitted on n points:
    k_ss [n, n] (positive semi-definite), k_ts [m, n], targets y_s [n, T]. Differentiable in all
    three (the solve's gradient is the adjoint solve: no explicit inverse)."""
    n = k_ss.shape[0]
    return k_ts @ jax.scipy.linalg.solve(k_ss + ridge * jnp.eye(n, dtype=k_ss.dtype), y_s, assume_a="pos")
