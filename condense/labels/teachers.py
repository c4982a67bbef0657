"""Teachers: trained networks whose predictions become soft labels.

A teacher is a teacher file written by ``condense teacher`` (:mod:`.teacher_file`), one epoch
of one or more experts in a trajectory store (the final epoch by default), or a committee of
teacher files. Two ways of voting:

- experts of one store (``--committee N``): the average of their class probabilities at the
  labelling temperature T, returned as logits T · log(mean p) so that softmax(· / T) gives
  that average back;
- teacher files of several architectures (CV-DD, Cui et al. 2025: ``--committee-teacher``):
  the weighted sum of their logits Σ_i w_i z_i with w = softmax(prior / τ), the prior being
  each member's measured accuracy in percent (its validation accuracy, else its test
  accuracy; CV-DD reads its priors from a fixed per-dataset table of the same accuracies), τ
  the committee temperature (CV-DD: 10 to relabel, 5 to recover) (:func:`committee_weights`).

Every teacher's ``source`` is plain data that names its files with their content hashes
(store: its key), so :func:`teacher_of_source` builds the same teacher again, e.g. to label
random real images as a set's labels were made (fair scores).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from condense.runtime.errors import ConfigError
from condense.nets import build_net
from condense.synset import SynSet

from .teacher_file import TeacherFile, is_teacher_file, load_teacher_file


@dataclass
class Teacher:
    """Networks in eval mode (one, or a committee) and where they came from."""

    nets: list[nn.Module]
    source: dict[str, Any] = field(default_factory=dict)
    amp: bool = True  # mixed precision when labelling on CUDA
    weights: list[float] | None = None  # CV-DD's committee: the weighted sum of the members' logits

    def to(self, device: str | torch.device) -> "Teacher":
        self.nets = [net.to(device) for net in self.nets]
        return self

    @torch.no_grad()
    def logits(self, x: torch.Tensor, temperature: float = 1.0, batch: int = 512) -> torch.Tensor:
        """Teacher logits [B, K] for images ``x`` [B, C, H, W] (committee: see module doc)."""
        out = []
        amp = self.amp and x.is_cuda  # bfloat16 forward on GPUs (the labels are stored as float32 either way)
        for start in range(0, x.shape[0], batch):
            xb = x[start:start + batch]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                z = [net(xb).float() for net in self.nets]
            if len(z) == 1:
                out.append(z[0])
            elif self.weights is not None:
                out.append(sum(w * zi for w, zi in zip(self.weights, z)))
            else:
                p = torch.stack([torch.softmax(zi / temperature, dim=-1) for zi in z]).mean(0)
                out.append(temperature * torch.log(p.clamp_min(1e-12)))
        return torch.cat(out).float()


def class_order(dataset: str, data: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The class names, in label order, of a set or dataset: those it recorded, else the registry's
    (empty when only the dataset's files know them)."""
    from condense.data import dataset_info

    names = (data or {}).get("class_names")
    return tuple(names) if names else tuple(dataset_info(dataset).class_names)


def check_inputs(where: str, have: tuple[str, Any, Sequence[int]], want: tuple[str, Any, Sequence[int]],
                 what: str = "data") -> None:
    """One-line ConfigError unless a teacher (read from ``where``) trained on ``have`` = (dataset,
    transform description, image shape) takes the images of ``want`` (the ``what``: set or data)."""
    (dataset, transform, shape), (w_dataset, w_transform, w_shape) = have, want
    if dataset != w_dataset:
        raise ConfigError(f"teacher {where} was trained on {dataset}, the {what} is {w_dataset}")
    if transform != w_transform:
        raise ConfigError(f"teacher {where} saw another normalisation/ZCA than the {what} ({transform} vs {w_transform})")
    if [int(v) for v in shape] != [int(v) for v in w_shape]:
        raise ConfigError(f"teacher {where} takes images of shape {[int(v) for v in shape]}, the {what}'s are "
                          f"{[int(v) for v in w_shape]}")


