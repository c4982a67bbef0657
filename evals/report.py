"""The evaluation report: paired comparisons, the printed table, the JSON file, the plots.

JSON (the documented contract, docs/FORMATS.md): ``{"results": [{"synset", "method", "ipc", "arch", "accs",
"mean", "std", "ci95", "storage_bytes", ...}], "scores": [...], "protocol": {...}}``;
``accs`` are percent, in run order; a baseline row has ``"synset": null`` and
``"baseline": "random" | "full"``; when every set row shares one synset the top level
repeats its ``"storage_bytes"``. ``scores`` holds the robustness comparisons, each a
*paired* difference over runs with the same seeds: ``vs_random`` (set − random real of
the same IPC), ``hard_label_gap`` (set − the same set trained on hard labels) and
``augmentation_gain`` (set − the same set trained without augmentation) and
``learned_lr_gain`` (set with its learned lr − the same set at ``--also-lr``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from condense.runtime.files import write_figure, write_text
from condense.synset import load_synset
from evals.stats import summarize

COMPARISONS = (("vs_random", "random"), ("hard_label_gap", "hard"), ("augmentation_gain", "no-dsa"),
               ("learned_lr_gain", "fixed-lr"))


def _find(rows: Sequence[dict], **want: Any) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean, std and 95 % CI of the run-by-run differences a − b (same seeds)."""
    n = min(len(a), len(b))
    return summarize([x - y for x, y in zip(a[:n], b[:n])])


def random_row_of(rows: Sequence[dict], r: dict, variant: str = "set") -> dict | None:
    """The random-real row trained as set row ``r`` is: same IPC, arch, labels (and protocol)."""
    want = {"baseline": "random", "ipc": r["ipc"], "arch": r["arch"], "variant": variant,
            "limit_train": r.get("limit_train")}
    if "random_labels" in r:
        want.update(labels=r["random_labels"], dsa_strategy=r.get("dsa_strategy") if variant != "no-dsa" else None)
    return _find(rows, **want)


def hard_row_of(rows: Sequence[dict], r: dict) -> dict | None:
    """Set row ``r``'s images on hard labels: ``r`` itself when its labels are hard, else its ``hard`` variant."""
    return r if r.get("labels") == "hard" else _find(rows, synset=r["synset"], arch=r["arch"], variant="hard")


def scores(rows: Sequence[dict], lrs_weight: float = 0.5, ars_weight: float = 0.5,
           full_accuracy: float | None = None) -> list[dict[str, Any]]:
    """The paired comparisons of every set row (variant ``set``) with its references, and
    DD-Ranking's fair scores where their rows exist (:func:`fair_scores`)."""
    out = []
    for r in rows:
        if r["baseline"] is not None or r["variant"] != "set":
            continue
        for name, ref in COMPARISONS:
            if ref == "random":
                other = random_row_of(rows, r)
            else:
                other = _find(rows, synset=r["synset"], arch=r["arch"], variant=ref)
            if other is not None:
                out.append({"synset": r["synset"], "arch": r["arch"], "score": name, **paired(r["accs"], other["accs"])})
        out += fair_scores(rows, r, lrs_weight, ars_weight, full_accuracy)
    return out


