"""``condense``: one entry point, one small module per subcommand.

The CLI only parses, calls and prints. Errors a user can fix are printed as one line
with a non-zero exit; a traceback appears only with ``--debug``.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import traceback

from ..config.declare import clip
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


LONGEST = 1000  # characters of an error line: a message quoting a hostile argument stays readable
CHOICE = re.compile(r"argument (?P<arg>\S+): invalid choice: (?P<value>.*) \(choose from (?P<choices>.*)\)$")


def one_line(message: str) -> str:
    """An error message as one bounded line, whatever the text it quotes holds."""
    return clip(" ".join(str(message).split()), LONGEST)


class OneLineParser(argparse.ArgumentParser):
    """Bad usage is one line (``condense synth: error: ...``) and exit status 2, as every other error:
    never argparse's usage block, whatever went wrong (a bad choice, a missing argument, an unknown flag)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {one_line(_with_suggestion(message))} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _with_suggestion(message: str) -> str:
    """argparse's "invalid choice" message with the closest choice named first."""
    m = CHOICE.match(message)
    if not m:
        return message
    value = m["value"].strip("'\"")
    choices = [c.strip(" '\"") for c in m["choices"].split(",")]
    near = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    what = "command" if m["arg"] == "COMMAND" else m["arg"]
    hint = f"; did you mean {near[0]}?" if near else f"; choose from {', '.join(choices)}"
    return f"unknown {what} {clip(repr(value))}{hint}"


def _own_parsers(parser: argparse.ArgumentParser) -> None:
    """Record on every subcommand's namespace the parser that read it, so an error names that command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(parser_=sub)
                _own_parsers(sub)


def _options_of(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")]


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its prog (``condense synth dm``), nested ones included."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out[sub.prog] = sub
                out.update(_commands(sub))
    return out


def refuse_unknown(root: argparse.ArgumentParser, parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """One line for arguments the command does not take: the closest option it has, or the command
    the option belongs to (an option is refused rather than ignored: it would change nothing)."""
    first = unknown[0]
    if not first.startswith("-"):
        parser.error(f"unexpected argument {clip(repr(first))}")
    flag = first.split("=", 1)[0]
    own = _options_of(parser)
    near = difflib.get_close_matches(flag, own, n=1, cutoff=0.75)
    if near:
        parser.error(f"unrecognized option {clip(flag)}; did you mean {near[0]}?")
    elsewhere = [prog for prog, p in _commands(root).items() if flag in _options_of(p)]
    if elsewhere:
        # a synth method is told which methods take the option; another command, which commands do
        depth = 3 if parser.prog.startswith("condense synth ") else 2
        tops = sorted({" ".join(prog.split()[:depth]) for prog in elsewhere if len(prog.split()) >= depth}
                      or {" ".join(prog.split()[:2]) for prog in elsewhere})
        where = ", ".join(tops[:4]) + (", ..." if len(tops) > 4 else "")
        parser.error(f"{parser.prog.removeprefix('condense ')} does not take {flag} (an option of {where})")
    parser.error(f"unrecognized option {clip(flag)}")


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
    _own_parsers(parser)
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
    command = clip(next((a for a in argv if not a.startswith("-")), "condense"), 40)
    try:
        # Plugins first: the methods, datasets and networks they register get their subcommands and flags.
        load_plugins(os.environ.get("CONDENSE_PLUGINS"))
        argv = synth.with_method(argv)
    except CondenseError as e:
        print(f"condense {command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            refuse_unknown(parser, getattr(args, "parser_", parser), unknown)
    except SystemExit as e:  # a usage error is a status like any other error, for callers of main() too
        if e.code in (0, None):  # --help, --version
            raise
        return e.code if isinstance(e.code, int) else 2
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
        print(f"condense {args.command}: error: {one_line(e)}", file=sys.stderr)
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
        first = clip(str(e).splitlines()[0], 300) if str(e) else ""
        print(f"condense {args.command}: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
