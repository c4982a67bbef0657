"""The Python API for notebooks: condense's commands as functions returning their results.

    from condense.workflows.api import evaluate_sets, synthesize
    s = synthesize("dm", dataset="toy", ipc=1, iters=50, out="runs/toy/dm.h5", callback=plot_loss)
    loader = DataLoader(s.as_dataset(), batch_size=64, shuffle=True)

Keywords are the command's options, named as its flags are (``--lr-img`` is ``lr_img``):
the fields of its configuration, built by :func:`condense.config.make_config`, so an unknown
keyword or a value of the wrong type is one ConfigError line naming it. ``preset=`` reads a
preset's section first, as ``--preset`` does, and keywords override it. Paths may be
``pathlib.Path``. Nothing draws progress bars unless ``progress=True``; messages (resuming,
a skipped step, the evaluation table) are printed as the commands print them. Every call
resumes or reuses what its output already holds, as the commands do.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Callable, Mapping, Sequence, TypeVar

from evals import EvalConfig, run_eval
from evals.validation import validation_evaluator
from trajectories.record import BufferConfig, record_store
from trajectories.store import TrajectoryStore, open_store

from ..config import describe, make_config, preset_section
from ..runtime.errors import CondenseError, ConfigError
from ..jobs import resolve_device
from ..labels import squeeze
from ..labels.teacher_file import TeacherFile
from ..loggers import make_loggers
from ..methods import get_method, runner
from ..methods.loop import IterationCallback, observed, run_folder
from ..synset import SynSet
from ..plots import save_set_grid

C = TypeVar("C")


def synthesize(method: str, *, backend: str | None = None, preset: str | None = None,
               callback: IterationCallback | None = None, progress: bool = False,
               log: str | Sequence[str] | None = None, announce: Callable[[str], None] | None = None,
               **fields: Any) -> SynSet:
    """``condense synth``: distil a set with ``method`` (tm, dm, dam, gm, sre2l, rded, random, ...),
    write it to ``out`` (with its run folder ``<out>.run/`` and grid ``<out>.png``) and return it.

    ``backend``: torch or jax (None: the method's own). ``callback(iteration, row, current)`` is
    called after every iteration of an iterative method with the 0-based iteration, its metrics
    row (``loss``, ``seconds``, ``event``, ...: a metrics.csv row) and ``current()``, which makes
    the set as it then stands (only when called, during the callback). ``log``: ``tensorboard``
    and/or ``wandb`` beside the run folder's metrics.csv (:mod:`condense.loggers`); a missing
    package is one ConfigError line before any work. ``eval_every=N`` scores the set on the
    validation split every N iterations (the row's ``eval_acc``). ``announce`` gets one line
    with the settings before the work starts (the CLI prints it).
    """
    entry = get_method(method)
    section = _section(preset, "synth")
    named = section.pop("method", method)  # selects the method on the command line; here ``method`` does
    if named != method:
        raise ConfigError(f"preset {preset!r} is for method {named}, not {method}")
    preset_backend = section.pop("backend", None)
    backend = backend or preset_backend or entry.default_backend
    run = runner(entry, backend)
    cfg = _config(entry.config, section, preset, fields)
    loggers = make_loggers(log, run_folder(cfg.out), {"method": method, "backend": backend, **asdict(cfg)})
    device = resolve_device(cfg.device)
    if announce is not None:
        announce(f"condense synth {method} --backend {backend}: {describe(cfg)}")
    evaluate = validation_evaluator(cfg, device) if getattr(cfg, "eval_every", 0) else None
    with observed(callback, loggers):
        s = run(cfg, device, evaluate=evaluate, bars=progress)
    if not os.path.isfile(cfg.out):  # a method (a plugin's too) that returned its set unwritten
        raise CondenseError(f"synth {method} returned without writing {cfg.out}: nothing was saved")
    save_set_grid(s, cfg.out)
    return s


def record_experts(*, preset: str | None = None, progress: bool = False, **fields: Any) -> TrajectoryStore:
    """``condense buffer``: record (or finish recording) the expert trajectories of ``out``;
    returns the store opened for reading (``len(store)`` experts, ``store.expert(i)`` rows)."""
    cfg = _config(BufferConfig, _section(preset, "buffer"), preset, fields)
    record_store(cfg, bars=progress)
    return open_store(cfg.out)


def train_teacher(*, preset: str | None = None, progress: bool = False, **fields: Any) -> TeacherFile:
    """``condense teacher``: train a teacher network and write its file ``out`` (a rerun with the
    same settings reads it back); returns the teacher file (``.net``, ``.accuracy``, ...)."""
    cfg = _config(squeeze.TeacherConfig, _section(preset, "teacher"), preset, fields)
    return squeeze.train_teacher(cfg, resolve_device(cfg.device), progress=progress)


def evaluate_sets(paths: str | os.PathLike | Sequence[str | os.PathLike] = (), *, preset: str | None = None,
                  progress: bool = False, **fields: Any) -> list[dict[str, Any]]:
    """``condense eval``: train fresh networks on the set files ``paths`` (and the baselines the
    options ask for); write the report ``json`` (resumable, as the command); returns its result
    rows, the dicts ``condense eval --json`` writes (``synset``, ``method``, ``arch``, ``variant``,
    ``accs`` in percent, ``mean``, ``std``, ``ci95``, ...)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    cfg = _config(EvalConfig, _section(preset, "eval"), preset, fields)
    return run_eval(cfg, [os.fspath(p) for p in paths], bars=progress)["results"]


def label_curve(synset: str | os.PathLike, *, progress: bool = False, **fields: Any) -> dict[str, Any]:
    """``condense labels SYNSET --curve``: the storage-vs-accuracy curve of a hard-label set's labels.
    Makes the variants (hard, static, per-view, per-view through each of ``codecs``) into the folder
    ``out``, evaluates each beside random real (resumable), writes ``labels.md``, ``labels.json``
    and ``labels.png`` there; returns the ``labels.json`` document (``rows``: ``variant``,
    ``codec``, ``label_bytes``, ``fraction_of_per_view``, ``mean``, ``ci95``, ``n``, ...;
    ``random``: random real)."""
    from . import label_curve as curve

    cfg = _config(curve.CurveConfig, {}, None, {"synset": synset, **fields})
    return curve.label_curve(cfg, bars=progress)


def _section(preset: str | None, command: str) -> dict[str, Any]:
    return dict(preset_section(preset, command)) if preset else {}


def _config(cls: type[C], section: Mapping[str, Any], preset: str | None, fields: Mapping[str, Any]) -> C:
    """``cls`` from its defaults < the preset's section < the keywords (paths as strings)."""
    keywords = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in fields.items()}
    return make_config(cls, section, keywords, where=f"preset {preset!r} or the keywords" if preset else "")