def normalized_exp(x: float) -> float:
    """DD-Ranking's map of a difference of accuracy fractions to [0, 1]: (e^x − e^−1) / (e − e^−1)."""
    return (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def fair_scores(rows: Sequence[dict], r: dict, w: float = 0.5, gamma: float = 0.5,
                full_accuracy: float | None = None) -> list[dict[str, Any]]:
    """HLR, IOR, LRS and ARS of set row ``r`` (DD-Ranking, NUS-HPC-AI-Lab/DD-Ranking ddranking/metrics),
    run by run over the paired runs, then mean ± std ± CI:

    - HLR = acc(full data, hard) − acc(set, hard labels)          (points; full: the mean of its runs,
                                                                    or ``full_accuracy`` when given)
    - IOR = acc(set, its labels) − acc(random real, same labels and protocol)      (points)
    - LRS = 100 · E(w·IOR − (1 − w)·HLR), with accuracies as fractions
    - ARS = 100 · E(γ·(set − random, augmented) + (1 − γ)·(set − random, not augmented))
    where E(x) = (e^x − e^−1) / (e − e^−1) maps [−1, 1] to [0, 1]. DD-Ranking's code feeds
    percentages to E (scores far outside [0, 1]); its documentation and leaderboard state
    the [0, 1] range, which fractions give, so fractions it is.
    """
    out = []
    hard = hard_row_of(rows, r)
    full = {"accs": [full_accuracy]} if full_accuracy is not None else \
        _find(rows, baseline="full", arch=r["arch"], limit_train=r.get("limit_train"))
    rnd = random_row_of(rows, r)

    def emit(name: str, values: list[float]) -> None:
        out.append({"synset": r["synset"], "arch": r["arch"], "score": name, **summarize(values)})

    ior = [a - b for a, b in zip(r["accs"], rnd["accs"])] if rnd is not None else None
    if hard is not None and full is not None and ior is not None:
        full_mean = sum(full["accs"]) / len(full["accs"])
        hlr = [full_mean - a for a in hard["accs"]]
        emit("hlr", hlr)
        emit("ior", ior)
        emit("lrs", [100 * normalized_exp((w * i - (1 - w) * h) / 100) for i, h in zip(ior, hlr)])
    set_plain = _find(rows, synset=r["synset"], arch=r["arch"], variant="no-dsa")
    rnd_plain = random_row_of(rows, r, "no-dsa")
    if rnd is not None and set_plain is not None and rnd_plain is not None:
        beta = [gamma * (a - b) + (1 - gamma) * (c - d)
                for a, b, c, d in zip(r["accs"], rnd["accs"], set_plain["accs"], rnd_plain["accs"])]
        emit("ars", [100 * normalized_exp(x / 100) for x in beta])
    return out


FAIR = ("hlr", "ior", "lrs", "ars")


def fair_table(rows: Sequence[dict], score_rows: Sequence[dict]) -> str:
    """The fair scores of every set, one line each ('' when none was computed)."""
    head = ("set", "method", "IPC", "arch", "labels", "random real labelled", "accuracy %", "HLR", "IOR", "LRS", "ARS",
            "label bytes")
    lines, notes = [head], []
    for r in rows:
        if r["baseline"] is not None or r["variant"] != "set":
            continue
        got = {s["score"]: s for s in score_rows if s["synset"] == r["synset"] and s["arch"] == r["arch"]
               and s["score"] in FAIR}
        if not got:
            continue
        used, _ = label_cost(r.get("storage_bytes") or {})
        if r.get("comparison"):
            notes.append(f"  {os.path.basename(r['synset'])}: {r['comparison']}")
        lines.append((os.path.basename(r["synset"]), r["method"], str(r["ipc"]), r["arch"], r.get("labels", "-"),
                      r.get("random_labels", "-") if r.get("labels") != "hard" else "hard",
                      f"{r['mean']:.2f} ± {r['std']:.2f}",
                      *(f"{got[k]['mean']:.2f} {_pm(got[k]['ci95'])}".rstrip() if k in got else "-" for k in FAIR),
                      "-" if used is None else f"{used:,}"))
    if len(lines) == 1:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(wd) for c, wd in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * wd for wd in widths))
    if notes:
        text += ["random real labelled otherwise than the set:", *notes]
    return "fair scores (DD-Ranking; HLR, IOR in points, LRS, ARS in [0, 100]):\n" + "\n".join(text)


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def label_cost(sb: dict) -> tuple[int | None, float | None]:
    """(bytes the labels cost: stored labels + any label generator, that as a fraction of the
    uncompressed labels) from a ``storage_bytes`` dict (older reports lack the fraction)."""
    if "labels" not in sb:
        return None, None
    used = int(sb["labels"]) + int(sb.get("label_generator", 0))
    plain = sb.get("labels_uncompressed")
    return used, (used / plain if plain else None)



