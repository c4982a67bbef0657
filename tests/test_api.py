"""The Python API for notebooks (condense.workflows.api): the commands as functions."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from condense.runtime.errors import ConfigError
from condense.synset import SynSet, load_synset
from condense.workflows.api import evaluate_sets, record_experts, synthesize, train_teacher

ARCH = "convnet:width=8,depth=2"


def test_synthesize_returns_the_set_and_calls_back_every_iteration(tmp_path, capsys):
    seen = []

    def callback(it, row, current):
        seen.append((it, row["loss"], current().provenance["iteration"]))

    s = synthesize("dm", dataset="toy", ipc=1, iters=3, out=tmp_path / "x.h5", arch=ARCH, batch_real=16,
                   callback=callback)
    assert isinstance(s, SynSet) and s.method == "dm" and s.ipc == 1
    assert [(it, done) for it, _, done in seen] == [(0, 1), (1, 2), (2, 3)]
    assert all(math.isfinite(loss) for _, loss, _ in seen)
    assert torch.equal(load_synset(tmp_path / "x.h5").images, s.images)
    assert (tmp_path / "x.png").is_file() and (tmp_path / "x.h5.run" / "metrics.csv").is_file()
    assert capsys.readouterr().err == "", "no progress bars unless progress=True"


def test_eval_every_scores_on_the_validation_split(tmp_path):
    rows = []
    synthesize("dm", dataset="toy", ipc=1, iters=2, out=tmp_path / "x.h5", arch=ARCH, batch_real=16, eval_every=2,
               eval_epochs=1, callback=lambda it, row, current: rows.append(row))
    assert "eval_acc" not in rows[0] and 0.0 <= rows[1]["eval_acc"] <= 1.0


def test_a_preset_sets_defaults_that_keywords_override(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"synth:\n  method: dm\n  dataset: toy\n  arch: {ARCH!r}\n  ipc: 1\n  iters: 5\n"
                      "  batch_real: 16\n  lr_img: 2.0\n")
    s = synthesize("dm", preset=str(preset), iters=1, out=tmp_path / "x.h5")
    assert s.provenance["iteration"] == 1 and s.config["lr_img"] == 2.0 and s.config["batch_real"] == 16


@pytest.mark.parametrize("call, message", [
    (lambda: synthesize("dm", dataset="toy", lr_imgg=1.0), r"unknown option 'lr_imgg' for dm; did you mean lr_img\?"),
    (lambda: synthesize("dm", ipc="ten"), r"option 'ipc' must be int, got 'ten'"),
    (lambda: synthesize("dn", dataset="toy"), r"unknown method 'dn'"),
    (lambda: synthesize("dm", backend="tf"), r"backend 'tf' is not one of: torch, jax"),
    (lambda: record_experts(expert=2), r"unknown option 'expert' for buffer; did you mean experts\?"),
    (lambda: train_teacher(epoch=1), r"unknown option 'epoch' for teacher; did you mean epochs\?"),
    (lambda: evaluate_sets([], run=1), r"unknown option 'run' for eval; did you mean runs\?"),
])
def test_a_wrong_keyword_is_one_line_naming_it(call, message):
    with pytest.raises(ConfigError, match=message) as e:
        call()
    assert "\n" not in str(e.value)


def test_a_missing_logger_package_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"^--log tensorboard needs the tensorboard package: pip install tensorboard$"):
        synthesize("dm", dataset="toy", ipc=1, iters=2, out=tmp_path / "x.h5", log=["csv", "tensorboard"])
    assert not any(tmp_path.iterdir())


def test_record_experts_train_teacher_and_evaluate_sets_round_trip(tmp_path):
    experts = dict(dataset="toy", arch=ARCH, experts=1, epochs=2, batch_size=32, limit_train=40, out=tmp_path / "experts")
    store = record_experts(**experts)
    assert len(store) == 1 and tuple(store.expert(0).shape)[0] == 3  # epochs + 1 rows
    assert torch.equal(record_experts(**experts).expert(0), store.expert(0))  # a rerun has nothing to record

    teacher = train_teacher(dataset="toy", arch="convnet:norm=batch,width=8,depth=2", epochs=1, batch_size=32,
                            limit_train=40, out=tmp_path / "teacher.h5")
    assert teacher.dataset == "toy" and (tmp_path / "teacher.h5").is_file() and 0.0 <= teacher.accuracy <= 100.0

    synthesize("tm", trajectories=tmp_path / "experts", ipc=1, iters=2, syn_steps=2, expert_epochs=1,
               max_start_epoch=1, out=tmp_path / "tm.h5")
    rows = evaluate_sets(tmp_path / "tm.h5", archs=[ARCH], runs=1, epochs=1, json=tmp_path / "r.json")
    assert {(r["method"], r["variant"]) for r in rows} == {("tm", "set"), ("random", "set")}
    written = json.loads((tmp_path / "r.json").read_text())["results"]
    assert json.dumps(rows, sort_keys=True) == json.dumps(written, sort_keys=True)  # (ci95 of one run is NaN)
    assert all(len(r["accs"]) == 1 and 0.0 <= r["mean"] <= 100.0 for r in rows)


def test_a_set_trains_a_users_model_with_a_plain_loop(tmp_path):
    s = synthesize("random", dataset="toy", ipc=8, out=tmp_path / "random.h5")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, s.num_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(10):
        total = 0.0
        for x, y in DataLoader(s.as_dataset(), batch_size=8, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        losses.append(total / len(s.as_dataset()))
    assert losses[-1] < 0.5 * losses[0]


def test_writing_figures_leaves_a_notebooks_matplotlib_backend_alone(tmp_path):
    """A notebook's inline plots stop showing once something calls matplotlib.use('Agg')."""
    import matplotlib

    from condense.plots import save_grid
    from evals.report import plot

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        save_grid(torch.rand(4, 3, 8, 8), torch.arange(4), tmp_path / "g.png")
        plot([{"variant": "set", "arch": "a", "synset": "s.h5", "method": "m", "ipc": 1, "mean": 50.0, "std": 1.0,
               "baseline": None, "labels": "hard", "curves": [[1.0, 0.5]]}], tmp_path)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "g.png").is_file() and (tmp_path / "accuracy.png").is_file()
