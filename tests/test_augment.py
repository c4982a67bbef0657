"""Tests for condense.augment (differentiable siamese augmentation)."""
import math
from dataclasses import replace

import pytest
import torch

from condense.augment import (GROUPS, DSAConfig, apply_dsa, cat_draws, dsa, select_draw,
                              parse_strategy, sample_dsa, siamese)
from condense.runtime.errors import ConfigError


def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def images(shape=(4, 3, 8, 10), seed=123, dtype=torch.float64):
    return torch.rand(shape, generator=gen(seed), dtype=dtype)


def only(group, x_shape, seed=0, per_image=False, **overrides):
    """A draw for a single group, with optional fixed parameter tensors."""
    B, C, H, W = x_shape
    d = sample_dsa(DSAConfig(strategy=group, share="view" if per_image else "batch"), B, (C, H, W), gen(seed))
    return replace(d, **overrides)


def draw_tensors(d):
    return [d.active, d.flip, d.scale, d.rotate, d.crop, d.cutout,
            d.brightness, d.saturation, d.contrast]


def same_draw(a, b):
    return all(torch.equal(s, t) for s, t in zip(draw_tensors(a), draw_tensors(b)))


# ---------------------------------------------------------------- strategy / config

def test_parse_strategy():
    assert parse_strategy("color_crop_cutout_flip_scale_rotate") == GROUPS
    assert parse_strategy("none") == () and parse_strategy("None") == () and parse_strategy("") == ()
    assert parse_strategy("flip_color") == ("flip", "color")


@pytest.mark.parametrize("bad", ["colour", "flip_noise", "crop_crop", "flip__crop"])
def test_unknown_strategy_raises_config_error(bad):
    with pytest.raises(ConfigError) as e:
        DSAConfig(strategy=bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw", [dict(mode="X"), dict(ratio_scale=0.9), dict(prob_flip=1.5),
                                dict(ratio_cutout=-0.1), dict(contrast=-1.0)])
def test_bad_config_values(kw):
    with pytest.raises(ConfigError):
        DSAConfig(**kw)


def test_reference_defaults():
    c = DSAConfig(share="view")
    assert (c.mode, c.prob_flip, c.ratio_scale, c.ratio_rotate, c.ratio_crop_pad, c.ratio_cutout,
            c.brightness, c.saturation, c.contrast) == ("S", 0.5, 1.2, 15.0, 0.125, 0.5, 1.0, 2.0, 0.5)


# ---------------------------------------------------------------- sampling

def test_same_seed_same_draw_different_seed_different():
    a = sample_dsa(DSAConfig(share="view"), 8, (3, 32, 32), gen(1))
    b = sample_dsa(DSAConfig(share="view"), 8, (3, 32, 32), gen(1))
    c = sample_dsa(DSAConfig(share="view"), 8, (3, 32, 32), gen(2))
    assert same_draw(a, b)
    assert not same_draw(a, c)
    # and the outputs follow
    x = images((8, 3, 32, 32))
    assert torch.equal(dsa(x, DSAConfig(mode="M", share="batch"), gen(5)), dsa(x, DSAConfig(mode="M", share="batch"), gen(5)))
    assert not torch.equal(dsa(x, DSAConfig(mode="M", share="batch"), gen(5)), dsa(x, DSAConfig(mode="M", share="batch"), gen(6)))


def test_sampling_uses_only_the_given_generator():
    state = torch.get_rng_state()
    g = gen(3)
    sample_dsa(DSAConfig(share="view"), 4, (3, 16, 16), g)
    assert torch.equal(state, torch.get_rng_state())
    assert not torch.equal(g.get_state(), gen(3).get_state())  # the passed generator advanced


