"""Readers for the on-disk formats of the built-in datasets.

Each reader takes the folder that holds one dataset's files and returns raw uint8
arrays ``(x_train [N, C, H, W], y_train [N] int64, x_test, y_test)``; locating that
folder and scaling to [0, 1] is ``condense.data.datasets``' job. Every ``find_*``
function answers "is the dataset in this folder?" cheaply (file existence only).

Formats:
- IDX (MNIST, Fashion-MNIST): ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``,
  also inside torchvision's ``<Name>/raw`` download folder.
- CIFAR-10/100 binary (``cifar-10-batches-bin``, ``cifar-100-binary``): fixed-size records
  (label byte(s) then 3072 pixel bytes); CIFAR-100 uses the fine (100-class) label.
- CIFAR-10/100 python (``cifar-10-batches-py``, ``cifar-100-python``; what torchvision
  downloads): read with the restricted unpickler of ``condense.data.unpickle``.
- SVHN: ``train_32x32.mat`` / ``test_32x32.mat`` (MATLAB v5, scipy.io.loadmat, no pickle);
  label 10 means digit 0 and is mapped to 0.
- Tiny-ImageNet: ``tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG,
  val/images/*.JPEG, val/val_annotations.txt}``. The labelled ``val`` split is the test
  set (the official test split has no labels; MTT and the field do the same). Class
  index = position of the wnid in *sorted* order, as torchvision's ImageFolder (used
  by MTT) assigns it, not the order of wnids.txt. Images are decoded with PIL and
  converted to RGB (a few originals are greyscale). The decoded arrays are cached as
  .npy files (loaded with allow_pickle=False) under ``$CONDENSE_CACHE/tiny-imagenet``
  so the JPEGs are decoded once.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from condense.data.cache import atomic_write, cache_dir, npy_header
from condense.data.idx import read_idx
from condense.data.lazy import open_image
from condense.data.unpickle import restricted_load
from condense.runtime.errors import DataError

Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_TINY_FORMAT = "condense-tiny-imagenet-v1"
_TINY_ARRAYS = ("x_train", "y_train", "x_test", "y_test")

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


# ---------------------------------------------------------------- IDX

def find_idx(folder: Path, torchvision_name: str) -> Path | None:
    """The folder among (folder, folder/<torchvision_name>/raw) holding all four IDX files."""
    for d in (folder, folder / torchvision_name / "raw"):
        if all(_first_existing([d / f"{n}.gz", d / n]) for n in IDX_FILES.values()):
            return d
    return None


def read_idx_folder(folder: Path) -> Raw:
    """Read the four IDX files of ``folder``: images [N, 1, 28, 28] uint8, labels int64."""
    out = {}
    for key, name in IDX_FILES.items():
        path = _first_existing([folder / f"{name}.gz", folder / name])
        if path is None:
            raise DataError(f"missing {name}[.gz] in {folder}")
        a = read_idx(path, ndim=3 if key.startswith("x") else 1)
        out[key] = a[:, None] if key.startswith("x") else a.astype(np.int64)
    for split in ("train", "test"):
        if out[f"x_{split}"].shape[0] != out[f"y_{split}"].shape[0]:
            raise DataError(
                f"{folder}: {split} images ({out[f'x_{split}'].shape[0]}) and labels "
                f"({out[f'y_{split}'].shape[0]}) differ in count; the files do not belong together"
            )
    return out["x_train"], out["y_train"], out["x_test"], out["y_test"]


# ---------------------------------------------------------------- CIFAR

CIFAR_LAYOUTS = {
    # name: (binary folder, binary train files, binary test files, label bytes, label byte used,
    #        python folder, python train files, python test files, python label key)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0,
                "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1,
                 "cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
_CIFAR_PIXELS = 3 * 32 * 32


def find_cifar(folder: Path, name: str) -> tuple[str, Path] | None:
    """("binary" | "python", the batches folder) if CIFAR ``name`` is under ``folder``."""
    bin_dir, bin_train, bin_test, _, _, py_dir, py_train, py_test, _ = CIFAR_LAYOUTS[name]
    for base in (folder, folder / name):
        for kind, sub, files in (("binary", bin_dir, bin_train + bin_test), ("python", py_dir, py_train + py_test)):
            for d in (base / sub, base):
                if all((d / f).is_file() for f in files):
                    return kind, d
    return None


def read_cifar_binary_file(path: Path, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: records of ``label_bytes`` label bytes + 3072 pixels -> ([N, 3, 32, 32], [N])."""
    data = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _CIFAR_PIXELS
    if data.size == 0 or data.size % record:
        raise DataError(
            f"{path} has {data.size} bytes, not a multiple of the {record}-byte CIFAR record; "
            "the file is truncated or not a CIFAR binary batch, replace it"
        )
    rows = data.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), rows[:, label_index].astype(np.int64)


