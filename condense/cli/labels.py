"""``condense labels``: soft labels from a teacher, label codecs, and what a file's labels cost."""
from __future__ import annotations

import argparse
import dataclasses
import inspect

from .common import bounded_int, refuse_unused
from .flags import add_config_flags, config_from_args

EXAMPLES = """examples:
  condense labels runs/fmnist/tm_ipc10.h5 --teacher runs/fmnist/experts --views per-epoch --out runs/fmnist/tm_ipc10.soft.h5
  condense labels runs/fmnist/tm_ipc10.soft.h5 --codec topk:k=3,bits=8 --out runs/fmnist/tm_ipc10.top3.h5
  condense labels runs/fmnist/tm_ipc10.soft.h5 --codec lowrank:rank=4 --out runs/fmnist/tm_ipc10.lr4.h5
  condense labels runs/fmnist/tm_ipc10.soft.h5 --codec projector:rank=8 --out runs/fmnist/tm_ipc10.proj.h5
  condense labels runs/fmnist/tm_ipc10.h5 --teacher runs/fmnist/experts --committee 5 --views static --out set.h5
  condense labels --info runs/fmnist/tm_ipc10.top3.h5
  condense labels runs/fmnist/tm_ipc10.h5 --curve --teacher runs/fmnist/experts --out runs/fmnist/curve --codecs fp16 --codecs topk:k=1,bits=4
                            (hard, static, per-view and every codec, evaluated beside random real:
                             labels.md, labels.json, labels.png in --out)
  condense labels runs/fmnist/sre2l_ipc10.h5 --views per-epoch --view-strategy rrc+flip --out runs/fmnist/sre2l_ipc10.soft.h5
                            (sre2l/rded sets: their own teacher by default; SRe2L/FKD's crop + flip views)

codecs (--codec NAME or NAME:key=value,...):
  none                      float32 as they are
  fp16                      float16
  topk:k=K,bits=B           top-k probabilities, B in {4, 8, 16} bits, uniform remainder
  lowrank:rank=R[,bits=B]   row mean + rank-R SVD of the label matrix (views x image-classes)
  projector:rank=R[,width=W,depth=D,seed=S,bits=B]
                            HeLlO label projector: a ConvNet backbone regenerated from seed S
                            plus rank-R adapters, trained to reproduce the labels; stores no labels
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..labels.run import LabelsConfig
    from ..workflows.label_curve import CurveConfig

    p = sub.add_parser("labels", help="make soft labels with a teacher, compress them with a codec, or show their cost",
                       description=inspect.getdoc(LabelsConfig), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synset", help="a synthetic-set file (.h5)")
    p.add_argument("--info", action="store_true", help="print the labels' meaning, codec and bytes, and exit")
    p.add_argument("--curve", action="store_true",
                   help="the storage-vs-accuracy curve: make every label variant into the folder --out, evaluate "
                        "each beside random real, write labels.md, labels.json and labels.png (curve options below)")
    p.add_argument("--threads", type=bounded_int(1, 1024), metavar="N", help="torch CPU threads (1 to 1024)")
    add_config_flags(p, LabelsConfig, skip=("synset",))
    add_config_flags(p, CurveConfig, skip=tuple(f.name for f in dataclasses.fields(LabelsConfig)))
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from evals.report import label_summary

    from ..labels.run import LabelsConfig
    from ..workflows.label_curve import CurveConfig

    labels_fields = {f.name for f in dataclasses.fields(LabelsConfig)}
    curve_only = [f.name for f in dataclasses.fields(CurveConfig) if f.name not in labels_fields]
    if args.info:
        refuse_unused(args, ["threads", "curve", *sorted(labels_fields), *curve_only],
                      "--info only prints what a file's labels are and cost")
        print(label_summary(args.synset))
        return 0
    if args.curve:
        refuse_unused(args, ["views", "codec"], "--curve makes every variant (static, per-view, each of --codecs)")
    else:
        refuse_unused(args, curve_only, "only --curve evaluates label variants")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.curve:
        from ..workflows.label_curve import label_curve, markdown_table

        cfg = config_from_args(CurveConfig, args, "labels")
        curve = label_curve(cfg, bars=not args.no_progress)
        print(markdown_table(curve))
        print(f"table: {cfg.out}/labels.md, {cfg.out}/labels.json; plot: {cfg.out}/labels.png")
        return 0
    from ..labels.run import run_labels

    cfg = config_from_args(LabelsConfig, args, "labels")
    run_labels(cfg, bars=not args.no_progress)
    print(label_summary(cfg.out))
    return 0
