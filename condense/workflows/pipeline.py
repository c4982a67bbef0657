"""``condense run``: buffer → synth → eval from one preset, every output in one folder.

A pipeline preset has a ``run`` section naming its steps, and one section per step:

    run:   {steps: [buffer, synth-tm, synth-dm, eval], out: runs/quickstart}
    buffer:   {...BufferConfig...}            experts  -> <out>/experts
    synth-tm: {method: tm, ...TMConfig...}    a set    -> <out>/tm_ipc1.h5 (+ tm_ipc1.png)
    synth-dm: {method: dm, ...}               a set    -> <out>/dm_ipc1.h5 (+ dm_ipc1.png)
    eval:     {...EvalConfig...}              every set above, beside the random baseline
                                                       -> <out>/results.json, <out>/plots/
    teacher:  {...TeacherConfig...}           a teacher file -> <out>/teacher.h5 (sre2l, rded: the last one)
    labels-soft: {set: synth-x, views: per-epoch, ...LabelsConfig...}
                                              the set relabelled -> <out>/<set>.soft.h5

A step's kind is its name up to the first ``-``. Outputs always land under ``out``
(a section's own ``out`` is taken relative to it); ``tm`` reads the trajectories of the
last ``buffer`` step unless its section names one (``trajectories: buffer-flat``: that
step's store; any other value: a store path). An eval section evaluates every set made
before it, or those of the synth steps it lists (``sets: [synth-tm1, ...]``), and writes
``results.json`` (step ``eval``) or ``results-<rest of its name>.json`` (``eval-val``:
``results-val.json``). Each step appends its wall time and peak memory to
``<out>/steps.jsonl`` when it ends (killed segments leave no line). Every step resumes (the store skips
finished experts, synthesis restarts from its checkpoint, a coreset chosen with the same
settings is reused, the evaluation grid from its job log), so rerunning a killed pipeline
finishes it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from condense.config import configclass, load_preset, make_config, setting
from condense.config.parts import Evaluation, Run, Training
from condense.runtime.errors import ConfigError
from condense.jobs import resolve_device
from condense.runtime.perf import PeakMemory
from condense.runtime.files import append_line, ensure_folder, holding_lock, inside

STEP_KINDS = ("buffer", "teacher", "synth", "labels", "eval")


def _check_step(name: str) -> None:
    if step_kind(name) not in STEP_KINDS:
        raise ConfigError(f"unknown step {name!r}: a step is a section named buffer*, teacher*, synth*, labels* or eval*")


@configclass(Run, Training, Evaluation, part="pipeline",
             drop=("seed", "lr", "momentum", "weight_decay", "batch_size", "lr_decay_at", "temperature"),
             defaults={"out": "runs/quickstart", "epochs": None, "runs": None},
             helps={"out": "output folder (every step's outputs land under it)",
                    "device": "synthesis and recording device; eval uses it unless its section lists devices",
                    "epochs": "evaluation training epochs (overrides the eval sections')",
                    "runs": "evaluation runs (overrides the eval sections')"})
class RunConfig:
    """The run section of a pipeline preset: which sections to run, in order (buffer -> synth -> eval, ...),
    and the folder every output lands in. A rerun resumes every step."""

    steps: list[str] = setting(factory=list, help="the sections to run, in order (buffer*, teacher*, synth*, "
                                                  "labels*, eval*)", check=_check_step)

    def validate(self) -> None:
        """What the declarations cannot say: a pipeline has steps."""
        if not self.steps:
            raise ConfigError("the run section lists no steps (e.g. steps: [buffer, synth-tm, eval])")


def step_kind(name: str) -> str:
    return name.split("-", 1)[0]


def step_config(kind: str, values: dict[str, Any], where: str) -> tuple[str | None, Any]:
    """(method name for a synth step else None, the typed config of the step's section)."""
    values = dict(values or {})
    values.pop("sets", None)  # an eval section's choice of sets: the pipeline's, not EvalConfig's
    if kind == "buffer":
        from trajectories.record import BufferConfig

        return None, make_config(BufferConfig, values, where=where)
    if kind == "teacher":
        from condense.labels.squeeze import TeacherConfig

        return None, make_config(TeacherConfig, values, where=where)
    if kind == "labels":
        from condense.labels.run import LabelsConfig

        values["synset"] = values.pop("set", None)
        if not values["synset"]:
            raise ConfigError(f"{where}: a labels step needs 'set' (a synth or labels step before it)")
        return None, make_config(LabelsConfig, values, where=where)
    if kind == "synth":
        from condense.methods import get_method

        method = values.pop("method", None)
        if not method:
            raise ConfigError(f"{where}: a synth step needs 'method'")
        return method, make_config(get_method(method).config, values, where=where)
    from evals.grid import EvalConfig

    return None, make_config(EvalConfig, values, where=where)


def _under(out: Path, given: str | None, default: str) -> str:
    """Where a step writes: its ``out`` (or ``default``) inside the run folder ``out``, never outside."""
    return str(inside(out, given or default, "a step's out"))


@holding_lock(lambda preset, cfg, *a, **k: cfg.out)
def run_pipeline(preset: str, cfg: RunConfig, *, note: Callable[[str], None] = print, bars: bool = True) -> dict[str, Any]:
    """Run every step of ``preset`` (name or YAML file) in order; returns the eval report (if any)."""
    cfg.validate()
    data = load_preset(preset)
    missing = [s for s in cfg.steps if s not in data]
    if missing:
        raise ConfigError(f"preset {preset!r} names step {missing[0]!r} but has no such section")
    configs = [(s, *step_config(step_kind(s), data[s], f"preset {preset!r}, section {s!r}")) for s in cfg.steps]
    out = Path(cfg.out)
    ensure_folder(out, "the run folder")
    device = resolve_device(cfg.device)
    stores, teachers, sets, doc, t0 = {}, {}, {}, {}, time.perf_counter()
    for name, method, step in configs:
        kind, started, cpu_started = step_kind(name), time.perf_counter(), _cpu_seconds()
        note(f"== {name}")
        with PeakMemory() as peak:
            if kind == "buffer":
                from trajectories.record import record_store

                step.out = _under(out, None if step.out == _default(step, "out") else step.out, "experts")
                if cfg.device is not None:
                    step.devices = [cfg.device]
                record_store(step, progress=note, bars=bars)
                stores[name] = step.out
            elif kind == "teacher":
                from condense.labels.squeeze import train_teacher

                step.out = _under(out, None if step.out == _default(step, "out") else step.out, f"{name}.h5")
                train_teacher(step, device, progress=bars)
                teachers[name] = step.out
            elif kind == "synth":
                sets[name] = _synth(method, step, out, stores, teachers, sets, device, note, bars)
            elif kind == "labels":
                from condense.labels.run import run_labels

                if step.synset not in sets:
                    raise ConfigError(f"section {name!r} labels set {step.synset!r}, which is not a synth or labels "
                                      "step run before it")
                step.synset = sets[step.synset]
                step.teacher = teachers.get(step.teacher, step.teacher)
                step.committee_teacher = [teachers.get(t, t) for t in step.committee_teacher]
                step.out = _under(out, step.out, f"{Path(step.synset).stem}.{name.split('-', 1)[-1]}.h5")
                run_labels(step, progress=note, bars=bars)
                sets[name] = step.out
            else:
                from evals.harness import run_eval

                suffix = name.split("-", 1)[1] if "-" in name else ""
                step.json = str(out / (f"results-{suffix}.json" if suffix else "results.json"))
                step.plots = str(out / (f"plots-{suffix}" if suffix else "plots"))
                if cfg.runs is not None:
                    step.runs = cfg.runs
                if cfg.epochs is not None:
                    step.epochs = cfg.epochs
                if cfg.device is not None and step.devices == ["cpu"]:
                    step.devices = [cfg.device]
                step.teacher = teachers.get(step.teacher, step.teacher)  # --transfer's random real and full rows
                doc = run_eval(step, _chosen_sets(data[name], sets, name), note=note, bars=bars)
        seconds = time.perf_counter() - started
        _log_step(out, name, seconds, _cpu_seconds() - cpu_started, peak)
        note(f"{name}: done in {seconds:.0f} s")
    note(f"pipeline finished in {(time.perf_counter() - t0) / 60:.1f} min; outputs in {out}/")
    return doc


def _chosen_sets(section: dict | None, sets: dict[str, str], name: str) -> list[str]:
    """The set files an eval step evaluates: those of the synth steps it lists, else all so far."""
    wanted = (section or {}).get("sets")
    if wanted is None:
        return list(sets.values())
    unknown = [w for w in wanted if w not in sets]
    if unknown:
        raise ConfigError(f"section {name!r} lists set {unknown[0]!r}, which is not a synth step run before it")
    return [sets[w] for w in wanted]


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes (an eval pool's)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _log_step(out: Path, name: str, seconds: float, cpu_seconds: float, peak: PeakMemory) -> None:
    """One line of ``steps.jsonl``: what this segment of the step cost (wall and CPU seconds of
    this process: on a shared machine the CPU time is the cost, the wall time the wait)."""
    row = {"step": name, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
           "peak_rss_mib": round(peak.rss_mib, 1),
           "peak_scope": peak.scope, "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if peak.cuda_mib is not None:
        row["peak_cuda_mib"] = round(peak.cuda_mib, 1)
    append_line(out / "steps.jsonl", json.dumps(row))


def _synth(method: str, step, out: Path, stores: dict[str, str], teachers: dict[str, str], sets: dict[str, str],
           device: torch.device, note, bars) -> str:
    """Run one synthesis step; returns the set's path (and writes its PNG grid beside it)."""
    from condense.methods import get_method, runner
    from condense.plots import save_set_grid

    size = f"ipc{step.ipc}" if hasattr(step, "ipc") else f"{step.images}img"  # krr-st: images, no classes
    step.out = _under(out, None if step.out == _default(step, "out") else step.out, f"{method}_{size}.h5")
    if hasattr(step, "static"):  # s2d: its static memory is a synth step run before it, or a file
        step.static = sets.get(step.static, step.static)
    if hasattr(step, "trajectories") and getattr(step, "finetune", "tm") == "tm":  # s2d reads experts only for tm
        if step.trajectories is None or step.trajectories == _default(step, "trajectories"):
            if not stores:
                raise ConfigError(f"the {method} step needs trajectories: put a buffer step before it")
            step.trajectories = list(stores.values())[-1]
        elif step.trajectories in stores:
            step.trajectories = stores[step.trajectories]
        elif step_kind(step.trajectories) == "buffer" and not Path(step.trajectories).exists():
            raise ConfigError(f"the {method} step reads the store of step {step.trajectories!r}, which is not run "
                              "before it")
    if hasattr(step, "teacher"):  # sre2l, rded: the last teacher step's file unless the section names one
        if step.teacher is None:
            if not teachers:
                raise ConfigError(f"the {method} step needs a teacher: put a teacher step before it")
            step.teacher = list(teachers.values())[-1]
        elif step.teacher in teachers:
            step.teacher = teachers[step.teacher]
    if hasattr(step, "committee_teacher"):  # sre2l: a CV-DD committee names teacher steps or files
        step.committee_teacher = [teachers.get(t, t) for t in step.committee_teacher]
    if hasattr(step, "teachers"):  # infer: teacher steps or files; default every teacher step before it
        if not step.teachers and not teachers:
            raise ConfigError(f"the {method} step needs teachers: put teacher steps before it")
        step.teachers = [teachers.get(t, t) for t in step.teachers] or list(teachers.values())
    s = runner(get_method(method))(step, device, progress=note, bars=bars)  # each method's default backend
    grid = save_set_grid(s, step.out)
    note(f"wrote {step.out} and {grid}")
    return step.out


def _default(step, name: str):
    f = type(step).__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else None

