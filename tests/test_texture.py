"""Tileable textures (tm --texture): toroidal crops, seamlessness, training and evaluating on crops.

The crops are checked against MTT's construction (roll the canvas by the offset, keep the
top-left corner), their gradient against that construction's autograd; seamlessness as
equivariance: a circular ConvNet's maps of a canvas shifted with wrap-around are the shifted
maps, and the texture objective of a wrapped canvas is that of the canvas at shifted offsets.
"""
from __future__ import annotations

import h5py
import pytest
import torch
import torch.nn.functional as F

from condense.nets import build_net
from condense.runtime.errors import ConfigError, FormatError
from condense.synset import load_synset
from condense.texture import crop_offsets, texture_batch, tile, toroidal_crops
from conftest import tm_cfg

CPU = torch.device("cpu")
QUIET = {"progress": lambda m: None, "bars": False}


def mtt_crop(canvas: torch.Tensor, offset, size) -> torch.Tensor:
    """MTT's texture crop of one canvas [C, Hc, Wc]: torch.roll by (dy, dx), then the top-left h x w."""
    return torch.roll(canvas, (-int(offset[0]), -int(offset[1])), dims=(1, 2))[:, :size[0], :size[1]]


def test_toroidal_crops_are_mtts_roll_then_crop_with_the_same_gradient():
    canvases = torch.randn(5, 3, 12, 10, requires_grad=True)
    offsets = crop_offsets(5, (12, 10), torch.Generator().manual_seed(0))
    offsets[0] = torch.tensor([11, 9])  # a crop over both edges
    ours = toroidal_crops(canvases, offsets, (6, 4))
    naive = torch.stack([mtt_crop(c, o, (6, 4)) for c, o in zip(canvases, offsets)])
    assert torch.equal(ours, naive)
    weights = torch.randn_like(ours)
    g_ours, = torch.autograd.grad((ours * weights).sum(), canvases)
    g_naive, = torch.autograd.grad((naive * weights).sum(), canvases)
    torch.testing.assert_close(g_ours, g_naive)
    batch = texture_batch(canvases.detach(), 3, (6, 4), torch.Generator().manual_seed(1))
    assert batch.shape == (15, 3, 6, 4)


