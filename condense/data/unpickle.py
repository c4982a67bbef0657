"""A restricted unpickler for the official python versions of CIFAR-10/100.

``pickle.load`` on a downloaded file can run arbitrary code, so condense never uses it.
The CIFAR python batches are dicts of bytes/str, lists of ints and one uint8 numpy
array; rebuilding them needs only numpy's array-reconstruction globals (plus
``_codecs.encode``, which python-3 protocol-2 pickles use for bytes). Every other global
(``os.system``, ``builtins.eval``, any class) is refused with a DataError, so a
malicious file fails before anything of it runs. Object arrays are refused too.
"""
from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from condense.runtime.errors import DataError


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; old pickles name the former.
    core = getattr(np, "_core", None) or np.core  # type: ignore[attr-defined]
    return getattr(getattr(core, module), name)


def _allowed() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = _numpy_global("multiarray", "_reconstruct")
        table[(f"{prefix}.multiarray", "scalar")] = _numpy_global("multiarray", "scalar")
        table[(f"{prefix}.numeric", "_frombuffer")] = _numpy_global("numeric", "_frombuffer")
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    _table = _allowed()

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._table[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._source}: only plain numpy arrays are "
                "allowed in a dataset file; it is not an official CIFAR batch (use the official download)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refusing persistent references in {self._source}; not an official CIFAR batch")


def _check_no_objects(obj: Any, source: str) -> None:
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise DataError(f"{source} holds an object array; refusing it (not an official CIFAR batch)")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_no_objects(v, source)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_no_objects(v, source)


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only builtin containers and numpy arrays.

    Keys and strings of python-2 pickles come back as bytes (``encoding="bytes"``).
    Raises DataError for a forbidden global, a corrupt or truncated file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); replace the file") from None
    _check_no_objects(obj, str(path))
    return obj
