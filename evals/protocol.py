"""What one evaluation job trains on, and the job function every executor runs.

A job trains fresh networks of one architecture on one *source* under one *variant*
and reports their test accuracies (or, with ``split="val"``, their accuracies on the
validation split carved from the training set: what settings are chosen on):

- sources: a synthetic-set file (``synset``); the random-real baseline of the same IPC
  (``random``: run r trains on the class-balanced subset drawn with seed ``seed + r``,
  in the same pixel space as the set, so every number has its reference beside it; for a
  set whose soft labels a teacher file made, the subset is labelled by the same teacher,
  views and temperature: the same protocol, only the images differ);
  the full training split (``full``, the labelled full-data reference).
- variants (DD-Ranking-style robustness): ``set`` (labels, lr and augmentation as the
  file says), ``hard`` (a soft-label set trained on the argmax of its labels with
  cross-entropy; per-view labels: of their mean over views), ``no-dsa`` (no augmentation
  while training; per-view labels belong to augmented views, so this variant trains on
  their mean over views as static labels), ``fixed-lr`` (a set with a learned lr trained
  at a fixed one instead, ``--also-lr``: the column the references' papers report beside
  the learned lr).

The protocol is :class:`condense.train.TrainProtocol` and the training is
:func:`condense.train.evaluate`, the loop the expert recorder uses. Run r of seed s
draws all its randomness from (s, r, ...) generators, so a job gives the same numbers
in-process, in a worker pool or on Ray at the same thread count. Accuracies are in
percent.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from condense.data import load_dataset
from condense.data.subset import class_balanced_indices
from condense.synset import LabelSpec, SynSet, hard_labels, load_synset
from condense.train import TrainProtocol, evaluate, protocol_dict

SPLITS = ("test", "val")
# Set by the harness for jobs it runs in its own process: an epoch-level progress bar under
# the grid's bar (worker processes and Ray tasks keep it off: their output would interleave).
EPOCH_BARS = False


@dataclass(frozen=True)
class Source:
    """What the networks train on (plain values, so a job stays picklable and hashable)."""

    kind: str  # synset | random | full
    dataset: str
    path: str | None = None  # synset
    sha256: str | None = None  # synset: identifies the file's content in resume keys
    ipc: int | None = None  # random
    zca: bool = False
    val_size: int | None = None
    val_seed: int = 0
    data_root: str | None = None
    # random: labelled as a set's labels were (JSON of :func:`label_recipe`), so the baseline
    # trains under exactly the set's protocol; None: hard labels
    labels: str | None = None
    # the set's training data limit (--limit-train): random real and the full-data reference draw from the same pool
    limit_train: int | None = None
    limit_seed: int = 0

    @classmethod
    def of_synset(cls, path: str, s: SynSet, sha256: str, data_root: str | None = None) -> "Source":
        limit = s.data.get("limit_train")
        return cls("synset", s.dataset, path=path, sha256=sha256, zca=s.transform.kind == "zca",
                   val_size=s.data.get("val_size"), val_seed=int(s.data.get("val_seed", 0)), data_root=data_root,
                   limit_train=None if limit is None else int(limit), limit_seed=int(s.data.get("limit_seed") or 0))

    def random_baseline(self, ipc: int, labels: str | None = None) -> "Source":
        """The random-real source in this source's data space (same dataset, ZCA, split and data
        limit), hard-labelled or labelled by the recipe ``labels``."""
        return Source("random", self.dataset, ipc=ipc, zca=self.zca, val_size=self.val_size,
                      val_seed=self.val_seed, data_root=self.data_root, labels=labels, limit_train=self.limit_train,
                      limit_seed=self.limit_seed)

    def full_data(self) -> "Source":
        """The full-data reference in this source's data space (its data limit included)."""
        return Source("full", self.dataset, zca=self.zca, val_size=self.val_size, val_seed=self.val_seed,
                      data_root=self.data_root, limit_train=self.limit_train, limit_seed=self.limit_seed)

    @property
    def label(self) -> str:
        if self.kind == "synset":
            return str(self.path)
        tag = "" if self.labels is None else f", {labels_tag(self.labels)}"
        return f"{self.kind} real ({self.dataset}{'' if self.ipc is None else f', IPC {self.ipc}'}{tag})"


def label_recipe(s: SynSet) -> str | None:
    """How a set's labels were made, as canonical JSON (:mod:`condense.labels.recipe`), for
    random real to be labelled the same way; None: hard labels."""
    from condense.labels.recipe import recipe_of

    recipe, _ = recipe_of(s)
    return None if recipe is None else json.dumps(recipe, sort_keys=True)


def labels_tag(recipe: str | None) -> str:
    """A short name of a label recipe for tables: 'hard' or 'teacher T, per-epoch rrc+flip'."""
    from condense.labels.recipe import describe

    return describe(None if recipe is None else json.loads(recipe))


@functools.lru_cache(maxsize=2)
def _dataset(name: str, root: str | None, zca: bool, val_size: int | None, val_seed: int, limit_train: int | None,
             limit_seed: int):
    return load_dataset(name, root, zca=zca, val_size=val_size, val_seed=val_seed, limit_train=limit_train,
                        limit_seed=limit_seed)


