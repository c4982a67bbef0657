"""Flags generated from a configuration's declarations: one flag per field, grouped by part.

Every flag defaults to None ("not given"), so a command's configuration is built in
layers: the declared defaults, then the preset's section, then the flags typed.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from ..config import declared, make_config, preset_section
from ..config.declare import default_of, hints

C = TypeVar("C")
METAVARS = {int: "N", float: "X", str: "TEXT"}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add a flag for every field of config ``cls`` (except ``skip``), one argument group per part."""
    groups: dict[str, Any] = {}
    types_ = hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = declared(f)
        part = meta.part or "options"
        if part not in groups:
            groups[part] = parser.add_argument_group(f"{part} options")
        base, many = _base_type(types_[f.name])
        kw: dict[str, Any] = dict(dest=f.name, default=None, help=help_line(f, many))
        kw["metavar"] = meta.metavar or METAVARS.get(base)
        if base is bool and not many:
            kw["action"] = argparse.BooleanOptionalAction
            del kw["metavar"]
        elif many and meta.repeat:
            kw.update(action="append", type=base)
        elif many:
            kw["type"] = _comma_list(base)
        else:
            kw["type"] = base
            if meta.choices:  # checked by the config, so a bad value is its one line, not argparse's usage
                kw["metavar"] = meta.metavar or "{" + ",".join(map(str, meta.choices)) + "}"
        groups[part].add_argument(meta.flag_of(f.name), **kw)


def help_line(f: dataclasses.Field, many: bool = False) -> str:
    """The field's help with its unit, bounds and default, as ``--help`` and the docs show it."""
    meta = declared(f)
    default = default_of(f)
    extras = [x for x in (meta.unit, meta.bounds_text()) if x]
    if isinstance(default, bool):
        extras.append(f"default {'on' if default else 'off'}")
    elif default not in (None, "", [], dataclasses.MISSING):
        extras.append(f"default {','.join(map(str, default)) if isinstance(default, list) else default}")
    if meta.choices and many:  # a single value's choices are in its metavar already
        extras.insert(0, "of " + ", ".join(map(str, meta.choices)))
    text = meta.help.replace("%", "%%")
    return f"{text} ({'; '.join(extras)})" if extras else text


def config_from_args(cls: type[C], args: argparse.Namespace, section: str, *,
                     exclude: tuple[str, ...] = ()) -> C:
    """Declared defaults < the preset's ``section`` < the flags typed (a flag left out is None)."""
    preset = dict(preset_section(args.preset, section)) if getattr(args, "preset", None) else {}
    for key in exclude:
        preset.pop(key, None)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return make_config(cls, preset, flags, where=f"preset {args.preset!r}" if preset else "")


def _base_type(hint: Any) -> tuple[type, bool]:
    """(item type, is a list) of a field annotation such as ``int | None`` or ``list[str] | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, tuple):
        return typing.get_args(hint)[0], True
    return hint, False


def _comma_list(item: type):
    def parse(text: str) -> list:
        return [item(x.strip()) for x in text.split(",") if x.strip()]

    parse.__name__ = f"comma-separated {item.__name__}"
    return parse
