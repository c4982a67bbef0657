"""The video table of docs/methods/video.md and docs/BENCHMARKS.md from moving-fashion/video's results.json.

    condense run --preset moving-fashion/video --out runs/video
    python benchmarks/video_table.py runs/video/results.json

One line per set: what it stores per class (bytes, and as a fraction of one real clip's bytes), its clips
per class, test accuracy (mean ± std over the runs), the 95 % interval, the paired difference to random
real clips of the same storage run by run (same seeds), and the synthesis time read from the set's run
folder; then the paired differences (run by run, the same seeds) between each static + dynamic set and
each other set.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from condense import load_synset
from evals.stats import summarize

from cpu_protocol_table import synthesis_seconds

NAMES = {"s2d-dm": "static + dynamic, DM", "s2d-tm": "static + dynamic, TM", "static-only": "static only",
         "dm": "video DM", "perframe-dm": "per-frame DM", "tm": "video TM"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    args = ap.parse_args()
    doc = json.loads(Path(args.results).read_text())
    rows, scores = doc["results"], doc.get("scores", [])
    lines = ["| set | stored per class | clips per class | accuracy % | 95 % CI | vs random real (paired) | synthesis |",
             "|---|---|---|---|---|---|---|"]
    random_row, named = None, {}
    for r in rows:
        if r["variant"] != "set":
            continue
        if r["synset"] is None:
            random_row = random_row or r
            continue
        s = load_synset(r["synset"])
        clip = 4 * math.prod(s.image_shape)
        per_class = s.image_bytes() / s.num_classes
        vs = next((x for x in scores if x["synset"] == r["synset"] and x["arch"] == r["arch"]
                   and x["score"] == "vs_random"), None)
        secs = synthesis_seconds(r["synset"])
        name = NAMES.get(Path(r["synset"]).stem.rsplit("_", 1)[0], Path(r["synset"]).stem)
        named[name] = r["accs"]
        lines.append(f"| {name} | {per_class / 1024:.1f} KiB ({per_class / clip:.2f} clip) | {s.ipc} | "
                     f"{r['mean']:.2f} ± {r['std']:.2f} | ± {r['ci95']:.2f} | "
                     + ("—" if vs is None else f"{vs['mean']:+.2f} ± {vs['ci95']:.2f}") + " | "
                     + ("—" if secs is None else f"{secs / 60:.1f} min") + " |")
    if random_row is not None:
        lines.append(f"| random real clips | 1 clip | 1 | {random_row['mean']:.2f} ± {random_row['std']:.2f} | "
                     f"± {random_row['ci95']:.2f} | — | — |")
    print("\n".join(lines))
    print("\n| paired difference | points (95 % CI) |\n|---|---|")
    for a in (n for n in named if n.startswith("static + dynamic")):
        for b in (n for n in named if n != a and not (n.startswith("static + dynamic") and n < a)):
            d = summarize([x - y for x, y in zip(named[a], named[b])])
            print(f"| {a} − {b} | {d['mean']:+.2f} ± {d['ci95']:.2f} |")


if __name__ == "__main__":
    main()