def read_cifar_python_file(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One python batch via the restricted unpickler -> ([N, 3, 32, 32] uint8, [N] int64)."""
    d = restricted_load(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise DataError(f"{path} is not a CIFAR python batch (needs keys b'data' and {label_key!r})")
    x, y = np.asarray(d[b"data"]), np.asarray(d[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != _CIFAR_PIXELS or y.shape != (x.shape[0],):
        raise DataError(f"{path}: data {x.dtype}{x.shape} / labels {y.shape} are not CIFAR-shaped")
    return x.reshape(-1, 3, 32, 32).copy(), y.astype(np.int64)


def read_cifar(folder: Path, name: str) -> Raw:
    """Read CIFAR ``name`` ("cifar10" | "cifar100") found under ``folder`` (binary preferred)."""
    found = find_cifar(folder, name)
    if found is None:
        raise DataError(f"no {name} batches under {folder}")
    kind, d = found
    _, bin_train, bin_test, lb, li, _, py_train, py_test, key = CIFAR_LAYOUTS[name]

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_binary_file(d / f, lb, li) if kind == "binary" else read_cifar_python_file(d / f, key)
                 for f in files]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_train, y_train = read(bin_train if kind == "binary" else py_train)
    x_test, y_test = read(bin_test if kind == "binary" else py_test)
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- SVHN

SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def find_svhn(folder: Path) -> Path | None:
    """The folder among (folder, folder/svhn) with both SVHN .mat files."""
    return next((d for d in (folder, folder / "svhn") if all((d / f).is_file() for f in SVHN_FILES)), None)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat: X [32, 32, 3, N], y [N, 1] in 1..10 -> ([N, 3, 32, 32] uint8, [N] int64 in 0..9)."""
    import scipy.io

    try:
        m = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); replace it with the official file") from None
    x, y = m.get("X"), m.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DataError(f"{path} lacks SVHN arrays X [32, 32, 3, N] and y [N, 1]")
    y = y.reshape(-1).astype(np.int64)
    if y.min() < 1 or y.max() > 10:
        raise DataError(f"{path} has labels outside 1..10; not an official SVHN file")
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y


def read_svhn(folder: Path) -> Raw:
    d = find_svhn(folder)
    if d is None:
        raise DataError(f"no {' / '.join(SVHN_FILES)} in {folder}")
    x_train, y_train = read_svhn_mat(d / SVHN_FILES[0])
    x_test, y_test = read_svhn_mat(d / SVHN_FILES[1])
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- Tiny-ImageNet

def find_tiny_imagenet(folder: Path) -> Path | None:
    """The ``tiny-imagenet-200`` folder (with wnids.txt, train/, val/) at or under ``folder``."""
    for d in (folder, folder / "tiny-imagenet-200", folder / "tiny-imagenet" / "tiny-imagenet-200"):
        if (d / "wnids.txt").is_file() and (d / "train").is_dir() and (d / "val" / "val_annotations.txt").is_file():
            return d
    return None


