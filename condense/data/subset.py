"""Seeded, class-aware selection of sample indices.

All selections draw from ``condense.runtime.rng.generator`` with explicit integer keys, never
from torch's global RNG, and each class gets its own stream: the images picked for
class c depend only on (seed, the indices of class c, how many are taken), not on
which other classes exist or how large they are.

- :func:`class_balanced_indices` is the random-real baseline's selection: exactly
  ``per_class`` indices of every class, grouped by class (ascending), in seeded random
  order within a class. Class c's order is ``randperm`` under ``generator(seed, c)``
  applied to the ascending indices of class c.
- :func:`stratified_split` carves the validation split: ``n`` indices allocated to
  classes in proportion to their sizes (largest remainder, ties to the lower class),
  so a balanced set gets exactly n / num_classes per class.
- :func:`balanced_subset` keeps ``n`` indices, as equal per class as possible
  (``limit_train``).
The last two return indices sorted ascending, so the kept data stays in file order.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

from condense.runtime.errors import DataError
from condense.runtime.rng import generator

# Stream tags: keep the validation and limit draws unrelated to the baseline's draws.
_SPLIT_TAG = 0x5B1
_LIMIT_TAG = 0x11A


def _as_labels(labels) -> torch.Tensor:
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex():
        raise DataError(f"labels must be a 1-D integer tensor, got {y.dtype} of shape {tuple(y.shape)}")
    return y.to("cpu", torch.int64)


def _class_members(y: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nonzero(y == c, as_tuple=False).flatten()


def _take_per_class(y: torch.Tensor, counts: Mapping[int, int], keys: tuple[int, ...]) -> list[torch.Tensor]:
    """For each class c (in the mapping's order), ``counts[c]`` members of c in seeded random order."""
    out = []
    for c, k in counts.items():
        if k < 0:
            raise DataError(f"cannot take a negative number ({k}) of images of class {c}")
        members = _class_members(y, c)
        if k > members.numel():
            raise DataError(
                f"class {c} has only {members.numel()} images but {k} were requested; "
                "ask for fewer images per class"
            )
        perm = torch.randperm(members.numel(), generator=generator(*keys, int(c)))
        out.append(members[perm[:k]])
    return out


def class_balanced_indices(labels, per_class: int, seed: int, classes: Iterable[int] | None = None) -> torch.Tensor:
    """Indices of ``per_class`` samples of each class: LongTensor [len(classes) * per_class].

    labels: [N] integer labels. classes: which classes (default: every label present);
    they are taken in ascending order. Deterministic in (labels, per_class, seed, classes).
    Raises DataError when a class has fewer than ``per_class`` samples.
    """
    y = _as_labels(labels)
    if per_class < 0:
        raise DataError(f"per_class must be >= 0, got {per_class}")
    cls = sorted({int(c) for c in classes}) if classes is not None else torch.unique(y).tolist()
    parts = _take_per_class(y, {c: int(per_class) for c in cls}, (int(seed),))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def proportional_counts(class_sizes: Mapping[int, int], n: int) -> dict[int, int]:
    """Split n over classes in proportion to their sizes (largest remainder; ties -> lower class)."""
    total = sum(class_sizes.values())
    floors = {c: n * s // total for c, s in class_sizes.items()}
    left = n - sum(floors.values())
    by_remainder = sorted(class_sizes, key=lambda c: (-(n * class_sizes[c] % total), c))
    for c in by_remainder[:left]:
        floors[c] += 1
    return floors


def stratified_split(labels, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split [N] labels into (selected [n], rest [N - n]) index tensors, both ascending.

    Per-class counts are proportional to class sizes; each class keeps at least one
    sample in ``rest``. Raises DataError when n is negative or too large.
    """
    y = _as_labels(labels)
    classes, sizes = torch.unique(y, return_counts=True)
    class_sizes = dict(zip(classes.tolist(), sizes.tolist()))
    if n < 0 or n > y.numel() - len(class_sizes):
        raise DataError(
            f"validation size {n} is out of range for {y.numel()} training images in "
            f"{len(class_sizes)} classes; use 0 <= val_size <= {y.numel() - len(class_sizes)}"
        )
    counts = proportional_counts(class_sizes, n)
    short = [c for c, k in counts.items() if k >= class_sizes[c]]
    if short:
        raise DataError(
            f"validation size {n} would take every training image of class {short[0]} "
            f"({class_sizes[short[0]]} images); use a smaller val_size"
        )
    parts = _take_per_class(y, counts, (int(seed), _SPLIT_TAG))
    selected = torch.sort(torch.cat(parts)).values if parts else torch.zeros(0, dtype=torch.int64)
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[selected] = False
    return selected, torch.nonzero(mask, as_tuple=False).flatten()


def balanced_subset(labels, n: int, seed: int) -> torch.Tensor:
    """Ascending indices of n samples, n // K of every one of the K classes plus one more
    for the lowest ``n % K`` classes. Raises DataError if a class is too small or n < K."""
    y = _as_labels(labels)
    classes = torch.unique(y).tolist()
    k = len(classes)
    if n < k:
        raise DataError(f"a class-balanced subset of {n} images cannot cover {k} classes; use at least {k}")
    counts = {c: n // k + (1 if i < n % k else 0) for i, c in enumerate(classes)}
    return torch.sort(torch.cat(_take_per_class(y, counts, (int(seed), _LIMIT_TAG)))).values
