"""Layer 3: synthesis methods. Each registers a config dataclass and a runner here."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from ..config.declare import clip
from ..runtime.errors import ConfigError
from ..runtime.files import holding_lock


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config: type
    run: Callable[..., Any]  # run(cfg, device, *, progress, bars, evaluate) -> SynSet
    summary: str
    jax: str | None = None  # "module:function" of the JAX runner (same signature), imported only when asked for
    jax_only: bool = False  # no torch version: --backend defaults to jax, and ``run`` raises one error line

    @property
    def default_backend(self) -> str:
        return "jax" if self.jax_only else "torch"


BACKENDS = ("torch", "jax")
_METHODS: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry) -> None:
    """Make a method available to ``condense synth --method NAME`` (also from user code)."""
    _METHODS[entry.name] = entry


def get_method(name: str) -> MethodEntry:
    """The registered method ``name``; an unknown one is one ConfigError line naming the closest."""
    try:
        return _METHODS[name]
    except KeyError:
        near = difflib.get_close_matches(name, method_names(), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else f"available: {', '.join(method_names())}"
        raise ConfigError(f"unknown method {clip(repr(name), 80)}; {hint}") from None


def method_names() -> list[str]:
    return sorted(_METHODS)


def runner(entry: MethodEntry, backend: str | None = None) -> Callable[..., Any]:
    """The runner of ``entry`` for ``backend`` (None: the method's default). An unknown backend, or a
    JAX-only method asked for torch, is one ConfigError line here, before any work."""
    backend = backend or entry.default_backend
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if backend == "jax":
        return jax_runner(entry)
    if entry.jax_only:
        entry.run(None)
    return holding_lock(lambda cfg, *a, **k: cfg.out)(entry.run)


def jax_runner(entry: MethodEntry) -> Callable[..., Any]:
    """The JAX runner of ``entry`` (``--backend jax``); a one-line ConfigError when the method has
    none or jax/flax/optax are missing. The torch backend never imports jax: only this does."""
    if entry.jax is None:
        have = ", ".join(sorted(e.name for e in _METHODS.values() if e.jax)) or "none"
        raise ConfigError(f"method {entry.name!r} has no JAX version; --backend jax runs: {have}")
    import importlib

    from ..runtime.extras import require_extra

    require_extra("jax", "--backend jax")
    module, _, function = entry.jax.partition(":")
    return holding_lock(lambda cfg, *a, **k: cfg.out)(getattr(importlib.import_module(module), function))


def _register_builtins() -> None:
    from functools import partial

    from .baselines import BaselineConfig, run_baseline
    from .dam import DAMConfig, run_dam
    from .dm import DMConfig, run_dm
    from .frepo import FRePoConfig, run_frepo_torch
    from .gm import GMConfig, run_gm
    from .infer import InferConfig, run_infer
    from .krr_st import KRRSTConfig, run_krr_st_torch
    from .rded import RDEDConfig, run_rded
    from .s2d import S2DConfig, run_s2d
    from .sre2l import SRe2LConfig, run_sre2l
    from .tm import TMConfig, run_tm

    register_method(MethodEntry("tm", TMConfig, run_tm, "trajectory matching (MTT, FTD, DATM, TESLA, AST variants)",
                                jax="condense.jax.tm:run_tm"))
    register_method(MethodEntry("dm", DMConfig, run_dm, "distribution matching (DM)", jax="condense.jax.dm:run_dm"))
    register_method(MethodEntry("dam", DAMConfig, run_dam, "attention matching (DataDAM; paper p=4, code p=1)"))
    register_method(MethodEntry("frepo", FRePoConfig, run_frepo_torch,
                                "neural feature regression with a model pool (FRePo; JAX only)",
                                jax="condense.jax.frepo:run_frepo", jax_only=True))
    register_method(MethodEntry("krr-st", KRRSTConfig, run_krr_st_torch,
                                "self-supervised: images + target representations of an unlabelled dataset by "
                                "kernel ridge regression on a model pool (KRR-ST; JAX only)",
                                jax="condense.jax.krr_st:run_krr_st", jax_only=True))
    register_method(MethodEntry("gm", GMConfig, run_gm, "gradient matching with DSA (DC/DSA)"))
    register_method(MethodEntry("sre2l", SRe2LConfig, run_sre2l,
                                "recover from a teacher's BatchNorm statistics (SRe2L; --curriculum cda: CDA)"))
    register_method(MethodEntry("infer", InferConfig, run_infer,
                                "real images plus inter-class feature compensators learnt from teachers (INFER)"))
    register_method(MethodEntry("rded", RDEDConfig, run_rded,
                                "teacher-scored real crops stitched factor x factor (RDED)"))
    register_method(MethodEntry("s2d", S2DConfig, run_s2d,
                                "video: stills + learned dynamic memory and integrator (static/dynamic "
                                "disentanglement; --finetune dm|tm|none)"))
    for name, summary in (("random", "class-balanced random real images"),
                          ("herding", "herding in a briefly trained network's embedding space"),
                          ("kcenter", "greedy k-center in the same space")):
        register_method(MethodEntry(name, BaselineConfig, partial(run_baseline, selection=name), summary))


_register_builtins()
