"""Run loggers: where a synthesis run's metrics and image grids go.

The synthesis loop (:func:`condense.methods.loop.synthesize`) hands every logger of a run
each iteration's metrics row and, at each checkpoint, the PNG grid of the set. Kinds
(``--log``, the Python API's ``log=``):

- ``csv``: ``metrics.csv`` in the run folder ``<out>.run/``, one row per iteration, the
  header taken from the first row. Every run writes it (it is the run folder's record), so
  naming it adds nothing.
- ``tensorboard``: event files in the run folder (``tensorboard --logdir <out>.run``), through
  ``torch.utils.tensorboard``.
- ``wandb``: a Weights & Biases run kept in the run folder, offline unless ``$WANDB_MODE``
  says otherwise (``wandb sync`` uploads it later); project ``$WANDB_PROJECT`` or
  ``condense``, run name the set file's stem, the run's configuration as its config.

A kind whose package is missing is refused by :func:`make_loggers` with one line saying what
to install, before any work; writers are opened at the first write, so a run that has
nothing left to do (or is refused) creates nothing.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from .runtime.errors import ConfigError
from .runtime.files import WriteError, open_append

KINDS = ("csv", "tensorboard", "wandb")


class Logger(Protocol):
    """What the synthesis loop reports to."""

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        """One iteration's metrics row (``iteration``, ``loss``, ..., ``event``); ``step`` is the
        iteration (0-based: its loss is computed on the set after ``step`` updates)."""

    def image(self, step: int, png: Path) -> None:
        """The grid of the set after ``step`` iterations, written to ``png`` at a checkpoint."""

    def close(self) -> None: ...


class CsvLogger:
    """``metrics.csv``: rows appended (a resumed run continues the file), flushed per row."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._writer: csv.DictWriter | None = None

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            new = not self.path.exists()
            self._file = open_append(self.path)
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), extrasaction="ignore")
            if new:
                self._writer.writeheader()
        try:
            self._writer.writerow(row)
            self._file.flush()
        except OSError as e:
            raise WriteError(f"cannot write {self.path}: {e.strerror or e}") from None

    def image(self, step: int, png: Path) -> None:
        pass  # the grid is already a file of the run folder

    def close(self) -> None:
        if self._file is not None:
            f, self._file, self._writer = self._file, None, None
            try:
                f.close()
            except OSError:  # its rows were flushed one by one; a failing last flush loses none
                pass


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row worth plotting: every int or float but the iteration itself."""
    return {k: float(v) for k, v in row.items()
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLogger:
    """Scalars under their row names and the grid as image ``grid``, in ``folder``."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._make = lambda: SummaryWriter(log_dir=str(folder))
        self._writer = None

    def _w(self):
        if self._writer is None:
            self._writer = self._make()
        return self._writer

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        w = self._w()
        for k, v in scalars(row).items():
            w.add_scalar(k, v, step)

    def image(self, step: int, png: Path) -> None:
        from matplotlib.image import imread

        self._w().add_image("grid", imread(png)[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbLogger:
    """One wandb run per synthesis run; steps are iterations (a resumed run starts a new wandb run)."""

    def __init__(self, folder: Path, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ConfigError("--log wandb needs the wandb package: pip install wandb") from None
        self._wandb = wandb
        self._folder = folder
        self._config = dict(config)
        self._run = None

    def _r(self):
        if self._run is None:
            out = self._config.get("out")
            self._folder.mkdir(parents=True, exist_ok=True)
            self._run = self._wandb.init(project=os.environ.get("WANDB_PROJECT") or "condense",
                                         name=Path(out).stem if out else None, dir=str(self._folder),
                                         mode=os.environ.get("WANDB_MODE") or "offline",
                                         config=self._config)
        return self._run

    def metrics(self, step: int, row: Mapping[str, Any]) -> None:
        self._r().log(scalars(row), step=step)

    def image(self, step: int, png: Path) -> None:
        self._r().log({"grid": self._wandb.Image(str(png))}, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def make_loggers(kinds: str | Sequence[str] | None, folder: str | os.PathLike,
                 config: Mapping[str, Any]) -> list[Logger]:
    """The loggers of ``kinds`` (a name, a list, or None) for the run folder ``folder`` of a run
    configured by ``config`` (its ``out`` names a wandb run). ``csv`` needs no logger here: every
    run writes metrics.csv. Raises one ConfigError line for an unknown kind or a missing package."""
    names = [kinds] if isinstance(kinds, str) else list(kinds or [])
    loggers: list[Logger] = []
    for name in dict.fromkeys(names):
        if name not in KINDS:
            raise ConfigError(f"--log must be one of {', '.join(KINDS)}, got {name!r}")
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(Path(folder)))
        elif name == "wandb":
            loggers.append(WandbLogger(Path(folder), config))
    return loggers
