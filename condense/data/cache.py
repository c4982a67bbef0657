"""Where condense keeps derived data on disk, and how it writes it safely.

Derived data (fitted ZCA matrices, decoded Tiny-ImageNet arrays, downloads that
were explicitly asked for) lives under one cache root:

- ``$CONDENSE_CACHE`` when set, else ``~/.cache/condense``;
- one sub-folder per kind: ``<root>/zca``, ``<root>/tiny-imagenet``, ``<root>/datasets``.

Every file is written under a temporary name in the same folder and renamed into
place, so a killed process or two processes filling the same entry never leave a
half-written file behind under the final name. Readers still treat any cache file
as untrusted: numpy files are loaded with ``allow_pickle=False`` and validated.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, BinaryIO

import numpy as np
import torch

from condense.runtime.files import replacing


def cache_root() -> Path:
    """The cache root: ``$CONDENSE_CACHE`` or ``~/.cache/condense`` (not created)."""
    env = os.environ.get("CONDENSE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "condense"


def cache_dir(kind: str) -> Path:
    """The cache folder for one kind of derived data, e.g. ``cache_dir("zca")`` (not created)."""
    return cache_root() / kind


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path`` via ``write(fileobj)`` into a temporary sibling, then rename it into place
    (:func:`condense.runtime.files.replacing`: the parent folder is created; on any failure the
    temporary file is removed and an existing ``path`` is left untouched)."""
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return Path(path)


def content_hash(*arrays: torch.Tensor | np.ndarray, digest_size: int = 16) -> str:
    """Hex digest of the dtypes, shapes and bytes of ``arrays`` (order matters).

    Used to key caches by the exact data they were computed from, so a cache entry
    can never be reused for different data that happens to share a name.
    """
    h = hashlib.blake2b(digest_size=digest_size)
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()
