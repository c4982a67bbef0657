"""Presets: YAML files of settings, checked against the same declarations as the flags.

A preset is a YAML file shipped in ``condense/presets/<dataset>/<name>.yaml`` (or any
path a user gives). Its top level holds ``description`` and ``source`` (where the
hyper-parameters were published) plus one mapping per command (``buffer``, ``synth``,
``eval``, ``run``...). A command's configuration is built in layers, later ones
winning: the dataclass defaults, the preset's section, then the flags the user typed.
Unknown keys and values of the wrong type are refused with one clear line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..runtime.errors import ConfigError

PRESET_DIR = Path(__file__).parent.parent / "presets"
META_KEYS = ("description", "source")


def preset_names() -> list[str]:
    """Names of the shipped presets, e.g. ``fashion-mnist/smoke``."""
    return sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.glob("*/*.yaml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset name, or ``name`` itself if it is a YAML file path."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    shipped = PRESET_DIR / f"{name}.yaml"
    if shipped.exists():
        return shipped
    raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(preset_names()) or 'none'}")


def load_preset(name: str) -> dict[str, Any]:
    """The whole preset as a dict (``yaml.safe_load``: no arbitrary objects)."""
    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def preset_section(name: str, section: str) -> dict[str, Any]:
    """One command's section of a preset; a preset without that section is an error."""
    data = load_preset(name)
    if section not in data:
        have = [k for k in data if k not in META_KEYS]
        raise ConfigError(f"preset {name!r} has no '{section}' section (it has: {', '.join(have) or 'none'})")
    values = data[section] or {}
    if not isinstance(values, dict):
        raise ConfigError(f"preset {name!r}: section '{section}' must be a mapping")
    return values
