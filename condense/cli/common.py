"""What every subcommand shares besides its settings: the preset flag, and a config in one line."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_preset_flag(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--preset", metavar="NAME",
                   help=f"a shipped preset (e.g. fashion-mnist/smoke) or a YAML file; its '{command}' section "
                        "sets the defaults and any flag given overrides it")


def describe(cfg: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
