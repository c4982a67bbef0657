"""One labelling run (``condense labels`` and a pipeline's ``labels`` step): teacher labels for a
set, then optionally a codec, written to a new file.

A rerun with the same settings on the same input finds its output and does nothing: the
output records the settings and the input's SHA-256 (``provenance["labels_run"]``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from condense.runtime.errors import ConfigError, CondenseError
from condense.synset import SynSet, file_sha256, load_synset

DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
SPREAD = ("devices", "executor", "address")  # where the work runs: not what the labels are


@dataclass
class LabelsConfig:
    synset: str | None = None  # the input set file
    teacher: str | None = None  # teacher file or store; None with views: the teacher the set was made with
    teacher_expert: int = 0
    teacher_epoch: int | None = None
    committee: int = 1
    views: str | None = None  # static | per-epoch; None: no relabelling (codec only) unless a teacher is given
    view_epochs: int = 300
    view_seed: int = 0
    view_strategy: str = DSA_DEFAULT
    temperature: float = 1.0
    codec: str | None = None
    projector_steps: int = 1500
    projector_lr: float = 3e-3
    out: str | None = None
    # spread the per-epoch views over workers (condense.runtime.executors): a range of epochs per job
    devices: list[str] | None = None
    executor: str = "local"
    address: str | None = None

    def validate(self) -> None:
        from condense.augment import DSAConfig
        from condense.codecs import parse_codec

        if not self.synset:
            raise ConfigError("no input set given")
        if not self.out:
            raise ConfigError("--out is required (or --info to inspect)")
        if not (self.teacher or self.views or self.codec):
            raise ConfigError("nothing to do: give --teacher/--views (soft labels) and/or --codec (compression)")
        if os.path.exists(self.out) and os.path.samefile(self.out, self.synset):
            raise ConfigError("--out must differ from the input: the input file is never modified")
        DSAConfig(strategy=self.view_strategy)  # a bad strategy or codec fails before any work
        if self.codec:
            parse_codec(self.codec)


def recorded_teacher(s: SynSet, path: str) -> str:
    """The teacher file a set was made with (sre2l, rded), or a one-line ConfigError."""
    recorded = (s.provenance.get("teacher") or {}).get("file")
    if not recorded:
        raise ConfigError(f"{path} ({s.method}) records no teacher: give --teacher FILE")
    if not os.path.exists(recorded):
        raise ConfigError(f"{path} was made with teacher {recorded}, which is not there: give --teacher FILE")
    return recorded


def run_labels(cfg: LabelsConfig, *, progress=print, bars: bool = True) -> SynSet:
    """Label (and/or compress) ``cfg.synset`` into ``cfg.out``; returns the written set."""
    from . import compress, load_teacher, relabel
    from .projector import ProjectorFit

    cfg.validate()
    fit = ProjectorFit(steps=cfg.projector_steps, lr=cfg.projector_lr)
    fit.validate()
    if not os.path.exists(cfg.synset):
        raise ConfigError(f"no such synthetic-set file: {cfg.synset}")
    record = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "synset", *SPREAD)},
              "input_sha256": file_sha256(cfg.synset)}
    done = _already_done(cfg.out, record)
    if done is not None:
        progress(f"{cfg.out}: already labelled with these settings")
        return done
    s = load_synset(cfg.synset)
    if cfg.teacher or cfg.views:
        cfg.teacher = cfg.teacher or recorded_teacher(s, cfg.synset)
        teacher = load_teacher(cfg.teacher, s, expert=cfg.teacher_expert, epoch=cfg.teacher_epoch,
                               committee=cfg.committee)
        spread = (cfg.devices and len(cfg.devices) > 1) or cfg.executor == "ray"
        s = relabel(s, teacher, views=cfg.views or "static", epochs=cfg.view_epochs, temperature=cfg.temperature,
                    view_seed=cfg.view_seed, strategy=cfg.view_strategy, progress=bars,
                    labeller=partial(spread_labels, cfg, progress) if spread and cfg.views == "per-epoch" else None)
    if cfg.codec:
        s = compress(s, cfg.codec, fit, progress=bars)
    s.provenance = dict(s.provenance, labels_run=record)
    s.save(Path(cfg.out))
    return s


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
    from . import load_teacher
    from .relabel import label_images

    cfg = LabelsConfig(**config)
    s = load_synset(cfg.synset)
    teacher = load_teacher(cfg.teacher, s, expert=cfg.teacher_expert, epoch=cfg.teacher_epoch,
                           committee=cfg.committee).to(device)
    labels, _ = label_images(s.images.to(device), teacher, s.num_classes, views="per-epoch", epochs=stop,
                             temperature=cfg.temperature, view_seed=cfg.view_seed, strategy=cfg.view_strategy,
                             first_epoch=first)
    return labels.numpy()  # plain arrays travel between processes; tensors would share memory with a finished worker
