"""How much the evaluation schedule moves a number: the reference code's against condense's.

Random real of each IPC, trained under both schedules of ``condense eval --schedule`` with the
same subsets and seeds (run r: subset of seed r, training keys (seed, r)), compared run by run:

    python benchmarks/schedule_effect.py --out runs/schedule            # the CPU protocol, 10 runs
    python benchmarks/schedule_effect.py --out /tmp/s --dataset toy --arch convnet:width=8 --runs 2 --epochs 4

Each schedule's grid resumes from its own job log (``<out>/<schedule>.json.run/``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from evals.grid import SCHEDULES, EvalConfig
from evals.harness import run_eval
from evals.report import paired


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for both schedules' reports")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="convnet:width=32")
    p.add_argument("--ipc", type=int, action="append", help="repeat (default 1 and 10)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--devices", default="cpu", help="e.g. cpu,cpu: one worker per entry")
    args = p.parse_args(argv)
    out = Path(args.out)
    rows = {}
    for schedule in SCHEDULES:
        cfg = EvalConfig(baseline="random", dataset=args.dataset, ipc=args.ipc or [1, 10], archs=[args.arch],
                         runs=args.runs, epochs=args.epochs, schedule=schedule, devices=args.devices.split(","),
                         json=str(out / f"{schedule}.json"))
        rows[schedule] = {r["ipc"]: r for r in run_eval(cfg, note=lambda m: None)["results"]}
    lines = ["| IPC | reference % | condense % | reference − condense (paired) |", "|---|---|---|---|"]
    for ipc in sorted(rows["reference"]):
        a, b = rows["reference"][ipc], rows["condense"][ipc]
        d = paired(a["accs"], b["accs"])
        lines.append(f"| {ipc} | {a['mean']:.2f} ± {a['ci95']:.2f} | {b['mean']:.2f} ± {b['ci95']:.2f} | "
                     f"{d['mean']:+.2f} ± {d['ci95']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (out / "schedule_effect.md").write_text(table + "\n")
    (out / "schedule_effect.json").write_text(json.dumps({s: {str(k): v["accs"] for k, v in r.items()}
                                                          for s, r in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
