"""Evaluate synthetic sets on the CPU protocol: N runs each, mean ± std and 95 % CI.

Usage:  python benchmarks/eval_sets.py SET.h5 [SET.h5 ...] [--runs 10] [--epochs 300]
            [--lr set|0.01|...] [--arch convnet:width=32] [--json out.json]

Run r trains a fresh network with (seed 0, run r); the protocol is condense.train's
(SGD momentum 0.9, wd 5e-4, batch 256, lr x0.1 at half, DSA). ``--lr set`` uses the
set's learned lr where it has one. Until `condense eval` (issue #11) exists, this is how
the accuracy tables in docs/BENCHMARKS.md are produced.
"""
from __future__ import annotations

import argparse
import json
import time

from condense.data import load_dataset
from evals.stats import summarize
from condense.synset import load_synset
from condense.train import TrainProtocol, evaluate_synset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", default="set", help="'set' (the learned lr, else 0.01) or a number")
    ap.add_argument("--arch", default=None, help="default: the set's arch, else convnet:width=32")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows, cache = [], {}
    for path in args.sets:
        s = load_synset(path)
        key = (s.dataset, s.transform.kind, s.data.get("val_size"))
        if key not in cache:
            cache[key] = load_dataset(s.dataset, zca=s.transform.kind == "zca", val_size=s.data.get("val_size"),
                                      val_seed=s.data.get("val_seed", 0))
        ds = cache[key]
        arch = args.arch or s.config.get("arch") or "convnet:width=32"
        lr = None if args.lr == "set" else float(args.lr)
        protocol = TrainProtocol(epochs=args.epochs, lr=lr)
        t0 = time.perf_counter()
        accs = [100 * evaluate_synset(s, arch, protocol, 0, test=(ds.x_test, ds.y_test), run=r) for r in range(args.runs)]
        st = summarize(accs)
        used = lr or s.lr or 0.01
        rows.append({"synset": path, "method": s.method, "ipc": s.ipc, "arch": arch, "lr": used, "accs": accs, **st,
                     "storage_bytes": s.storage_bytes(), "seconds": time.perf_counter() - t0})
        print(f"{path}: {s.method} IPC {s.ipc}, lr {used:.4g}: {st['mean']:.2f} ± {st['std']:.2f} % "
              f"(95% CI ± {st['ci95']:.2f}, {args.runs} runs, {time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
