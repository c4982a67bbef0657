"""The CPU-protocol table of docs/BENCHMARKS.md from one pipeline run's results.json.

    condense run --preset fashion-mnist/cpu-protocol --out runs/cpu-protocol
    python benchmarks/cpu_protocol_table.py runs/cpu-protocol/results.json

One line per method and IPC: accuracy with the set's own lr (learned, where the method
learns one, else 0.01) and, for sets with a learned lr, at lr 0.01 (the 'fixed-lr'
variant); the 95 % interval; the paired difference to random real run by run (same
seeds); the learned lr; and the synthesis time read from the set's run folder.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from condense import load_synset

ORDER = ("random", "herding", "kcenter", "gm", "dam", "dm", "tm", "frepo")


def synthesis_seconds(path: str) -> float | None:
    """Seconds the iterations of a synthesis took (metrics.csv of its run folder), None if absent."""
    metrics = Path(path + ".run") / "metrics.csv"
    if not metrics.exists():
        return None
    with open(metrics) as f:
        return sum(float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    args = ap.parse_args()
    doc = json.loads(Path(args.results).read_text())
    rows, scores = doc["results"], doc["scores"]

    def score(r, name):
        return next((s for s in scores if s["synset"] == r["synset"] and s["arch"] == r["arch"] and s["score"] == name),
                    None)

    lines = ["| method | IPC | accuracy % (own lr) | 95 % CI | vs random (paired) | at lr 0.01 | learned lr | "
             "synthesis |", "|---|---|---|---|---|---|---|---|"]
    key = lambda r: (ORDER.index(r["method"]) if r["method"] in ORDER else 99, r["ipc"] or 0)  # noqa: E731
    for r in sorted((r for r in rows if r["variant"] == "set"), key=key):
        fixed = next((x for x in rows if x["synset"] == r["synset"] and x["variant"] == "fixed-lr"
                      and x["synset"] is not None), None)
        vs = score(r, "vs_random")
        lr = load_synset(r["synset"]).lr if r["synset"] else None
        secs = synthesis_seconds(r["synset"]) if r["synset"] else None
        cells = [r["method"], str(r["ipc"]), f"{r['mean']:.2f} ± {r['std']:.2f}", f"± {r['ci95']:.2f}",
                 "—" if vs is None else f"{vs['mean']:+.2f} ± {vs['ci95']:.2f}",
                 "—" if fixed is None else f"{fixed['mean']:.2f} ± {fixed['std']:.2f}",
                 "—" if lr is None else f"{lr:.4g}", "—" if secs is None else f"{secs / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"\nprotocol: {json.dumps(doc.get('protocol', {}))}")


if __name__ == "__main__":
    main()
