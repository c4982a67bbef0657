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
import zipfile
from pathlib import Path
from typing import Any, Callable, BinaryIO

import numpy as np
import torch

from condense.runtime.errors import DataError
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


def npy_header(fp: BinaryIO, size: int, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) a ``.npy`` stream of ``size`` bytes declares, read from its header
    alone; DataError unless the data after the header is exactly shape x itemsize bytes.
    Call before ``np.load``, which allocates the declared shape before reading a byte of it."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(fp)
        read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy format version {version} is not one condense writes")
        shape, _, dtype = read(fp)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"{source} has no readable .npy header ({type(e).__name__}: {e})") from None
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = size - fp.tell()
    if need != have:
        raise DataError(f"{source} declares shape {tuple(shape)} {dtype} ({need:,} bytes) but holds {have:,} bytes")
    return tuple(shape), dtype


def check_npz(path: str | Path) -> None:
    """DataError unless every array of the ``.npz`` archive ``path`` is stored uncompressed
    and its header's shape matches its stored bytes (see :func:`npy_header`), so a later
    ``np.load`` allocates no more than the file holds."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(f"{path}: {info.filename} is compressed; condense writes these archives "
                                    "uncompressed")
                if info.file_size > path.stat().st_size:
                    raise DataError(f"{path}: {info.filename} declares {info.file_size:,} bytes, more than the "
                                    "archive holds")
                with z.open(info) as f:
                    npy_header(f, info.file_size, f"{path}: {info.filename}")
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e})") from None
