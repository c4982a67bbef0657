"""The trajectory-matching ablation of docs/BENCHMARKS.md from one tm-ablation pipeline run.

    condense run --preset fashion-mnist/tm-ablation --out runs/tm-ablation
    python benchmarks/tm_ablation_table.py runs/tm-ablation --plot docs/img/tm-ablation.png
    condense run --preset fashion-mnist/tm-ablation-2 --out runs/tm-ablation-2   # the second round
    python benchmarks/tm_ablation_table.py runs/tm-ablation-2 --plot docs/img/tm-ablation-2.png

Reads the run folder: results.json (test accuracy of every row, 10 runs, same seeds for
every row), results-fixed.json (plain tm's images at lr 0.01), results-val.json (the
validation-only selection) and steps.jsonl (each step's wall time, CPU time and peak
memory). Prints three Markdown tables: accuracy per row and IPC with the paired
difference to plain tm run by run (and, for the cumulative AST rows, to the row above);
the validation selection; the cost of every row. Rows missing from the run are left out
of the tables and named at the end.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evals.report import paired
from trajectories import open_store

ROWS = (  # (set name, what the row is)
    ("random", "random real images (subset seeds 0-9)"),
    ("tm", "MTT: plain experts, learned lr as exp(ρ)"),
    ("tm-direct", "MTT with MTT's direct lr parametrisation"),
    ("tm-late", "MTT with a later start window (max_start_epoch 8)"),
    ("tm@0.01", "MTT's images trained at lr 0.01"),
    ("ftd", "FTD: flat (GSAM) experts + EMA of the images"),
    ("ast-smooth", "AST 1: smooth experts + momentum-0.9 student"),
    ("ast-init", "AST 2: + representative (k-means) init"),
    ("ast-balance", "AST 3: + balanced inner loss"),
    ("ast-middle", "AST 4: + intermediate matching"),
    ("ast", "AST 5: + weight perturbation (= AST)"),
    ("ast-lr0.01", "AST 5 with the student starting at lr 0.01 (AST's scripts)"),
    ("ast-middle@0.01", "AST 4's images trained at lr 0.01"),
    ("ast@0.01", "AST 5's images trained at lr 0.01"),
    ("datm", "DATM: learned soft labels, correct init, widening window"),
    ("tesla", "TESLA: constant memory, per-iteration expert labels"),
    ("tesla-once", "TESLA with the expert labels fixed once (condense 0.2)"),
    ("dm", "DM (reference)"),
    ("frepo", "FRePo (reference)"),
)
AST_CHAIN = ("ast-smooth", "ast-init", "ast-balance", "ast-middle", "ast")


def row_name(r: dict) -> str:
    """'tm' for .../tm_ipc1.h5; 'random' for the random-real baseline."""
    return "random" if r["synset"] is None else Path(r["synset"]).stem.rsplit("_ipc", 1)[0]


def load_rows(folder: Path) -> dict[tuple[str, int, str], dict]:
    """{(row, ipc, variant): result row} from the run's report files (convnet rows only)."""
    out = {}
    for file, suffix in (("results.json", ""), ("results-fixed.json", "@0.01")):
        path = folder / file
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["results"]:
            if r["baseline"] == "full" or (suffix and r["synset"] is None):
                continue
            out[(row_name(r) + suffix, r["ipc"], r["variant"])] = r
    return out


def fmt(s: dict | None, sign: bool = False) -> str:
    if s is None:
        return "-"
    mean = f"{s['mean']:+.2f}" if sign else f"{s['mean']:.2f}"
    star = " *" if sign and abs(s["mean"]) > s["ci95"] else ""  # the paired interval excludes 0
    return f"{mean} ± {s['ci95']:.2f}{star}"


