"""Gradient matching (DC/DSA): the layer distance against a naive loop, loss behaviour, resume."""
from __future__ import annotations

import pytest
import torch

from condense.data import load_dataset
from condense.runtime.errors import ConfigError
from condense.methods.gm import GMConfig, GradientMatching, gm_distance, layer_distance, run_gm
from condense.methods.loop import synthesize

torch.set_num_threads(1)
CPU = torch.device("cpu")


def test_layer_distance_equals_a_naive_row_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    naive = sum(1 - float(torch.dot(a[i].flatten(), b[i].flatten()) / (a[i].norm() * b[i].norm() + 1e-6)) for i in range(4))
    assert float(layer_distance(a, b)) == pytest.approx(naive, rel=1e-12)
    assert float(layer_distance(torch.randn(5), torch.randn(5))) == 0.0, "1-D parameters do not count (DC)"
    assert float(layer_distance(a, 3 * a)) == pytest.approx(0.0, abs=1e-6), "scale-invariant: cosine"
    assert float(gm_distance([a, torch.ones(2)], [b, torch.zeros(2)])) == pytest.approx(naive, rel=1e-12)


def cfg(tmp_path, **over):
    return GMConfig(**{"dataset": "toy", "ipc": 2, "arch": "convnet:width=8", "iters": 4, "outer_loop": 1,
                       "inner_loop": 1, "batch_real": 32, "checkpoint_every": 2, "out": str(tmp_path / "gm.h5"),
                       **over})


def test_distance_is_zero_when_the_synthetic_set_is_the_real_class(tmp_path):
    ds = load_dataset("toy")
    n = int(torch.bincount(ds.y_train).min())
    method = GradientMatching(cfg(tmp_path, ipc=n, dsa=False, batch_real=10_000), ds, CPU)
    with torch.no_grad():  # the synthetic images of each class := all real images of that class
        for c in range(4):
            method.images[method.syn_of[c]] = ds.x_train[method.by_class[c][:n]]
    method.by_class = [m[:n] for m in method.by_class]
    matched = method.compute_grads(0)["loss"]
    with torch.no_grad():
        method.images.normal_(generator=torch.Generator().manual_seed(0))
    noise = method.compute_grads(0)["loss"]
    # zero up to float32 rounding and DC's 1e-6 in the cosine's denominator
    assert matched < 0.01 * noise and matched < 0.01


def test_iterations_lower_the_matching_loss(tmp_path):
    ds = load_dataset("toy")
    method = GradientMatching(cfg(tmp_path, lr_img=1.0), ds, CPU)
    before = method.compute_grads(0)["loss"]
    synthesize(method, cfg(tmp_path, iters=15, lr_img=1.0), tmp_path / "gm.h5", {"method": "gm"},
               progress=lambda s: None, bars=False)
    assert method.compute_grads(0)["loss"] < before


def test_resume_equals_uninterrupted_with_inner_training(tmp_path):
    whole = run_gm(cfg(tmp_path / "a", outer_loop=2), CPU, progress=lambda s: None, bars=False)
    run_gm(cfg(tmp_path / "b", outer_loop=2, iters=2), CPU, progress=lambda s: None, bars=False)
    resumed = run_gm(cfg(tmp_path / "b", outer_loop=2), CPU, progress=lambda s: None, bars=False)
    assert torch.equal(whole.images, resumed.images)


@pytest.mark.parametrize("over, message", [(dict(ipc=0), "--ipc must be positive"),
                                           (dict(ipc=10_000), "exceeds the smallest class"),
                                           (dict(init="kmeans"), "--init must be one of real, noise")])
def test_bad_input(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        run_gm(cfg(tmp_path, **over), CPU, progress=lambda s: None, bars=False)
