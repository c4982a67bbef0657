"""Coreset baselines: exact per-class counts, recorded indices, determinism, and the selection rules."""
from __future__ import annotations

import pytest
import torch

from condense.runtime.errors import ConfigError
from condense.methods.baselines import BaselineConfig, herding, kcenter, run_baseline
from condense.synset import load_synset

torch.set_num_threads(1)
CPU = torch.device("cpu")


def cfg(tmp_path, name, **over):
    return BaselineConfig(**{"dataset": "toy", "ipc": 3, "arch": "convnet:width=8", "embed_epochs": 1,
                             "out": str(tmp_path / f"{name}.h5"), **over})


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baselines")
    return {name: run_baseline(cfg(tmp, name), CPU, selection=name) for name in ("random", "herding", "kcenter")}


def test_each_picks_ipc_real_images_per_class_and_records_them(sets, tmp_path):
    from condense.data import load_dataset

    ds = load_dataset("toy")
    for name, s in sets.items():
        assert s.method == name and s.ipc == 3
        assert torch.equal(torch.bincount(s.classes), torch.full((4,), 3))
        assert len(set(s.indices.tolist())) == 12
        assert torch.equal(s.images, ds.x_train[s.indices]) and torch.equal(s.classes, ds.y_train[s.indices])
        back = load_synset(s.config["out"])
        assert torch.equal(back.indices, s.indices)


def test_deterministic_for_a_seed_and_different_from_random(sets, tmp_path):
    for name in ("herding", "kcenter"):
        again = run_baseline(cfg(tmp_path, name), CPU, selection=name)
        assert torch.equal(again.indices, sets[name].indices)
        assert set(sets[name].indices.tolist()) != set(sets["random"].indices.tolist())
    other = run_baseline(cfg(tmp_path, "r2", seed=1), CPU, selection="random")
    assert not torch.equal(other.indices, sets["random"].indices)


def test_herding_equals_a_naive_search():
    f = torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, chosen = f.mean(0), []
    for _ in range(6):
        best = min((i for i in range(30) if i not in chosen),
                   key=lambda i: float(((mu - f[chosen + [i]].mean(0)) ** 2).sum()))
        chosen.append(best)
    assert herding(f, 6).tolist() == chosen
    # herding's mean approximates the class mean better than the first k points do
    assert float(((f[herding(f, 6)].mean(0) - mu) ** 2).sum()) < float(((f[:6].mean(0) - mu) ** 2).sum())


def test_kcenter_equals_a_naive_greedy():
    f = torch.randn(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = torch.cdist(f, f)
    chosen = [int(((f - f.mean(0)) ** 2).sum(1).argmin())]
    while len(chosen) < 5:
        chosen.append(int(d[:, chosen].min(1).values.argmax()))
    assert kcenter(f, 5).tolist() == chosen
    radius = lambda idx: float(d[:, idx].min(1).values.max())  # noqa: E731
    assert radius(chosen) <= radius(list(range(5)))


@pytest.mark.parametrize("over, message", [(dict(ipc=0), "--ipc must be positive"),
                                           (dict(ipc=10_000), "exceeds the smallest class")])
def test_bad_input(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        run_baseline(cfg(tmp_path, "bad", **over), CPU, selection="herding")


def test_a_rerun_with_the_same_settings_reuses_the_set(sets, tmp_path, monkeypatch):
    import condense.methods.baselines as b

    first = run_baseline(cfg(tmp_path, "h"), CPU, selection="herding")
    stamp = (tmp_path / "h.h5").stat().st_mtime_ns
    monkeypatch.setattr(b, "select", lambda *a: pytest.fail("selected again"))
    notes = []
    again = run_baseline(cfg(tmp_path, "h", device="cpu"), CPU, selection="herding", progress=notes.append)
    assert torch.equal(again.indices, first.indices) and (tmp_path / "h.h5").stat().st_mtime_ns == stamp
    assert notes == [f"{tmp_path / 'h.h5'}: already selected with these settings"]
    with pytest.raises(pytest.fail.Exception, match="selected again"):  # other settings: chosen anew
        run_baseline(cfg(tmp_path, "h", embed_epochs=2), CPU, selection="herding")
    with pytest.raises(pytest.fail.Exception, match="selected again"):  # another method at the same path
        run_baseline(cfg(tmp_path, "h"), CPU, selection="kcenter")
