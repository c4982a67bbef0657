"""Per-iteration time and peak memory of the synthesis methods (dm, dam, gm) on Fashion-MNIST (IPC 10 by default).

Usage:  python benchmarks/bench_synth.py [--methods dm dam gm] [--archs convnet:width=32 convnet]
            [--iters 3] [--ipc 10] [--json out.json]
Each (method, arch) runs in a fresh process: peak RSS is its own (it includes the loaded
dataset, ≈ 1.2 GiB). Time is the median of the timed iterations after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from timing import time_iterations  # benchmarks/timing.py (scripts run with benchmarks/ on sys.path)
from condense.runtime.perf import tune_cpu_allocator


def one(method: str, arch: str, iters: int, ipc: int, extra: dict) -> dict:
    from condense.config import make_config
    from condense.methods import get_method

    entry = get_method(method)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(entry.config, {"dataset": "fashion-mnist", "ipc": ipc, "arch": arch, "iters": iters + 1,
                                         "checkpoint_every": 10_000, "out": f"{tmp}/s.h5", **extra})
        times: list[float] = []
        from condense.methods import loop

        real_synthesize = loop.synthesize

        def timed_synthesize(m, *a, **kw):
            time_iterations(m, times)
            return real_synthesize(m, *a, **kw)

        loop.synthesize = timed_synthesize
        entry.run(cfg, torch.device("cpu"), progress=lambda s: None, bars=False)
    timed_part = sorted(times[1:]) or times
    return {"method": method, "arch": arch, "ipc": ipc, "iteration_s": timed_part[len(timed_part) // 2],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "extra": extra}


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["dm", "dam", "gm"])
    ap.add_argument("--archs", nargs="+", default=["convnet:width=32", "convnet"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--gm-loops", default="10,50", help="gm's outer,inner loops (DC's for IPC 10: 10,50)")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    outer, inner = (int(v) for v in args.gm_loops.split(","))
    extras = {"gm": {"outer_loop": outer, "inner_loop": inner}}
    if args.child:
        method, arch = args.child
        print(json.dumps(one(method, arch, args.iters, args.ipc, extras.get(method, {}))))
        return
    rows = []
    for method in args.methods:
        for arch in args.archs:
            out = subprocess.run([sys.executable, __file__, "--iters", str(args.iters), "--ipc", str(args.ipc), "--gm-loops", args.gm_loops,
                                  "--child", method, arch], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{method:4s} {arch:18s} IPC {args.ipc}: {row['iteration_s']:.3f} s/it, peak RSS {row['peak_rss_gib']:.2f} GiB "
                  f"{row['extra'] or ''}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
