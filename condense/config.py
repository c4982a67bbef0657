"""Configuration is data: typed dataclasses, filled from YAML presets and flag overrides.

A preset is a YAML file shipped in ``condense/presets/<dataset>/<name>.yaml`` (or any
path a user gives). Its top level holds ``description`` and ``source`` (where the
hyper-parameters were published) plus one mapping per command (``buffer``, ``synth``,
``eval``, ``run``...). A command's configuration is built in layers, later ones
winning: the dataclass defaults, the preset's section, then the flags the user typed.
Unknown keys and values of the wrong type are refused with one clear line.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from .runtime.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
META_KEYS = ("description", "source")

C = TypeVar("C")


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


def make_config(cls: type[C], *layers: Mapping[str, Any] | None, where: str = "") -> C:
    """Build dataclass ``cls`` from its defaults overlaid by ``layers`` (later wins).

    ``None`` values in a layer mean "not given" and do not override. Values are
    checked against the field annotations (int, float, bool, str, optional and list
    types); ints are accepted for floats.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = key.replace("-", "_")
            if key not in names:
                origin = f" in {where}" if where else ""
                raise ConfigError(f"unknown option {key!r}{origin} for {cls.__name__}; known: {', '.join(sorted(names))}")
            if value is not None:
                values[key] = _coerce(value, hints[key], key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item = args[0] if args else Any
        out = [_coerce(v, item, key) for v in value]
        return out if origin is list else tuple(out)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"option {key!r} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain, YAML/JSON-able dict."""
    return dataclasses.asdict(cfg)
