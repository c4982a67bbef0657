"""Architecture spec strings, the architecture registry and :func:`build_net`.

A spec names a registered architecture and optionally sets some of its options::

    convnet                      convnet:width=32,depth=3
    convnet:norm=batch,pool=max  resnet18:norm=instance
    vgg11   alexnet   mlp   mlp:width=256

:func:`parse_arch` fills in every default and types every value (an option's type is
its default's type: int, float, bool or str). ``str(spec)`` is canonical: options
sorted by name and all shown, e.g. ``convnet:act=relu,depth=3,norm=instance,pool=avg,
width=128``; it parses back to an equal spec, so it is what files record.

Users add their own networks without forking::

    def my_net(channels, num_classes, image_size, *, width):
        return MyNet(channels, num_classes, image_size, width)   # an nn.Module

    register_arch("mynet", my_net, {"width": 64})
    net = build_net("mynet:width=32", 3, 10, (32, 32), generator=rng.generator(0))

A factory receives the options as keyword arguments, runs on the ``meta`` device (so
it allocates nothing and draws nothing), and raises :class:`ArchError` when the shape
does not fit. :mod:`condense.nets.init` then initialises the parameters from the
generator. The module should have ``num_classes`` and, for the matching methods,
``embed`` and ``feature_maps`` as described in :mod:`condense.nets.base`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from condense.runtime.errors import ArchError
from condense.nets.init import fresh_generator, init_parameters

_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")
_OPTION_TYPES = (bool, int, float, str)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    defaults: dict[str, Any]
    choices: dict[str, Sequence[Any]]


_REGISTRY: dict[str, _Entry] = {}


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture name and its complete, typed options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a private copy, so mutating the caller's dict cannot change a frozen spec
        object.__setattr__(self, "options", dict(self.options))

    def __str__(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(self.options.items()))
        return f"{self.name}:{opts}"

    def __hash__(self) -> int:
        return hash(str(self))

    def replace(self, **options: Any) -> ArchSpec:
        """A validated copy with some options changed: ``spec.replace(width=32)``."""
        return resolve(self.name, {**self.options, **options})


def available_archs() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_REGISTRY)


def register_arch(name: str, factory: Factory, defaults: Mapping[str, Any], *,
                  choices: Mapping[str, Sequence[Any]] | None = None,
                  overwrite: bool = False) -> None:
    """Register ``factory(channels, num_classes, image_size, **options) -> nn.Module``.

    ``defaults`` names every option and fixes its type (bool, int, float or str).
    ``choices[key]`` optionally restricts a value: a tuple of allowed values, or a
    ``range`` for integers. Re-registering a name needs ``overwrite=True``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ArchError(f"bad architecture name {name!r}: use lower-case letters, digits, '-' or '_'")
    if name in _REGISTRY and not overwrite:
        raise ArchError(f"architecture '{name}' is already registered; pass overwrite=True to replace it")
    if not callable(factory):
        raise ArchError(f"the factory for architecture '{name}' is not callable")
    for key, value in defaults.items():
        if not _NAME_RE.match(key):
            raise ArchError(f"bad option name {key!r} for architecture '{name}'")
        if not isinstance(value, _OPTION_TYPES):
            raise ArchError(f"option '{key}' of '{name}' has a default of unsupported type "
                            f"{type(value).__name__}; use bool, int, float or str")
        if isinstance(value, str) and not _is_plain(value):
            raise ArchError(f"default {key}={value!r} of '{name}' contains ',', '=', ':' or spaces")
    choices = dict(choices or {})
    unknown = set(choices) - set(defaults)
    if unknown:
        raise ArchError(f"choices for unknown options {sorted(unknown)} of architecture '{name}'")
    entry = _Entry(factory, dict(defaults), choices)
    for key, value in defaults.items():
        _check_choice(name, key, value, entry)
    _REGISTRY[name] = entry


def parse_arch(text: str | ArchSpec) -> ArchSpec:
    """Parse ``name[:key=value,...]`` into a complete ArchSpec (defaults filled in).

    An ArchSpec is re-validated and completed. Names and keys are case-insensitive.
    """
    if isinstance(text, ArchSpec):
        return resolve(text.name, text.options)
    if not isinstance(text, str) or not text.strip():
        raise ArchError(f"empty architecture spec; available: {', '.join(available_archs())}")
    name, _, rest = text.strip().partition(":")
    options: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not eq or not key or not value:
                raise ArchError(f"bad option '{item.strip()}' in arch spec '{text}': expected key=value")
            if key in options:
                raise ArchError(f"option '{key}' given twice in arch spec '{text}'")
            options[key] = value
    return resolve(name.strip().lower(), options)


