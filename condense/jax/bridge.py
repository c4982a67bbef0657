"""Tensors <-> arrays at the boundary between the torch-side loop and the JAX computations.

The JAX methods keep their learnable state as torch tensors (what the shared synthesis loop
checkpoints, rolls back and saves) and hand copies to jitted JAX functions each iteration; the
copies are small (the synthetic images, one network's parameters), so a plain host copy is used.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ..synset import SynSet


def to_jax(t: torch.Tensor, dtype=None) -> jax.Array:
    """A JAX copy of ``t`` (any device), as ``dtype`` if given."""
    return jnp.asarray(t.detach().cpu().numpy(), dtype=dtype)


def image_shape(ds) -> tuple[int, int, int]:
    """(C, H, W) of an image dataset; one ConfigError line for clips, which the JAX backend does not take."""
    from ..runtime.errors import ConfigError

    if ds.info.frames:
        raise ConfigError(f"the JAX backend distils images; {ds.info.name} holds clips (use --backend torch)")
    return tuple(ds.info.shape)


def versions() -> str:
    """What a JAX-made set records as its backend in provenance."""
    import optax

    return f"jax {jax.__version__}, optax {optax.__version__}"


def mark_jax(s: SynSet) -> SynSet:
    """``s`` marked as made by the JAX backend (config ``backend`` and provenance versions)."""
    s.config["backend"] = "jax"
    s.provenance["backend"] = versions()
    return s


def to_torch(a: jax.Array, like: torch.Tensor | None = None) -> torch.Tensor:
    """A torch copy of ``a``, on ``like``'s device and in its dtype if given."""
    t = torch.from_numpy(np.array(a))
    return t if like is None else t.to(device=like.device, dtype=like.dtype)
