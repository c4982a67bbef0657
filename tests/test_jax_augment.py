"""JAX DSA: replaying a torch draw gives torch's images and gradients (float64); JAX sampling's ranges."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from condense.augment import GROUPS, DSAConfig, apply_dsa, sample_dsa  # noqa: E402
from condense.jax import augment as jaug  # noqa: E402
from condense.runtime.rng import generator  # noqa: E402

torch.set_num_threads(1)
SHAPE = (3, 12, 10)  # H != W catches a swapped axis
APPLY = jax.jit(jaug.apply_dsa)  # one compilation per strategy/mode/draw shape, not per draw
GRAD = jax.jit(jax.grad(lambda x, draw, w: (jaug.apply_dsa(x, draw) * w).sum()))


def batch(n=4, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def torch_and_jax(x, draw):
    """(torch result, torch grad of a weighted sum, jax result, jax grad), float64."""
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    xt = x.clone().requires_grad_(True)
    out = apply_dsa(xt, draw)
    (g,) = torch.autograd.grad((out * w).sum(), xt)
    jd, xj = jaug.from_torch(draw), jnp.asarray(x.numpy())
    return out.detach().numpy(), g.numpy(), np.asarray(APPLY(xj, jd)), np.asarray(GRAD(xj, jd, jnp.asarray(w.numpy())))


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("share", ["batch", "image", "view"])
def test_each_transform_replays_the_torch_draw(group, share):
    with jax.enable_x64(True):
        x = batch()
        changed = 0
        for seed in range(4):  # several draws: flips on and off, crops both ways, boxes at the border
            draw = sample_dsa(DSAConfig(strategy=group, share=share), len(x), SHAPE, generator(seed))
            out, g, out_j, g_j = torch_and_jax(x, draw)
            np.testing.assert_allclose(out_j, out, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(g_j, g, rtol=1e-10, atol=1e-12)
            changed += np.abs(out - x.numpy()).max() > 1e-3
        assert changed >= 2  # the draws did something (a zero crop or an unflipped draw may not)


@pytest.mark.parametrize("mode", ["S", "M"])
@pytest.mark.parametrize("share", ["batch", "image", "view"])
def test_full_strategy_replays_the_torch_draw(mode, share):
    with jax.enable_x64(True):
        x = batch(5)
        for seed in range(6):
            draw = sample_dsa(DSAConfig(mode=mode, share=share), len(x), SHAPE, generator(10 + seed))
            out, g, out_j, g_j = torch_and_jax(x, draw)
            np.testing.assert_allclose(out_j, out, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(g_j, g, rtol=1e-10, atol=1e-12)


def test_jax_sampling_has_the_reference_ranges_and_is_siamese():
    cfg = DSAConfig(share="view")
    d = jaug.sample_dsa(cfg, jax.random.key(0), 4000, SHAPE)
    assert d.active.shape == (4000, 6) and bool((d.active.sum(1) == 1).all())  # mode S: one group each
    assert np.allclose(np.asarray(d.active.mean(0)), 1 / 6, atol=0.03)
    assert abs(float(d.flip.mean()) - 0.5) < 0.03
    assert 1 / 1.2 <= float(d.scale.min()) and float(d.scale.max()) <= 1.2
    assert np.abs(np.asarray(d.rotate)).max() <= np.pi / 12 + 1e-7 and np.asarray(d.rotate).max() > 0.25
    assert sorted(set(np.asarray(d.crop[:, 0]).tolist())) == list(range(-2, 3))  # int(12 * 0.125 + 0.5) = 2
    assert sorted(set(np.asarray(d.crop[:, 1]).tolist())) == list(range(-1, 2))  # int(10 * 0.125 + 0.5) = 1
    assert d.cutout_size == (6, 5)
    assert int(d.cutout[:, 0].min()) == 0 and int(d.cutout[:, 0].max()) == 12  # even box: 0..H
    assert int(d.cutout[:, 1].max()) == 9  # odd box: 0..W-1
    assert -0.5 <= float(d.brightness.min()) and float(d.brightness.max()) <= 0.5
    assert 0 <= float(d.saturation.min()) and float(d.saturation.max()) <= 2.0
    assert 0.5 <= float(d.contrast.min()) and float(d.contrast.max()) <= 1.5
    # siamese: one per-batch draw on two batches = the draw on their concatenation
    x = jnp.asarray(batch(6).numpy(), dtype=jnp.float32)
    sample = jax.jit(jaug.sample_dsa, static_argnums=(0, 2, 3))  # as inside a jitted method
    siamese = jax.jit(jaug.siamese)
    for k in range(6):
        one = sample(replace(cfg, share="batch"), jax.random.key(k), 3, SHAPE)
        a, b = siamese([x[:3], x[3:]], one)
        np.testing.assert_allclose(np.concatenate([a, b]), APPLY(x, one), rtol=1e-6, atol=1e-6)


def test_jax_sampling_image_share_one_group_per_call_parameters_per_image():
    cfg = DSAConfig()  # share 'image': the reference's unseeded DiffAugment
    groups = []
    for k in range(300):
        d = jaug.sample_dsa(cfg, jax.random.key(k), 16, SHAPE)
        active = np.asarray(d.active)
        assert active.shape == (16, 6) and (active == active[:1]).all() and d.shared_group
        groups.append(int(active[0].argmax()))
        assert len(set(np.asarray(d.scale[:, 0]).tolist())) == 16  # every image its own parameters
    assert np.allclose(np.bincount(groups, minlength=6) / 300, 1 / 6, atol=0.06)
