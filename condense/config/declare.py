"""Settings declared once: type, default, bounds or choices, unit and help in one place.

A configuration is a flat dataclass composed of *parts* (the data, the run, the
augmentation, ...) and the fields its command or method adds. Each field is declared
with :func:`setting`; :func:`configclass` composes the parts and gives the class a
``__post_init__`` that coerces every value to its declared type and checks its bounds
and choices, so ``DMConfig(ipc=0)`` fails exactly as ``condense synth dm --ipc 0`` or a
preset with ``ipc: 0`` does: one :class:`~condense.runtime.errors.ConfigError` line. The CLI's
flags (:mod:`condense.cli.flags`), presets, the Python API and the docs' option tables
all read the same declarations.

Configurations stay flat (``cfg.iters``, not ``cfg.run.iters``) on purpose: the flat
field dict is what a run's identity hash, a set's recorded config and every preset
already use, so files written before parts existed keep their identity.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import MISSING
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from ..runtime.errors import ConfigError

C = TypeVar("C")
META = "condense.setting"
SHOWN = 80  # characters of a user's value an error message quotes: a hostile value must not flood the line
INT_LIMIT = 2**63 - 1  # beyond int64 every consumer (torch, numpy, h5py) fails with its own exception
FLOAT_LIMIT = 3.4028234e38  # float32's largest: a setting that meets a float32 tensor must fit in one

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 2, 6, 6, 4, 4
_repr.maxstring, _repr.maxother, _repr.maxlong = SHOWN, SHOWN, SHOWN


def clip(text: str, limit: int = SHOWN) -> str:
    """``text`` cut to ``limit`` characters, with … where it was cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: Any, limit: int = SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (with …), without ever building the whole repr:
    a value from a hostile file may be huge or nested deep enough to hang or overflow ``repr``."""
    if isinstance(value, int) and value.bit_length() > 4 * limit:  # repr would be slow, or refused past 4300 digits
        return f"an integer of {value.bit_length()} bits"
    text = _repr.repr(value) if not isinstance(value, str) or len(value) > limit else repr(value)
    return clip(text, limit)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a field declares besides its type and default (read by the validator, CLI and docs)."""

    help: str
    part: str = ""  # the group it belongs to: data, run, augmentation, ... or the method's own name
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str | None = None
    metavar: str | None = None
    repeat: bool = False  # a list given as a repeated flag (--arch a --arch b) instead of "a,b"
    flag: str | None = None  # the flag's name when it differs from the field's (--arch for archs)
    check: Callable[[Any], Any] | None = None  # a parser that raises ConfigError for a bad value (an arch spec)

    def flag_of(self, name: str) -> str:
        """The command-line flag of field ``name``: ``--lr-img`` for ``lr_img``, unless renamed."""
        return self.flag or f"--{name.replace('_', '-')}"

    def bounds_text(self) -> str:
        """The bounds in words: ``positive``, ``>= 0``, ``in [0, 1)``; '' when unbounded."""
        low = (self.gt, "(") if self.gt is not None else (self.ge, "[") if self.ge is not None else None
        high = (self.lt, ")") if self.lt is not None else (self.le, "]") if self.le is not None else None
        if low == (0, "(") and high:  # a count or a rate with a ceiling: "positive" reads best
            return f"positive, {'below' if high[1] == ')' else 'at most'} {_num(high[0])}"
        if low and high:
            return f"in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}"
        if low:
            return "positive" if low == (0, "(") else f"{'>' if low[1] == '(' else '>='} {_num(low[0])}"
        if high:
            return f"{'<' if high[1] == ')' else '<='} {_num(high[0])}"
        return ""


def setting(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, gt: float | None = None,
            ge: float | None = None, lt: float | None = None, le: float | None = None,
            choices: Iterable[Any] | None = None, unit: str | None = None, metavar: str | None = None,
            repeat: bool = False, flag: str | None = None, check: Callable[[Any], Any] | None = None) -> Any:
    """Declare a configuration field: its default (or ``factory``), help, bounds, choices and unit.

    Bounds apply to numbers (and to each item of a list); ``None`` (an optional setting
    left unset) is never checked. ``choices`` lists the allowed values; ``check`` parses a
    structured value (an arch spec, a DSA strategy) and raises ConfigError when it is bad.
    """
    meta = Setting(help=help, gt=gt, ge=ge, lt=lt, le=le, choices=tuple(choices) if choices is not None else None,
                   unit=unit, metavar=metavar, repeat=repeat, flag=flag, check=check)
    return dataclasses.field(default=default, default_factory=factory, metadata={META: meta})


