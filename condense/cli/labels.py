"""``condense labels``: soft labels from a teacher, label codecs, and what a file's labels cost."""
from __future__ import annotations

import argparse

from ..codecs import codec_names
from ..synset import load_synset
from .common import add_progress_flag, device_list

EXAMPLES = """examples:
  condense labels runs/fmnist/tm_ipc10.h5 --teacher runs/fmnist/experts --views per-epoch --out runs/fmnist/tm_ipc10.soft.h5
  condense labels runs/fmnist/tm_ipc10.soft.h5 --codec topk:k=3,bits=8 --out runs/fmnist/tm_ipc10.top3.h5
  condense labels runs/fmnist/tm_ipc10.soft.h5 --codec lowrank:rank=4 --out runs/fmnist/tm_ipc10.lr4.h5
  condense labels runs/fmnist/tm_ipc10.soft.h5 --codec projector:rank=8 --out runs/fmnist/tm_ipc10.proj.h5
  condense labels runs/fmnist/tm_ipc10.h5 --teacher runs/fmnist/experts --committee 5 --views static --out set.h5
  condense labels --info runs/fmnist/tm_ipc10.top3.h5
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
    p = sub.add_parser("labels", help="make soft labels with a teacher, compress them with a codec, or show their cost",
                       description="Soft labels for a synthetic set: a teacher's predictions per image (--views "
                                   "static) or per augmented view the evaluation will train on (--views per-epoch), "
                                   "then optionally a codec that compresses them. The input file is never modified.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synset", help="a synthetic-set file (.h5)")
    p.add_argument("--out", help="file to write (must differ from the input)")
    p.add_argument("--info", action="store_true", help="print the labels' meaning, codec and bytes, and exit")
    t = p.add_argument_group("teacher (soft labels)")
    t.add_argument("--teacher", help="teacher file (condense teacher) or trajectory-store folder whose experts label "
                                     "the set (default with --views: the teacher the set was made with, if any)")
    t.add_argument("--teacher-expert", dest="teacher_expert", type=int, default=0, help="first expert (default 0)")
    t.add_argument("--teacher-epoch", dest="teacher_epoch", type=int, help="epoch of the experts (default: the last)")
    t.add_argument("--committee", type=int, default=1, help="average the predictions of N experts (default 1)")
    t.add_argument("--views", choices=("static", "per-epoch"),
                   help="one label per image, or one per augmented view of every evaluation epoch (default static)")
    t.add_argument("--view-strategy", dest="view_strategy", default="color_crop_cutout_flip_scale_rotate",
                   help="augmentation of the views (and of the evaluation that trains on them): DSA's groups "
                        "(default), or rrc+flip (SRe2L/FKD's random-resized crop and flip)")
    t.add_argument("--view-epochs", dest="view_epochs", type=int, default=300,
                   help="epochs of views to label (evaluation may train at most this many; default 300)")
    t.add_argument("--view-seed", dest="view_seed", type=int, default=0, help="seed of the views (default 0)")
    t.add_argument("--temperature", type=float, default=1.0, help="distillation temperature, stored (default 1)")
    c = p.add_argument_group("codec")
    c.add_argument("--codec", help=f"label codec spec ({', '.join(codec_names())}; see below)")
    c.add_argument("--projector-steps", dest="projector_steps", type=int, default=1500,
                   help="projector training steps (default 1500)")
    c.add_argument("--projector-lr", dest="projector_lr", type=float, default=3e-3, help="projector Adam lr")
    c.add_argument("--threads", type=int, help="torch CPU threads")
    w = p.add_argument_group("spreading the per-epoch views")
    w.add_argument("--devices", type=device_list,
                   help="label ranges of epochs on these devices at once (cuda:0,cuda:1 or cpu,cpu)")
    w.add_argument("--executor", choices=("local", "ray"), default="local", help="local (default) or ray")
    w.add_argument("--address", help="--executor ray: the cluster (auto, host:port; default a local Ray)")
    add_progress_flag(p)
    p.set_defaults(handler=handle)


def info(path: str) -> str:
    s = load_synset(path)
    from evals.report import label_cost

    spec, sb = s.label_spec, s.storage_bytes()
    used, fraction = label_cost(sb)
    lines = [f"{path}: {s.method}, {s.dataset}, IPC {s.ipc}, {s.images.shape[0]} images",
             f"  labels: {spec.kind} {tuple(s.labels.shape)}, loss {spec.loss}, temperature {spec.temperature:g}, "
             f"views {spec.view_mode}" + (f" (seed {spec.view_seed}, {spec.view_strategy})"
                                          if spec.view_mode == "per-view" else ""),
             f"  codec: {spec.codec}",
             f"  bytes: images {sb['images']:,}, labels {sb['labels']:,}, label generator {sb['label_generator']:,}, "
             f"total {sb['total']:,}",
             f"  labels cost {used:,} B = {100.0 * fraction:.3g} % of the "
             f"uncompressed labels ({sb['labels_uncompressed']:,} B)"]
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    if args.info:
        print(info(args.synset))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..labels.run import LabelsConfig, run_labels

    cfg = LabelsConfig(synset=args.synset, teacher=args.teacher, teacher_expert=args.teacher_expert,
                       teacher_epoch=args.teacher_epoch, committee=args.committee, views=args.views,
                       view_epochs=args.view_epochs, view_seed=args.view_seed, view_strategy=args.view_strategy,
                       temperature=args.temperature, codec=args.codec, projector_steps=args.projector_steps,
                       projector_lr=args.projector_lr, out=args.out, devices=args.devices, executor=args.executor,
                       address=args.address)
    run_labels(cfg, bars=not args.no_progress)
    print(info(cfg.out))
    return 0
