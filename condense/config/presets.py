"""Presets: YAML files of settings, checked against the same declarations as the flags.

A preset is a YAML file shipped in ``condense/presets/<dataset>/<name>.yaml`` (or any
path a user gives). Its top level holds ``description`` and ``source`` (where the
hyper-parameters were published) plus one mapping per command (``buffer``, ``synth``,
``eval``, ``run``...). A command's configuration is built in layers, later ones
winning: the dataclass defaults, the preset's section, then the flags the user typed.
Unknown keys and values of the wrong type are refused with one clear line.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from ..runtime.errors import ConfigError
from .declare import clip, shown

PRESET_DIR = Path(__file__).parent.parent / "presets"
META_KEYS = ("description", "source")
MAX_BYTES = 1 << 20  # the largest shipped preset is a few KiB; a bigger file is not a preset
MAX_DEPTH = 32  # the shipped presets nest 3 deep; the composer recurses once per level
MAX_NODES = 100_000  # values after aliases are expanded: an alias bomb is refused before anything walks it


class _Refused(Exception):
    """A preset the bounded loader will not build (too deep, too many nodes)."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document nested deeper than ``MAX_DEPTH`` or whose aliases
    would expand to more than ``MAX_NODES`` values. The shipped presets share sections through
    anchors and merge keys, so aliases stay allowed; their expanded size is what is bounded, counted
    on the composed node graph (each shared node once, memoised) before any Python value is built.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def size(n) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            sizes[id(n)] = 1  # a node reached again through itself (a recursive alias) counts once
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(size(c) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(size(k) + size(v) for k, v in n.value)
            sizes[id(n)] = total
            if total > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values once its aliases are expanded")
            return total

        size(node)
        return super().construct_document(node)


def preset_names() -> list[str]:
    """Names of the shipped presets, e.g. ``fashion-mnist/smoke``."""
    return sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.glob("*/*.yaml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset name, or ``name`` itself if it is a YAML file path."""
    if not isinstance(name, str):
        raise ConfigError(f"a preset is a name or a YAML file path, got {shown(name)}")
    candidate = Path(name)
    try:
        if candidate.suffix in (".yaml", ".yml") and candidate.exists():
            return candidate
        shipped = PRESET_DIR / f"{name}.yaml"
        if shipped.resolve().is_relative_to(PRESET_DIR.resolve()) and shipped.is_file():
            return shipped
    except (OSError, ValueError):  # a name no file system can hold (a NUL byte, too long): not a preset
        pass
    names = preset_names()
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}?" if near else f"shipped presets: {', '.join(names) or 'none'}"
    raise ConfigError(f"unknown preset {shown(name, 160)}; {hint}")


def load_preset(name: str) -> dict[str, Any]:
    """The whole preset as a dict (``yaml.safe_load``: no arbitrary objects)."""
    path = preset_path(name)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # never more: a huge or endless file (/dev/zero) is refused by its size
    except OSError as e:
        raise ConfigError(f"cannot read preset {path}: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"preset {path} is larger than {MAX_BYTES // 1024} KiB; a preset is a small YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"preset {path} is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=BoundedLoader)
    except _Refused as e:
        raise ConfigError(f"preset {path} is refused: {e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"preset {path} is not valid YAML: {clip(first, 160)}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:  # what yaml's own constructors may raise
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"preset {path} holds a value that cannot be read: {clip(why)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def preset_section(name: str, section: str) -> dict[str, Any]:
    """One command's section of a preset; a preset without that section is an error."""
    data = load_preset(name)
    if section not in data:
        have = [shown(k, 30) if not isinstance(k, str) else k[:30] for k in data if k not in META_KEYS][:20]
        raise ConfigError(f"preset {shown(name, 160)} has no '{section}' section (it has: {', '.join(have) or 'none'})")
    values = data[section] or {}
    if not isinstance(values, dict):
        raise ConfigError(f"preset {shown(name, 160)}: section '{section}' must be a mapping, got {type(values).__name__}")
    return values