def accuracy_table(rows: dict, ipcs: list[int]) -> tuple[str, list[str]]:
    head = ["row", "what it is"]
    for k in ipcs:
        head += [f"IPC {k} acc %", f"IPC {k} Δ vs tm", f"IPC {k} Δ vs row above"]
    head.append("hard-label acc % (soft-label sets)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missing = []
    for name, what in ROWS:
        present = [k for k in ipcs if (name, k, "set") in rows]
        if not present:
            missing.append(name)
            continue
        cells = [f"`{name}`", what]
        hard = []
        for k in ipcs:
            r = rows.get((name, k, "set"))
            tm = rows.get(("tm", k, "set"))
            above = None
            if name in AST_CHAIN[1:]:
                above = rows.get((AST_CHAIN[AST_CHAIN.index(name) - 1], k, "set"))
            cells += [fmt(r), fmt(paired(r["accs"], tm["accs"]) if r and tm and name != "tm" else None, True),
                      fmt(paired(r["accs"], above["accs"]) if r and above else None, True)]
            h = rows.get((name, k, "hard"))
            if h:
                hard.append(f"IPC {k}: {h['mean']:.2f}")
        cells.append(", ".join(hard) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), missing


def selection_table(folder: Path) -> str:
    path = folder / "results-val.json"
    if not path.exists():
        return "(no results-val.json: the selection step has not run)"
    rows = {(row_name(r), r["ipc"]): r for r in json.loads(path.read_text())["results"] if r["synset"]}
    lines = ["| setting | IPC | validation acc % | Δ vs exp(ρ), paired |", "|---|---|---|---|"]
    for (name, k), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ref = rows.get(("tm", k))
        delta = paired(r["accs"], ref["accs"]) if ref and name != "tm" else None
        label = {"tm": "lr_param exp (ρ, condense)", "tm-direct": "lr_param direct (α, MTT)",
                 "tm-late": "max_start_epoch 8 (exp ρ)"}.get(name, name)
        lines.append(f"| {label} | {k} | {fmt(r)} | {fmt(delta, True)} |")
    return "\n".join(lines)


def cost_table(folder: Path, ipcs: list[int]) -> str:
    """Wall and CPU minutes (summed over a step's logged segments: a resumed step has several)
    and the peak memory of its longest segment (a quick resume in a long pipeline process
    reports the memory that process already holds); an expert store's recording time from
    its expert files."""
    steps: dict[str, dict] = {}
    path = folder / "steps.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        s = json.loads(line)
        acc = steps.setdefault(s["step"], {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mib": 0.0, "longest": -1.0})
        acc["seconds"] += s["seconds"]
        acc["cpu_seconds"] += s.get("cpu_seconds", float("nan"))  # nan: a segment logged without it
        if s["seconds"] > acc["longest"]:  # the peak of the segment that did the work: a quick resume
            acc["longest"], acc["peak_rss_mib"] = s["seconds"], s["peak_rss_mib"]  # reports what it holds
    head = ["row"] + [f"IPC {k}: wall min / CPU min / peak RSS MiB" for k in ipcs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, store in (("buffer", "experts"), ("buffer-flat", "experts-flat"), ("buffer-smooth", "experts-smooth")):
        recorded = store_seconds(folder / store)
        if recorded is None:
            continue
        n, seconds = recorded
        s = steps.get(name)  # its peak only if the logged segments did the recording (not a resume)
        peak = f"{s['peak_rss_mib']:.0f}" if s and s["seconds"] > 0.5 * seconds else "-"
        lines.append(f"| `{name}` ({n} experts, sum of their recording times) | {seconds / 60:.1f} / - / {peak} |"
                     + " |" * (len(ipcs) - 1))
    for name, _ in ROWS:
        cells = []
        for k in ipcs:
            s = steps.get(f"synth-{name}-ipc{k}")
            cells.append("-" if s is None else cost(s))
        if any(c != "-" for c in cells):
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def store_seconds(store: Path) -> tuple[int, float] | None:
    """(finished experts, the seconds they took to record: each expert file keeps its own)."""
    if not (store / "manifest.json").exists():
        return None
    s = open_store(store)
    return len(s), sum(float(s.expert_attrs(i).get("seconds", 0.0)) for i in range(len(s)))


def cost(s: dict) -> str:
    cpu = "-" if s["cpu_seconds"] != s["cpu_seconds"] else f"{s['cpu_seconds'] / 60:.1f}"
    return f"{s['seconds'] / 60:.1f} / {cpu} / {s['peak_rss_mib']:.0f}"


def plot(rows: dict, ipcs: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in ROWS if any((n, k, "set") in rows for k in ipcs)]
    fig, axes = plt.subplots(1, len(ipcs), figsize=(5.5 * len(ipcs), 0.42 * len(names) + 1.6), sharey=True,
                             squeeze=False)
    for ax, k in zip(axes[0], ipcs):
        ys, means, cis, colors = [], [], [], []
        for i, n in enumerate(names):
            r = rows.get((n, k, "set"))
            if r is None:
                continue
            ys.append(i)
            means.append(r["mean"])
            cis.append(r["ci95"])
            colors.append("tab:gray" if n in ("random", "dm", "frepo") else
                          "tab:orange" if n.startswith("ast") else "tab:blue")
        ax.barh(ys, means, xerr=cis, color=colors, capsize=3)
        for ref, style in (("tm", "--"), ("dm", ":")):
            r = rows.get((ref, k, "set"))
            if r:
                ax.axvline(r["mean"], color="k", linestyle=style, linewidth=1, label=f"{ref} {r['mean']:.2f} %")
        lo = min(means) - max(cis) - 2
        ax.set_xlim(max(0, lo), min(100, max(means) + max(cis) + 1))
        ax.set_title(f"IPC {k}")
        ax.set_xlabel("test accuracy (%), mean ± 95 % CI of 10 runs")
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    fig.suptitle("Trajectory-matching ablation, Fashion-MNIST CPU protocol")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the pipeline's output folder (runs/tm-ablation)")
    ap.add_argument("--plot", type=Path, help="write the accuracy plot (PNG) here")
    args = ap.parse_args()
    rows = load_rows(args.folder)
    ipcs = sorted({k for (_, k, _) in rows})
    table, missing = accuracy_table(rows, ipcs)
    print("Test accuracy (ConvNet D3 W32, 10 runs; Δ: paired over runs with the same seeds, mean ± 95 % CI; "
          "* = the interval excludes 0)\n")
    print(table)
    print("\nValidation-only selection (5 runs on the 5,000-image validation split)\n")
    print(selection_table(args.folder))
    print("\nCost (wall and CPU minutes, peak resident memory of the process)\n")
    print(cost_table(args.folder, ipcs))
    if missing:
        print(f"\nnot in this run yet: {', '.join(missing)}")
    if args.plot:
        plot(rows, ipcs, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
