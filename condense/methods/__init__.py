"""Layer 3: synthesis methods. Each registers a config dataclass and a runner here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config: type
    run: Callable[..., Any]  # run(cfg, device, *, progress, bars, evaluate) -> SynSet
    summary: str


_METHODS: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry) -> None:
    """Make a method available to ``condense synth --method NAME`` (also from user code)."""
    _METHODS[entry.name] = entry


def get_method(name: str) -> MethodEntry:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)


def _register_builtins() -> None:
    from .tm import TMConfig, run_tm

    register_method(MethodEntry("tm", TMConfig, run_tm, "trajectory matching (MTT; FTD's EMA)"))


_register_builtins()
