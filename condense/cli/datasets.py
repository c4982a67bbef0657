"""``condense datasets``: which datasets exist, their shapes, and where they were found (or why not)."""
from __future__ import annotations

import argparse

from ..data import available, dataset_info, dataset_names


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datasets", help="list datasets: classes, shapes, sizes, where found or why unavailable",
        description="List the registered datasets with their classes, image shape, split sizes and whether "
                    "their files were found (and where), or why not.",
        epilog="examples:\n  condense datasets\n  condense datasets --data-root /data",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", dest="data_root",
                   help="look for every dataset under this folder (<root>/<name>); $CONDENSE_DATA also works")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    rows = []
    for name in dataset_names():
        info = dataset_info(name)
        root = f"{args.data_root}/{name}" if args.data_root else None
        ok, where = available(name, root)
        shape = "x".join(str(s) for s in info.shape)  # T x C x H x W for clips
        sizes = f"{info.train_size}/{info.test_size}"
        rows.append((name, str(info.num_classes), shape, sizes, "yes" if ok else "no", where))
    header = ("dataset", "classes", "shape", "train/test", "found", "where / why not")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header) - 1)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0
