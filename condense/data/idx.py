"""Reader for the IDX format of MNIST and Fashion-MNIST (``*-idx3-ubyte[.gz]``).

Layout: a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32
dimension sizes, then the values big-endian in C order. A file is accepted only if
the magic is valid and its length is exactly header + prod(dims) * itemsize, so a
truncated download or a file with trailing garbage is rejected with a
:class:`~condense.runtime.errors.DataError` instead of yielding silently wrong arrays.

Compression is detected from the gzip magic bytes, not from the file name, so
``train-images-idx3-ubyte`` works whether or not it was decompressed.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from condense.runtime.errors import DataError

# IDX type byte -> big-endian numpy dtype.
_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    ``ndim``, when given, is the number of dimensions the file must have
    (3 for images [N, H, W], 1 for labels [N]).
    Raises DataError if the file is missing, unreadable, truncated or malformed.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read IDX file {path} ({type(e).__name__}: {e}); the file is corrupt or "
            "truncated, replace it with a fresh copy"
        ) from None
    return parse_idx(data, source=str(path), ndim=ndim)


def parse_idx(data: bytes, *, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; see :func:`read_idx`."""
    fix = "replace it with a fresh copy of the dataset"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{source} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); {fix}")
    nd = data[3]
    if nd == 0 or (ndim is not None and nd != ndim):
        want = f"{ndim}" if ndim is not None else "at least 1"
        raise DataError(f"{source} has {nd} dimensions, expected {want}; is it the right IDX file? {fix}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DataError(f"{source} is truncated inside its header ({len(data)} bytes); {fix}")
    dims = struct.unpack(f">{nd}I", data[4:header])
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{source} is {what}: {len(data)} bytes, but dims {tuple(dims)} need {expected}; {fix}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    # Native byte order and a writable copy: torch.from_numpy needs both.
    return arr.astype(dtype.newbyteorder("="), copy=True)
