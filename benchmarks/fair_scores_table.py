"""The fair-scores table of a `condense eval --scores` report (docs/BENCHMARKS.md).

    python benchmarks/fair_scores_table.py runs/decoupled/results.json [--steps runs/decoupled/steps.jsonl]

One row per set: what it trained on, its accuracy, the same images on hard labels,
random real under the set's own protocol, then DD-Ranking's HLR, IOR, LRS and ARS
(mean ± 95 % CI over the paired runs) and the bytes its labels cost. Below it the
reference rows (random real under each protocol, the full data) and, with --steps, the
cost of every step of the pipeline (wall time, CPU time, peak memory).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from evals.report import FAIR, hard_row_of, random_row_of


def fmt(s: dict | None, digits: int = 2) -> str:
    if s is None:
        return "—"
    ci = "" if s.get("ci95") is None or math.isnan(s["ci95"]) else f" ± {s['ci95']:.{digits}f}"
    return f"{s['mean']:+.{digits}f}{ci}" if s.get("signed") else f"{s['mean']:.{digits}f}{ci}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report")
    p.add_argument("--steps", help="the pipeline's steps.jsonl, for the cost table")
    args = p.parse_args()
    doc = json.loads(Path(args.report).read_text())
    rows, scores = doc["results"], doc["scores"]

    def score(r, name):
        s = next((s for s in scores if s["synset"] == r["synset"] and s["arch"] == r["arch"] and s["score"] == name),
                 None)
        return None if s is None else {**s, "signed": name in ("hlr", "ior")}

    print("| set | method | trained on | accuracy % | hard labels % | random real, same protocol % | "
          "HLR | IOR | LRS | ARS | label bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sets = [r for r in rows if r["baseline"] is None and r["variant"] == "set"]
    for r in sorted(sets, key=lambda r: -(score(r, "lrs") or {"mean": -1})["mean"]):
        hard, rnd = hard_row_of(rows, r), random_row_of(rows, r)
        sb = r.get("storage_bytes") or {}
        label_bytes = int(sb.get("labels", 0)) + int(sb.get("label_generator", 0)) if sb else None
        hard_acc = "—" if hard is None else f"{hard['mean']:.2f}"
        rnd_acc = "—" if rnd is None else f"{rnd['mean']:.2f}"
        print(f"| `{os.path.basename(r['synset'])}` | {r['method']} | {r['labels']} | "
              f"{r['mean']:.2f} ± {r['ci95']:.2f} | {hard_acc} | {rnd_acc} | " +
              " | ".join(fmt(score(r, k)) for k in FAIR) + f" | {'—' if label_bytes is None else f'{label_bytes:,}'} |")
    print()
    print("| reference row | drawn from | trained on | augmentation | accuracy % | runs |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["baseline"] is None:
            continue
        name = "full data" if r["baseline"] == "full" else f"random real, IPC {r['ipc']}"
        aug = "none" if r["variant"] == "no-dsa" else (r.get("dsa_strategy") or "none")
        pool = "the whole training split" if r.get("limit_train") is None else f"{r['limit_train']:,} images"
        print(f"| {name} | {pool} | {r['labels']} | {aug} | "
              f"{r['mean']:.2f} ± {r['ci95'] if not math.isnan(r['ci95']) else 0:.2f} | {r['runs']} |")
    if "full_accuracy_given" in doc["protocol"]:
        print(f"| full data (given) | — | hard | — | {doc['protocol']['full_accuracy_given']:.2f} | — |")
    if args.steps:
        print()
        print("| step | wall min | CPU min | peak RSS MiB |")
        print("|---|---|---|---|")
        totals: dict[str, list[float]] = {}
        for line in Path(args.steps).read_text().splitlines():
            s = json.loads(line)
            t = totals.setdefault(s["step"], [0.0, 0.0, 0.0])
            t[0] += s["seconds"] / 60
            t[1] += s.get("cpu_seconds", 0.0) / 60
            t[2] = max(t[2], s["peak_rss_mib"])
        for step, (wall, cpu, rss) in totals.items():
            print(f"| `{step}` | {wall:.1f} | {cpu:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