def declared(f: dataclasses.Field) -> Setting:
    """The :class:`Setting` of a dataclass field (a bare field counts as declared without help)."""
    return f.metadata.get(META) or Setting(help="")


def default_of(f: dataclasses.Field) -> Any:
    """The value a field takes when not given (its factory called, for lists)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def configclass(*parts: type, part: str, drop: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
                helps: Mapping[str, str] | None = None, choices: Mapping[str, Sequence[Any]] | None = None,
                many: Sequence[str] = (), units: Mapping[str, str] | None = None):
    """Class decorator: a flat dataclass made of ``parts``' fields and the class's own.

    ``part`` names the group of the class's own fields (its method or command). ``drop``
    leaves out part fields the command does not use (an option appears only where it has
    an effect); ``defaults``, ``helps``, ``choices`` and ``units`` change a part field's default, help,
    allowed values or unit for this command only — the field is still declared once, in its part.
    ``many`` names part fields this command takes several values of (a list, its flag repeated:
    ``condense eval --baseline random --ipc 1 --ipc 10``), each checked as the part declares.
    """
    defaults, helps, choices, units = dict(defaults or {}), dict(helps or {}), dict(choices or {}), dict(units or {})
    changed = set(defaults) | set(helps) | set(choices) | set(many) | set(units)

    def wrap(cls: type[C]) -> type[C]:
        own = dict(cls.__dict__.get("__annotations__", {}))
        annotations: dict[str, Any] = {}
        known: set[str] = set()
        # A subclass of another config inherits its fields; only those it changes are redeclared here.
        bases = [b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)][:1]
        for p in (*parts, *bases):
            inherited = p in bases
            for f in dataclasses.fields(p):
                known.add(f.name)
                if f.name in drop or (inherited and f.name not in changed):
                    continue
                if f.name in own:
                    raise TypeError(f"{cls.__name__}.{f.name} is declared in part {p.__name__} already")
                meta = declared(f)
                if f.name in helps:
                    meta = dataclasses.replace(meta, help=helps[f.name])
                if f.name in choices:
                    meta = dataclasses.replace(meta, choices=tuple(choices[f.name]))
                if f.name in units:
                    meta = dataclasses.replace(meta, unit=units[f.name])
                default, factory, hint = f.default, f.default_factory, f.type
                if f.name in many:
                    item = str(f.type).replace("| None", "").strip()
                    default, factory, hint = MISSING, list, f"list[{item}]"
                    meta = dataclasses.replace(meta, repeat=True)
                if f.name in defaults:
                    value = defaults[f.name]
                    default, factory = (MISSING, (lambda v=value: list(v))) if isinstance(value, list) else (value, MISSING)
                annotations[f.name] = hint
                setattr(cls, f.name, dataclasses.field(default=default, default_factory=factory,
                                                       metadata={META: meta}))
        unknown = (set(drop) | changed) - known
        if unknown:
            raise TypeError(f"{cls.__name__}: {sorted(unknown)} are not fields of its parts")
        for name, hint in own.items():
            setattr(cls, name, _in_part(cls.__dict__.get(name, MISSING), part))
            annotations[name] = hint
        cls.__annotations__ = annotations
        user_post_init = cls.__dict__.get("__post_init__")

        def __post_init__(self) -> None:
            check_fields(self)
            if user_post_init is not None:
                user_post_init(self)

        cls.__post_init__ = __post_init__
        cls.validate = _with_declared_checks(cls, cls.__dict__.get("validate"))
        cls.__config_part__ = part
        return dataclasses.dataclass(cls)

    return wrap


def _with_declared_checks(cls: type, own: Callable[..., None] | None) -> Callable[..., None]:
    """``validate(*context)``: the declared checks again (a config may have been changed since it
    was built), then the class's own checks of how its settings relate, or its base config's."""
    if own is None:
        for base in cls.__mro__[1:]:
            if "validate" in base.__dict__:
                own = getattr(base.__dict__["validate"], "own_checks", None)
                break

    def validate(self, *args: Any, **kwargs: Any) -> None:
        check_fields(self)
        if own is not None:
            own(self, *args, **kwargs)

    validate.own_checks = own
    validate.__doc__ = (own.__doc__ if own is not None else None) or "Check the declared settings."
    return validate


def part(name: str):
    """Class decorator for a shared part: a dataclass whose fields belong to group ``name``."""

    def wrap(cls: type[C]) -> type[C]:
        for fname in cls.__dict__.get("__annotations__", {}):
            setattr(cls, fname, _in_part(cls.__dict__.get(fname, MISSING), name))
        return dataclasses.dataclass(cls)

    return wrap


def _in_part(value: Any, part: str) -> dataclasses.Field:
    """A class attribute (a :func:`setting` or a plain default) as a field of group ``part``."""
    f = value if isinstance(value, dataclasses.Field) else dataclasses.field(default=value)
    return dataclasses.field(default=f.default, default_factory=f.default_factory,
                             metadata={META: dataclasses.replace(declared(f), part=part)})


def hints(cls: type) -> dict[str, Any]:
    """The resolved type of every field of ``cls``."""
    return typing.get_type_hints(cls)


def check_fields(cfg: Any) -> None:
    """Coerce each field of ``cfg`` to its declared type and check its bounds and choices.

    The single validator of declared settings; checks that relate several fields stay
    with their method (``validate()``).
    """
    types_ = hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        value = coerce(value, types_[f.name], f.name)
        object.__setattr__(cfg, f.name, value)
        meta = declared(f)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            _check_value(item, meta, f.name)


def _check_value(value: Any, meta: Setting, name: str) -> None:
    flag = meta.flag_of(name)
    if meta.choices is not None and value not in meta.choices:
        near = difflib.get_close_matches(str(value), list(map(str, meta.choices)), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, meta.choices))}, got {shown(value)}{hint}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {_num(value)}")
    if isinstance(value, float) and abs(value) > FLOAT_LIMIT:
        raise ConfigError(f"{flag} is out of range (at most {FLOAT_LIMIT:.4g} in size), got {_num(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        raise ConfigError(f"{flag} is out of range, got {shown(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = ((meta.gt is None or value > meta.gt) and (meta.ge is None or value >= meta.ge)
              and (meta.lt is None or value < meta.lt) and (meta.le is None or value <= meta.le))
        if not ok:
            raise ConfigError(f"{flag} must be {meta.bounds_text()}, got {_num(value)}")
    if meta.check is not None:
        meta.check(value)


def make_config(cls: type[C], *layers: Mapping[str, Any] | None, where: str = "") -> C:
    """Build config ``cls`` from its defaults overlaid by ``layers`` (later wins), validated.

    ``None`` in a layer means "not given" and does not override. Keys may use dashes. An
    unknown key is one line naming it and the nearest valid keys.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    types_ = hints(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            key = str(key).replace("-", "_")
            if key not in names:
                raise ConfigError(unknown_key(key, names, where=where, what=config_name(cls)))
            if value is not None:
                values[key] = coerce(value, types_[key], key)
    return cls(**values)


def describe(cfg: Any) -> str:
    """A config's settings in one line, ``name=value, ...`` (what a command prints before it works)."""
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())


def config_name(cls: type) -> str:
    return getattr(cls, "__config_part__", None) or cls.__name__


def unknown_key(key: str, names: Iterable[str], *, where: str = "", what: str = "") -> str:
    """The one-line message for an unknown option: where it was, and the nearest valid names."""
    names = list(names)
    near = difflib.get_close_matches(key[:SHOWN], names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; valid: {', '.join(sorted(names))}"
    origin = f" in {where}" if where else ""
    return f"unknown option {shown(key)}{origin}{f' for {what}' if what else ''}{hint}"


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, optional and list types); ints pass as floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item = args[0] if args else Any
        out = [coerce(v, item, key) for v in value]
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
    got = f"a {type(value).__name__} " if isinstance(value, (list, tuple, dict, set)) else ""
    raise ConfigError(f"option {shown(key)} must be {getattr(hint, '__name__', hint)}, got {got}{shown(value)}")


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else shown(v)
