"""Explicit, derived randomness.

condense never seeds or reads the global RNGs. Every random draw comes from a
``torch.Generator`` derived from a tuple of integers, e.g. ``(seed, run, epoch, step)``,
so any single step of any run can be reproduced on its own, in any process.
"""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """Mix integers into one 63-bit seed (order matters; stable across platforms).

    Uses numpy's SeedSequence, whose hashing is designed so that nearby key tuples
    (``(0, 1)`` vs ``(1, 0)``) give unrelated streams.
    """
    if any(int(k) < 0 for k in keys):
        raise ValueError(f"seed keys must be non-negative integers, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by :func:`derive_seed` of ``keys``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*keys))
    return g
