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

import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

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


# MNIST's training images are 47 MB, EMNIST's largest split 550 MB; no IDX file condense
# reads comes near 4 GiB, so a header declaring more is refused before anything is allocated.
MAX_IDX_BYTES = 2 ** 32
# Deflate expands at most ~1032:1, so a gzip file of S bytes cannot hold more than this
# times S; a header promising more is a bomb or a lie, refused before decompressing.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 16
_FIX = "replace it with a fresh copy of the dataset"


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    ``ndim``, when given, is the number of dimensions the file must have
    (3 for images [N, H, W], 1 for labels [N]).
    Raises DataError if the file is missing, unreadable, truncated or malformed. The header
    is read first and bounds everything after it: the declared size must be at most
    :data:`MAX_IDX_BYTES` and match the file (raw) or what its compressed size can hold
    (gzip, decompressed incrementally, never past the declared size), so a small file
    cannot make condense allocate or decompress more than its header honestly promises.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(2) == _GZIP_MAGIC:
                f.seek(0)
                return _read_gzip(f, size, str(path), ndim)
            f.seek(0)
            return _read_raw(f, size, str(path), ndim)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read IDX file {path} ({type(e).__name__}: {e}); the file is corrupt or "
            "truncated, replace it with a fresh copy"
        ) from None


def _header(read, source: str, ndim: int | None) -> tuple[tuple[int, ...], np.dtype, int, int]:
    """(dims, dtype, header bytes, total bytes) from ``read(n)``, the file's first bytes."""
    magic = read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise DataError(f"{source} is not an IDX file (bad magic number {magic[:4].hex() or 'empty'}); {_FIX}")
    nd = magic[3]
    if nd == 0 or (ndim is not None and nd != ndim):
        want = f"{ndim}" if ndim is not None else "at least 1"
        raise DataError(f"{source} has {nd} dimensions, expected {want}; is it the right IDX file? {_FIX}")
    header = 4 + 4 * nd
    raw = read(4 * nd)
    if len(raw) < 4 * nd:
        raise DataError(f"{source} is truncated inside its header ({4 + len(raw)} bytes); {_FIX}")
    dims = struct.unpack(f">{nd}I", raw)
    dtype = np.dtype(_DTYPES[magic[2]])
    total = header + math.prod(dims) * dtype.itemsize
    if total > MAX_IDX_BYTES:
        raise DataError(f"{source} declares dims {tuple(dims)} ({total:,} bytes), above the bound of "
                        f"{MAX_IDX_BYTES:,} bytes for an IDX file; {_FIX}")
    return dims, dtype, header, total


def _mismatch(source: str, size: int, dims: tuple[int, ...], total: int) -> DataError:
    what = "truncated" if size < total else "longer than its header says"
    return DataError(f"{source} is {what}: {size} bytes, but dims {tuple(dims)} need {total}; {_FIX}")


def _array(body: bytes | bytearray, dims: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    arr = np.frombuffer(body, dtype=dtype, count=math.prod(dims)).reshape(dims)
    # Native byte order and a writable copy: torch.from_numpy needs both.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _read_raw(f: BinaryIO, size: int, source: str, ndim: int | None) -> np.ndarray:
    dims, dtype, header, total = _header(f.read, source, ndim)
    if size != total:
        raise _mismatch(source, size, dims, total)
    return _array(f.read(total - header), dims, dtype)


class _Gunzip:
    """Decompressed bytes of a gzip file on demand: ``read(n)`` inflates at most ``n`` more."""

    def __init__(self, f: BinaryIO, source: str):
        self.f, self.source = f, source
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def read(self, n: int) -> bytearray:
        out = bytearray()
        while len(out) < n:
            if self.d.eof:
                rest = self.d.unused_data or self.f.read(_CHUNK)
                if not rest:
                    break
                if not rest.startswith(_GZIP_MAGIC):
                    raise DataError(f"{self.source} has data after its gzip stream; {_FIX}")
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a further gzip member
                data = rest
            else:
                data = self.d.unconsumed_tail or self.f.read(_CHUNK)
                if not data:
                    break
            out += self.d.decompress(data, n - len(out))
        return out

    def complete(self) -> bool:
        """Whether the stream ended with its gzip trailer (not cut short)."""
        return self.d.eof


def _read_gzip(f: BinaryIO, size: int, source: str, ndim: int | None) -> np.ndarray:
    z = _Gunzip(f, source)
    dims, dtype, header, total = _header(z.read, source, ndim)
    if total > _DEFLATE_MAX_RATIO * size + 1024:
        raise DataError(f"{source} declares dims {tuple(dims)} ({total:,} bytes), more than a {size:,}-byte gzip "
                        f"file can hold (deflate expands at most {_DEFLATE_MAX_RATIO}:1); {_FIX}")
    body = z.read(total - header)
    if len(body) < total - header:
        raise _mismatch(source, header + len(body), dims, total)
    if z.read(1):
        raise DataError(f"{source} decompresses to more than the {total} bytes its header declares "
                        f"(dims {tuple(dims)}); {_FIX}")
    if not z.complete():
        raise DataError(f"{source} is truncated: its gzip stream ends before the gzip trailer; {_FIX}")
    return _array(body, dims, dtype)


def parse_idx(data: bytes, *, source: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; see :func:`read_idx`."""
    stream = io.BytesIO(data)
    dims, dtype, header, total = _header(stream.read, source, ndim)
    if len(data) != total:
        raise _mismatch(source, len(data), dims, total)
    return _array(data[header:], dims, dtype)