def parse_arch_flag(text: str) -> ArchSpec:
    """:func:`parse_arch` of a user's ``--arch``: a bad spec is one ConfigError line naming it."""
    from condense.runtime.errors import CondenseError, ConfigError

    try:
        return parse_arch(text)
    except CondenseError as e:
        raise ConfigError(f"--arch {text}: {e}") from None


def resolve(name: str, options: Mapping[str, Any]) -> ArchSpec:
    """Validate ``options`` (strings or typed values) for ``name``; fill in the defaults."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ArchError(f"unknown architecture '{name}'; available: {', '.join(available_archs())}")
    typed = dict(entry.defaults)
    for key, raw in options.items():
        if key not in entry.defaults:
            valid = ", ".join(sorted(entry.defaults)) or "none"
            raise ArchError(f"{name} has no option '{key}'; valid options: {valid}")
        typed[key] = _coerce(name, key, raw, entry.defaults[key])
        _check_choice(name, key, typed[key], entry)
    return ArchSpec(name, typed)


def build_net(spec: str | ArchSpec, channels: int, num_classes: int,
              image_size: tuple[int, int], generator: torch.Generator | None = None) -> nn.Module:
    """Build and initialise the network ``spec`` for inputs ``[B, channels, *image_size]``.

    Returns a CPU module in train mode whose ``forward`` gives logits ``[B, num_classes]``;
    it also carries ``spec`` (the complete ArchSpec) and ``num_classes``. All weights
    are drawn from ``generator`` (advanced by the draws; a CPU generator, e.g.
    ``condense.runtime.rng.generator(seed)``), so the same generator state gives the same
    weights; ``None`` means a fresh OS-seeded generator. Raises ArchError for an unknown
    spec or a shape the architecture cannot take.
    """
    spec = parse_arch(spec)
    channels, num_classes = int(channels), int(num_classes)
    if channels < 1 or num_classes < 1:
        raise ArchError(f"{spec} needs at least one channel and one class, "
                        f"got channels={channels}, num_classes={num_classes}")
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise ArchError(f"{spec}: image_size must be two positive integers (H, W), got {image_size}")
    image_size = (int(image_size[0]), int(image_size[1]))
    # meta: the layers' own default init would draw from the global RNG
    with torch.device("meta"):
        net = _REGISTRY[spec.name].factory(channels, num_classes, image_size, **spec.options)
    if not isinstance(net, nn.Module):
        raise ArchError(f"the factory of '{spec.name}' returned {type(net).__name__}, not an nn.Module")
    net = net.to_empty(device="cpu")
    init_parameters(net, generator if generator is not None else fresh_generator())
    net.spec = spec
    net.num_classes = num_classes
    return net


def _is_plain(value: str) -> bool:
    return bool(value) and not any(c in value for c in ",=: \t\n")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _coerce(name: str, key: str, raw: Any, default: Any) -> Any:
    """Turn ``raw`` (a string from the CLI, or a typed value) into ``type(default)``."""
    kind = type(default)
    if isinstance(raw, str):
        text = raw.strip()
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
        elif kind is int:
            try:
                return int(text)
            except ValueError:
                pass
        elif kind is float:
            try:
                return float(text)
            except ValueError:
                pass
        else:
            if _is_plain(text):
                return text.lower()
        raise ArchError(f"{name} option {key}={raw!r} is not a valid {kind.__name__}")
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if type(raw) is not kind:
        raise ArchError(f"{name} option {key}={raw!r} is not a valid {kind.__name__}")
    if kind is str and not _is_plain(raw):
        raise ArchError(f"{name} option {key}={raw!r} contains ',', '=', ':' or spaces")
    return raw


def _check_choice(name: str, key: str, value: Any, entry: _Entry) -> None:
    allowed = entry.choices.get(key)
    if allowed is None or value in allowed:
        return
    if isinstance(allowed, range):
        raise ArchError(f"{name} option {key}={value} must be an integer from "
                        f"{allowed.start} to {allowed.stop - 1}")
    valid = ", ".join(_format_value(v) for v in allowed)
    raise ArchError(f"{name} option {key}={_format_value(value)} is not one of: {valid}")