def dataset_of(src: Source):
    """The loaded dataset a source lives in (cached per process)."""
    return _dataset(src.dataset, src.data_root, src.zca, src.val_size, src.val_seed, src.limit_train, src.limit_seed)


@functools.lru_cache(maxsize=4)
def _synset(path: str, sha256: str | None) -> SynSet:
    return load_synset(path)


def training_data(src: Source, variant: str, seed: int, run: int, temperature: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, LabelSpec, float | None]:
    """(images [N, C, H, W], labels, label spec, learned lr or None) that run ``run`` trains on."""
    lr = None
    if src.kind == "synset":
        s = _synset(src.path, src.sha256)
        images, labels, spec, lr = s.images, s.labels, s.label_spec, s.lr
        if variant == "hard" and spec.kind == "regression":  # FRePo's targets: the class each image was made for
            return images, s.classes, LabelSpec(), lr
    elif src.kind == "random":
        ds = dataset_of(src)
        idx = class_balanced_indices(ds.y_train, int(src.ipc), seed + run)
        images, labels, spec = ds.x_train[idx], ds.y_train[idx], LabelSpec()
        if src.labels is not None:
            from condense.labels.recipe import remake

            labels, spec = remake(json.loads(src.labels), images, ds.y_train[idx], num_classes=ds.info.num_classes,
                                  dataset=ds.info.name)
    else:
        ds = dataset_of(src)
        return ds.x_train, ds.y_train, LabelSpec(), None
    if variant == "hard" and spec.kind != "hard":
        labels, spec = hard_labels(labels, spec), LabelSpec()
    elif variant == "no-dsa" and spec.view_mode == "per-view":
        labels, spec = labels.mean(0), replace(spec, view_mode="static", view_seed=None, view_strategy=None)
    if temperature is not None and spec.kind in ("probabilities", "logits"):
        spec = replace(spec, temperature=temperature)
    return images, labels, spec, lr


def run_job(source: dict, arch: str, variant: str, protocol: dict, seed: int, runs: list[int],
            stacked: bool = False, temperature: float | None = None, device: str = "cpu", split: str = "test"
            ) -> dict[str, Any]:
    """Train ``arch`` on ``source`` once per run; the executors' job function.

    ``temperature`` overrides a soft-label set's distillation temperature; ``split`` is
    what the accuracy is measured on (test, or val: the held-out part of the training set).
    Returns ``{"accs": [percent per run], "curves": [[mean train loss per epoch] per run]}``
    (curves are empty for stacked training).
    """
    src = Source(**source)
    proto = TrainProtocol(**{**protocol, "dsa": protocol["dsa"] and variant != "no-dsa"})
    ds = dataset_of(src)
    test = (ds.x_test, ds.y_test) if split == "test" else (ds.x_val, ds.y_val)  # plan() checked val exists
    k = ds.info.num_classes
    if stacked:
        from .vmap import train_stacked

        images, labels, spec, lr = training_data(src, variant, seed, runs[0], temperature)
        accs = train_stacked(images, labels, arch, proto, seed, runs, test=test, num_classes=k, lr=lr,
                             label_spec=spec, device=device)
        return {"accs": [100.0 * a for a in accs], "curves": []}
    accs, curves = [], []
    from condense.runtime.progress import bar as progress_bar

    texture = _synset(src.path, src.sha256).texture if src.kind == "synset" else None
    with progress_bar(total=proto.epochs * len(runs), desc=f"{arch} run {runs[0]}", unit="ep", leave=False,
                      disable=not EPOCH_BARS) as bar:
        for r in runs:
            images, labels, spec, lr = training_data(src, variant, seed, r, temperature)
            history: list[float] = []
            accs.append(100.0 * evaluate(images, labels, arch, proto, seed, test=test, num_classes=k, run=r, lr=lr,
                                         label_spec=spec, device=device, history=history,
                                         on_epoch=lambda *_: bar.update(1), texture=texture))
            curves.append(history)
    return {"accs": accs, "curves": curves}


def job_kwargs(src: Source, arch: str, variant: str, protocol: TrainProtocol, seed: int, runs: list[int],
               stacked: bool, temperature: float | None = None, split: str = "test") -> dict[str, Any]:
    """The keyword arguments of :func:`run_job` (plain data: picklable, JSON-able). The test split
    is implied, not named, so the resume keys of earlier job logs stay valid."""
    # fields at their defaults that condense 0.6 did not have are left out: earlier job keys stay valid
    source = {k: v for k, v in asdict(src).items()
              if not ((k in ("labels", "limit_train") and v is None) or (k == "limit_seed" and v == 0))}
    kwargs = {"source": source, "arch": arch, "variant": variant, "protocol": protocol_dict(protocol), "seed": seed,
              "runs": list(runs), "stacked": stacked, "temperature": temperature}
    return kwargs if split == "test" else {**kwargs, "split": split}
