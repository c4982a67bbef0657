"""The transfer tables of docs/methods/self-supervised.md and docs/BENCHMARKS.md from fashion-mnist/transfer's
results.json.

    condense run --preset fashion-mnist/transfer --out runs/transfer
    python benchmarks/transfer_table.py runs/transfer/results.json

First, per storage budget (images stored), one line per pre-training source: the set or baseline, then for
every downstream set its fine-tuned and its linear-probed test accuracy (mean ± 95 % interval over the runs);
the rows without a budget (no pre-training, the full-data teacher) close the table. Then, per budget, the
paired differences (run by run, the same seeds) of the KRR-ST set against every other row of its budget
(random real with the same targets, the labelled sets and their random real) and against the references:
"is KRR-ST above every supervised method for transfer?" answered cell by cell, with a verdict per cell
(above / below / tied: whether the 95 % interval of the difference excludes 0).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from condense import load_synset
from evals.report import paired
from evals.transfer import random_row_name


def cell(r: dict | None) -> str:
    if r is None:
        return "—"
    ci = "" if r["ci95"] != r["ci95"] else f" ± {r['ci95']:.2f}"
    return f"{r['mean']:.2f}{ci}"


def diff_cell(a: list[float], b: list[float]) -> str:
    d = paired(a, b)
    verdict = "above" if d["mean"] - d["ci95"] > 0 else "below" if d["mean"] + d["ci95"] < 0 else "tied"
    return f"{d['mean']:+.2f} ± {d['ci95']:.2f} ({verdict})"


def short(row: dict, sets: dict) -> str:
    if row["synset"] is None:
        return row["source"]
    s = sets[row["synset"]]
    return f"{s.method} {s.images.shape[0]} images" + ("" if s.label_spec.kind == "representation"
                                                       else f" (IPC {s.ipc}, {s.label_spec.kind} labels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    args = ap.parse_args()
    doc = json.loads(Path(args.results).read_text())
    rows = doc["results"]
    cols = list(dict.fromkeys((r["downstream"], r["mode"]) for r in rows))
    sets = {p: load_synset(p) for p in {r["synset"] for r in rows if r["synset"]}}
    by = {(r["source"], r["downstream"], r["mode"]): r for r in rows}
    sources = list(dict.fromkeys(r["source"] for r in rows))
    first = {s: next(r for r in rows if r["source"] == s) for s in sources}
    size = {s: int(sets[first[s]["synset"]].images.shape[0]) for s in sources if first[s]["synset"]}
    size.update({random_row_name(sets[first[s]["synset"]]): size[s] for s in list(size)})
    budgets = sorted(set(size.values()))
    p = doc["protocol"]
    print(f"Pre-training {p['pretrain_epochs']} epochs, fine-tuning {p['finetune_iters']} iterations, probe "
          f"{p['probe_epochs']} epochs, {p['runs']} runs; test accuracy %, mean ± 95 % interval.\n")
    head = "| pre-trained on | " + " | ".join(f"{d} {'fine-tune' if m == 'finetune' else m}" for d, m in cols) + " |"
    rule = "|---|" + "---|" * len(cols)
    print(head + "\n" + rule)
    for b in budgets + [None]:
        print(f"| **{b:,} images** |" if b is not None else "| **references** |", " |" * len(cols), sep="")
        for s in sources:
            if size.get(s) == b:
                print(f"| {short(first[s], sets)} | " + " | ".join(cell(by.get((s, d, m))) for d, m in cols) + " |")
    for b in budgets:
        krr = [s for s in sources if size.get(s) == b and first[s]["synset"]
               and sets[first[s]["synset"]].label_spec.kind == "representation"]
        others = [s for s in sources if size.get(s) in (b, None) and s not in krr]  # its budget, the references
        for k in krr:
            print(f"\nKRR-ST ({b:,} images) minus, run by run (points, 95 % interval):\n")
            print(head.replace("pre-trained on", "KRR-ST minus") + "\n" + rule)
            for o in others:
                cells = []
                for d, m in cols:
                    a, c = by.get((k, d, m)), by.get((o, d, m))
                    cells.append("—" if a is None or c is None or len(a["accs"]) != len(c["accs"])
                                 else diff_cell(a["accs"], c["accs"]))
                print(f"| {short(first[o], sets)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
