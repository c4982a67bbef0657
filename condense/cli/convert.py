"""``condense convert``: a set file (.h5) to and from the reference repositories' layouts."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load_dataset
from ..layouts import FOLDER_LAYOUTS, LAYOUTS, build_set, read, write
from ..nets import parse_arch
from ..runtime.errors import ConfigError
from ..synset import load_synset
from .common import bounded_int, refuse_unused

IMPORT_FLAGS = ("dataset", "data_root", "download", "zca", "layout_from", "iteration", "experiment", "arch")
# At most this many experiments' worth of images in one file (DC/DSA/DM save one set per experiment).
MAX_EXPERIMENTS = 100


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="export a set to MTT/FTD/DATM's, DC/DSA/DM's or DD-Ranking's layout, or import one",
        description="Convert between condense's synthetic-set file (.h5) and the reference repositories' layouts: "
                    "mtt (MTT/FTD/DATM: a folder with images_best.pt, labels_best.pt[, lr_best.pt]), dm "
                    "(DC/DSA/DM: one .pt with {'data': [[images, labels], ...], 'accs_all_exps': ...}), ddranking "
                    "(DD-Ranking: a folder with images.pt, labels.pt[, lr.pt]) and dict (condense's earlier "
                    "{image_syn, label_syn, syn_lr} .pt). Importing needs --dataset (and --zca if the images were "
                    "ZCA-whitened), since no layout says how its pixels were transformed; the layout is detected "
                    "unless --from names it. .pt files are read with weights_only=True: nothing is unpickled.",
        epilog="examples:\n  condense convert runs/quickstart/dm_ipc1.h5 dm_ipc1.pt\n"
               "  condense convert runs/quickstart/dm_ipc1.h5 mtt_out --to mtt\n"
               "  condense convert logged_files/CIFAR10/run mtt_set.h5 --dataset cifar10 --zca\n"
               "  condense convert res_DM_CIFAR10_ConvNet_10ipc.pt dm.h5 --dataset cifar10 --experiment 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input: a set file (.h5), or a layout's .pt file or folder")
    p.add_argument("dst", help="output: a layout's .pt file or folder, or a set file (.h5)")
    p.add_argument("--to", dest="layout_to", choices=LAYOUTS,
                   help="layout to export to (default: dict for a .pt output; a folder needs mtt or ddranking)")
    p.add_argument("--from", dest="layout_from", choices=LAYOUTS, help="layout to import (default: detected)")
    p.add_argument("--iteration", type=bounded_int(0, 10**9),
                   help="import MTT's images_<N>.pt/labels_<N>.pt snapshot instead of *_best.pt")
    p.add_argument("--experiment", type=bounded_int(0, 10**6),
                   help="which experiment of a DC/DSA/DM file to import (default 0)")
    p.add_argument("--dataset", help="dataset the imported images come from (import only)")
    p.add_argument("--data-root", dest="data_root", help="dataset folder, needed with --zca to refit the ZCA")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs internet)")
    p.add_argument("--zca", action="store_true", help="the imported images are ZCA-whitened (MTT's --zca)")
    p.add_argument("--arch", help="the network the imported set was distilled with, e.g. convnet:width=128 "
                                  "(recorded: condense eval's default; the layouts do not say)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if src.suffix == ".h5" and dst.suffix != ".h5":
        return _export(args, src, dst)
    if dst.suffix == ".h5" and (src.suffix == ".pt" or src.is_dir()):
        return _import(args, src, dst)
    raise ConfigError(f"convert goes .h5 -> a layout (.pt or folder) or back, not {src.suffix or '?'} -> "
                      f"{dst.suffix or '?'}")


def _export(args: argparse.Namespace, src: Path, dst: Path) -> int:
    refuse_unused(args, IMPORT_FLAGS, "exporting reads the dataset and its transform from the set file "
                                      "(it is for importing)")
    layout = args.layout_to or ("dict" if dst.suffix == ".pt" else None)
    if layout is None:
        raise ConfigError(f"say which layout to write to {dst} with --to ({', '.join(LAYOUTS)})")
    if layout not in FOLDER_LAYOUTS and dst.suffix != ".pt":
        raise ConfigError(f"--to {layout} writes one .pt file; name the output *.pt, not {dst}")
    if layout in FOLDER_LAYOUTS and dst.suffix == ".pt":
        raise ConfigError(f"--to {layout} writes a folder of .pt files; name a folder, not {dst}")
    s = load_synset(src)
    files = write(s, dst, layout)
    print(f"exported {s.images.shape[0]} images of {s.dataset} ({layout} layout) to "
          f"{', '.join(str(f) for f in files)}")
    return 0


def _import(args: argparse.Namespace, src: Path, dst: Path) -> int:
    refuse_unused(args, ("layout_to",), "--to names the layout of an export (use --from to name the input's)")
    if not args.dataset:
        raise ConfigError("importing a .pt set needs --dataset (the reference layouts do not record it)")
    arch = str(parse_arch(args.arch)) if args.arch else None  # a bad spec is one line before anything is read
    ds = load_dataset(args.dataset, args.data_root, zca=args.zca, download=args.download)
    shape = (ds.info.channels, *ds.info.image_size)
    # No set is larger than its training split (or 1000 per class): bigger files are refused unread.
    most = max(len(ds.x_train), 1000 * ds.info.num_classes)
    max_bytes = MAX_EXPERIMENTS * most * (8 * shape[0] * shape[1] * shape[2] + 8 * ds.info.num_classes) + (1 << 20)
    layout, raw = read(src, args.layout_from, iteration=args.iteration, experiment=args.experiment,
                       max_bytes=max_bytes)
    s = build_set(raw, dataset=args.dataset, num_classes=ds.info.num_classes, image_shape=shape,
                  transform=ds.transform, data=dict(ds.meta))
    if arch is not None:
        s.config = {**s.config, "arch": arch}
    s.save(dst)
    lr = f", lr {s.lr:g}" if s.lr is not None else ""
    pixels = "ZCA-whitened" if args.zca else "normalised"
    print(f"imported {s.images.shape[0]} images ({s.ipc} per class, {s.label_spec.kind} labels{lr}) from the "
          f"{layout} layout into {dst} ({args.dataset}, {pixels} pixels)")
    return 0
