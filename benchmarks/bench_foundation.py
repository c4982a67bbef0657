"""Foundation benchmarks on this machine: data loading, ZCA, DSA, one training step, evaluate().

Usage:  python benchmarks/bench_foundation.py [--quick] [--json out.json]
Numbers go to docs/BENCHMARKS.md with the command that produced them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from condense.augment import DSAConfig, apply_dsa, sample_dsa
from condense.data import class_balanced_indices, load_dataset
from condense.nets import build_net
from condense.runtime.rng import generator
from condense.train import TrainProtocol, evaluate
from condense.runtime.perf import tune_cpu_allocator


def timed(fn, repeat: int = 5) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs (smoke-test the benchmark itself)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    epochs = 20 if args.quick else 300
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}

    t0 = time.perf_counter()
    ds = load_dataset("fashion-mnist")
    out["load_fashion_mnist_s"] = time.perf_counter() - t0
    cache = tempfile.mkdtemp()
    os.environ["CONDENSE_CACHE"] = cache
    try:
        t0 = time.perf_counter()
        load_dataset("fashion-mnist", zca=True)
        out["load_fashion_mnist_zca_fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        load_dataset("fashion-mnist", zca=True)
        out["load_fashion_mnist_zca_cached_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(cache)

    x = ds.x_train[:256]
    for share in ("batch", "image"):  # one draw per batch (siamese) / per-image parameters (training)
        cfg = DSAConfig(share=share)
        out[f"dsa_256_images_{share}_ms"] = 1e3 * timed(
            lambda: apply_dsa(x, sample_dsa(cfg, 256, (1, 28, 28), generator(0))), 20)

    model = build_net("convnet:width=32", 1, 10, (28, 28), generator=generator(0))
    xb, yb = ds.x_train[:100], ds.y_train[:100]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()

    out["fwd_bwd_100_images_convnet_w32_ms"] = 1e3 * timed(step, 20)

    test = (ds.x_test, ds.y_test)
    for ipc in (1, 10, 50):
        idx = class_balanced_indices(ds.y_train, ipc, 0)
        t0 = time.perf_counter()
        acc = evaluate(ds.x_train[idx], ds.y_train[idx], "convnet:width=32", TrainProtocol(epochs=epochs), 0,
                       test=test, num_classes=10)
        out[f"evaluate_ipc{ipc}_{epochs}ep_s"] = time.perf_counter() - t0
        out[f"evaluate_ipc{ipc}_{epochs}ep_acc"] = 100 * acc

    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k.ljust(width)}  {v:.3f}" if isinstance(v, float) else f"{k.ljust(width)}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
