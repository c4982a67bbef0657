"""What one frame of moving-fashion can and cannot tell: a single-frame classifier against a video classifier.

Usage:  python benchmarks/motion_matters.py [--epochs 20] [--seeds 3] [--rows frame,frames-mean,video] [--json PATH]

Trains on the whole training split (4,500 clips; 500 held out for validation) and reports test accuracy
(mean ± std over seeds) of
- ``frame``: ConvNet D3 W32 on one frame of every clip (``moving-fashion-frames``), tested on one frame
  of every test clip;
- ``frames-mean``: ``convnet-frames`` (the same ConvNet on every frame, embeddings averaged over time)
  on the clips: all the frames, no order;
- ``video``: ConvNet3D (``convnet3d:width=16,stride=1,dropout=0``, the CPU protocol's) on the clips;
and, from the frame classifier's confusion, the garment accuracy (right whenever it names the garment,
whichever direction): the ceiling of what a still can carry, half of which is the most a still can score.
The protocol is the evaluation's (SGD momentum 0.9, lr 0.01, x0.1 at half, weight decay 5e-4, batch 256,
DSA: per-clip parameters for clips).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--rows", default="frame,frames-mean,video", help="which classifiers, comma-separated")
    args = ap.parse_args()

    from condense.data import load_dataset
    from condense.train import TrainProtocol, accuracy, train_model
    from condense.nets import build_net
    from condense.runtime.rng import generator

    protocol = TrainProtocol(epochs=args.epochs)
    rows = {}
    for name, dataset, arch in (("frame", "moving-fashion-frames", "convnet:width=32"),
                                ("frames-mean", "moving-fashion", "convnet-frames:width=32"),
                                ("video", "moving-fashion", "convnet3d:width=16,stride=1,dropout=0")):
        if name not in args.rows.split(","):
            continue
        ds = load_dataset(dataset)
        accs, garment, seconds = [], [], []
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            net = build_net(arch, ds.info.channels, ds.num_classes, ds.info.image_size, generator=generator(seed))
            train_model(net, ds.x_train, ds.y_train, protocol, seed=seed, lr=0.01)
            seconds.append(time.perf_counter() - t0)
            accs.append(100 * accuracy(net, ds.x_test, ds.y_test))
            with torch.no_grad():
                pred = torch.cat([net.eval()(ds.x_test[i:i + 256]).argmax(1) for i in range(0, len(ds.x_test), 256)])
            garment.append(100 * float((pred // 2 == ds.y_test // 2).float().mean()))
        rows[name] = {"dataset": dataset, "arch": arch, "accs": accs, "mean": statistics.mean(accs),
                      "std": statistics.pstdev(accs), "garment_mean": statistics.mean(garment),
                      "seconds_per_run": statistics.mean(seconds)}
        print(f"{name:12s} {arch:40s} {rows[name]['mean']:6.2f} ± {rows[name]['std']:.2f} %   garment "
              f"{rows[name]['garment_mean']:6.2f} %   {rows[name]['seconds_per_run']:.0f} s/run", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"epochs": args.epochs, "seeds": args.seeds, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