def test_sampling_ranges():
    c = DSAConfig(share="view")
    d = sample_dsa(c, 4000, (3, 32, 32), gen(0))
    assert d.scale.min() >= 1 / 1.2 and d.scale.max() <= 1.2
    assert d.rotate.abs().max() <= math.radians(15) + 1e-6
    assert d.rotate.abs().max() > math.radians(14)
    assert set(d.crop.unique().tolist()) == set(range(-4, 5))            # int(32*0.125+0.5) = 4
    assert d.cutout_size == (16, 16)
    assert d.cutout.min() == 0 and (d.cutout.amax(0) == 32).all()        # even box: 0..H
    assert d.brightness.min() >= -0.5 and d.brightness.max() < 0.5
    assert d.saturation.min() >= 0 and d.saturation.max() < 2.0
    assert d.contrast.min() >= 0.5 and d.contrast.max() < 1.5
    assert 0.45 < d.flip.double().mean() < 0.55
    odd = sample_dsa(c, 2000, (1, 28, 28), gen(0))      # box int(14.5) = 14
    assert odd.cutout_size == (14, 14) and (odd.cutout.amax(0) == 28).all()
    odd = sample_dsa(replace(c, ratio_cutout=0.4), 2000, (1, 28, 28), gen(0))
    assert odd.cutout_size == (11, 11) and (odd.cutout.amax(0) == 27).all()  # odd box: 0..H-1
    for prob in (0.0, 0.9, 1.0):
        f = sample_dsa(replace(c, prob_flip=prob), 2000, (1, 8, 8), gen(0)).flip
        assert abs(f.double().mean().item() - prob) < 0.03


def test_mode_s_picks_one_group_uniformly_mode_m_all():
    d = sample_dsa(DSAConfig(share="view"), 6000, (3, 8, 8), gen(0))
    assert torch.equal(d.active.sum(1), torch.ones(6000, dtype=torch.long))
    counts = d.active.sum(0).double() / 6000
    assert torch.all((counts - 1 / 6).abs() < 0.025), counts
    m = sample_dsa(DSAConfig(mode="M", share="view"), 5, (3, 8, 8), gen(0))
    assert m.active.all()


def test_per_batch_draw_has_one_parameter_set():
    d = sample_dsa(DSAConfig(share="batch"), 16, (3, 8, 8), gen(0))
    assert d.n == 1 and not d.per_image
    assert all(t.shape[0] == 1 for t in draw_tensors(d))


