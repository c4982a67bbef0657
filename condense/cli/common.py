"""What every subcommand shares besides its settings: the preset flag."""
from __future__ import annotations

import argparse


def add_preset_flag(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--preset", metavar="NAME",
                   help=f"a shipped preset (e.g. fashion-mnist/smoke) or a YAML file; its '{command}' section "
                        "sets the defaults and any flag given overrides it")
