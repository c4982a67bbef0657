"""An evaluation grid: sets × architectures × variants × runs, run by an executor, resumable.

:func:`plan` turns an :class:`EvalConfig` and a list of set files into groups (one
source, arch and variant; ``runs`` runs each) and validates everything a user can get
wrong before any training starts (one-line errors). :func:`run_grid` runs the groups'
jobs on the chosen executor and appends every finished job to ``jobs.jsonl`` in the run
folder ``<json>.run/`` as it arrives, so a killed grid keeps what finished and the same
command resumes the rest. Job keys hash everything that defines a job (the set's
SHA-256, arch, variant, protocol, seed, runs), so a changed file or flag never reuses a
stale number. :func:`aggregate` turns job results into the report's rows.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from condense.config import configclass, setting
from condense.config.parts import Augmentation, Data, Evaluation, Probe, Run, Training, Transfer, Workers
from condense.runtime.errors import CondenseError, ConfigError, FormatError
from condense.runtime.files import append_line, attr, read_h5, regular_file, run_subfolder, write_text
from condense.jobs import Job, JobResult, parse_device
from condense.nets import build_net, parse_arch_flag
from evals.stats import summarize
from condense.synset import file_sha256, load_synset
from condense.train import TrainProtocol
from condense.version import environment

from .protocol import SPLITS, Source, dataset_of, job_kwargs, labels_tag

JOB_FN = "evals.protocol:run_job"
BASELINES = ("random", "full")
# reference: MTT's / DC's evaluate_synset (epochs + 1 epochs, a new SGD after epoch epochs // 2 + 1, so the
# momentum is cleared at the drop); condense: the epochs asked for, lr x0.1 from half of them, momentum kept
SCHEDULES = ("reference", "condense")
SET_EPOCHS = 300  # the CPU protocol's evaluation epochs (docs/BENCHMARKS.md)
FULL_DATA_EPOCHS = 20  # the labelled full-data reference on a CPU (docs/BENCHMARKS.md)


@configclass(Data, Run, Training, Augmentation, Evaluation, Workers, Transfer, Probe, part="eval",
             drop=("limit_train", "val_size", "zca", "arch", "trajectories", "out", "device", "momentum",
                   "weight_decay", "lr_decay_at", "min_scale", "flip", "shards"),
             defaults={"dataset": None, "epochs": None, "lr": None, "temperature": None, "dsa_strategy": None,
                       "devices": ["cpu"]},
             many=("ipc",),
             helps={"dataset": "dataset of --baseline",
                    "ipc": "--baseline random: images per class; repeat for several",
                    "teacher": "where the teacher file that labelled the sets is now (default: as recorded)",
                    "seed": "base seed: run r uses seed (--seed, r)",
                    "epochs": f"training epochs (default {SET_EPOCHS}; --baseline full: {FULL_DATA_EPOCHS})",
                    "lr": "training lr (default: the set's learned lr, else 0.01)",
                    "temperature": "soft labels: distillation temperature (default: the set's)",
                    "dsa_strategy": "augmentation (default: a per-view set's own views, else DSA's groups; "
                                    "rrc+flip: random-resized crop + flip)",
                    "probe_epochs": "--transfer: epochs of the linear probe (0: no probe)"})
class EvalConfig:
    """An evaluation: fresh networks trained on synthetic sets with the standard protocol, accuracy reported
    (mean ± std, 95% interval) beside the random-real baseline.

    Protocol: SGD momentum 0.9, weight decay 5e-4, lr = the set's learned lr if it has one else
    0.01 (lr overrides), batch 256, lr x0.1 at half the epochs, DSA augmentation, test accuracy
    on the full test set. Run r uses seed (seed, r); the random-real baseline of each IPC is
    evaluated beside the sets (run r on the subset of seed seed + r), and every set is compared
    with it run by run. A rerun resumes: the finished jobs are kept in <json>.run/jobs.jsonl.
    """

    archs: list[str] = setting(factory=list, help="network spec; repeat for several (default: each set's own arch)",
                               repeat=True, flag="--arch", metavar="ARCH", check=parse_arch_flag)
    also_lr: float | None = setting(None, "a set with a learned lr also trains at this lr (e.g. 0.01): a "
                                          "'fixed-lr' row beside it", gt=0)
    robustness: bool = setting(False, "also train every set without augmentation (soft-label sets always get "
                                      "their hard-label variant)")
    hard_gap: bool = setting(True, "soft-label sets: also train on their hard labels and report the gap")
    random_baseline: bool = setting(True, "evaluate the random-real baseline of each IPC beside the sets")
    baseline: str | None = setting(None, "evaluate a baseline of --dataset instead of sets", choices=BASELINES)
    vmap_seeds: bool = setting(False, "train the runs of one arch at once (stacked models; falls back where it "
                                      "cannot)")
    json: str = setting("runs/eval/results.json", "report file (its jobs.jsonl beside it: a rerun resumes)",
                        metavar="PATH")
    plots: str | None = setting(None, "folder for accuracy.png and curves.png", metavar="DIR")
    split: str = setting("test", "measure on the test set, or on the validation split (to choose settings)",
                         choices=SPLITS)
    scores: bool = setting(False, "DD-Ranking's fair scores HLR, IOR, LRS, ARS: adds the full-data, hard-label and "
                                  "no-augmentation rows, and random real under each set's labels and augmentation "
                                  "(with --plots: fair.png)")
    full_runs: int | None = setting(None, "--scores: runs of the full-data reference (default --runs)", gt=0)
    full_accuracy: float | None = setting(None, "--scores: the full-data accuracy HLR uses, given instead of "
                                                "trained (ImageNet-1k)", gt=0, le=100, unit="percent")
    full_epochs: int | None = setting(None, f"--scores: epochs of the full-data reference (default "
                                            f"{FULL_DATA_EPOCHS}; --epochs is the sets')", gt=0, unit="epochs")
    random_labels: str = setting("set", "random real labelled as each set's labels were made (set: the fair "
                                        "comparison) or on hard labels only (hard: cheaper, the report says so)",
                                 choices=("set", "hard"))
    schedule: str = setting("reference", "training schedule: the reference code's (--epochs E trains E + 1 epochs "
                                         "and rebuilds SGD, momentum cleared, after epoch E // 2 + 1) or condense's "
                                         "(E epochs, lr x0.1 from epoch E // 2, momentum kept)", choices=SCHEDULES)
    mixup: float = setting(0.0, "mix every training batch with a permutation of itself, weight ~ Beta(a, a), "
                                "the labels mixed alike (INFER's evaluation: 0.8; 0: off)", ge=0, le=100)
    lrs_weight: float = setting(0.5, "--scores: w of LRS (DD-Ranking's)", ge=0, le=1)
    ars_weight: float = setting(0.5, "--scores: gamma of ARS (DD-Ranking's)", ge=0, le=1)

    def validate(self) -> None:
        """What the declarations cannot say: what a baseline needs, devices that exist here."""
        if self.baseline is not None:
            if not self.dataset:
                raise ConfigError(f"--baseline {self.baseline} needs --dataset")
            if self.baseline == "random" and not self.ipc:
                raise ConfigError("--baseline random needs --ipc (repeat --ipc for several)")
        for d in self.devices:
            parse_device(d)

    def protocol(self, default_epochs: int | None = None, *, epochs: int | None = None) -> TrainProtocol:
        """The training protocol of ``epochs`` (default: --epochs, else ``default_epochs``, else
        :data:`SET_EPOCHS`) under --schedule."""
        e = epochs or self.epochs or default_epochs or SET_EPOCHS
        return TrainProtocol(lr=self.lr, batch_size=self.batch_size, dsa=self.dsa, dsa_share=self.dsa_share,
                             mixup=self.mixup,
                             **({"dsa_strategy": self.dsa_strategy} if self.dsa_strategy else {}),
                             **schedule_of(self.schedule, e))


def schedule_of(schedule: str, epochs: int) -> dict[str, Any]:
    """The :class:`TrainProtocol` fields of ``schedule`` for "``epochs`` epochs" (see :data:`SCHEDULES`)."""
    if schedule == "condense":
        return {"epochs": epochs}
    # the reference loops `for ep in range(E + 1)` and decays after epoch `ep in [E // 2 + 1]`
    # (after the last one for E <= 2: never, in effect)
    first_decayed = epochs // 2 + 2
    if first_decayed > epochs:
        return {"epochs": epochs + 1, "decay_at": 1.0}
    return {"epochs": epochs + 1, "decay_epoch": first_decayed, "decay_restart": True}


@dataclass(frozen=True)
class Group:
    """Runs of one arch on one source under one variant: one row of the report."""

    source: Source
    arch: str
    variant: str
    protocol: TrainProtocol
    method: str
    ipc: int | None
    storage_bytes: dict[str, int] | None = None
    random_labels: str | None = None  # a set's: the label recipe its random-real baseline shares
    comparison: str | None = None  # a set's: why its random real is labelled otherwise than the set (None: it is not)
    runs: int | None = None  # None: the grid's --runs

    @property
    def name(self) -> str:
        return f"{self.source.label} | {self.arch} | {self.variant}"


def _load_set(path: str):
    if not os.path.exists(path):
        raise ConfigError(f"no such synthetic-set file: {path}")
    return load_synset(path)


def _check_split(ds, cfg: EvalConfig) -> None:
    """--split val on data without a validation split -> one line now, not a failure in every job."""
    if cfg.split == "val" and not len(ds.y_val):
        raise ConfigError(f"--split val: {ds.info.name} has no validation split here (val_size 0): nothing to measure on")


def _check_arch(arch: str, ds) -> None:
    """ArchError -> one-line ConfigError now, not a failure in every job later."""
    c, (h, w) = ds.info.channels, ds.info.image_size
    try:
        build_net(arch, c, ds.info.num_classes, (h, w))
    except CondenseError as e:
        raise ConfigError(f"--arch {arch} cannot train on {ds.info.name} images {c}x{h}x{w}: {e}") from None


def plan(cfg: EvalConfig, paths: Sequence[str]) -> list[Group]:
    """The groups to evaluate, validated (one-line ConfigError/FormatError for bad input)."""
    cfg.validate()
    if not paths and cfg.baseline is None:
        raise ConfigError("give synthetic-set files to evaluate, or --baseline random|full --dataset NAME")
    groups: list[Group] = []
    proto = cfg.protocol()
    seen: set[tuple[Source, str, str, TrainProtocol]] = set()

    def add(g: Group) -> None:  # a baseline several sets share is trained once
        key = (g.source, g.arch, g.variant, g.protocol)
        if key not in seen:
            seen.add(key)
            groups.append(g)

    def add_random(src: Source, ipc: int, arch: str, p: TrainProtocol = proto, labels: str | None = None,
                   variants: Sequence[str] = ("set",)) -> None:
        rnd = src.random_baseline(ipc, labels)
        for v in variants:
            add(Group(rnd, arch, v, p, "random", ipc))

    def add_full(base: Source, arch: str) -> None:
        if cfg.full_accuracy is not None and cfg.baseline != "full":
            return  # HLR uses the given number
        from condense.data.lazy import LazyImages

        if isinstance(dataset_of(base).x_train, LazyImages):
            raise ConfigError(f"{base.dataset} is read from its files as needed, so condense does not train on all of it: "
                              "give --full-accuracy PERCENT (e.g. the teacher architecture's published accuracy) for HLR")
        # --baseline full trains what --epochs says; beside sets (--scores) the reference keeps its own length
        p = cfg.protocol(FULL_DATA_EPOCHS) if cfg.baseline == "full" else \
            cfg.protocol(epochs=cfg.full_epochs or FULL_DATA_EPOCHS)
        add(Group(base, arch, "set", p, "full", None, runs=cfg.full_runs))

    for path in paths:
        s = _load_set(path)
        if s.label_spec.kind == "representation":
            raise ConfigError(f"{path} is a self-supervised set (images + representation targets, no classes): "
                              "evaluate it by transfer, e.g. --transfer fashion-mnist-1pct,sklearn-digits")
        src = Source.of_synset(path, s, file_sha256(path), cfg.data_root)
        try:
            ds = dataset_of(src)
        except CondenseError as e:
            raise ConfigError(f"{path}: its dataset {s.dataset!r} is not available here: {e}") from None
        if tuple(ds.info.shape) != tuple(s.sample_shape):
            raise FormatError(f"{path}: images are {tuple(s.sample_shape)} but {s.dataset} has {tuple(ds.info.shape)}")
        _check_split(ds, cfg)
        if not cfg.archs and not s.config.get("arch"):
            raise ConfigError(f"{path} records no architecture (made outside condense?): give --arch ARCH")
        archs = cfg.archs or [s.config["arch"]]
        # Every soft-label set gets its hard-label gap (DD-Ranking) unless switched off; --robustness adds no-dsa.
        soft = s.label_spec.kind in ("probabilities", "logits")
        # fair scores need every set on hard labels: regression targets (FRePo) train on their classes
        variants = ["set"] + (["hard"] if (soft and (cfg.hard_gap or cfg.scores)) or
                              (s.label_spec.kind == "regression" and cfg.scores) else [])
        if cfg.robustness or cfg.scores:
            variants += ["no-dsa"]
        if cfg.also_lr is not None and s.lr is not None and cfg.lr is None:
            variants += ["fixed-lr"]
        p_set = set_protocol(proto, s, path, cfg)
        recipe, why = random_recipe(s, path, cfg)
        ipc = s.budget_ipc  # random real of the same storage (INFER's instances outnumber its stored images)
        for arch in archs:
            _check_arch(arch, ds)
            for v in variants:
                p = replace(p_set, lr=cfg.also_lr) if v == "fixed-lr" else p_set
                groups.append(Group(src, arch, v, p, s.method, ipc, s.storage_bytes(), random_labels=recipe,
                                    comparison=why))
            if cfg.random_baseline or cfg.scores:
                rnd_variants = ["set"] + (["no-dsa"] if cfg.robustness or cfg.scores else [])
                add_random(src, ipc, arch, p_set, recipe, rnd_variants)
                if recipe is not None and cfg.scores:  # the hard-label row beside the soft one, random too
                    add_random(src, ipc, arch, p_set, None, ["set"])
            if cfg.scores:
                add_full(src.full_data(), arch)
    if cfg.baseline is not None:
        base = Source("full", cfg.dataset, data_root=cfg.data_root)
        ds = dataset_of(base)
        _check_split(ds, cfg)
        archs = cfg.archs or ["convnet"]
        for arch in archs:
            _check_arch(arch, ds)
            if cfg.baseline == "full":
                add_full(base, arch)
            else:
                for ipc in cfg.ipc:
                    add_random(base, ipc, arch)
    return groups


def set_protocol(proto: TrainProtocol, s, path: str, cfg: EvalConfig) -> TrainProtocol:
    """The protocol a set trains under: per-view labels bring their own views' strategy (the
    labels belong to those views), unless --dsa-strategy names the same one. Labels of E epochs
    of views train E epochs under the reference schedule (whose "E epochs" are E + 1): the
    extra epoch would have no labels, and the lr drop stays where the reference puts it."""
    view = s.label_spec.view_strategy if s.label_spec.view_mode == "per-view" else None
    if view is None or not proto.dsa:
        return proto
    if cfg.dsa_strategy is not None and cfg.dsa_strategy != view:
        raise ConfigError(f"{path}: its per-view labels belong to {view!r} views; --dsa-strategy "
                          f"{cfg.dsa_strategy!r} would pair labels with other views")
    views = int(s.labels.shape[0])
    if cfg.schedule == "reference" and proto.epochs == views + 1:
        proto = replace(proto, epochs=views)
        if proto.decay_epoch is not None and proto.decay_epoch >= views:  # the drop fell on the dropped epoch
            proto = replace(proto, decay_epoch=None, decay_restart=False, decay_at=1.0)
    return replace(proto, dsa_strategy=view)


def random_recipe(s, path: str, cfg: EvalConfig) -> tuple[str | None, str | None]:
    """(the label recipe the set's random-real baseline is labelled with, None: hard labels; why it
    differs from how the set's labels were made, None: it does not), checked now: a missing or
    changed teacher or store is one line here, not a failure in every job."""
    from condense.labels.recipe import recipe_files, recipe_of

    try:
        recipe, why = recipe_of(s)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    if recipe is None:
        return None, why
    if cfg.random_labels == "hard":
        return None, "random real on hard labels, as asked (--random-labels hard)"
    if cfg.teacher:  # the same teacher or store, moved: checked against the hash or key the set recorded
        if "committee" in recipe:
            raise ConfigError(f"{path}: --teacher cannot move a committee's members (they are where the set says)")
        recipe[next(k for k in ("teacher", "store", "expert_logits") if k in recipe)] = cfg.teacher
    for where in recipe_files(recipe):
        if not os.path.exists(where):
            raise ConfigError(f"{path}: its labels were made by {where}, which is not there; its random-real "
                              "baseline needs it (--teacher PATH names where it is now)")
    # The paths come from the set, which may be hostile: nothing but a condense teacher file or a
    # trajectory store is read on its word.
    if "committee" in recipe or "teacher" in recipe:
        for m in recipe.get("committee") or [{"file": recipe["teacher"], "sha256": recipe["sha256"]}]:
            if not read_h5(m["file"], lambda f: attr(f, "format", str, default=None) == "condense.teacher", "teacher"):
                raise ConfigError(f"{path}: the teacher it names ({m['file']}) is not a condense teacher file "
                                  "(--teacher FILE names where the teacher is now)")
            if file_sha256(m["file"]) != m["sha256"]:
                raise ConfigError(f"{path}: teacher {m['file']} is not the file that labelled the set (SHA-256 differs)")
    else:
        from trajectories.store import open_store

        folder = recipe.get("store") or recipe["expert_logits"]
        if open_store(folder).meta.get("store_key") != recipe["store_key"]:
            raise ConfigError(f"{path}: store {folder} is not the store that labelled the set (its key differs)")
    return json.dumps(recipe, sort_keys=True), why


def stacking_plan(group: Group, cfg: EvalConfig) -> tuple[bool, str | None]:
    """(train the runs stacked?, the reason printed when --vmap-seeds falls back)."""
    if not cfg.vmap_seeds:
        return False, None
    if group.source.kind != "synset":
        return False, f"{group.source.label}: every run trains on different images, so runs are not stacked"
    if group.protocol.mixup:
        return False, f"{group.source.label}: mixup trains one run at a time"
    from .protocol import _synset

    if _synset(group.source.path, group.source.sha256).texture is not None:
        return False, f"{group.source.label}: textures train on crops, one run at a time"
    from .vmap import stack_reason

    reason = stack_reason(group.arch)
    return reason is None, (None if reason is None else f"{group.arch}: {reason}; its runs train one by one")


def group_jobs(group: Group, cfg: EvalConfig) -> tuple[list[Job], str | None]:
    """The group's jobs in run order (one per run, or one for all runs when they are stacked),
    and the line to print when --vmap-seeds falls back for it."""
    stacked, why = stacking_plan(group, cfg)
    runs = group.runs or cfg.runs
    run_lists = [list(range(runs))] if stacked else [[r] for r in range(runs)]
    jobs = []
    for runs in run_lists:
        kwargs = job_kwargs(group.source, group.arch, group.variant, group.protocol, cfg.seed, runs, stacked,
                            cfg.temperature, cfg.split)
        jobs.append(Job(job_key(kwargs), JOB_FN, kwargs))
    return jobs, why


def jobs_of(groups: Sequence[Group], cfg: EvalConfig, note: Callable[[str], None] = print) -> list[tuple[int, Job]]:
    """(group index, job) pairs of every group (see :func:`group_jobs`)."""
    out: list[tuple[int, Job]] = []
    noted: set[str] = set()
    for gi, g in enumerate(groups):
        jobs, why = group_jobs(g, cfg)
        if why and why not in noted:
            noted.add(why)
            note(f"--vmap-seeds: {why}")
        out += [(gi, job) for job in jobs]
    return out


def job_key(kwargs: dict[str, Any]) -> str:
    """A stable hash of what defines a job (its result does not depend on where it runs)."""
    keyed = {**kwargs, "source": {k: v for k, v in kwargs["source"].items() if k != "path"}}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:20]


def _sound(row: Any) -> bool:
    """Whether a ``jobs.jsonl`` line is a finished job's result as this harness writes it: a hand-
    edited or damaged line is not trusted (its job runs again)."""
    def numbers(v: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
        return isinstance(v, list) and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                           and lo <= a <= hi for a in v)
    return (isinstance(row, dict) and row.get("ok") is True and isinstance(row.get("key"), str)
            and numbers(row.get("accs"), 0.0, 100.0) and bool(row["accs"])
            and isinstance(row.get("curves", []), list) and all(numbers(c) for c in row.get("curves", [])))


class ResultLog:
    """``jobs.jsonl`` in the run folder: one line per finished job, appended and flushed."""

    def __init__(self, folder: Path):
        self.path = run_subfolder(folder) / "jobs.jsonl"

    def load(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            regular_file(self.path, "jobs.jsonl")
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):  # a line cut short by a kill: that job reruns
                    continue
                if _sound(row):
                    done[row["key"]] = row
        return done

    def append(self, res: JobResult) -> dict[str, Any]:
        row = {"key": res.key, "ok": res.ok, "seconds": res.seconds, "device": res.device,
               **(res.value if res.ok else {"error": res.error})}
        append_line(self.path, json.dumps(row))
        return row


def run_grid(groups: Sequence[Group], cfg: EvalConfig, *, note: Callable[[str], None] = print,
             bars: bool = True) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run (or resume) every job; returns (results by job key, error lines of failed jobs)."""
    from condense.runtime.executors import execute

    folder = Path(str(cfg.json) + ".run")
    log = ResultLog(folder)
    write_text(folder / "config.json", json.dumps(asdict(cfg), indent=1))
    write_text(folder / "env.json", json.dumps(environment(), indent=1))
    pairs = jobs_of(groups, cfg, note)
    done = log.load()
    todo = [job for _, job in pairs if job.key not in done]
    if done and len(todo) < len(pairs):
        note(f"resuming: {len(pairs) - len(todo)} of {len(pairs)} jobs already finished ({log.path})")
    errors: list[str] = []
    names = {job.key: groups[gi].name for gi, job in pairs}
    bar = _bar(len(pairs), len(pairs) - len(todo), bars)
    from . import protocol

    protocol.EPOCH_BARS = bars and cfg.executor == "local" and len(cfg.devices) == 1
    try:
        for res in execute(todo, executor=cfg.executor, devices=cfg.devices, address=cfg.address):
            row = log.append(res)
            if res.ok:
                done[res.key] = row
                bar.set_postfix_str(f"{names[res.key][-40:]}: {', '.join(f'{a:.1f}' for a in row['accs'])}")
            else:
                errors.append(f"{names[res.key]}: {res.error.splitlines()[0]}")
                note(f"job failed: {errors[-1]}")
            bar.update(1)
    finally:
        protocol.EPOCH_BARS = False
        bar.close()
    return done, errors


def _labels_of(g: Group) -> str:
    """What a row trained on, for tables: hard, a teacher's recipe, or the set's own soft labels."""
    if g.variant == "hard" or g.source.kind == "full":
        return "hard"
    if g.source.kind == "random":
        return labels_tag(g.source.labels)
    if g.random_labels is not None and g.comparison is None:  # made as its random real's are
        return labels_tag(g.random_labels)
    from .protocol import _synset

    kind = _synset(g.source.path, g.source.sha256).label_spec.kind
    return "hard" if kind == "hard" else f"own {kind}"


def _bar(total: int, initial: int, enabled: bool):
    from condense.runtime.progress import bar

    return bar(total=total, initial=initial, desc="eval jobs", unit="job", disable=not enabled)


def aggregate(groups: Sequence[Group], cfg: EvalConfig, done: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group with all its runs finished (accs in run order, mean/std/ci95)."""
    rows = []
    for g in groups:
        keys = [job.key for job in group_jobs(g, cfg)[0]]
        if not all(k in done for k in keys):
            continue
        accs = [a for k in keys for a in done[k]["accs"]]
        curves = [c for k in keys for c in done[k].get("curves", [])]
        row = {"synset": g.source.path, "method": g.method, "ipc": g.ipc, "arch": g.arch, "variant": g.variant,
               "accs": accs, **summarize(accs), "storage_bytes": g.storage_bytes,
               "epochs": g.protocol.epochs, "lr": g.protocol.lr, "dsa_share": g.protocol.dsa_share,
               "seed": cfg.seed, "runs": len(accs), "split": cfg.split,
               "baseline": None if g.source.kind == "synset" else g.source.kind, "curves": curves,
               "dsa_strategy": g.protocol.dsa_strategy if g.protocol.dsa and g.variant != "no-dsa" else None,
               "labels": _labels_of(g), "random_labels": labels_tag(g.random_labels), "comparison": g.comparison,
               # the training pool (--limit-train) a set was made from: its random-real and full-data rows share it
               "limit_train": g.source.limit_train}
        if g.source.kind != "synset":
            row["dataset"] = g.source.dataset
        rows.append(row)
    return rows
