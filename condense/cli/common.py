"""What every subcommand shares besides its settings: the preset flag."""
from __future__ import annotations

import argparse

from ..runtime.errors import ConfigError


def add_preset_flag(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--preset", metavar="NAME",
                   help=f"a shipped preset (e.g. fashion-mnist/smoke) or a YAML file; its '{command}' section "
                        "sets the defaults and any flag given overrides it")


def given(args: argparse.Namespace, dests) -> list[str]:
    """The flags among ``dests`` the user typed (their value differs from the flag's default), by flag name."""
    parser = getattr(args, "parser_", None)
    if parser is None:
        return []
    dests = set(dests)
    return [a.option_strings[-1 if isinstance(a, argparse.BooleanOptionalAction) and getattr(args, a.dest) is False
                             else 0]
            for a in parser._actions
            if a.dest in dests and a.option_strings and getattr(args, a.dest, a.default) != a.default]


def refuse_unused(args: argparse.Namespace, dests, why: str) -> None:
    """A flag the command would ignore is refused in one line naming it: a run that silently drops an
    option reports a result the user did not ask for."""
    flags = given(args, dests)
    if flags:
        raise ConfigError(f"{flags[0]} has no effect here: {why}")


def bounded_int(low: int, high: int):
    """An argparse type: an int in [low, high], else argparse's one-line error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {text[:40]}")
        return value

    parse.__name__ = "int"
    return parse
