"""Trajectory-matching iteration time and peak memory vs syn_steps, exact and constant-memory mode.

Usage:  python benchmarks/bench_tm.py [--steps 10 20 40 80] [--iters 3] [--backends torch jax] [--json out.json]
Setting of the MTT reference run in docs/REFERENCES.md: Fashion-MNIST, IPC 10, batch_syn 100, ConvNet D3 W32, DSA on.
Each configuration runs in a fresh process, so its peak RSS is its own. The experts are a
synthetic store (init + small drifts): timing and memory do not depend on the values.
With ``--backends jax`` the JAX tm (condense/jax/tm.py) is timed the same way; its first
iteration traces and compiles, reported separately as ``compile_s`` (first call minus the
median of the rest).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from timing import time_iterations  # benchmarks/timing.py (scripts run with benchmarks/ on sys.path)
import torch.nn.functional as F
from condense.runtime.perf import tune_cpu_allocator

ARCH = "convnet:width=32"


def make_store(folder: Path) -> None:
    from condense.nets import FlatLayout, build_net
    from condense.runtime.rng import generator
    from trajectories.record import BufferConfig, store_metadata
    from trajectories.store import ExpertWriter, prepare_store

    cfg = BufferConfig(dataset="fashion-mnist", arch=ARCH, epochs=4, experts=1)
    prepare_store(folder, store_metadata(cfg), 1)
    net = build_net(ARCH, 1, 10, (28, 28), generator=generator(0))
    flat = FlatLayout.of(net).flatten(net)
    w = ExpertWriter(folder, 0)
    g = torch.Generator().manual_seed(0)
    for e in range(5):
        w.write_epoch(e, flat + 0.01 * e * torch.randn(flat.shape, generator=g))
    w.finish()


def one(store: str, memory: str, steps: int, iters: int, backend: str = "torch") -> dict:
    """Runs in a child process: time `iters` iterations after one warm-up; report peak RSS."""
    from condense.methods.loop import synthesize
    from condense.methods.tm import TMConfig, TrajectoryMatching, dataset_of_store
    from trajectories import open_store

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TMConfig(trajectories=store, ipc=10, syn_steps=steps, expert_epochs=2, max_start_epoch=2,
                       batch_syn=100, memory=memory, iters=iters + 1, checkpoint_every=10_000, out=f"{tmp}/s.h5")
        st = open_store(store)
        if backend == "jax":
            from condense.jax.tm import JaxTrajectoryMatching

            method = JaxTrajectoryMatching(cfg, st, dataset_of_store(st, cfg))
        else:
            method = TrajectoryMatching(cfg, st, dataset_of_store(st, cfg), torch.device("cpu"))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times: list[float] = []
        time_iterations(method, times)
        synthesize(method, cfg, cfg.out, {"method": "tm"}, progress=lambda s: None, bars=False)
        x, y = method.images.detach()[:100], method.classes[:100]
        net = method.net

        def plain():
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()

        plain()
        t0 = time.perf_counter()
        for _ in range(10):
            plain()
        plain_s = (time.perf_counter() - t0) / 10
    it_s = sorted(times[1:])[len(times[1:]) // 2]
    return {"backend": backend, "memory": memory, "syn_steps": steps, "iteration_s": it_s,
            "compile_s": max(0.0, times[0] - it_s),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "baseline_rss_gib": rss0 / 2**20,
            "plain_fwd_bwd_ms": 1e3 * plain_s, "overhead_x": it_s / (steps * plain_s)}


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--modes", nargs="+", default=["exact", "constant"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=["torch"], choices=("torch", "jax"))
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        store, memory, steps, backend = args.child
        print(json.dumps(one(store, memory, int(steps), args.iters, backend)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_store(Path(tmp) / "store")
        for backend, memory, steps in ((b, m, n) for b in args.backends for m in args.modes for n in args.steps):
            out = subprocess.run([sys.executable, __file__, "--iters", str(args.iters), "--child",
                                  str(Path(tmp) / "store"), memory, str(steps), backend],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{backend:5s} {memory:8s} syn_steps {steps:3d}: {row['iteration_s']:.2f} s/it "
                  f"(+{row['compile_s']:.1f} s compile), peak RSS "
                  f"{row['peak_rss_gib']:.2f} GiB, {row['overhead_x']:.2f}x of syn_steps plain steps "
                  f"({row['plain_fwd_bwd_ms']:.1f} ms each)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
