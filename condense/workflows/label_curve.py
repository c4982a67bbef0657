"""The storage-vs-accuracy curve of one set's labels (``condense labels SET --curve``,
:func:`condense.label_curve`).

From one hard-label set and a teacher: the label variants (hard labels, static soft labels,
per-view soft labels, and the per-view labels through every codec of a list), each a set file in
the output folder, made by :func:`condense.labels.run.run_labels` (a rerun finds them done);
then every variant evaluated with ``condense eval``'s harness beside random real (resumable:
``<out>/eval.json.run/jobs.jsonl``); then one table (``labels.md``, ``labels.json``) and one
picture (``labels.png``, accuracy against label bytes on a log axis).

Every row trains under one augmentation semantics: per-view labels fix each image's view per
epoch, drawn per image with its own transform group (DSA share ``view``), so the hard, static
and random-real rows train with that same share by default (``dsa_share``); otherwise "per-view
beats hard" would mix a label effect with an augmentation change. Every row trains for
``view_epochs`` epochs: the per-view labels hold exactly that many.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from evals import EvalConfig, run_eval
from evals.report import label_cost, paired, random_row_of

from ..codecs import canonical_codec, parse_codec
from ..config import configclass, setting
from ..config.parts import Augmentation, Evaluation
from ..labels.run import LabelsConfig, recorded_teacher, run_labels
from ..plots import save_label_curve
from ..runtime.errors import CondenseError, ConfigError
from ..runtime.files import ensure_folder, output_lock, write_text
from ..synset import load_synset

CODECS = ("fp16", "topk:k=1,bits=4", "topk:k=2,bits=8", "lowrank:rank=1", "lowrank:rank=4",
          "projector:rank=2", "projector:rank=4")
REFERENCE = "per-view"  # the row every other row's bytes and accuracy are compared with


@configclass(LabelsConfig, Evaluation, Augmentation, part="curve",
             drop=("views", "codec", "dsa", "dsa_strategy", "min_scale", "flip"),
             defaults={"dsa_share": "view"},
             helps={"out": "folder of the variants (set files), eval.json, labels.md, labels.json and labels.png",
                    "teacher": "teacher file (condense teacher) or trajectory-store folder whose experts label the "
                               "set (default: the teacher the set was made with, if any)",
                    "view_epochs": "epochs of per-view labels, and of every evaluation's training",
                    "devices": "devices of the per-view labelling and of the evaluation jobs: cuda:0,cuda:1 or "
                               "cpu,cpu",
                    "dsa_share": "DSA share of every row (default view: the per-view rows' own, so rows differ "
                                 "only in their labels)"})
class CurveConfig:
    """The storage-vs-accuracy curve of one set's labels: hard, static soft, per-view soft, and per-view
    through every codec, each evaluated beside random real; one table and one plot."""

    codecs: list[str] = setting(factory=lambda: list(CODECS), help="a codec of the per-view labels "
                                "(NAME or NAME:key=value,...); repeat --codecs for several", repeat=True, metavar="SPEC",
                                check=parse_codec)

    def validate(self) -> None:
        """What the declarations cannot say: an input and an output folder."""
        if not self.synset:
            raise ConfigError("no input set given")
        if not self.out:
            raise ConfigError("--out DIR is required: the folder of the variants, the table and the plot")
        if os.path.isfile(self.out):
            raise ConfigError(f"--out {self.out} is a file: --curve writes a folder")


def variant_file(out: str | os.PathLike, name: str) -> Path:
    """The set file of variant ``name`` in folder ``out`` (``topk:k=1,bits=4`` -> ``topk_k1_bits4.h5``)."""
    return Path(out) / f"{name.replace(':', '_').replace(',', '_').replace('=', '')}.h5"


def label_curve(cfg: CurveConfig, *, progress: Callable[[str], None] = print, bars: bool = False) -> dict[str, Any]:
    """Make, evaluate and tabulate the label variants of ``cfg.synset``; returns the document written
    to ``<out>/labels.json`` (``rows``: one per variant, best-known fields ``variant``, ``codec``,
    ``label_bytes``, ``fraction_of_per_view``, ``mean``, ``ci95``, ``n``; ``random``: random real).

    A rerun reuses the variants and the evaluation jobs already done. Raises CondenseError (one
    line) for a bad input, a failed evaluation job, or an evaluation that produced no row of a variant.
    """
    cfg.validate()
    out = Path(cfg.out)
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a symbolic link: refusing to write through it")
    with output_lock(out):
        files, timings = make_variants(cfg, progress=progress, bars=bars)
        # random real on hard labels only: it is the curve's context, and under each codec's labels it would
        # fit a projector per run
        evaluation = EvalConfig(runs=cfg.runs, epochs=cfg.view_epochs, hard_gap=False, dsa_share=cfg.dsa_share,
                                random_labels="hard",
                                dsa_strategy=cfg.view_strategy, json=str(out / "eval.json"),
                                devices=list(cfg.devices or ["cpu"]), executor=cfg.executor, address=cfg.address)
        doc = run_eval(evaluation, [str(p) for p in files.values()], note=progress, bars=bars)
        curve = tabulate(doc["results"], files, timings, cfg)
        write_text(out / "labels.json", json.dumps(curve, indent=1, allow_nan=False))
        write_text(out / "labels.md", markdown_table(curve) + "\n")
        save_label_curve(curve["rows"], out / "labels.png", random=curve["random"],
                         title=f"{Path(cfg.synset).name}: label bytes vs accuracy")
    return curve


def make_variants(cfg: CurveConfig, *, progress: Callable[[str], None] = print,
                  bars: bool = False) -> tuple[dict[str, Path], dict[str, float]]:
    """The variants' set files by name (hard is the input itself), made where missing, one line each;
    and the seconds each took to make (kept in ``<out>/timings.json`` across reruns)."""
    if not os.path.isfile(cfg.synset):
        raise ConfigError(f"no such synthetic-set file: {cfg.synset}")
    base = load_synset(cfg.synset)
    if base.label_spec.kind != "hard":
        raise ConfigError(f"{cfg.synset} has {base.label_spec.kind} labels: the curve starts from a hard-label set")
    teacher = cfg.teacher or recorded_teacher(base, cfg.synset)
    out = ensure_folder(cfg.out, "the curve folder")
    timing_file = out / "timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    files: dict[str, Path] = {"hard": Path(cfg.synset)}
    progress(f"hard: {cfg.synset} (the input)")
    shared = {k: getattr(cfg, k) for k in ("teacher_expert", "teacher_epoch", "committee", "committee_teacher",
                                           "committee_temperature", "view_epochs", "view_seed",
                                           "view_strategy", "projector_steps", "projector_lr", "temperature",
                                           "devices", "executor", "address")}

    def made(name: str, **fields: Any) -> None:
        path = variant_file(out, name)
        reused: list[str] = []
        t0 = time.perf_counter()
        s = run_labels(LabelsConfig(out=str(path), **shared, **fields), progress=reused.append, bars=bars)
        if not reused:
            timings[name] = round(time.perf_counter() - t0, 2)
            write_text(timing_file, json.dumps(timings, indent=1))
        used, _ = label_cost(s.storage_bytes())
        how = "reused" if reused else f"made in {timings[name]:.1f} s"
        progress(f"{name}: {path} ({used:,} label bytes, {how})")
        files[name] = path

    made("static", synset=cfg.synset, teacher=teacher, views="static")
    made(REFERENCE, synset=cfg.synset, teacher=teacher, views="per-epoch")
    for codec in dict.fromkeys(canonical_codec(c) for c in cfg.codecs):
        made(codec, synset=str(files[REFERENCE]), codec=codec)
    return files, timings


def tabulate(results: list[dict], files: dict[str, Path], timings: dict[str, float], cfg: CurveConfig) -> dict[str, Any]:
    """The curve document from ``run_eval``'s result rows: one row per variant, sorted by label bytes."""
    by_path = {str(p): name for name, p in files.items()}
    found = {by_path[r["synset"]]: r for r in results
             if r["synset"] in by_path and r["variant"] == "set" and r["baseline"] is None}
    missing = [name for name in files if name not in found]
    if missing:
        raise CondenseError(f"the evaluation produced no result for {', '.join(missing)} (see {cfg.out}/eval.json)")
    ref = found[REFERENCE]
    ref_bytes, _ = label_cost(ref["storage_bytes"])
    rows = []
    for name, r in found.items():
        used, _ = label_cost(r["storage_bytes"])
        rows.append({"variant": name, "codec": load_synset(files[name]).label_spec.codec, "label_bytes": used,
                     "fraction_of_per_view": used / ref_bytes, "mean": r["mean"], "std": _finite(r["std"]),
                     "ci95": _finite(r["ci95"]), "n": len(r["accs"]), "accs": r["accs"],
                     "vs_per_view": {k: _finite(v) for k, v in paired(r["accs"], ref["accs"]).items()},
                     "synset": str(files[name]), "made_in_s": timings.get(name)})
    rows.sort(key=lambda r: (r["label_bytes"], r["variant"]))
    rnd = random_row_of(results, found["hard"]) or next((r for r in results if r["baseline"] == "random"), None)
    random = None if rnd is None else {"mean": rnd["mean"], "std": _finite(rnd["std"]), "ci95": _finite(rnd["ci95"]),
                                       "n": len(rnd["accs"]), "accs": rnd["accs"], "ipc": rnd["ipc"]}
    return {"synset": cfg.synset, "teacher": cfg.teacher or load_synset(files[REFERENCE]).provenance.get(
                "labels_run", {}).get("teacher"),
            "runs": cfg.runs, "epochs": cfg.view_epochs, "dsa_share": cfg.dsa_share,
            "dsa_strategy": cfg.view_strategy, "rows": rows, "random": random}


