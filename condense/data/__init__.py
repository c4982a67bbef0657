"""Datasets, their normalisation/ZCA, and seeded subset selection (layer 1 core).

Public API:
- registry: :func:`load_dataset`, :func:`load_raw`, :func:`available`, :func:`dataset_names`,
  :func:`dataset_info`, :func:`register_dataset`, :class:`Dataset`, :class:`DatasetInfo`;
- :class:`ZCA` (kornia-equivalent ZCA whitening with an on-disk cache);
- :func:`make_toy` (the procedurally generated ``toy`` set);
- :func:`class_balanced_indices` (the random-real baseline's selection),
  :func:`stratified_split`, :func:`balanced_subset`;
- :func:`read_idx` (MNIST-format files), :func:`restricted_load` (CIFAR python batches).
"""
from __future__ import annotations

from condense.data.datasets import (
    Dataset,
    DatasetInfo,
    RawData,
    available,
    dataset_info,
    dataset_names,
    load_dataset,
    load_raw,
    register_dataset,
)
from condense.data.idx import read_idx
from condense.data.subset import balanced_subset, class_balanced_indices, stratified_split
from condense.data.toy import make_toy
from condense.data.unpickle import restricted_load
from condense.data.zca import ZCA

__all__ = [
    "Dataset",
    "DatasetInfo",
    "RawData",
    "ZCA",
    "available",
    "balanced_subset",
    "class_balanced_indices",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "load_raw",
    "make_toy",
    "read_idx",
    "register_dataset",
    "restricted_load",
    "stratified_split",
]
