"""``condense synth METHOD``: one subcommand per registered method, its flags from its config."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runtime.errors import ConfigError
from .common import add_preset_flag
from .flags import add_config_flags

EXAMPLES = """examples:
  condense synth tm --trajectories runs/fmnist/experts --ipc 10 --iters 500 --out runs/fmnist/tm_ipc10.h5
  condense synth tm --preset fashion-mnist/tm-ipc1-cpu      the CPU-protocol preset
  condense synth dm --dataset fashion-mnist --ipc 10 --out runs/fmnist/dm_ipc10.h5
  condense synth sre2l --teacher runs/fmnist/teacher.h5 --ipc 10 --out runs/fmnist/sre2l_ipc10.h5
  condense synth infer --teachers runs/fmnist/t1.h5,runs/fmnist/t2.h5 --ipc 10 --out runs/fmnist/infer_ipc10.h5
  condense synth s2d --static runs/video/stills_ipc2.h5 --dataset moving-fashion --ipc 1 --arch convnet3d:width=16,stride=1,dropout=0
  condense synth s2d --static runs/video/stills_ipc2.h5 --finetune tm --trajectories runs/video/experts --ipc 1
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
            m.add_argument("--backend", metavar="{torch,jax}", help=f"torch or jax (default {entry.default_backend}; "
                                                               "same options and set file)")
        add_config_flags(m, entry.config)
        m.set_defaults(handler=handle)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def with_method(argv: list[str]) -> list[str]:
    """``synth --method X ...`` (deprecated) or ``synth --preset P`` naming its method, as ``synth X ...``;
    an unknown method, or options without one, is one ConfigError line."""
    from ..config import preset_section
    from ..methods import get_method, method_names, runner

    if not argv or argv[0] != "synth" or {"-h", "--help"} & set(argv[1:2]):
        return argv
    if len(argv) == 1:  # one line, as for every other usage error, not the help text
        raise ConfigError(f"give a method: condense synth METHOD ..., METHOD one of {', '.join(method_names())}")
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
    if not isinstance(method, str):
        raise ConfigError(f"a preset's 'method' must be a method name, one of {', '.join(method_names())}")
    entry = get_method(method)  # an unknown one is one line naming the closest
    if entry.jax is None and "--backend" in rest[:-1]:  # torch only: no --backend flag, but one line for jax
        i = rest.index("--backend")
        runner(entry, rest[i + 1])
        del rest[i:i + 2]
    return ["synth", str(method), *rest]


def handle(args: argparse.Namespace) -> int:
    import dataclasses

    from ..methods import get_method
    from ..workflows.api import synthesize

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(get_method(args.method).config)
             if getattr(args, f.name, None) is not None}
    s = synthesize(args.method, backend=getattr(args, "backend", None), preset=args.preset,
                   progress=not args.no_progress, log=args.log, announce=print, **flags)
    out = Path(s.config["out"])
    iters = (s.provenance or {}).get("iteration")
    stored = "" if s.compensated is None else f", stored as {s.compensated.stored_images} images"
    if s.memory is not None:
        stored = (f", stored as {s.memory.statics.shape[1]} stills" + ("" if s.memory.dynamics is None else
                  f" + {s.memory.dynamics.shape[1]} dynamic memories") + " per class")
    size = f"{s.ipc} per class" if s.label_spec.kind != "representation" else \
        f"no classes, {s.labels.shape[1]}-d target representations"
    print(f"wrote {out}: {s.images.shape[0]} {'clips' if s.is_video else 'images'} ({size}{stored}"
          + (f", {iters} iterations)" if iters is not None else ")") + (f", learned lr {s.lr:.4g}" if s.lr else "")
          + f"; grid {out.with_suffix('.png')}")
    return 0
