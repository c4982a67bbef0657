"""Helpers every subcommand shares: presets + flag overrides (devices: condense.jobs.resolve_device)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from ..config import make_config, preset_section

C = TypeVar("C")


def add_preset_flag(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--preset", metavar="NAME",
                   help=f"a shipped preset (e.g. fashion-mnist/smoke) or a YAML file; its '{command}' section "
                        "sets the defaults and any flag given overrides it")


def device_list(text: str) -> list[str]:
    """``--devices``' value: ``"cuda:0, cuda:1"`` -> ``["cuda:0", "cuda:1"]`` (one worker each)."""
    return [d.strip() for d in text.split(",") if d.strip()]


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: every long-running command can run without bars (logs stay lines either way)."""
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")


def add_dsa_share_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--dsa-share``: what the images of one training batch share of a DSA draw (condense.augment)."""
    from ..augment import SHARES

    p.add_argument("--dsa-share", dest="dsa_share", choices=SHARES,
                   help=f"DSA draws {what}: image = per-image parameters, one transform group per step (the "
                        "references' training, default); batch = one draw per batch (condense 0.1); "
                        "view = nothing shared (the semantics of per-view labels)")


def config_from_args(cls: type[C], args: argparse.Namespace, section: str) -> C:
    """Defaults of ``cls`` < the preset's section < the flags the user typed (flags default to None)."""
    preset = preset_section(args.preset, section) if getattr(args, "preset", None) else None
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return make_config(cls, preset, flags, where=f"preset {args.preset!r}" if preset is not None else "")


def describe(cfg: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