def label_summary(path: str) -> str:
    """What a set file's labels mean and cost, in five lines (``condense labels --info``)."""
    s = load_synset(path)
    spec, sb = s.label_spec, s.storage_bytes()
    used, fraction = label_cost(sb)
    views = f" (seed {spec.view_seed}, {spec.view_strategy})" if spec.view_mode == "per-view" else ""
    return "\n".join([f"{path}: {s.method}, {s.dataset}, {s.ipc_label}, {s.images.shape[0]} images",
                      f"  labels: {spec.kind} {tuple(s.labels.shape)}, loss {spec.loss}, temperature "
                      f"{spec.temperature:g}, views {spec.view_mode}{views}",
                      f"  codec: {spec.codec}",
                      f"  bytes: images {sb['images']:,}, labels {sb['labels']:,}, label generator "
                      f"{sb['label_generator']:,}, total {sb['total']:,}",
                      f"  labels cost {used:,} B = {100.0 * fraction:.3g} % of the uncompressed labels "
                      f"({sb['labels_uncompressed']:,} B)"])

def table(rows: Sequence[dict], score_rows: Sequence[dict]) -> str:
    """The report as aligned text: one line per row, the paired difference to random real."""
    head = ("set", "method", "IPC", "arch", "variant", "trained on", "accuracy %", "95% CI", "runs", "images",
            "label bytes", "labels/plain", "vs random")
    lines = [head]
    for r in rows:
        vs = _find(score_rows, synset=r["synset"], arch=r["arch"], score="vs_random") \
            if r["variant"] == "set" and r["synset"] else None
        sb = r.get("storage_bytes") or {}
        used, fraction = label_cost(sb)
        name = os.path.basename(r["synset"]) if r["synset"] else (
            f"full data ({r['epochs']} epochs)" if r["baseline"] == "full" else "random real")
        lines.append((name, r["method"], "-" if r["ipc"] is None else str(r["ipc"]), r["arch"], r["variant"],
                      r.get("labels", "-") if r["variant"] != "no-dsa" else f"{r.get('labels', '-')} (no aug)",
                      f"{r['mean']:.2f} ± {r['std']:.2f}", _pm(r["ci95"]) or "-", str(r["runs"]),
                      _kib(sb.get("images")), _kib(used), "-" if fraction is None else f"{100 * fraction:.3g} %",
                      "-" if vs is None else f"{vs['mean']:+.2f} {_pm(vs['ci95'])}".rstrip()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def to_json(rows: Sequence[dict], score_rows: Sequence[dict], protocol: dict[str, Any], path: str | os.PathLike,
            errors: Sequence[str] = ()) -> dict[str, Any]:
    """Write the report file atomically; returns what was written."""
    results = [{k: v for k, v in r.items() if k != "curves"} for r in rows]
    doc: dict[str, Any] = {"results": results, "scores": list(score_rows), "protocol": protocol}
    sets = {r["synset"] for r in rows if r["synset"] is not None}
    if len(sets) == 1:
        doc["storage_bytes"] = next(r["storage_bytes"] for r in rows if r["synset"] is not None)
    if errors:
        doc["failed_jobs"] = list(errors)
    write_text(path, json.dumps(doc, indent=1))
    return doc


def _pm(ci95: float) -> str:
    """"± x.xx", or "" when the interval is undefined (one run)."""
    return "" if math.isnan(ci95) else f"± {ci95:.2f}"


def plot(rows: Sequence[dict], folder: str | os.PathLike, split: str = "test") -> list[Path]:
    """``accuracy.png`` (mean ± std per arch, one bar per set/baseline) and ``curves.png``
    (mean training loss per epoch). Returns the files written."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    folder = Path(folder)
    main = [r for r in rows if r["variant"] == "set"]
    archs = list(dict.fromkeys(r["arch"] for r in main))
    labels = list(dict.fromkeys(_label(r) for r in main))
    fig = Figure(figsize=(max(5, 1.6 * len(archs) * max(1, len(labels)) / 2), 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(labels))
    colors = colormaps["tab20" if len(labels) > 10 else "tab10"].colors  # no colour twice in one plot
    for i, lab in enumerate(labels):
        xs, ms, ss = [], [], []
        for j, arch in enumerate(archs):
            r = next((r for r in main if r["arch"] == arch and _label(r) == lab), None)
            if r is not None:
                xs.append(j + i * width)
                ms.append(r["mean"])
                ss.append(r["std"])
        bars = ax.bar(xs, ms, width, yerr=ss, capsize=3, label=lab, color=colors[i % len(colors)])
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=2)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(archs))], archs, rotation=15, fontsize=8)
    ax.set_ylabel(f"{'validation' if split == 'val' else 'test'} accuracy (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.set_title("accuracy per architecture (mean ± std over runs)")
    fig.tight_layout()
    files = [folder / "accuracy.png"]
    write_figure(files[0], fig, dpi=120)
    with_curves = [r for r in rows if r.get("curves")]
    if with_curves:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for r in with_curves:
            n = min(len(c) for c in r["curves"])
            mean = [sum(c[e] for c in r["curves"]) / len(r["curves"]) for e in range(n)]
            ax.plot(range(1, n + 1), mean, label=f"{_label(r)} | {r['arch']} | {r['variant']}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean training loss")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
        ax.set_title("learning curves (mean over runs)")
        fig.tight_layout()
        files.append(folder / "curves.png")
        write_figure(files[-1], fig, dpi=120)
    return files


def plot_fair(rows: Sequence[dict], score_rows: Sequence[dict], folder: str | os.PathLike,
              split: str = "test") -> Path | None:
    """``fair.png``: per set (one arch each), its accuracy beside the same images on hard labels
    and random real under the set's protocol (left), and its IOR with the 95 % CI (right).
    None when no set has fair scores."""
    got = {(s["synset"], s["arch"]): s for s in score_rows if s["score"] == "ior"}
    sets = [r for r in rows if r["baseline"] is None and r["variant"] == "set" and (r["synset"], r["arch"]) in got]
    if not sets:
        return None
    from matplotlib.figure import Figure

    multi_arch = len({r["arch"] for r in sets}) > 1
    names = [os.path.basename(r["synset"]) + (f" | {r['arch']}" if multi_arch else "") for r in sets]
    fig_height = 0.45 * len(sets) + 2.0
    fig = Figure(figsize=(11, fig_height))
    left, right = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    bars = (("its labels", lambda r: r),
            ("same images, hard labels", lambda r: hard_row_of(rows, r)),
            ("random real, same protocol", lambda r: random_row_of(rows, r)))
    height = 0.8 / len(bars)
    for k, (label, pick) in enumerate(bars):
        ys, ms, ss = [], [], []
        for i, r in enumerate(sets):
            other = pick(r)
            if other is not None:
                ys.append(i + (k - 1) * height)
                ms.append(other["mean"])
                ss.append(other["std"])
        left.barh(ys, ms, height, xerr=ss, capsize=2, label=label, color=("tab:blue", "tab:orange", "tab:gray")[k])
    left.set_yticks(range(len(sets)), names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel(f"{'validation' if split == 'val' else 'test'} accuracy (%)")
    iors = [got[(r["synset"], r["arch"])] for r in sets]
    ci = [0.0 if math.isnan(s["ci95"]) else s["ci95"] for s in iors]
    right.barh(range(len(sets)), [s["mean"] for s in iors], 0.6, xerr=ci, capsize=3,
               color=["tab:green" if s["mean"] - c > 0 else "tab:red" if s["mean"] + c < 0 else "tab:gray"
                      for s, c in zip(iors, ci)])
    right.axvline(0, color="black", lw=0.8)
    right.set_xlabel("IOR: set − random real, same protocol (points, 95 % CI)")
    fig.suptitle("fair scores: each set against random real trained as it is", fontsize=10)
    # The legend sits under the title, never over a bar.
    fig.legend(*left.get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.35 / fig_height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig_height))
    folder = Path(folder)
    write_figure(folder / "fair.png", fig, dpi=120)
    return folder / "fair.png"


def _label(r: dict) -> str:
    if r["synset"]:
        return f"{os.path.basename(r['synset'])} ({r['method']}, IPC {r['ipc']})"
    return f"full data ({r['epochs']} ep)" if r["baseline"] == "full" else f"random real IPC {r['ipc']}"
