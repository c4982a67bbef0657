"""The synthesis loop's observers: the per-iteration callback and the run loggers (condense.loggers)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from condense.runtime.errors import ConfigError
from condense.loggers import make_loggers
from condense.methods.dm import DMConfig, run_dm
from condense.methods.loop import observed
from condense.synset import load_synset

CPU = torch.device("cpu")
QUIET = dict(progress=lambda m: None, bars=False)


def dm_cfg(out: Path, **over) -> DMConfig:
    base = dict(dataset="toy", arch="convnet:width=8,depth=2", ipc=1, iters=4, batch_real=16, checkpoint_every=2,
                out=str(out))
    return DMConfig(**{**base, **over})


class Recorder:
    """A Logger that remembers what it was told."""

    def __init__(self):
        self.rows, self.images, self.closed = [], [], 0

    def metrics(self, step, row):
        self.rows.append((step, dict(row)))

    def image(self, step, png):
        assert Path(png).is_file()
        self.images.append((step, Path(png).name))

    def close(self):
        self.closed += 1


def test_callback_and_loggers_hear_every_iteration_and_metrics_csv_keeps_its_format(tmp_path):
    seen, logger = [], Recorder()

    def callback(it, row, current):
        s = current()
        if (it + 1) % 2 == 0:  # the checkpoint of iteration it + 1 is written before the callback
            assert torch.equal(s.images, load_synset(tmp_path / "dm.h5").images)
        seen.append((it, row["loss"], s.provenance["iteration"]))

    with observed(callback, [logger]):
        final = run_dm(dm_cfg(tmp_path / "dm.h5"), CPU, **QUIET)
    assert [(it, done) for it, _, done in seen] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss, _ in seen)
    assert [step for step, _ in logger.rows] == [0, 1, 2, 3]
    assert logger.images == [(2, "grid_000002.png"), (4, "grid_000004.png")] and logger.closed == 1
    with open(tmp_path / "dm.h5.run" / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "loss", "seconds", "event"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3"]
    assert [float(r[1]) for r in rows[1:]] == [row["loss"] for _, row in logger.rows]
    assert torch.equal(final.images, load_synset(tmp_path / "dm.h5").images)


def test_a_callback_that_stops_the_run_keeps_its_checkpoint_and_the_rerun_ends_where_an_unbroken_run_does(tmp_path):
    def stop_after_two(it, row, current):
        if it == 1:
            raise KeyboardInterrupt

    with observed(stop_after_two), pytest.raises(KeyboardInterrupt):
        run_dm(dm_cfg(tmp_path / "a" / "dm.h5"), CPU, **QUIET)
    resumed = []
    with observed(lambda it, row, current: resumed.append(it)):
        a = run_dm(dm_cfg(tmp_path / "a" / "dm.h5"), CPU, **QUIET)
    assert resumed == [2, 3]
    b = run_dm(dm_cfg(tmp_path / "b" / "dm.h5"), CPU, **QUIET)
    assert torch.equal(a.images, b.images)


def test_observers_end_with_their_block(tmp_path):
    heard = []
    with observed(lambda it, row, current: heard.append(it)):
        pass
    run_dm(dm_cfg(tmp_path / "dm.h5", iters=2), CPU, **QUIET)
    assert heard == []


def test_csv_is_always_written_and_unknown_kinds_are_refused(tmp_path):
    assert make_loggers(["csv"], tmp_path, {}) == [] and make_loggers(None, tmp_path, {}) == []
    with pytest.raises(ConfigError, match=r"^--log must be one of csv, tensorboard, wandb, got 'tensorbord'$"):
        make_loggers("tensorbord", tmp_path, {})


@pytest.mark.parametrize("kind, modules, line", [
    ("tensorboard", ("tensorboard", "torch.utils.tensorboard"),
     "--log tensorboard needs the tensorboard package: pip install tensorboard"),
    ("wandb", ("wandb",), "--log wandb needs the wandb package: pip install wandb"),
])
def test_a_missing_package_is_one_line_saying_what_to_install(tmp_path, monkeypatch, kind, modules, line):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # None in sys.modules: the import fails as if not installed
    with pytest.raises(ConfigError) as e:
        make_loggers(["csv", kind], tmp_path, {})
    assert str(e.value) == line


def test_tensorboard_gets_the_scalars_and_grids(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "dm.h5.run"
    with observed(loggers=make_loggers("tensorboard", folder, {})):
        run_dm(dm_cfg(tmp_path / "dm.h5"), CPU, **QUIET)
    events = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("loss")] == [0, 1, 2, 3]
    assert [e.step for e in events.Images("grid")] == [2, 4]


def test_wandb_runs_offline_by_default(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder = tmp_path / "dm.h5.run"
    with observed(loggers=make_loggers("wandb", folder, {"out": str(tmp_path / "dm.h5"), "ipc": 1})):
        run_dm(dm_cfg(tmp_path / "dm.h5"), CPU, **QUIET)
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
