"""``condense run``: a whole job from a pipeline preset (default: the Fashion-MNIST quick start)."""
from __future__ import annotations

import argparse
import inspect

from ..config import preset_section
from .common import add_preset_flag
from .flags import add_config_flags, config_from_args

DEFAULT_PRESET = "fashion-mnist/quickstart"
EXAMPLES = """examples:
  condense run                                       the quick start -> runs/quickstart/ (3 small experts, tm and dm
                                                     at IPC 1 beside the random baseline; 9 minutes on 2 CPU cores)
  condense run --preset fashion-mnist/cpu-protocol   every method at IPC 1 and 10 (hours)
  condense run --preset fashion-mnist/smoke          the random baseline only (2 minutes)
  condense run --out runs/try --runs 3               fewer evaluation runs"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from condense.workflows.pipeline import RunConfig

    p = sub.add_parser("run", help="run a whole pipeline from a preset (default: the Fashion-MNIST quick start)",
                       description=inspect.getdoc(RunConfig), epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(p, "run")
    add_config_flags(p, RunConfig, skip=("steps",))
    p.set_defaults(handler=handle, preset=None)


def handle(args: argparse.Namespace) -> int:
    from condense.workflows.pipeline import RunConfig, run_pipeline

    if args.preset is None:
        args.preset = DEFAULT_PRESET
    preset_section(args.preset, "run")  # a clear error for a preset that is not a pipeline
    cfg = config_from_args(RunConfig, args, "run")
    print(f"condense run --preset {args.preset}: steps {', '.join(cfg.steps)} -> {cfg.out}/")
    run_pipeline(args.preset, cfg, bars=not args.no_progress)
    return 0
