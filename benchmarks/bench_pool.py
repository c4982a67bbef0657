"""2x2 average pooling: ``nn.AvgPool2d(2)`` versus condense's ``avg_pool_2x2`` (forward, forward+backward).

Usage:  python benchmarks/bench_pool.py [--repeats 30]
Prints milliseconds per call for the ConvNet's typical activation shapes.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from condense.runtime.perf import tune_cpu_allocator
from condense.nets.pool import avg_pool_2x2

SHAPES = [(32, 32, 32, 32), (256, 32, 32, 32), (100, 128, 32, 32), (100, 128, 8, 8)]


def ms(f, repeats: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    print(f"threads {torch.get_num_threads()}; ms per call")
    print("shape                 AvgPool2d fwd  ours fwd  AvgPool2d fwd+bwd  ours fwd+bwd")
    for shape in SHAPES:
        x = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
        cols = [ms(lambda: F.avg_pool2d(x.detach(), 2), args.repeats),
                ms(lambda: avg_pool_2x2(x.detach()), args.repeats),
                ms(lambda: F.avg_pool2d(x, 2).backward(g), args.repeats),
                ms(lambda: avg_pool_2x2(x).backward(g), args.repeats)]
        print(f"{str(list(shape)):20s}  " + "  ".join(f"{c:13.2f}" for c in cols))


if __name__ == "__main__":
    main()
