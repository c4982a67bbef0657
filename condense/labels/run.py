"""One labelling run (``condense labels`` and a pipeline's ``labels`` step): teacher labels for a
set, then optionally a codec, written to a new file.

A rerun with the same settings on the same input finds its output and does nothing: the
output records the settings and the input's SHA-256 (``provenance["labels_run"]``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from condense.errors import ConfigError, CondenseError
from condense.synset import SynSet, file_sha256, load_synset

DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"


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
    record = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "synset")}, "input_sha256": file_sha256(cfg.synset)}
    done = _already_done(cfg.out, record)
    if done is not None:
        progress(f"{cfg.out}: already labelled with these settings")
        return done
    s = load_synset(cfg.synset)
    if cfg.teacher or cfg.views:
        teacher = load_teacher(cfg.teacher or recorded_teacher(s, cfg.synset), s, expert=cfg.teacher_expert,
                               epoch=cfg.teacher_epoch, committee=cfg.committee)
        s = relabel(s, teacher, views=cfg.views or "static", epochs=cfg.view_epochs, temperature=cfg.temperature,
                    view_seed=cfg.view_seed, strategy=cfg.view_strategy, progress=bars)
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
