"""``condense``: one entry point, one small module per subcommand.

The CLI only parses, calls and prints. Errors a user can fix are printed as one line
with a non-zero exit; a traceback appears only with ``--debug``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ..runtime.errors import CondenseError, ConfigError
from ..runtime.perf import tune_cpu_allocator
from ..version import __version__
from . import buffer, convert, datasets, labels, run, show, synth, teacher
from . import eval as eval_cmd

EPILOG = """examples:
  condense datasets                          what is available, and where
  condense run                               the quick start on Fashion-MNIST: buffer, tm + dm, eval (CPU, minutes)
  condense teacher --dataset fashion-mnist --out teacher.h5   train a teacher (sre2l, rded, soft labels)
  condense eval SET.h5 --runs 5              evaluate a set beside the random-real baseline
  condense show runs/quickstart/dm_ipc1.h5 --out grid.png
  condense convert set.h5 set.pt             export to the reference repositories' .pt layout

Add --debug anywhere to see full tracebacks, --no-progress to turn progress bars off. $CONDENSE_PLUGINS=mod1,mod2 imports your own
modules first, so the datasets, networks and methods they register can be named here (a method gets its own `condense synth NAME`). `condense COMMAND --help` shows each command's flags."""


class OneLineParser(argparse.ArgumentParser):
    """Bad usage is one line (``condense synth: error: ...``) and exit status 2, as every other error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="condense", description="Dataset distillation: record experts, synthesize tiny sets, evaluate them honestly.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"condense {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors (anywhere on the line)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars for long work (anywhere on the line; log lines stay)")
    parser.add_argument("--log", metavar="KIND", help="synth: also log metrics and image grids to tensorboard "
                                                      "and/or wandb (offline unless $WANDB_MODE says otherwise); "
                                                      "metrics.csv is always written")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (buffer, teacher, synth, labels, eval_cmd, run, show, datasets, convert):
        module.add_parser(sub)
    return parser


def load_plugins(spec: str | None) -> None:
    """Import the user's modules named in ``$CONDENSE_PLUGINS`` (comma-separated).

    That is how datasets, networks and codecs registered in a user's own code reach the
    CLI without a fork (docs/EXTENDING.md).
    """
    for name in filter(None, (n.strip() for n in (spec or "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import plugin module {name!r} from $CONDENSE_PLUGINS: {e}") from None


def take_log(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--log KIND`` (repeatable, or comma-separated) anywhere on the line, out of ``argv``."""
    rest, kinds, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--log" and i + 1 < len(argv) or argv[i].startswith("--log="):
            value = argv[i].split("=", 1)[1] if "=" in argv[i] else argv[i + 1]
            kinds += [k.strip() for k in value.split(",") if k.strip()]
            i += 1 if "=" in argv[i] else 2
        else:
            rest.append(argv[i])
            i += 1
    return rest, kinds


def main(argv: list[str] | None = None) -> int:
    tune_cpu_allocator()  # this process is ours: the speed figures of docs/BENCHMARKS.md assume it
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, no_progress = "--debug" in argv, "--no-progress" in argv
    argv = [a for a in argv if a not in ("--debug", "--no-progress")]
    argv, log = take_log(argv)
    command = next((a for a in argv if not a.startswith("-")), "condense")
    try:
        # Plugins first: the methods, datasets and networks they register get their subcommands and flags.
        load_plugins(os.environ.get("CONDENSE_PLUGINS"))
        argv = synth.with_method(argv)
    except CondenseError as e:
        print(f"condense {command}: error: {e}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_unknown_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    args.no_progress, args.log = no_progress, log
    if log and args.command != "synth":
        print(f"condense {args.command}: error: --log applies to condense synth", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except CondenseError as e:
        if debug:
            traceback.print_exc()
        print(f"condense {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"condense {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`condense ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except Exception as e:  # an internal bug: say so in one line, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"condense {args.command}: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
