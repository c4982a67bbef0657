"""``condense synth METHOD``: one subcommand per registered method, its flags from its config."""
from __future__ import annotations

import argparse
import sys

from ..runtime.errors import ConfigError
from ..jobs import resolve_device
from .common import add_preset_flag, describe
from .flags import add_config_flags, config_from_args

BACKENDS = ("torch", "jax")
EXAMPLES = """examples:
  condense synth tm --trajectories runs/fmnist/experts --ipc 10 --iters 500 --out runs/fmnist/tm_ipc10.h5
  condense synth tm --preset fashion-mnist/tm-ipc1-cpu      the CPU-protocol preset
  condense synth dm --dataset fashion-mnist --ipc 10 --out runs/fmnist/dm_ipc10.h5
  condense synth sre2l --teacher runs/fmnist/teacher.h5 --ipc 10 --out runs/fmnist/sre2l_ipc10.h5
  condense synth --preset cifar10/datm-ipc10                a preset names its method

`condense synth METHOD --help` lists that method's options, grouped by part. Rerunning the
same command resumes from the last checkpoint; <out>.run/ holds config, environment,
metrics.csv, image grids and the checkpoint; <out>.png is the set's grid."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..methods import get_method, method_names

    p = sub.add_parser("synth", help="synthesize a small training set (condense synth METHOD)",
                       description="Synthesize a small training set with one method and write it as a set file.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = p.add_subparsers(dest="method", metavar="METHOD", title="methods")
    for name in method_names():
        entry = get_method(name)
        m = methods.add_parser(name, help=entry.summary, description=f"condense synth {name}: {entry.summary}.",
                               epilog=EXAMPLES.splitlines()[0] + "\n" + "\n".join(
                                   line for line in EXAMPLES.splitlines() if f"synth {name} " in line),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_preset_flag(m, "synth")
        if entry.jax:
            m.add_argument("--backend", choices=BACKENDS, help=f"torch or jax (default {entry.default_backend}; "
                                                               "same options and set file)")
        add_config_flags(m, entry.config)
        m.set_defaults(handler=handle)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def with_method(argv: list[str]) -> list[str]:
    """``synth --method X ...`` (deprecated) or ``synth --preset P`` naming its method, as ``synth X ...``;
    an unknown method, or options without one, is one ConfigError line."""
    from ..config import preset_section
    from ..methods import get_method, method_names

    if not argv or argv[0] != "synth" or len(argv) == 1 or {"-h", "--help"} & set(argv[1:2]):
        return argv
    method, rest = (argv[1], argv[2:]) if not argv[1].startswith("-") else (None, argv[1:])
    for i, a in enumerate(rest):
        if method is None and (a == "--method" and i + 1 < len(rest) or a.startswith("--method=")):
            method = a.split("=", 1)[1] if "=" in a else rest[i + 1]
            del rest[i:i + (1 if "=" in a else 2)]
            print(f"condense synth: --method is deprecated and goes in the next release; write `condense synth "
                  f"{method} ...`", file=sys.stderr)
            break
    for i, a in enumerate(rest):
        if method is None and (a == "--preset" and i + 1 < len(rest) or a.startswith("--preset=")):
            method = preset_section(a.split("=", 1)[1] if "=" in a else rest[i + 1], "synth").get("method")
    if method is None:
        raise ConfigError(f"give a method: condense synth METHOD ..., METHOD one of {', '.join(method_names())}")
    get_method(str(method))  # an unknown one is one line naming the available methods
    return ["synth", str(method), *rest]


def handle(args: argparse.Namespace) -> int:
    from ..config import preset_section
    from ..methods import get_method, runner

    entry = get_method(args.method)
    preset = preset_section(args.preset, "synth") if args.preset else {}
    if preset.get("method", args.method) != args.method:
        raise ConfigError(f"preset {args.preset!r} is for method {preset['method']}, not {args.method}")
    backend = getattr(args, "backend", None) or preset.get("backend") or entry.default_backend
    run = runner(entry, backend)
    cfg = config_from_args(entry.config, args, "synth", exclude=("method", "backend"))
    device = resolve_device(cfg.device)
    print(f"condense synth {args.method} --backend {backend}: {describe(cfg)}")
    from evals.validation import validation_evaluator
    from ..plots import save_set_grid

    s = run(cfg, device, evaluate=validation_evaluator(cfg, device) if getattr(cfg, "eval_every", 0) else None,
            bars=not args.no_progress)
    grid = save_set_grid(s, cfg.out)
    print(f"wrote {cfg.out}: {s.images.shape[0]} images ({s.ipc} per class)" + (f", learned lr {s.lr:.4g}" if s.lr else "")
          + f"; grid {grid}")
    return 0