def markdown_table(curve: dict[str, Any]) -> str:
    """The curve as a markdown table: one line per variant (by label bytes), then random real."""
    lines = ["| variant | codec | label bytes | of per-view | accuracy % (mean ± 95 % CI) | n | vs per-view (paired) |",
             "|---|---|---:|---:|---|---:|---|"]
    for r in curve["rows"]:
        vs = r["vs_per_view"]
        lines.append(f"| {r['variant']} | {r['codec']} | {r['label_bytes']:,} | {100 * r['fraction_of_per_view']:.3g} % "
                     f"| {r['mean']:.2f}{_pm(r['ci95'])} | {r['n']} | {vs['mean']:+.2f}{_pm(vs['ci95'])} |")
    rnd = curve["random"]
    if rnd is not None:
        lines.append(f"| random real (IPC {rnd['ipc']}) | | | | {rnd['mean']:.2f}{_pm(rnd['ci95'])} | {rnd['n']} | |")
    return "\n".join(lines)


def _finite(x: float | None) -> float | None:
    """``x``, or None where it is undefined (NaN: one run has no interval); JSON has no NaN."""
    return None if x is None or math.isnan(x) else float(x)


def _pm(ci95: float | None) -> str:
    return "" if ci95 is None else f" ± {ci95:.2f}"
