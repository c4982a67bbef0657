"""``condense teacher``: train a teacher network (SRe2L's squeeze) and save it as a teacher file."""
from __future__ import annotations

import argparse
import inspect

from ..config import describe
from .common import add_preset_flag, refuse_unused
from .flags import add_config_flags, config_from_args

EXAMPLES = """examples:
  condense teacher --dataset fashion-mnist --arch convnet:norm=batch --epochs 20 --out runs/fmnist/teacher.h5
  condense teacher --dataset fashion-mnist --arch resnet18 --out runs/fmnist/teacher-r18.h5
  condense teacher --preset fashion-mnist/teacher-cpu
  condense teacher --info runs/fmnist/teacher.h5
  condense teacher --ssl barlow-twins --dataset fashion-mnist --arch convnet:width=32 --out runs/fmnist/bt.h5
                                       self-supervised (labels only measure a linear probe): krr-st's teacher
  condense teacher --dataset imagenet-1k --arch resnet18-imagenet --weights resnet18-f37072fd.pth \\
      --out runs/in1k/teacher.h5          torchvision's pretrained ResNet-18 as a teacher file

The file holds the weights (and BatchNorm statistics) only, with the accuracy, data, pixel
transform and class order they belong to; `condense synth sre2l|rded --teacher F`
and `condense labels SET --teacher F` use it and refuse a set whose classes are ordered otherwise."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..labels.squeeze import TeacherConfig

    p = sub.add_parser("teacher", help="train a teacher network and save it as a teacher file",
                       description=inspect.getdoc(TeacherConfig), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(p, "teacher")
    p.add_argument("--info", metavar="FILE", help="print what a teacher file records, and exit")
    add_config_flags(p, TeacherConfig)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.info:
        import dataclasses

        from ..labels.squeeze import TeacherConfig
        from ..labels.teacher_file import load_teacher_file

        refuse_unused(args, ["preset", *(f.name for f in dataclasses.fields(TeacherConfig))],
                      "--info only prints what a teacher file records")

        print(load_teacher_file(args.info).summary(args.info))
        return 0
    from ..jobs import resolve_device
    from ..labels.squeeze import TeacherConfig, train_teacher

    cfg = config_from_args(TeacherConfig, args, "teacher")
    if cfg.ssl:
        refuse_unused(args, ("dsa", "dsa_strategy", "dsa_share", "weights", "measure"),
                      "--ssl trains on its own two views (--min-scale) and is measured by a linear probe")
    else:
        refuse_unused(args, ("projector", "bt_lambda", "min_scale", "probe_epochs"), "it is an --ssl option")
    print(f"condense teacher: {describe(cfg)}")
    t = train_teacher(cfg, resolve_device(cfg.device), progress=not args.no_progress)
    val = "" if t.val_accuracy is None else f", validation {t.val_accuracy:.2f} %"
    acc = "not measured" if t.accuracy != t.accuracy else f"{t.accuracy:.2f} %"
    kind = "" if t.ssl is None else f"self-supervised ({t.ssl['method']}, {t.representation_dim}-d representation), " \
                                    "linear-probe "
    print(f"wrote {cfg.out}: {t.arch} on {t.dataset}, {kind}test accuracy {acc}{val}")
    return 0