def check_fits(tf: TeacherFile, where: str, dataset: str, transform: dict[str, Any], image_shape: Sequence[int],
               num_classes: int, class_names: Sequence[str]) -> None:
    """One-line ConfigError unless teacher file ``tf`` (read from ``where``) takes the images and
    speaks the classes of ``dataset``: same dataset, pixel transform, image shape and class order."""
    check_inputs(where, (tf.dataset, tf.transform.describe(), tf.image_shape), (dataset, transform, image_shape))
    if tf.num_classes != num_classes:
        raise ConfigError(f"teacher {where} has {tf.num_classes} classes, {dataset} has {num_classes}")
    if tf.class_names and class_names and tuple(tf.class_names) != tuple(class_names):
        k = next(i for i, (a, b) in enumerate(zip(tf.class_names, class_names)) if a != b) \
            if len(tf.class_names) == len(class_names) else 0
        raise ConfigError(f"class order of teacher {where} and the data differ (class {k} is "
                          f"{tf.class_names[k]!r} for the teacher, {class_names[k]!r} for the data); "
                          "relabelling would pair images with the wrong classes")


def check_finite_teacher(net: nn.Module, path: str, what: str = "") -> None:
    """One-line ConfigError when a weight or BatchNorm statistic of the teacher ``net`` (read from
    ``path``; ``what``: which of its networks) is not finite: its labels and the statistics sre2l
    matches would all be NaN, and a run on them would only ever skip its steps."""
    for name, t in (*net.named_parameters(), *net.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"teacher {path}{what} has non-finite weights ({name})")


def teacher_of_file(path: str, tf: TeacherFile) -> Teacher:
    """A :class:`Teacher` of a loaded teacher file (its network in eval mode, frozen); refused when
    its weights are not finite."""
    from condense.synset import file_sha256

    check_finite_teacher(tf.net, path)

    for p in tf.net.parameters():
        p.requires_grad_(False)
    return Teacher([tf.net.eval()], {"file": str(path), "sha256": file_sha256(path), "arch": tf.arch,
                                     "accuracy": tf.accuracy})


def committee_weights(prior: Sequence[float], temperature: float) -> list[float]:
    """CV-DD's vote weights: softmax(prior / temperature) over the members (prior in percent)."""
    p = torch.tensor([float(v) for v in prior], dtype=torch.float64) / float(temperature)
    return torch.softmax(p, 0).tolist()


def member_prior(tf: TeacherFile) -> float:
    """A committee member's measured accuracy (percent): validation if measured, else test."""
    val = tf.val_accuracy
    return float(val) if val is not None and val >= 0 else float(tf.accuracy)


def load_committee(paths: Sequence[str], *, temperature: float, prior: Sequence[float] | None = None,
                   fits=None) -> tuple[Teacher, list[TeacherFile]]:
    """A CV-DD committee of the teacher files ``paths`` (two or more; the module doc) and the
    loaded files. ``fits(tf, path)`` checks each member against the data it will see (one-line
    ConfigError); members must agree on dataset, transform, image shape and classes."""
    if len(paths) < 2:
        raise ConfigError("a committee needs two or more teacher files")
    if len(set(map(str, paths))) != len(paths):
        raise ConfigError("a committee names each teacher file once")
    if prior is not None and len(prior) != len(paths):
        raise ConfigError(f"{len(prior)} priors for {len(paths)} committee members")
    if not temperature > 0:
        raise ConfigError(f"--committee-temperature must be positive, got {temperature}")
    files = [load_teacher_file(p) for p in paths]
    first = files[0]
    for path, tf in zip(paths, files):
        if fits is not None:
            fits(tf, path)
        check_fits(tf, str(path), first.dataset, first.transform.describe(), first.image_shape, first.num_classes,
                   first.class_names)
    priors = [float(v) for v in prior] if prior is not None else [member_prior(tf) for tf in files]
    if not all(v == v and abs(v) != float("inf") for v in priors):
        raise ConfigError("a committee member records no finite accuracy (its prior)")
    weights = committee_weights(priors, temperature)
    members = [teacher_of_file(str(p), tf) for p, tf in zip(paths, files)]
    source = {"committee": [m.source for m in members], "prior": priors, "temperature": float(temperature),
              "weights": weights}
    return Teacher([m.nets[0] for m in members], source, weights=weights), files