def test_a_circular_convnet_sees_a_wrapped_canvas_as_the_same_texture():
    """The student's output on a shifted, wrapped canvas equals the unshifted one: maps shift with
    the canvas (by the shift / 2^depth), and their mean over positions does not change."""
    net = build_net("convnet-circular:width=8,depth=3", 3, 4, (64, 48))  # applied to the whole canvas
    canvas = torch.randn(2, 3, 64, 48)
    shifted = torch.roll(canvas, (8, 24), dims=(2, 3))
    maps, maps_shifted = net.feature_maps(canvas)[-1], net.feature_maps(shifted)[-1]
    torch.testing.assert_close(maps_shifted, torch.roll(maps, (1, 3), dims=(2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps_shifted.mean((2, 3)), maps.mean((2, 3)), rtol=1e-5, atol=1e-5)
    zero_padded = build_net("convnet:width=8,depth=3", 3, 4, (64, 48))
    m = zero_padded.feature_maps(canvas)[-1]
    assert not torch.allclose(zero_padded.feature_maps(shifted)[-1], torch.roll(m, (1, 3), dims=(2, 3)), atol=1e-3)


def test_the_texture_objective_has_no_special_position_on_the_torus():
    """Crops of a wrapped canvas at offsets o are the canvas's crops at o - shift: every crop the
    objective can draw exists for both, so no seam is preferred and the canvas tiles."""
    net = build_net("convnet:width=8", 3, 4, (8, 8))
    canvas = torch.randn(3, 3, 16, 16)
    shift = torch.tensor([5, 11])
    wrapped = torch.roll(canvas, tuple(shift.tolist()), dims=(2, 3))
    offsets = crop_offsets(3, (16, 16), torch.Generator().manual_seed(2))
    y = torch.arange(3)
    a = F.cross_entropy(net(toroidal_crops(wrapped, offsets, (8, 8))), y)
    b = F.cross_entropy(net(toroidal_crops(canvas, (offsets - shift) % 16, (8, 8))), y)
    torch.testing.assert_close(a, b)


def test_tile_repeats_every_image():
    x = torch.randn(2, 3, 4, 5)
    t = tile(x, 3)
    assert t.shape == (2, 3, 12, 15) and torch.equal(t[:, :, 4:8, 10:15], x)


def test_tm_texture_distils_canvases_that_train_and_evaluate_on_crops(store_path, tmp_path):
    from condense.methods.tm import run_tm

    cfg = tm_cfg(store_path, tmp_path, texture=2, iters=4, checkpoint_every=2)
    s = run_tm(cfg, CPU, **QUIET)
    assert s.images.shape == (8, 3, 32, 32) and s.data["texture"] == {"crop": [16, 16], "samples": 1}
    again = run_tm(tm_cfg(store_path, tmp_path / "b", texture=2, iters=4, checkpoint_every=2), CPU, **QUIET)
    assert torch.equal(s.images, again.images)
    start = tm_cfg(store_path, tmp_path / "c", texture=2, init="real", iters=1)
    from condense.methods.tm import TrajectoryMatching, open_store_for

    store, ds = open_store_for(start)
    method = TrajectoryMatching(start, store, ds, CPU)
    # real start: each canvas tiles 4 training images of its class
    idx = method.indices.view(8, 4)
    assert torch.equal(method.images[0, :, :16, 16:].detach(), ds.x_train[idx[0, 1]])
    assert bool((ds.y_train[idx[:2]] == 0).all())
    saved = load_synset(cfg.out)
    assert saved.sample_shape == (3, 16, 16) and saved.budget_ipc == 2 * 4  # a canvas holds 4 crops' area

    from evals.grid import EvalConfig
    from evals.harness import run_eval

    doc = run_eval(EvalConfig(runs=1, epochs=2, json=str(tmp_path / "ev" / "r.json")), [cfg.out], note=lambda m: None,
                   bars=False)
    rows = {r["baseline"] or "set": r for r in doc["results"]}
    assert rows["set"]["ipc"] == 8 and rows["random"]["ipc"] == 8


def test_texture_refusals_are_one_line_each(store_path, tmp_path):
    from condense.labels.run import LabelsConfig, run_labels
    from condense.methods.tm import run_tm

    with pytest.raises(ConfigError, match="--labels hard"):
        run_tm(tm_cfg(store_path, tmp_path, texture=2, labels="expert"), CPU, **QUIET)
    with pytest.raises(ConfigError, match="noise or from real"):
        run_tm(tm_cfg(store_path, tmp_path, texture=2, init="kmeans"), CPU, **QUIET)
    s = run_tm(tm_cfg(store_path, tmp_path, texture=2, iters=1, checkpoint_every=1), CPU, **QUIET)
    path = tmp_path / "tm.h5"
    with pytest.raises(ConfigError, match="holds textures"):
        run_labels(LabelsConfig(synset=str(path), teacher=store_path, out=str(tmp_path / "l.h5")), **QUIET)
    assert s.data["texture"]
    with h5py.File(path, "r+") as f:
        f.attrs["data"] = f.attrs["data"].replace('"crop": [16, 16]', '"crop": [64, 16]')
    with pytest.raises(FormatError, match="do not fit"):
        load_synset(path)
    with h5py.File(path, "r+") as f:
        f.attrs["data"] = f.attrs["data"].replace('"crop": [64, 16]', '"crop": 3')
    with pytest.raises(FormatError, match="texture record is malformed"):
        load_synset(path)


def test_show_tiles_a_canvas(store_path, tmp_path):
    from condense.cli.main import main
    from condense.methods.tm import run_tm

    run_tm(tm_cfg(store_path, tmp_path, texture=2, iters=1, checkpoint_every=1), CPU, **QUIET)
    import matplotlib.image as mpimg

    assert main(["show", str(tmp_path / "tm.h5"), "--out", str(tmp_path / "one.png")]) == 0
    assert main(["show", str(tmp_path / "tm.h5"), "--out", str(tmp_path / "three.png"), "--tile", "3"]) == 0
    one, three = mpimg.imread(tmp_path / "one.png"), mpimg.imread(tmp_path / "three.png")
    assert three.shape[0] > one.shape[0]
