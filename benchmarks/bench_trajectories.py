"""Expert-trajectory benchmarks: epoch time (recording on/off), experts/hour, regulariser cost,
and the memory of reading one epoch from a store larger than 1 GB.

Usage:  python benchmarks/bench_trajectories.py [--quick] [--json out.json]
Compare with docs/REFERENCES.md: MTT's plain expert epoch (60k images, DSA, test pass)
takes 39-43 s on this machine; condense must take <= 0.8x that, recording included.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from condense.nets import FlatLayout, build_net
from condense.runtime.rng import generator
from condense.train import STREAM_INIT, accuracy, train_model
from trajectories.record import BufferConfig, dataset_for, record_expert, store_metadata
from trajectories.store import ExpertWriter, prepare_store
from condense.runtime.perf import tune_cpu_allocator


def epoch_seconds(cfg: BufferConfig, record: bool, folder: Path) -> float:
    """Mean seconds per epoch of one expert (test pass each epoch in both modes)."""
    if record:
        prepare_store(folder, store_metadata(cfg), 1)
        t0 = time.perf_counter()
        record_expert(dataclasses.asdict(cfg), 0, str(folder))
        return (time.perf_counter() - t0) / cfg.epochs
    ds = dataset_for(cfg)
    c, h, w = ds.info.shape
    net = build_net(cfg.arch, c, ds.info.num_classes, (h, w), generator=generator(cfg.seed, 0, 0, 0, STREAM_INIT))
    t0 = time.perf_counter()
    accuracy(net, ds.x_test, ds.y_test)
    train_model(net, ds.x_train, ds.y_train, cfg.protocol(), seed=cfg.seed, run=0, lr=cfg.lr,
                on_epoch=lambda e, m, l: accuracy(m, ds.x_test, ds.y_test), step=cfg.regularizer().step_rule())
    return (time.perf_counter() - t0) / cfg.epochs


READER = """
import resource, sys, time, random, torch
from condense.runtime.perf import tune_cpu_allocator
from trajectories import open_store
tune_cpu_allocator()
store = open_store(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
random.seed(0)
t0 = time.perf_counter()
for _ in range(20):
    row = store.epoch(random.randrange(len(store)), random.randrange(store.epochs + 1))
dt = (time.perf_counter() - t0) / 20
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, (after - before) / 1024, row.numel() * 4 / 2**20)
"""


def reading(folder: Path, experts: int, epochs: int, n_params: int) -> dict:
    """Write a store of random rows (> 1 GB), then read random epochs in a fresh process."""
    meta = {"dataset": "synthetic", "arch": "convnet", "layout": FlatLayout((), (), (), 0).to_json(),
            "n_params": n_params, "epochs": epochs, "dtype": "float32"}
    prepare_store(folder, meta, experts)
    row = np.random.default_rng(0).standard_normal(n_params).astype(np.float32)
    for i in range(experts):
        w = ExpertWriter(folder, i)
        for e in range(epochs + 1):
            w.write_epoch(e, torch.from_numpy(row + i + e))
        w.finish()
    size = sum(p.stat().st_size for p in folder.glob("expert_*.h5"))
    out = subprocess.run([sys.executable, "-c", READER, str(folder)], capture_output=True, text=True, check=True)
    dt, rss_mib, row_mib = (float(v) for v in out.stdout.split())
    return {"store_gib": size / 2**30, "experts": experts, "read_epoch_ms": 1e3 * dt,
            "peak_rss_growth_mib": rss_mib, "row_mib": row_mib}


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the benchmark itself runs")
    ap.add_argument("--plain-only", action="store_true", help="only the plain W32 epoch, recording on and off")
    ap.add_argument("--json")
    args = ap.parse_args()
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    base = dict(dataset="fashion-mnist", val_size=0, epochs=2, experts=1)
    if args.quick:
        base.update(dataset="toy", val_size=None, epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        w32 = BufferConfig(arch="convnet:width=32", **base)
        dataset_for(w32)  # load once, outside every timing
        out["w32_epoch_s_no_recording"] = epoch_seconds(w32, False, tmp / "a")
        out["w32_epoch_s_recording"] = epoch_seconds(w32, True, tmp / "b")
        out["recording_overhead_x"] = out["w32_epoch_s_recording"] / out["w32_epoch_s_no_recording"]
        if args.plain_only:
            print(json.dumps(out, indent=1))
            return
        for name, over in (("sam", dict(flat="sam", sam_rho=0.05)), ("gsam", dict(flat="gsam", sam_rho=0.01)),
                           ("smooth", dict(smooth=True, gp_weight=2.0))):
            cfg = BufferConfig(arch="convnet:width=32", **{**base, "epochs": 1, **over})
            out[f"w32_{name}_epoch_s"] = epoch_seconds(cfg, False, tmp / name)
        w128 = BufferConfig(arch="convnet", **{**base, "epochs": 1})
        out["w128_epoch_s_recording"] = epoch_seconds(w128, True, tmp / "c")
        for arch in ("w32", "w128"):
            e = out[f"{arch}_epoch_s_recording"]
            out[f"{arch}_experts_per_hour_10ep"] = 3600 / (10 * e)
            out[f"{arch}_experts_per_hour_50ep"] = 3600 / (50 * e)
        if args.quick:
            out["reading"] = reading(tmp / "big", 4, 3, 10_000)
        else:
            out["reading"] = reading(tmp / "big", 100, 10, 317_706)  # ConvNet-3 W128 rows: 1.3 GB
    for k, v in out.items():
        print(f"{k:34s} {v:.3f}" if isinstance(v, float) else f"{k:34s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
