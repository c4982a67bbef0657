"""One labelling run (``condense labels`` and a pipeline's ``labels`` step): teacher labels for a
set, then optionally a codec, written to a new file.

A rerun with the same settings on the same input finds its output and does nothing: the
output records the settings and the input's SHA-256 (``provenance["labels_run"]``).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from functools import partial
from pathlib import Path

from condense.augment import parse_strategy
from condense.codecs import parse_codec
from condense.config import configclass, setting
from condense.config.parts import DSA_DEFAULT, Committee, Data, Run, Training, Workers
from condense.runtime.errors import ConfigError, CondenseError
from condense.synset import SynSet, file_sha256, load_synset

from .relabel import VIEW_MODES, label_images
from condense.runtime.files import holding_lock

SPREAD = ("devices", "executor", "address")  # where the work runs: not what the labels are
COMMITTEE = ("committee_teacher", "committee_temperature")


@configclass(Data, Committee, Run, Training, Workers, part="labels",
             drop=("dataset", "data_root", "limit_train", "val_size", "zca", "arch", "ipc", "trajectories", "seed",
                   "device", "epochs", "lr", "momentum", "weight_decay", "batch_size", "lr_decay_at", "shards"),
             defaults={"out": None, "temperature": 1.0},
             helps={"teacher": "teacher file (condense teacher) or trajectory-store folder whose experts label the set "
                               "(default with --views: the teacher the set was made with, if any)",
                    "out": "file to write (must differ from the input)",
                    "temperature": "distillation temperature of the soft labels (stored with them)",
                    "devices": "label ranges of the per-epoch views on these devices at once: cuda:0,cuda:1 or "
                               "cpu,cpu"})
class LabelsConfig:
    """A labelling run: a teacher's predictions per image of a set (views static) or per augmented view the
    evaluation will train on (views per-epoch), then optionally a codec that compresses them. The input file
    is never modified."""

    synset: str | None = setting(None, "the input set file")
    teacher_expert: int = setting(0, "first expert of a store teacher", ge=0)
    teacher_epoch: int | None = setting(None, "epoch of the store's experts (default: the last)", ge=0,
                                        unit="epochs")
    committee: int = setting(1, "average the predictions of N experts", gt=0, le=1000)
    views: str | None = setting(None, "one label per image (static), or one per augmented view of every "
                                      "evaluation epoch (per-epoch); default: static with --teacher",
                                choices=VIEW_MODES)
    view_epochs: int = setting(300, "epochs of views to label (an evaluation may train at most this many)", gt=0, le=10_000,
                               unit="epochs")
    view_seed: int = setting(0, "seed of the views", ge=0)
    view_strategy: str = setting(DSA_DEFAULT, "augmentation of the views (and of the evaluation that trains on "
                                              "them): DSA's groups joined by _, or rrc+flip (SRe2L/FKD's random-"
                                              "resized crop and flip)", check=parse_strategy)
    codec: str | None = setting(None, "label codec: NAME or NAME:key=value,... (`condense labels --help` lists them)",
                                metavar="SPEC", check=parse_codec)
    projector_steps: int = setting(1500, "projector training steps", gt=0)
    projector_lr: float = setting(3e-3, "projector Adam learning rate", gt=0)

    def validate(self) -> None:
        """What the declarations cannot say: an input, an output apart from it, and something to do."""
        if not self.synset:
            raise ConfigError("no input set given")
        if not self.out:
            raise ConfigError("--out is required (or --info to inspect)")
        if not (self.teacher or self.views or self.codec):
            raise ConfigError("nothing to do: give --teacher/--views (soft labels) and/or --codec (compression)")
        if os.path.exists(self.out) and os.path.samefile(self.out, self.synset):
            raise ConfigError("--out must differ from the input: the input file is never modified")


def recorded_teacher(s: SynSet, path: str) -> str:
    """The teacher file a set was made with (sre2l, rded), or a one-line ConfigError."""
    recorded = (s.provenance.get("teacher") or {}).get("file")
    if not recorded:
        raise ConfigError(f"{path} ({s.method}) records no teacher: give --teacher FILE")
    if not os.path.exists(recorded):
        raise ConfigError(f"{path} was made with teacher {recorded}, which is not there: give --teacher FILE")
    return recorded


def recorded_committee(s: SynSet, path: str) -> list[str]:
    """The other members of the CV-DD committee a set was recovered with (none without one)."""
    made = s.provenance.get("committee")
    members = made.get("committee") if isinstance(made, dict) else None
    if not isinstance(members, list):
        return []
    members = [str(m.get("file")) for m in members if isinstance(m, dict)][1:]
    for m in members:
        if not os.path.exists(m):
            raise ConfigError(f"{path} was recovered with committee member {m}, which is not there: give --teacher "
                              "FILE and --committee-teacher FILE ...")
    return members


@holding_lock(lambda cfg, *a, **k: cfg.out)
def run_labels(cfg: LabelsConfig, *, progress=print, bars: bool = True) -> SynSet:
    """Label (and/or compress) ``cfg.synset`` into ``cfg.out``; returns the written set."""
    from . import compress, relabel
    from .projector import ProjectorFit

    cfg.validate()
    fit = ProjectorFit(steps=cfg.projector_steps, lr=cfg.projector_lr)
    if not os.path.exists(cfg.synset):
        raise ConfigError(f"no such synthetic-set file: {cfg.synset}")
    unused = () if cfg.committee_teacher else COMMITTEE  # without a committee, 0.7's records still match
    record = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "synset", *SPREAD, *unused)},
              "input_sha256": file_sha256(cfg.synset)}
    done = _already_done(cfg.out, record)
    if done is not None:
        progress(f"{cfg.out}: already labelled with these settings")
        return done
    s = load_synset(cfg.synset)
    if s.texture is not None:
        raise ConfigError(f"{cfg.synset} holds textures: networks train on crops of its canvases, which a label "
                          "per canvas does not describe")
    if cfg.teacher or cfg.views:
        if not cfg.teacher:  # the set's own teacher, and the committee it was recovered with, if any
            cfg.teacher = recorded_teacher(s, cfg.synset)
            cfg.committee_teacher = cfg.committee_teacher or recorded_committee(s, cfg.synset)
        teacher = teacher_for(cfg, s)
        spread = (cfg.devices and len(cfg.devices) > 1) or cfg.executor == "ray"
        if spread and cfg.views == "per-epoch":
            labeller = partial(spread_labels, cfg, progress)
        elif cfg.devices:  # one device named (or static labels): label there, in this process
            labeller = partial(label_on, cfg.devices[0])
        else:
            labeller = None
        s = relabel(s, teacher, views=cfg.views or "static", epochs=cfg.view_epochs, temperature=cfg.temperature,
                    view_seed=cfg.view_seed, strategy=cfg.view_strategy, progress=bars, labeller=labeller)
    if cfg.codec:
        s = compress(s, cfg.codec, fit, progress=bars)
    s.provenance = dict(s.provenance, labels_run=record)
    s.save(Path(cfg.out))
    return s


def teacher_for(cfg: LabelsConfig, s: SynSet):
    """The teacher ``cfg`` names, built for the images of ``s``."""
    from . import load_teacher

    return load_teacher(cfg.teacher, s, expert=cfg.teacher_expert, epoch=cfg.teacher_epoch, committee=cfg.committee,
                        members=cfg.committee_teacher, committee_temperature=cfg.committee_temperature)


def label_on(device: str, images, teacher, num_classes: int, **kw):
    """:func:`~condense.labels.relabel.label_images` with the images [N, C, H, W] and the teacher moved to
    ``device`` (labels come back on the CPU)."""
    return label_images(images.to(device), teacher.to(device), num_classes, **kw)


def _already_done(out: str, record: dict) -> SynSet | None:
    if not os.path.exists(out):
        return None
    try:
        s = load_synset(out)
    except CondenseError:
        return None
    return s if s.provenance.get("labels_run") == record else None


def spread_labels(cfg: LabelsConfig, note, images, teacher, num_classes, *, epochs: int, progress: bool = False, **kw):
    """:func:`~condense.labels.relabel.label_images` with the epochs split into one range per
    worker (jobs on ``cfg.devices`` or Ray); every view is keyed by (view_seed, epoch), so the
    labels are those of one process (up to a convolution's rounding on another device)."""
    import torch

    from condense.runtime.executors import default_workers, run_all
    from condense.jobs import Job

    workers = default_workers(cfg.executor, cfg.devices)
    bounds = [round(epochs * k / workers) for k in range(workers + 1)]
    jobs = [Job(f"epochs{a}-{b}", "condense.labels.run:label_epochs",
                {"config": asdict(cfg), "first": a, "stop": b}) for a, b in zip(bounds, bounds[1:]) if b > a]
    parts = run_all(jobs, executor=cfg.executor, devices=cfg.devices, address=cfg.address, note=note,
                    what="labelling jobs")
    labels = torch.cat([torch.from_numpy(parts[j.key]) for j in jobs])
    from .relabel import per_view_spec

    return labels, per_view_spec(kw["temperature"], kw["view_seed"], kw["strategy"])


def label_epochs(config: dict, first: int, stop: int, device: str = "cpu"):
    """A job: the per-view labels of epochs first..stop-1 of ``config``'s set and teacher."""

    cfg = LabelsConfig(**config)
    s = load_synset(cfg.synset)
    teacher = teacher_for(cfg, s).to(device)
    labels, _ = label_images(s.images.to(device), teacher, s.num_classes, views="per-epoch", epochs=stop,
                             temperature=cfg.temperature, view_seed=cfg.view_seed, strategy=cfg.view_strategy,
                             first_epoch=first)
    return labels.numpy()  # plain arrays travel between processes; tensors would share memory with a finished worker
