"""``condense convert``: to and from the reference repositories' ``.pt`` layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load_dataset
from ..runtime.errors import ConfigError
from ..synset import export_pt, import_pt, load_synset
from .common import refuse_unused


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="export a set to MTT/FTD/DATM's .pt layout, or import one",
        description="Convert between condense's synthetic-set file (.h5) and the reference repositories' .pt "
                    "layout ({image_syn, label_syn, syn_lr}). Importing needs --dataset (and --zca if the images "
                    "were ZCA-whitened), since .pt files do not say how their pixels were transformed. .pt files "
                    "are read with weights_only=True: nothing is unpickled.",
        epilog="examples:\n  condense convert runs/quickstart/dm_ipc1.h5 dm_ipc1.pt\n"
               "  condense convert mtt_set.pt mtt_set.h5 --dataset cifar10 --zca",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="input file (.h5 or .pt)")
    p.add_argument("dst", help="output file (.pt or .h5)")
    p.add_argument("--dataset", help="dataset the imported images come from (import only)")
    p.add_argument("--data-root", dest="data_root", help="dataset folder, needed with --zca to refit the ZCA")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (needs internet)")
    p.add_argument("--zca", action="store_true", help="the imported images are ZCA-whitened (MTT's --zca)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if src.suffix == ".h5" and dst.suffix == ".pt":
        refuse_unused(args, ("dataset", "data_root", "download", "zca"),
                      "exporting reads the dataset and its transform from the set file (it is for importing a .pt)")
        s = load_synset(src)
        export_pt(s, dst)
        print(f"exported {s.images.shape[0]} images of {s.dataset} to {dst}")
        return 0
    if src.suffix == ".pt" and dst.suffix == ".h5":
        if not args.dataset:
            raise ConfigError("importing a .pt set needs --dataset (the .pt layout does not record it)")
        ds = load_dataset(args.dataset, args.data_root, zca=args.zca, download=args.download)
        s = import_pt(src, dataset=args.dataset, num_classes=ds.info.num_classes,
                      image_shape=(ds.info.channels, *ds.info.image_size),
                      transform=ds.transform, data=dict(ds.meta))
        s.save(dst)
        print(f"imported {s.images.shape[0]} images ({s.ipc} per class) into {dst}")
        return 0
    raise ConfigError(f"convert goes .h5 -> .pt or .pt -> .h5, not {src.suffix or '?'} -> {dst.suffix or '?'}")
