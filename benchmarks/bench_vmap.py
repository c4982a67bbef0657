"""Seeds at once: K runs through evals.vmap.train_stacked vs K sequential condense.train.evaluate runs.

ConvNet D3 W32 on Fashion-MNIST, synthetic sets = class-balanced random real subsets at
each IPC, a reduced epoch count (a throughput ratio, not an accuracy). The two paths
are timed in interleaved repeats (seq, stacked, seq, stacked, ...) because other jobs
may share the CPU; the ratio is median(sequential) / median(stacked). Also timed: the
test pass alone (K x condense.train.accuracy vs evals.vmap.stacked_accuracy), so the
training and testing shares of the gain can be told apart. Accuracies of the two paths
are printed side by side (they agree up to float rounding of near-ties).

    python benchmarks/bench_vmap.py --epochs 20 --ipc 1 10 50 --json /tmp/vmap.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from condense.data import load_dataset
from condense.data.subset import class_balanced_indices
from condense.nets import build_net
from condense.runtime.rng import generator
from condense.train import STREAM_INIT, TrainProtocol, accuracy, evaluate
from evals.vmap import StackedConvNet, plan_stack, stacked_accuracy, train_stacked
from condense.runtime.perf import tune_cpu_allocator


def main() -> None:
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="convnet:width=32,depth=3")
    ap.add_argument("--k", type=int, default=8, help="runs (seeds) per measurement")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each path")
    ap.add_argument("--test-limit", type=int, default=None, help="use the first N test images (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")
    xt, yt = ds.x_test, ds.y_test
    if args.test_limit:
        xt, yt = xt[:args.test_limit], yt[:args.test_limit]
    protocol = TrainProtocol(epochs=args.epochs)
    runs = list(range(args.k))
    rows = []
    print(f"{args.arch}, K={args.k}, {args.epochs} epochs, {xt.shape[0]} test images, "
          f"{torch.get_num_threads()} threads")
    for ipc in args.ipc:
        idx = class_balanced_indices(ds.y_train, ipc, seed=0)
        x, y = ds.x_train[idx], ds.y_train[idx]

        def seq():
            return [evaluate(x, y, args.arch, protocol, 0, run=r, test=(xt, yt), num_classes=10) for r in runs]

        def stacked():
            return train_stacked(x, y, args.arch, protocol, 0, runs, test=(xt, yt), num_classes=10)

        t_seq, t_stk = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            acc_seq = seq()
            t_seq.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            acc_stk = stacked()
            t_stk.append(time.perf_counter() - t0)
        # the test pass alone, on freshly initialised nets (interleaved too)
        nets = [build_net(args.arch, 1, 10, (28, 28), generator=generator(0, r, 0, 0, STREAM_INIT)) for r in runs]
        stack = StackedConvNet.of(nets)
        e_seq, e_stk = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            [accuracy(n, xt, yt, protocol.test_batch_size) for n in nets]
            e_seq.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            stacked_accuracy(stack, xt, yt)
            e_stk.append(time.perf_counter() - t0)
        ms, mk = statistics.median(t_seq), statistics.median(t_stk)
        es, ek = statistics.median(e_seq), statistics.median(e_stk)
        train_ratio = max(ms - es, 1e-9) / max(mk - ek, 1e-9)
        row = {"ipc": ipc, "images": int(x.shape[0]), "k": args.k, "epochs": args.epochs,
               "stacked_train": plan_stack(x.shape[0], protocol.batch_size, args.k) > 1,
               "seq_s": t_seq, "stacked_s": t_stk, "ratio": ms / mk,
               "test_seq_s": e_seq, "test_stacked_s": e_stk, "test_ratio": es / ek,
               "train_ratio_est": train_ratio,
               "acc_seq": acc_seq, "acc_stacked": acc_stk,
               "max_acc_diff": max(abs(a - b) for a, b in zip(acc_seq, acc_stk))}
        rows.append(row)
        print(f"IPC {ipc:3d} ({row['images']} images, train {'stacked' if row['stacked_train'] else 'sequential'}): "
              f"sequential {ms:.1f} s, stacked {mk:.1f} s -> {ms / mk:.2f}x  "
              f"(test pass alone {es:.1f} s vs {ek:.1f} s = {es / ek:.2f}x; training part ~{train_ratio:.2f}x)  "
              f"max |acc diff| {row['max_acc_diff']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "threads": torch.get_num_threads(), "test_images": int(xt.shape[0]),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
