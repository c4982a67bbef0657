"""``condense buffer``: record expert trajectories into a store, or import MTT's buffers."""
from __future__ import annotations

import argparse

from ..runtime.errors import ConfigError
from .common import add_dsa_share_flag, add_preset_flag, add_progress_flag, config_from_args, describe, device_list

EXAMPLES = """examples:
  condense buffer --dataset fashion-mnist --arch convnet:width=32 --experts 5 --epochs 10 --out runs/fmnist/experts
  condense buffer ... --flat gsam --sam-rho 0.01          FTD's flat experts (sam or gsam)
  condense buffer ... --smooth --gp-weight 2              smooth experts (loss-decay schedule + gradient penalty)
  condense buffer ... --devices cuda:0,cuda:1             experts in parallel, one worker per device
  condense buffer ... --workers 2                         two CPU workers
  condense buffer --import-mtt replay_buffer_0.pt --dataset cifar10 --arch convnet --zca --out runs/c10/experts
  condense show runs/fmnist/experts --out traj.png        accuracy and parameter-distance curves

Rerunning the same command resumes: finished experts are kept, missing ones recorded."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "buffer", help="record expert training trajectories into a trajectory store",
        description="Train expert networks on the real training set and save their parameters after every "
                    "epoch (epoch 0 = init) with per-epoch test accuracy. Defaults follow MTT's buffer.py "
                    "(SGD lr 0.01, momentum 0, weight decay 0, batch 256, DSA on, no lr decay).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(p, "buffer")
    p.add_argument("--dataset", help="dataset name (default fashion-mnist)")
    p.add_argument("--data-root", dest="data_root", help="folder holding the dataset files")
    p.add_argument("--download", action="store_true", default=None, help="download the dataset if missing")
    p.add_argument("--arch", help="network spec (default convnet)")
    p.add_argument("--experts", type=int, help="number of experts (default 5)")
    p.add_argument("--epochs", type=int, help="epochs per expert (default 50)")
    p.add_argument("--lr", type=float, help="SGD learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, help="weight decay (default 0)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="batch size (default 256)")
    p.add_argument("--lr-decay-at", dest="lr_decay_at", type=float,
                   help="fraction of the epochs after which lr is multiplied by --lr-decay-factor (default 1.0 = never)")
    p.add_argument("--lr-decay-factor", dest="lr_decay_factor", type=float, help="lr multiplier at --lr-decay-at (default 0.1)")
    p.add_argument("--lr-decay-epoch", dest="lr_decay_epoch", type=int,
                   help="0-based epoch from which lr is decayed (overrides --lr-decay-at; AST's buffer.py: epochs//2 + 2)")
    p.add_argument("--lr-decay-restart", dest="lr_decay_restart", action=argparse.BooleanOptionalAction, default=None,
                   help="the decay rebuilds the optimizer, clearing its momentum (AST's buffer.py; default off)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=None, help="DSA augmentation (default on)")
    p.add_argument("--dsa-strategy", dest="dsa_strategy", help="DSA transforms (default color_crop_cutout_flip_scale_rotate)")
    p.add_argument("--zca", action=argparse.BooleanOptionalAction, default=None, help="ZCA-whiten the data (MTT's --zca)")
    p.add_argument("--val-size", dest="val_size", type=int, help="validation images held out of training (default: dataset's)")
    add_dsa_share_flag(p, "while recording")
    p.add_argument("--limit-train", dest="limit_train", type=int, help="train on a class-balanced subset of this size")
    p.add_argument("--seed", type=int, help="seed of the store (default 0); expert i is run (seed, i)")
    p.add_argument("--dtype", choices=("float32", "float16"), help="storage precision (default float32)")
    p.add_argument("--flat", choices=("none", "sam", "gsam"), help="flat experts via SAM or GSAM (FTD)")
    p.add_argument("--sam-rho", dest="sam_rho", type=float, help="SAM/GSAM radius rho")
    p.add_argument("--gsam-alpha", dest="gsam_alpha", type=float, help="GSAM's alpha")
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=None,
                   help="adaptive (ASAM-style) SAM/GSAM perturbation, as FTD's code uses (default off)")
    p.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="smooth experts: loss-decay schedule + gradient penalty (AST)")
    p.add_argument("--gp-weight", dest="gp_weight", type=float, help="gradient-penalty weight with --smooth (default 2)")
    p.add_argument("--loss-decay", dest="loss_decay", action=argparse.BooleanOptionalAction, default=None,
                   help="with --smooth: scale the loss by 0.5, 0.55, ... in the first 10 epochs (default on)")
    p.add_argument("--devices", type=device_list, help="comma-separated devices, one worker each (cpu, cuda:0,cuda:1, ...)")
    p.add_argument("--workers", type=int, help="N CPU workers (same as --devices cpu,cpu,...)")
    p.add_argument("--import-mtt", dest="import_mtt", action="append", metavar="PT",
                   help="import MTT replay_buffer_*.pt files instead of training (repeatable)")
    p.add_argument("--out", help="store folder (default runs/experts)")
    add_progress_flag(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from trajectories.record import BufferConfig, record_store

    if args.devices and args.workers:
        raise ConfigError("give --devices or --workers, not both")
    if not args.devices and args.workers is not None:
        args.devices = ["cpu"] * args.workers
    if args.import_mtt:
        from trajectories.mtt_import import import_mtt

        cfg = config_from_args(BufferConfig, args, "buffer")
        n = import_mtt(args.import_mtt, cfg.out, dataset=cfg.dataset, arch=cfg.arch, data_root=cfg.data_root,
                       zca=cfg.zca, dtype=cfg.dtype)
        print(f"imported {n} experts into {cfg.out}")
        return 0
    cfg = config_from_args(BufferConfig, args, "buffer")
    print(f"condense buffer: {describe(cfg)}")
    summaries = record_store(cfg, bars=not args.no_progress)
    if summaries:
        mean = sum(s["final_test_acc"] for s in summaries) / len(summaries)
        print(f"{len(summaries)} experts recorded into {cfg.out} (mean final test acc {100 * mean:.2f}%)")
    return 0