def test_draw_does_not_depend_on_values_only_sizes():
    a = sample_dsa(DSAConfig(share="view"), 5, torch.Size([3, 16, 16]), gen(9))
    b = sample_dsa(DSAConfig(share="view"), 5, (3, 16, 16), gen(9))
    assert same_draw(a, b)
    x1, x2 = images((5, 3, 16, 16), seed=1), images((5, 3, 16, 16), seed=2)
    g1, g2 = gen(4), gen(4)
    dsa(x1, DSAConfig(share="batch"), g1)
    dsa(x2, DSAConfig(share="batch"), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------- applying

@pytest.mark.parametrize("group", GROUPS)
def test_gradients_flow_to_pixels(group):
    x = images((3, 3, 12, 12)).requires_grad_(True)
    d = only(group, x.shape, seed=1)
    if group == "flip":
        d = replace(d, flip=torch.tensor([True]))
    w = torch.rand(3, 3, 12, 12, generator=gen(7), dtype=x.dtype)
    (apply_dsa(x, d) * w).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()


def test_gradients_flow_in_default_config_per_image():
    x = images((6, 3, 16, 16)).requires_grad_(True)
    dsa(x, DSAConfig(mode="M", share="view"), gen(0)).square().sum().backward()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_none_is_identity():
    x = images()
    assert torch.equal(dsa(x, DSAConfig(strategy="none", share="batch"), gen(0)), x)
    assert torch.equal(dsa(x, DSAConfig(strategy="", share="view"), gen(0)), x)


def test_flip_equals_torch_flip():
    x = images()
    d = only("flip", x.shape, flip=torch.tensor([True]))
    assert torch.equal(apply_dsa(x, d), torch.flip(x, dims=[3]))
    d = only("flip", x.shape, flip=torch.tensor([False]))
    assert torch.equal(apply_dsa(x, d), x)


def test_identity_parameters_are_identity():
    x = images((2, 3, 9, 11))
    one = torch.ones(1, 2)
    assert torch.allclose(apply_dsa(x, only("scale", x.shape, scale=one)), x, atol=1e-10)
    assert torch.allclose(apply_dsa(x, only("rotate", x.shape, rotate=torch.zeros(1))), x, atol=1e-10)
    assert torch.equal(apply_dsa(x, only("crop", x.shape, crop=torch.zeros(1, 2, dtype=torch.long))), x)
    col = only("color", x.shape, brightness=torch.zeros(1), saturation=torch.ones(1),
               contrast=torch.ones(1))
    assert torch.allclose(apply_dsa(x, col), x, atol=1e-12)
    # and non-identity parameters do change the images
    assert not torch.allclose(apply_dsa(x, only("rotate", x.shape, rotate=torch.full((1,), 0.2))), x,
                              atol=1e-3)


def test_rotate_quarter_turn_matches_rot90():
    x = images((2, 3, 7, 7))
    out = apply_dsa(x, only("rotate", x.shape, rotate=torch.full((1,), math.pi / 2)))
    # sampling grid [[0,-1],[1,0]] maps output (i, j) to source (j, W-1-i): anticlockwise
    assert torch.allclose(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-6)


def test_cutout_zeroes_expected_area():
    x = torch.ones(1, 1, 32, 32, dtype=torch.float64)
    d = only("cutout", x.shape, cutout=torch.tensor([[16, 16]]))
    out = apply_dsa(x, d)
    assert (out == 0).double().mean().item() == pytest.approx(0.25)
    assert (out[0, 0, 8:24, 8:24] == 0).all()
    # a corner centre: the box is clipped to the image
    out = apply_dsa(x, only("cutout", x.shape, cutout=torch.tensor([[0, 32]])))
    assert (out == 0).sum().item() == 8 * 8
    # random centres: zero count equals the clipped box area
    d = sample_dsa(DSAConfig(strategy="cutout", share="view"), 64, (1, 28, 28), gen(0))
    out = apply_dsa(torch.ones(64, 1, 28, 28), d)
    for b in range(64):
        top, left = d.cutout[b, 0].item() - 7, d.cutout[b, 1].item() - 7
        h = min(top + 14, 28) - max(top, 0)
        w = min(left + 14, 28) - max(left, 0)
        assert (out[b] == 0).sum().item() == h * w


def test_crop_is_translation_with_zero_fill():
    x = images((1, 1, 6, 6))
    out = apply_dsa(x, only("crop", x.shape, crop=torch.tensor([[2, -1]])))
    assert torch.equal(out[0, 0, :4, 1:], x[0, 0, 2:, :5])
    assert (out[0, 0, 4:] == 0).all() and (out[0, 0, :, 0] == 0).all()


# ---------------------------------------------------------------- siamese / batch semantics

def test_per_batch_draw_same_transform_for_every_image():
    for seed in range(6):
        x = images((1, 3, 16, 16)).expand(5, 3, 16, 16).contiguous()
        out = dsa(x, DSAConfig(mode="M", share="batch"), gen(seed))
        assert all(torch.equal(out[0], out[i]) for i in range(5))


def test_per_image_draws_differ_across_images():
    x = images((1, 3, 16, 16)).expand(6, 3, 16, 16).contiguous()
    out = dsa(x, DSAConfig(mode="M", share="view"), gen(0))
    assert all(not torch.allclose(out[0], out[i]) for i in range(1, 6))
    d = sample_dsa(DSAConfig(share="view"), 6, (3, 16, 16), gen(0))
    assert len(set(d.rotate.tolist())) == 6 and len(set(d.brightness.tolist())) == 6


def test_siamese_identical_batches_identical_outputs():
    x = images((4, 3, 16, 16))
    for seed in range(8):
        a, b = siamese([x, x.clone()], DSAConfig(share="batch"), gen(seed))
        assert torch.equal(a, b)


def test_siamese_equals_applying_the_draw_to_each_batch():
    real, syn = images((7, 3, 16, 16), seed=1), images((3, 3, 16, 16), seed=2)
    for seed in range(8):
        a, b = siamese([real, syn], DSAConfig(mode="M", share="batch"), gen(seed))
        d = sample_dsa(DSAConfig(mode="M", share="batch"), 7, (3, 16, 16), gen(seed))
        assert torch.equal(a, apply_dsa(real, d)) and torch.equal(b, apply_dsa(syn, d))
    flips = []
    for seed in range(20):  # flip decision is shared: both flipped or neither
        a, b = siamese([real, syn], DSAConfig(strategy="flip", share="batch"), gen(seed))
        fa, fb = torch.equal(a, real.flip(3)), torch.equal(b, syn.flip(3))
        assert fa == fb and (fa or torch.equal(a, real))
        flips.append(fa)
    assert any(flips) and not all(flips)


def test_per_image_draw_needs_matching_batch_size_per_batch_broadcasts():
    d = sample_dsa(DSAConfig(share="view"), 4, (3, 8, 8), gen(0))
    with pytest.raises(ValueError):
        apply_dsa(images((5, 3, 8, 8)), d)
    with pytest.raises(ValueError):
        apply_dsa(images((4, 3, 9, 8)), d)
    d = sample_dsa(DSAConfig(share="batch"), 4, (3, 8, 8), gen(0))
    for b in (1, 4, 9):
        assert apply_dsa(images((b, 3, 8, 8)), d).shape == (b, 3, 8, 8)


def test_mixed_groups_per_image_equal_single_image_application():
    x = images((12, 3, 10, 10))
    d = sample_dsa(DSAConfig(share="view"), 12, (3, 10, 10), gen(0))
    assert len(set(d.active.float().argmax(1).tolist())) > 3
    out = apply_dsa(x, d)
    for i in range(12):
        di = replace(d, per_image=False, **{k: getattr(d, k)[i:i + 1] for k in (
            "active", "flip", "scale", "rotate", "crop", "cutout", "brightness", "saturation",
            "contrast")})
        assert torch.allclose(out[i:i + 1], apply_dsa(x[i:i + 1], di), atol=1e-12)


def test_cat_draws_builds_per_image_draw_from_per_image_generators():
    draws = [sample_dsa(DSAConfig(share="batch"), 1, (3, 8, 8), gen(i)) for i in range(3)]
    d = cat_draws(draws)
    assert d.per_image and d.n == 3
    x = images((3, 3, 8, 8))
    out = apply_dsa(x, d)
    for i in range(3):
        assert torch.allclose(out[i:i + 1], apply_dsa(x[i:i + 1], draws[i]), atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
@pytest.mark.parametrize("mode", ["S", "M"])
def test_shapes(shape, mode):
    x = torch.rand((5,) + shape, generator=gen(0))
    for per_image in (False, True):
        out = dsa(x, DSAConfig(mode=mode, share="view" if per_image else "batch"), gen(1))
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = images((4, 3, 16, 16), dtype=torch.float32)
    d = sample_dsa(DSAConfig(mode="M", share="view"), 4, (3, 16, 16), gen(0))
    xc = x.cuda().requires_grad_(True)
    out = apply_dsa(xc, d)
    out.sum().backward()
    assert out.is_cuda and xc.grad.abs().sum() > 0
    assert torch.allclose(out.cpu(), apply_dsa(x, d), atol=1e-5)
    gc = torch.Generator(device="cuda")
    gc.manual_seed(0)
    assert dsa(xc, DSAConfig(share="batch"), gc).is_cuda


# ---------------------------------------------------------------- naive reference implementations

def naive_affine(x, theta):
    """Per-pixel bilinear sampling of x [C,H,W] at theta @ (xn, yn, 1), align_corners=True,
    zeros outside."""
    C, H, W = x.shape
    out = torch.zeros_like(x)
    for i in range(H):
        for j in range(W):
            xn = -1 + 2 * j / (W - 1)
            yn = -1 + 2 * i / (H - 1)
            xs = theta[0][0] * xn + theta[0][1] * yn + theta[0][2]
            ys = theta[1][0] * xn + theta[1][1] * yn + theta[1][2]
            px, py = (xs + 1) / 2 * (W - 1), (ys + 1) / 2 * (H - 1)
            x0, y0 = math.floor(px), math.floor(py)
            for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= yy < H and 0 <= xx < W:
                        out[:, i, j] += wy * wx * x[:, yy, xx]
    return out


def naive(group, x, p):
    """Per-image loop versions of the reference's transforms, for fixed parameters p[b]."""
    B, C, H, W = x.shape
    out = x.clone()
    for b in range(B):
        q = p[b]
        if group == "flip":
            if q["flip"]:
                out[b] = x[b][:, :, list(range(W - 1, -1, -1))]
        elif group == "scale":
            out[b] = naive_affine(x[b], [[q["sx"], 0, 0], [0, q["sy"], 0]])
        elif group == "rotate":
            c, s = math.cos(q["angle"]), math.sin(q["angle"])
            out[b] = naive_affine(x[b], [[c, -s, 0], [s, c, 0]])
        elif group == "crop":  # the reference: pad one zero pixel, clamp indices into the pad
            pad = torch.zeros(C, H + 2, W + 2, dtype=x.dtype)
            pad[:, 1:-1, 1:-1] = x[b]
            for i in range(H):
                for j in range(W):
                    r = min(max(i + q["dy"] + 1, 0), H + 1)
                    c = min(max(j + q["dx"] + 1, 0), W + 1)
                    out[b, :, i, j] = pad[:, r, c]
        elif group == "cutout":  # the reference: clamp box indices into the image
            bh, bw = q["size"]
            for i in range(bh):
                for j in range(bw):
                    r = min(max(i + q["cy"] - bh // 2, 0), H - 1)
                    c = min(max(j + q["cx"] - bw // 2, 0), W - 1)
                    out[b, :, r, c] = 0
        elif group == "color":
            y = x[b] + q["brightness"]
            m = sum(y[k] for k in range(C)) / C
            y = (y - m) * q["saturation"] + m
            y = (y - y.sum() / y.numel()) * q["contrast"] + y.sum() / y.numel()
            out[b] = y
    return out


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (3, 1, 6, 6)])
def test_matches_naive_per_image_implementation(group, shape):
    x = images(shape, seed=11)
    B = shape[0]
    d = sample_dsa(DSAConfig(strategy=group, mode="M", ratio_crop_pad=0.4, ratio_rotate=60.0,
                             ratio_scale=1.5, ratio_cutout=0.6, share="view"),
                   B, shape[1:], gen(3))
    if group == "flip":
        d = replace(d, flip=torch.arange(B) % 2 == 0)
    p = [dict(flip=bool(d.flip[b]), sx=d.scale[b, 0].item(), sy=d.scale[b, 1].item(),
              angle=d.rotate[b].item(), dy=int(d.crop[b, 0]), dx=int(d.crop[b, 1]),
              cy=int(d.cutout[b, 0]), cx=int(d.cutout[b, 1]), size=d.cutout_size,
              brightness=d.brightness[b].item(), saturation=d.saturation[b].item(),
              contrast=d.contrast[b].item()) for b in range(B)]
    out = apply_dsa(x, d)
    expected = naive(group, x, p)
    assert not torch.allclose(expected, x)  # the parameters do something
    assert torch.allclose(out, expected, atol=1e-6), (out - expected).abs().max()


# ---------------------------------------------------------------- sharing semantics (the references' rule)

def reference_rule_draw(cfg, B, shape, g):
    """A replay of the reference's unseeded ``DiffAugment`` (batchmode=False) written as a naive
    loop: in mode 'S' one group for the call, then every parameter drawn image by image."""
    groups = cfg.groups
    group = groups[min(int(torch.rand(1, generator=g).item() * len(groups)), len(groups) - 1)]
    H = shape[1]  # the height-side parameters stand for all (the width side is the same rule)
    sh = int(H * cfg.ratio_crop_pad + 0.5)
    ch = int(H * cfg.ratio_cutout + 0.5)
    r = cfg.ratio_scale
    return group, [dict(scale=(1 / r + (r - 1 / r) * torch.rand(1, generator=g).item(),),
                        crop=int(torch.randint(-sh, sh + 1, (1,), generator=g)),
                        cutout=int(torch.randint(0, H - ch % 2 + 1, (1,), generator=g)))
                   for _ in range(B)]


def test_image_share_is_the_reference_rule_one_group_per_call_parameters_per_image():
    cfg = DSAConfig()
    assert cfg.share == "image"  # the default is the reference's training semantics
    B, calls = 64, 600
    groups, ref_groups = [], []
    for k in range(calls):
        d = sample_dsa(cfg, B, (1, 16, 16), gen(k))
        assert d.per_image and d.n == B
        assert bool((d.active == d.active[:1]).all()) and int(d.active[0].sum()) == 1  # one group per call
        groups.append(int(d.active[0].float().argmax()))
        ref_groups.append(GROUPS.index(reference_rule_draw(cfg, B, (1, 16, 16), gen(10_000 + k))[0]))
        # every image its own parameters, within one call
        assert len(set(d.scale[:, 0].tolist())) == B and len(set(d.rotate.tolist())) == B
    ours = torch.bincount(torch.tensor(groups), minlength=6).double() / calls
    ref = torch.bincount(torch.tensor(ref_groups), minlength=6).double() / calls
    assert torch.all((ours - 1 / 6).abs() < 0.05) and torch.all((ref - 1 / 6).abs() < 0.05)


def test_image_share_parameters_are_independent_across_images_and_distributed_as_the_reference():
    cfg = DSAConfig()
    n = 3000
    ours = [sample_dsa(cfg, 2, (1, 16, 16), gen(k)) for k in range(n)]
    refs = [reference_rule_draw(cfg, 2, (1, 16, 16), gen(50_000 + k))[1] for k in range(n)]
    for field_of, ref_of in ((lambda d: d.scale[:, 0], lambda p: p["scale"][0]),
                             (lambda d: d.crop[:, 0].double(), lambda p: float(p["crop"])),
                             (lambda d: d.cutout[:, 0].double(), lambda p: float(p["cutout"]))):
        a = torch.stack([field_of(d).double() for d in ours])  # [n, 2]: image 0 and image 1 of each call
        r = torch.tensor([[ref_of(p) for p in ps] for ps in refs], dtype=torch.float64)
        corr = torch.corrcoef(a.T)[0, 1]
        assert abs(float(corr)) < 0.06, corr  # independent draws per image
        for q in (0.1, 0.5, 0.9):  # the same marginal as the reference's per-image draws
            assert abs(float(a.flatten().quantile(q) - r.flatten().quantile(q))) < 0.05 * (r.max() - r.min())


def test_image_share_batch_equals_each_image_augmented_alone():
    x = images((6, 3, 12, 12), seed=3)
    for k in range(12):
        d = sample_dsa(DSAConfig(), 6, (3, 12, 12), gen(k))
        out = apply_dsa(x, d)
        for i in range(6):
            one = replace(select_draw(d, torch.tensor([i])), per_image=False)
            torch.testing.assert_close(out[i:i + 1], apply_dsa(x[i:i + 1], one), rtol=0, atol=1e-12)


def test_siamese_paths_share_one_draw_per_batch():
    cfg = DSAConfig(share="batch")
    real, syn = images((9, 3, 8, 8), seed=1), images((2, 3, 8, 8), seed=2)
    d = sample_dsa(cfg, 9, (3, 8, 8), gen(4))
    assert not d.per_image and d.n == 1  # broadcasts to the real (9) and the synthetic (2) batch alike
    a, b = siamese([real, syn], cfg, gen(4))
    torch.testing.assert_close(a, apply_dsa(real, d))
    torch.testing.assert_close(b, apply_dsa(syn, d))
    with pytest.raises(ValueError):  # per-image parameters cannot be shared by batches of other sizes
        siamese([real, syn], DSAConfig(), gen(4))


def test_view_share_draws_the_group_per_image_too():
    d = sample_dsa(DSAConfig(share="view"), 600, (1, 8, 8), gen(0))
    assert len(set(d.active.float().argmax(1).tolist())) == 6


def test_unknown_share_is_one_line_config_error():
    with pytest.raises(ConfigError) as e:
        DSAConfig(share="images")
    assert "\n" not in str(e.value) and "image" in str(e.value)
