"""The allocator tuning of the condense command: one ConvNet W32 forward+backward on 100 images, untuned vs tuned.

Usage:  python benchmarks/bench_allocator.py [--steps 40] [--threads 2] [--repeat 2]
Each measurement runs in a fresh process, alternating: "import" only imports condense, as a
notebook does (glibc's defaults stay); "command" also applies the tuning the ``condense`` command's
entry point applies (:func:`condense.runtime.perf.tune_cpu_allocator`). Prints per step the
median wall and CPU milliseconds and the minor page faults: on a machine shared with other work
the wall time is noise, the CPU time and page faults are not.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(mode: str, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from condense.nets import build_net
    from condense.runtime.perf import tune_cpu_allocator
    from condense.runtime.rng import generator

    if mode == "command":
        tune_cpu_allocator()
    torch.set_num_threads(threads)
    net = build_net("convnet:width=32", 1, 10, (28, 28), generator=generator(0))
    x = torch.randn(100, 1, 28, 28, generator=generator(1))
    y = torch.randint(0, 10, (100,), generator=generator(2))

    def step() -> None:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()

    for _ in range(5):  # warm-up: oneDNN plans, first allocations
        step()
    wall, cpu = [], []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"mode": mode, "wall_ms": 1e3 * statistics.median(wall), "cpu_ms": 1e3 * statistics.median(cpu),
            "faults_per_step": faults / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return
    print(f"threads {args.threads}, {args.steps} steps per process; per step: median wall ms, median CPU ms, page faults")
    for _ in range(args.repeat):
        for mode in ("import", "command"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:8s} wall {row['wall_ms']:6.1f}  CPU {row['cpu_ms']:6.1f}  faults {row['faults_per_step']:8.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
