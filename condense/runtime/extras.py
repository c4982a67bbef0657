"""Optional dependencies (setup.cfg's extras): a feature that needs one says in one line what to install.

Nothing imports an extra's packages until a feature asks for them, so ``import condense`` and
the torch backend work without any extra installed.
"""
from __future__ import annotations

import importlib

from .errors import ConfigError

EXTRAS = {"jax": ("jax", "flax", "optax"), "ray": ("ray",)}  # extra -> its import names, as in setup.cfg


def require_extra(extra: str, feature: str) -> None:
    """Raise a one-line ConfigError naming ``feature`` (e.g. ``"--backend jax"``) and the pip command
    unless every package of ``extra`` imports."""
    packages = EXTRAS[extra]
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            what = f"the {name} package" if len(packages) == 1 else f"{', '.join(packages)} ({name} is not installed)"
            raise ConfigError(f"{feature} needs {what}: pip install 'condense[{extra}]'") from None
