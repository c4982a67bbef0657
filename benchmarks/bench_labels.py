"""Accuracy against label bytes: hard labels, static soft labels, per-view soft labels and
every codec at two or more rates, on one synthetic set, evaluated on the CPU protocol.

    python benchmarks/bench_labels.py --set runs/cpu-protocol/dam_ipc10.h5 \
        --teacher runs/cpu-protocol/experts --out runs/labels --runs 10

Writes the label variants as set files under --out (kept: a rerun reuses them), times the
labelling and the projector's training, evaluates every variant with `condense eval`'s
harness (random-real baseline beside them, resumable), and writes labels.json,
labels.md (table) and labels.png (accuracy vs label bytes, log scale).

Every row trains under one augmentation semantics: per-view labels fix each image's view
per epoch, drawn per image with its own transform group (DSA share 'view'), so the hard,
static and random-real rows are trained with that same share by default (--dsa-share);
otherwise "per-view beats hard" would mix a label effect with an augmentation change.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from condense import load_synset
from condense.labels import compress, load_teacher, relabel
from condense.labels.projector import ProjectorFit
from evals import EvalConfig, run_eval
from evals.report import label_cost, paired
from condense.runtime.perf import tune_cpu_allocator

CODECS = ("fp16", "topk:k=1,bits=4", "topk:k=2,bits=8", "lowrank:rank=1", "lowrank:rank=4",
          "projector:rank=2", "projector:rank=4")


def make_variants(src: str, teacher: str, out: Path, view_epochs: int, temperature: float,
                  steps: int) -> tuple[dict[str, Path], dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    timing_file = out / "timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    base = load_synset(src)
    t = load_teacher(teacher, base)
    files = {"hard": Path(src)}

    def made(name: str, build) -> None:
        path = out / f"{name.replace(':', '_').replace(',', '_').replace('=', '')}.h5"
        if not path.exists():
            t0 = time.perf_counter()
            s = build()
            timings[name] = round(time.perf_counter() - t0, 2)
            s.save(path)
            timing_file.write_text(json.dumps(timings, indent=1))
        files[name] = path

    made("static", lambda: relabel(base, t, views="static", temperature=temperature))
    made("per-view", lambda: relabel(base, t, views="per-epoch", epochs=view_epochs, temperature=temperature,
                                     progress=True))
    per_view = load_synset(files["per-view"])
    for codec in CODECS:
        made(codec, lambda codec=codec: compress(per_view, codec, ProjectorFit(steps=steps), progress=True))
    return files, timings


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.errorbar(r["label_bytes"], r["mean"], yerr=r["ci95"], fmt="o", capsize=3)
        ax.annotate(r["name"], (r["label_bytes"], r["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("label bytes (stored labels + label generator)")
    ax.set_ylabel("test accuracy % (mean, 95 % CI)")
    ax.set_title("Label bytes vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", default="runs/labels")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--projector-steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dsa-share", default="view", choices=("view", "image", "batch"),
                    help="DSA share of the rows without per-view labels (default view: the per-view rows' own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    files, timings = make_variants(args.set, args.teacher, out, args.epochs, args.temperature, args.projector_steps)
    cfg = EvalConfig(runs=args.runs, epochs=args.epochs, hard_gap=False, dsa_share=args.dsa_share,
                     json=str(out / "eval.json"))
    doc = run_eval(cfg, [str(p) for p in files.values()])
    by_path = {str(p): name for name, p in files.items()}
    rows = []
    for r in doc["results"]:
        if r["synset"] is None:
            continue
        used, _ = label_cost(r["storage_bytes"])
        rows.append({"name": by_path[r["synset"]], "mean": r["mean"], "std": r["std"], "ci95": r["ci95"],
                     "label_bytes": used, "fraction_of_per_view": None, "accs": r["accs"]})
    ref = next(r for r in rows if r["name"] == "per-view")
    for r in rows:
        r["fraction_of_per_view"] = r["label_bytes"] / ref["label_bytes"]
        r["vs_per_view"] = paired(r["accs"], ref["accs"])  # same seeds and runs: paired differences
    random_row = next(r for r in doc["results"] if r["baseline"] == "random")
    (out / "labels.json").write_text(json.dumps({"rows": rows, "random": random_row, "timings_s": timings,
                                                 "dsa_share": args.dsa_share}, indent=1))
    lines = ["| labels | label bytes | of per-view | accuracy % (mean ± std) | 95 % CI | vs per-view (paired) |",
             "|---|---:|---:|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["label_bytes"]):
        lines.append(f"| {r['name']} | {r['label_bytes']:,} | {100 * r['fraction_of_per_view']:.3g} % | "
                     f"{r['mean']:.2f} ± {r['std']:.2f} | ± {r['ci95']:.2f} | "
                     f"{r['vs_per_view']['mean']:+.2f} ± {r['vs_per_view']['ci95']:.2f} |")
    lines.append(f"| random real (same IPC) | | | {random_row['mean']:.2f} ± {random_row['std']:.2f} | "
                 f"± {random_row['ci95']:.2f} | |")
    (out / "labels.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "labels.png")
    print("\n".join(lines))
    print(f"timings (s): {timings}")


if __name__ == "__main__":
    main()
