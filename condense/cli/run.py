"""``condense run``: the end-to-end job from a preset. For now, the foundation's smoke job."""
from __future__ import annotations

import argparse

from ..smoke import SmokeConfig, run_smoke
from .common import add_preset_flag, config_from_args, describe, resolve_device

DEFAULT_PRESET = "fashion-mnist/smoke"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a whole job from a preset (default: the Fashion-MNIST smoke job)",
        description="Run a job end to end. With no arguments: the embedded smoke job on Fashion-MNIST "
                    "(random real subsets at IPC 1 and 10, saved as synthetic sets, PNG grids, evaluated "
                    "with the standard protocol). The full buffer -> synth -> eval quick start arrives with "
                    "the evaluation issue (#11).",
        epilog="examples:\n  condense run\n  condense run --runs 5 --epochs 100 --out runs/try\n"
               "  condense run --preset toy/smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(p, "run")
    p.add_argument("--dataset", help="dataset name (default fashion-mnist)")
    p.add_argument("--data-root", dest="data_root", help="folder holding the dataset files ($CONDENSE_DATA also works)")
    p.add_argument("--download", action="store_true", default=None,
                   help="download the dataset if it is missing (needs internet; never needed for fashion-mnist)")
    p.add_argument("--ipc", type=int, action="append", help="images per class; repeat for several (default 1 and 10)")
    p.add_argument("--arch", help="evaluation network spec (default convnet:width=32)")
    p.add_argument("--epochs", type=int, help="training epochs per evaluation run (default 300)")
    p.add_argument("--runs", type=int, help="evaluation runs per IPC (default 3)")
    p.add_argument("--seed", type=int, help="base seed (default 0)")
    p.add_argument("--dsa", action=argparse.BooleanOptionalAction, default=None, help="DSA augmentation in training")
    p.add_argument("--out", help="output folder (default runs/smoke)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.set_defaults(handler=handle, preset=None)


def handle(args: argparse.Namespace) -> int:
    if args.preset is None:
        args.preset = DEFAULT_PRESET
    cfg = config_from_args(SmokeConfig, args, "run")
    print(f"condense run ({args.preset}): {describe(cfg)}")
    run_smoke(cfg, resolve_device(cfg.device))
    print(f"sets, grids and results.json written to {cfg.out}/")
    return 0
