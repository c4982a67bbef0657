"""``condense show``: look at a synthetic set as a PNG grid."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import dataset_info
from ..runtime.errors import CondenseError
from ..synset import load_synset
from ..plots import save_grid
from ..texture import tile
from .common import bounded_int, refuse_unused


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show", help="write a PNG grid of a synthetic set, or the curves of a trajectory store",
        description="For a synthetic-set file: a PNG grid, one row per class, images mapped back to pixels "
                    "with the normalisation/ZCA the file carries. For a trajectory-store folder: per-expert "
                    "test accuracy, distance from init and per-epoch step length.",
        epilog="examples:\n  condense show runs/quickstart/dm_ipc1.h5 --out grid.png\n"
               "  condense show runs/fmnist/experts --out traj.png\n"
               "  condense show set.h5 --out grid.png --max-per-class 5\n"
               "  condense show texture.h5 --out tiled.png --tile 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a synthetic-set file (.h5) or a trajectory-store folder")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--max-per-class", dest="max_per_class", type=bounded_int(1, 1000), default=10,
                   metavar="N", help="images per row (1 to 1000; default 10)")
    p.add_argument("--tile", type=bounded_int(1, 16), default=1, metavar="N",
                   help="draw every image tiled N x N (a texture's canvas shows whether it is seamless; 1 to 16; "
                        "default 1)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        refuse_unused(args, ("max_per_class", "tile"), "a trajectory store is drawn as curves, not as images")
        from trajectories import open_store
        from trajectories.plot import plot_store

        store = open_store(path)
        out = plot_store(store, args.out)
        print(f"wrote {out} ({len(store)} experts x {store.epochs} epochs)")
        return 0
    s = load_synset(path)
    try:
        names = dataset_info(s.dataset).class_names
    except CondenseError:
        names = None  # a user-registered dataset not imported here: fall back to class numbers
    tiled = f", tiled {args.tile}x{args.tile}" if args.tile > 1 else ""
    out = save_grid(tile(s.to_pixels(), args.tile), s.classes, args.out, class_names=names,
                    max_per_class=args.max_per_class,
                    title=f"{s.method}, {s.dataset}, {s.ipc_label}" + (f", lr {s.lr:.4g}" if s.lr else "") + tiled)
    print(f"wrote {out} ({s.images.shape[0]} images, {s.num_classes} classes)")
    return 0
