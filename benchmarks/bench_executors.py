"""Executor speed-up: a grid of evaluation jobs in-process vs a pool of CPU workers (vs Ray).

Grid: 4 jobs (seeds 0-3), each trains ConvNet W32 for 30 epochs on 100 Fashion-MNIST
training images (10 per class) and scores it on the 10,000 test images. Modes:
in-process with 2 torch threads; the local pool with 2 CPU workers x 1 thread; with
--ray, a local Ray instance with 2 tasks x 1 thread (its start-up timed separately).
Modes alternate over --repeat rounds; the wall time includes starting the workers.

Usage:  python benchmarks/bench_executors.py [--repeat 3] [--ray] [--one-thread] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from condense.data import class_balanced_indices, load_dataset
from condense.jobs import Job
from condense.train import TrainProtocol
from condense.runtime.executors import execute
from condense.runtime.perf import tune_cpu_allocator

MODES = {  # name: execute() options
    "in-process, 2 threads": dict(devices=["cpu"], threads=2),
    "pool, 2 workers x 1 thread": dict(devices=["cpu", "cpu"], threads=1),
}


def grid(jobs: int, epochs: int, per_class: int, arch: str) -> list[Job]:
    ds = load_dataset("fashion-mnist")
    idx = class_balanced_indices(ds.y_train, per_class, seed=0)
    common = dict(images=ds.x_train[idx], labels=ds.y_train[idx], arch=arch, protocol=TrainProtocol(epochs=epochs),
                  test=(ds.x_test, ds.y_test), num_classes=ds.info.num_classes)
    return [Job(f"seed {s}", "condense.train:evaluate", {**common, "seed": s}) for s in range(jobs)]


def run(jobs: list[Job], **options) -> tuple[float, float, dict[str, float]]:
    t0 = time.perf_counter()
    results = list(execute(jobs, **options))
    wall = time.perf_counter() - t0
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"{bad[0].key} failed: {bad[0].error}")
    return wall, sum(r.seconds for r in results), {r.key: r.value for r in results}


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ray", action="store_true", help="also time a local Ray instance (2 tasks x 1 thread)")
    ap.add_argument("--one-thread", action="store_true", help="also time in-process with 1 thread (is the gain "
                    "parallelism, or 2 threads per job doing worse than 1?)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    jobs = grid(4, args.epochs, 10, "convnet:width=32")
    modes = dict(MODES)
    out: dict = {"torch": torch.__version__, "cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                 "jobs": len(jobs), "epochs": args.epochs, "load_before": os.getloadavg()[0], "modes": {}}
    if args.one_thread:
        modes["in-process, 1 thread"] = dict(devices=["cpu"], threads=1)
    ray = None
    if args.ray:
        import ray
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        out["ray_start_s"] = time.perf_counter() - t0
        modes["ray, 2 tasks x 1 thread"] = dict(executor="ray", threads=1)
    accs: dict[str, dict[str, float]] = {}
    try:
        for r in range(args.repeat):
            for name, options in modes.items():
                wall, busy, acc = run(jobs, **options)
                out["modes"].setdefault(name, {"wall_s": [], "job_s": []})
                out["modes"][name]["wall_s"].append(wall)
                out["modes"][name]["job_s"].append(busy)
                accs[name] = acc
                print(f"round {r}: {name:28s} wall {wall:6.1f} s   sum of job times {busy:6.1f} s", flush=True)
    finally:
        if ray is not None:
            ray.shutdown()
    out["load_after"] = os.getloadavg()[0]
    base = statistics.median(out["modes"]["in-process, 2 threads"]["wall_s"])
    print(f"\nload average (1 min) before {out['load_before']:.2f}, after {out['load_after']:.2f} "
          f"on {out['cores']} cores")
    for name, m in out["modes"].items():
        med = statistics.median(m["wall_s"])
        m["median_wall_s"], m["speedup"] = med, base / med
        print(f"{name:28s} median wall {med:6.1f} s  (min {min(m['wall_s']):.1f})  speed-up x{base / med:.2f}")
    one_thread = [a for n, a in accs.items() if "1 thread" in n]
    out["one_thread_results_identical"] = all(a == one_thread[0] for a in one_thread)
    print("accuracies:", {n: [round(a[k], 4) for k in sorted(a)] for n, a in accs.items()})
    print("1-thread executors give identical accuracies:", out["one_thread_results_identical"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