def teacher_of_source(source: dict[str, Any], num_classes: int, image_shape: Sequence[int]) -> Teacher:
    """The teacher a ``Teacher.source`` describes, rebuilt from its files; one-line ConfigError
    when a file is missing or is not the one recorded (content hash; store: its key)."""
    from condense.synset import file_sha256

    if "committee" in source:
        files = [m["file"] for m in source["committee"]]
        for m in source["committee"]:
            if not os.path.exists(m["file"]) or file_sha256(m["file"]) != m["sha256"]:
                raise ConfigError(f"committee member {m['file']} is not there or not the file recorded (SHA-256)")
        t, _ = load_committee(files, temperature=source["temperature"], prior=source["prior"])
        return t
    if "file" in source:
        if not os.path.exists(source["file"]):
            raise ConfigError(f"teacher {source['file']} is not there")
        t = teacher_of_file(source["file"], load_teacher_file(source["file"]))
        if t.source["sha256"] != source["sha256"]:
            raise ConfigError(f"teacher {source['file']} changed since the labels were made (its SHA-256 differs)")
        return t
    from trajectories.store import open_store

    store = open_store(source["store"])
    if store.meta.get("store_key") != source.get("store_key"):
        raise ConfigError(f"store {source['store']} is not the one recorded (its store key differs)")
    experts = [int(e) for e in source["experts"]]
    c, h, w = image_shape
    nets = []
    for i in experts:
        net = build_net(store.meta["arch"], c, num_classes, (h, w))
        store.layout.load_into(net, store.epoch(i, int(source["epoch"])))
        check_finite_teacher(net, source["store"], f" (expert {i})")
        nets.append(net.eval())
    return Teacher(nets, dict(source))


def load_teacher(folder: str, synset: SynSet, *, expert: int = 0, epoch: int | None = None,
                 committee: int = 1, members: Sequence[str] = (), committee_temperature: float = 10.0) -> Teacher:
    """The teacher in ``folder`` built for ``synset``'s images: a teacher file (``condense
    teacher``), with ``members`` the CV-DD committee of it and those teacher files (weights
    softmax(prior / committee_temperature)), or experts ``expert .. expert + committee - 1`` of
    a trajectory store at ``epoch`` (default: the last).

    Raises ConfigError (one line) when the teacher's dataset, normalisation/ZCA, image
    shape or class order differs from the set's, or the experts/epoch do not exist.
    """
    def fits(tf: TeacherFile, path: str) -> None:
        check_fits(tf, path, synset.dataset, synset.transform.describe(), synset.image_shape, synset.num_classes,
                   class_order(synset.dataset, synset.data))

    if members:
        if not is_teacher_file(folder):
            raise ConfigError(f"--committee-teacher: {folder} is not a teacher file (a committee votes across "
                              "teacher files; --committee N averages the experts of one store)")
        return load_committee([folder, *members], temperature=committee_temperature, fits=fits)[0]
    if is_teacher_file(folder):
        if committee != 1 or expert != 0 or epoch is not None:
            raise ConfigError(f"{folder} is a teacher file: --committee, --teacher-expert and --teacher-epoch "
                              "apply to trajectory stores only (--committee-teacher FILE adds teacher files)")
        tf = load_teacher_file(folder)
        fits(tf, folder)
        return teacher_of_file(folder, tf)
    from trajectories.store import open_store

    store = open_store(folder)
    meta = store.meta
    check_inputs(folder, (meta["dataset"], meta.get("transform"), meta.get("image_shape", [])),
                 (synset.dataset, synset.transform.describe(), synset.image_shape), "set")
    if committee < 1:
        raise ConfigError(f"--committee must be >= 1, got {committee}")
    if expert < 0 or expert + committee > len(store):
        raise ConfigError(f"teacher {folder} holds {len(store)} finished experts; experts {expert}.."
                          f"{expert + committee - 1} were asked for")
    epoch = store.epochs if epoch is None else int(epoch)
    if not 0 <= epoch <= store.epochs:
        raise ConfigError(f"--teacher-epoch must be in 0..{store.epochs} (the store's epochs), got {epoch}")
    c, h, w = synset.image_shape
    nets = []
    for i in range(expert, expert + committee):
        net = build_net(meta["arch"], c, synset.num_classes, (h, w))
        store.layout.load_into(net, store.epoch(i, epoch))
        check_finite_teacher(net, folder, f" (expert {i}, epoch {epoch})")
        nets.append(net.eval())
    return Teacher(nets, {"store": str(folder), "store_key": meta.get("store_key"), "arch": meta["arch"],
                          "experts": list(range(expert, expert + committee)), "epoch": epoch})