def tiny_imagenet_listing(d: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(sorted wnids, train (path, label) pairs, val (path, label) pairs), without decoding."""
    wnids = sorted({w.strip() for w in (d / "wnids.txt").read_text().split() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        img_dir = d / "train" / w / "images"
        if not img_dir.is_dir():
            raise DataError(f"{img_dir} is missing; the Tiny-ImageNet folder is incomplete")
        train += [(img_dir / f, index[w]) for f in sorted(p.name for p in img_dir.iterdir() if p.suffix.lower() == ".jpeg")]
    val = []
    for n, line in enumerate((d / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{d / 'val' / 'val_annotations.txt'} line {n} is malformed or names an unknown wnid")
        val.append((d / "val" / "images" / parts[0], index[parts[1]]))
    return wnids, train, val


def _decode(item: tuple[Path, int]) -> np.ndarray:
    from PIL import UnidentifiedImageError

    path = item[0]
    try:
        # Every Tiny-ImageNet image is 64x64: anything larger is refused from its header.
        with open_image(path, max_pixels=64 * 64) as im:
            a = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot decode {path} ({e}); replace the file") from None
    if a.shape != (64, 64, 3):
        raise DataError(f"{path} is {a.shape[1]}x{a.shape[0]}, Tiny-ImageNet images are 64x64")
    return a.transpose(2, 0, 1)


def decode_images(items: list[tuple[Path, int]], threads: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Decode (path, label) pairs -> ([N, 3, 64, 64] uint8, [N] int64); PIL decodes in threads."""
    x = np.empty((len(items), 3, 64, 64), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i, a in enumerate(pool.map(_decode, items)):
            x[i] = a
    return x, np.array([lab for _, lab in items], dtype=np.int64)


def tiny_imagenet_class_names(d: Path, wnids: list[str]) -> list[str]:
    """First synonym from words.txt for each wnid, or the wnid itself."""
    words = {}
    if (d / "words.txt").is_file():
        for line in (d / "words.txt").read_text().splitlines():
            w, _, names = line.partition("\t")
            words[w] = names.split(",")[0].strip()
    return [words.get(w) or w for w in wnids]


def tiny_imagenet_cache_key(d: Path, train: list[tuple[Path, int]], val: list[tuple[Path, int]]) -> str:
    """Hash of the folder's real path and its file listing (names, labels, sizes of the label files)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{_TINY_FORMAT}\n{d.resolve()}\n".encode())
    for name in ("wnids.txt", "val/val_annotations.txt"):
        h.update(f"{name}:{(d / name).stat().st_size}\n".encode())
    for p, lab in train + val:
        h.update(f"{p.relative_to(d)}:{lab}\n".encode())
    return h.hexdigest()


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    # The header is checked against the expected shape and the file size before np.load
    # allocates what it declares.
    with open(path, "rb") as f:
        declared, _ = npy_header(f, os.fstat(f.fileno()).st_size, str(path))
    if declared != shape:
        raise ValueError(f"{path.name} declares shape {declared}, expected {shape}")
    return np.load(path, allow_pickle=False)


def read_tiny_imagenet(folder: Path, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Tiny-ImageNet under ``folder`` -> (x_train, y_train, x_test (= val), y_test, class names).

    Decoding ~110k JPEGs takes minutes, so the decoded uint8 arrays are kept in
    ``<cache>/<key>/{x_train,y_train,x_test,y_test}.npy`` (default cache
    ``$CONDENSE_CACHE/tiny-imagenet``), keyed by the folder's
    path and file listing; an unreadable cache entry is ignored with a warning and rebuilt.
    """
    d = find_tiny_imagenet(folder)
    if d is None:
        raise DataError(f"no tiny-imagenet-200 folder (wnids.txt, train/, val/val_annotations.txt) at {folder}")
    wnids, train, val = tiny_imagenet_listing(d)
    names = tiny_imagenet_class_names(d, wnids)
    entry = (cache if cache is not None else cache_dir("tiny-imagenet")) / tiny_imagenet_cache_key(d, train, val)
    shapes = {"x_train": (len(train), 3, 64, 64), "y_train": (len(train),),
              "x_test": (len(val), 3, 64, 64), "y_test": (len(val),)}
    if entry.exists():
        try:
            arrays = {k: _load_npy(entry / f"{k}.npy", shapes[k]) for k in _TINY_ARRAYS}
            for k, a in arrays.items():
                if a.shape != shapes[k] or a.dtype != (np.uint8 if k.startswith("x") else np.int64):
                    raise ValueError(f"{k}.npy is {a.dtype}{a.shape}, expected {shapes[k]}")
            return (*(arrays[k] for k in _TINY_ARRAYS), names)
        except (OSError, ValueError, EOFError, DataError) as e:
            warnings.warn(f"ignoring unusable Tiny-ImageNet cache {entry} ({e}); decoding again", RuntimeWarning)
    x_train, y_train = decode_images(train)
    x_test, y_test = decode_images(val)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    try:
        for k in _TINY_ARRAYS:
            atomic_write(entry / f"{k}.npy", lambda f, a=arrays[k]: np.save(f, a, allow_pickle=False))
    except OSError as e:
        warnings.warn(f"could not write Tiny-ImageNet cache {entry} ({e}); set $CONDENSE_CACHE to a writable folder",
                      RuntimeWarning)
    return x_train, y_train, x_test, y_test, names
