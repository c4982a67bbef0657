"""``condense buffer``: record expert trajectories into a store, or import MTT's buffers."""
from __future__ import annotations

import argparse
import inspect

from ..config import describe
from .common import add_preset_flag, refuse_unused
from .flags import add_config_flags, config_from_args

EXAMPLES = """examples:
  condense buffer --dataset fashion-mnist --arch convnet:width=32 --experts 5 --epochs 10 --out runs/fmnist/experts
  condense buffer ... --flat gsam --sam-rho 0.01          FTD's flat experts (sam or gsam)
  condense buffer ... --smooth --gp-weight 2              smooth experts (loss-decay schedule + gradient penalty)
  condense buffer ... --devices cuda:0,cuda:1             experts in parallel, one worker per device
  condense buffer ... --devices cpu,cpu                   two CPU workers
  condense buffer --import-mtt replay_buffer_0.pt --dataset cifar10 --arch convnet --zca --out runs/c10/experts
  condense show runs/fmnist/experts --out traj.png        accuracy and parameter-distance curves

Rerunning the same command resumes: finished experts are kept, missing ones recorded."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trajectories.record import BufferConfig

    p = sub.add_parser(
        "buffer", help="record expert training trajectories into a trajectory store",
        description=inspect.getdoc(BufferConfig), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(p, "buffer")
    p.add_argument("--import-mtt", dest="import_mtt", action="append", metavar="PT",
                   help="import MTT replay_buffer_*.pt files instead of training (repeatable)")
    add_config_flags(p, BufferConfig)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from trajectories.record import BufferConfig, record_store

    cfg = config_from_args(BufferConfig, args, "buffer")
    if args.import_mtt:
        import dataclasses

        from trajectories.mtt_import import import_mtt

        used = {"out", "dataset", "arch", "data_root", "zca", "dtype"}
        refuse_unused(args, [f.name for f in dataclasses.fields(BufferConfig) if f.name not in used],
                      "--import-mtt copies recorded experts (it takes --out, --dataset, --arch, --data-root, --zca, "
                      "--dtype)")

        n = import_mtt(args.import_mtt, cfg.out, dataset=cfg.dataset, arch=cfg.arch, data_root=cfg.data_root,
                       zca=cfg.zca, dtype=cfg.dtype)
        print(f"imported {n} experts into {cfg.out}")
        return 0
    print(f"condense buffer: {describe(cfg)}")
    summaries = record_store(cfg, bars=not args.no_progress)
    if summaries:
        mean = sum(s["final_test_acc"] for s in summaries) / len(summaries)
        print(f"{len(summaries)} experts recorded into {cfg.out} (mean final test acc {100 * mean:.2f}%)")
    return 0
