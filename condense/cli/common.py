"""Flags every subcommand shares that are not settings: the preset and the progress bars."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_preset_flag(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--preset", metavar="NAME",
                   help=f"a shipped preset (e.g. fashion-mnist/smoke) or a YAML file; its '{command}' section "
                        "sets the defaults and any flag given overrides it")


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: every long-running command can run without bars (logs stay lines either way)."""
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")


def describe(cfg: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
