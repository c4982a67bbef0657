"""Step rules for experts: SAM, GSAM, smooth experts (AST), against naive hand-written versions."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from condense.runtime.errors import ConfigError
from condense.nets import build_net
from condense.runtime.rng import generator
from condense.step_rules import (ExpertRegularizer, gsam_step, input_gradient_penalty, loss_decay_scale, sam_step,
                            smooth_step)
from condense.train import Batch, TrainProtocol, plain_step, train_model

torch.set_num_threads(1)
LR, MOM, WD = 0.1, 0.9, 5e-4
TOL = dict(rtol=1e-10, atol=1e-12)  # float64 throughout


def make_net(spec: str = "convnet:width=8,depth=2", channels: int = 3, seed: int = 0) -> torch.nn.Module:
    return build_net(spec, channels, 3, (8, 8), generator=generator(seed)).double()


def make_batch(channels: int = 3, n: int = 6, seed: int = 1, same: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x_clean = torch.randn(n, channels, 8, 8, generator=g, dtype=torch.float64)
    x = x_clean if same else x_clean.flip(-1) + 0.3 * torch.randn(x_clean.shape, generator=g, dtype=torch.float64)
    return Batch(x=x, y=torch.randint(0, 3, (n,), generator=g), x_clean=x_clean)


class CountingSGD(torch.optim.SGD):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def sgd(model):
    return CountingSGD(model.parameters(), lr=LR, momentum=MOM, weight_decay=WD)


def apply_rule(rule, model, batch, loss_fn=F.cross_entropy, epoch=0):
    """Deep-copy ``model``, take one step with ``rule``; returns (new params, returned loss, step count)."""
    m = copy.deepcopy(model)
    opt = sgd(m)
    loss = rule(m, batch, loss_fn, opt, epoch)
    return [p.detach() for p in m.parameters()], loss, opt.steps


def manual_sgd(w0, direction):
    """The first SGD step (momentum buffer = gradient) with weight decay, by hand."""
    return [w - LR * (d + WD * w) for w, d in zip(w0, direction)]


def naive_sharpness(model, batch, rho, alpha=None, adaptive=False, objective=None):
    """Hand-written SAM/GSAM: explicit copies, perturb, gradient, restore, manual SGD update."""
    m = copy.deepcopy(model)
    params = list(m.parameters())
    objective = objective or (lambda mm: F.cross_entropy(mm(batch.x), batch.y))
    w0 = [p.detach().clone() for p in params]
    g = torch.autograd.grad(objective(m), params)
    with torch.no_grad():
        if adaptive:
            norm = torch.sqrt(sum(((w.abs() * gi) ** 2).sum() for w, gi in zip(w0, g)))
            e = [rho * w * w * gi / norm for w, gi in zip(w0, g)]
        else:
            norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            e = [rho * gi / norm for gi in g]
        for p, w, ei in zip(params, w0, e):
            p.copy_(w + ei)
    gp = torch.autograd.grad(objective(m), params)
    direction = list(gp)
    if alpha is not None:
        dot = sum((a * b).sum() for a, b in zip(g, gp))
        gp_sq = sum((b ** 2).sum() for b in gp)
        direction = [b - alpha * (a - dot / gp_sq * b) for a, b in zip(g, gp)]
    return manual_sgd(w0, direction)


@torch.no_grad()
def ce_at(model, batch):
    return float(F.cross_entropy(model(batch.x), batch.y))


def assert_params_close(a, b, **tol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **(tol or TOL))


def params_differ(a, b, min_diff=1e-9):
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) > min_diff


# ----------------------------------------------------------------------------- SAM / GSAM


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_matches_naive_update(adaptive):
    model, batch = make_net(), make_batch()
    rho = 0.05 if not adaptive else 0.5
    got, loss, steps = apply_rule(sam_step(rho, adaptive=adaptive), model, batch)
    assert_params_close(got, naive_sharpness(model, batch, rho, adaptive=adaptive))
    assert steps == 1
    assert loss == pytest.approx(ce_at(model, batch), rel=1e-12)  # loss at w
    plain, _, _ = apply_rule(plain_step, model, batch)
    assert params_differ(got, plain, 1e-6)


def test_sam_with_tiny_rho_approaches_plain_step():
    model, batch = make_net(), make_batch()
    plain, _, _ = apply_rule(plain_step, model, batch)
    gaps = []
    for rho in (1e-2, 1e-4, 1e-6):
        got, _, _ = apply_rule(sam_step(rho), model, batch)
        gaps.append(max(float((a - b).abs().max()) for a, b in zip(got, plain)))
    assert gaps[0] > 10 * gaps[1] > 100 * gaps[2]
    assert gaps[2] < 1e-7


@pytest.mark.parametrize("alpha,adaptive", [(0.4, False), (1.0, False), (0.4, True)])
def test_gsam_matches_naive_formula(alpha, adaptive):
    model, batch = make_net(), make_batch()
    rho = 0.2 if not adaptive else 1.0  # large enough that g and g_p differ clearly
    got, _, steps = apply_rule(gsam_step(rho, alpha, adaptive=adaptive), model, batch)
    assert steps == 1
    assert_params_close(got, naive_sharpness(model, batch, rho, alpha=alpha, adaptive=adaptive))
    sam, _, _ = apply_rule(sam_step(rho, adaptive=adaptive), model, batch)
    assert params_differ(got, sam, 1e-6)  # the orthogonal correction matters here


def test_gsam_with_alpha_zero_is_sam():
    model, batch = make_net(), make_batch()
    a, _, _ = apply_rule(gsam_step(0.1, 0.0), model, batch)
    b, _, _ = apply_rule(sam_step(0.1), model, batch)
    assert_params_close(a, b, rtol=0, atol=0)
    c, _, _ = apply_rule(gsam_step(0.1, 1e-9), model, batch)  # through the decomposition code path
    assert_params_close(c, b, rtol=1e-7, atol=1e-12)


def test_sharpness_rules_leave_batchnorm_statistics_of_one_pass():
    model, batch = make_net("convnet:width=8,depth=2,norm=batch"), make_batch()
    reference = copy.deepcopy(model)
    reference(batch.x)  # one forward in train mode at w: what the statistics should become
    m = copy.deepcopy(model)
    gsam_step(0.5, 0.4)(m, batch, F.cross_entropy, sgd(m), 0)
    for (name, a), (_, b) in zip(m.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


# ----------------------------------------------------------------------------- smooth experts


def test_loss_decay_schedule():
    assert [loss_decay_scale(e) for e in range(13)] == [
        0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        loss_decay_scale(-1)


@pytest.mark.parametrize("epoch", [0, 3, 10])
def test_loss_decay_alone_is_a_scaled_plain_step(epoch):
    model, batch = make_net(), make_batch()
    scale = loss_decay_scale(epoch)
    got, loss, steps = apply_rule(smooth_step(loss_decay=True, gp_weight=0.0), model, batch, epoch=epoch)
    want, _, _ = apply_rule(plain_step, model, batch, loss_fn=lambda z, y: scale * F.cross_entropy(z, y))
    assert_params_close(got, want)
    assert steps == 1
    assert loss == pytest.approx(ce_at(model, batch), rel=1e-12)  # unscaled
    if epoch < 10:
        plain, _, _ = apply_rule(plain_step, model, batch)
        assert params_differ(got, plain, 1e-6)


def naive_penalty(model, x):
    """Per image: gradient of that image's logit sum w.r.t. the image, L2 norm over channels, per pixel."""
    norms = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(model(xi).sum(), xi, create_graph=True)
        norms.append(torch.sqrt((gi[0] ** 2).sum(dim=0)))  # [H, W]
    return ((torch.stack(norms) - 1) ** 2).mean()


def test_penalty_matches_naive_per_image_computation():
    model, batch = make_net(), make_batch()
    torch.testing.assert_close(input_gradient_penalty(model, batch.x_clean), naive_penalty(model, batch.x_clean),
                               rtol=1e-10, atol=1e-12)
    model1 = make_net("convnet:width=8", channels=1, seed=3)  # the field's ConvNet shape, grey images
    x1 = make_batch(channels=1, n=4).x_clean
    torch.testing.assert_close(input_gradient_penalty(model1, x1), naive_penalty(model1, x1), rtol=1e-10, atol=1e-12)


def test_penalty_gradient_reaches_parameters_and_matches_finite_differences():
    model = make_net("convnet:width=8,depth=2,act=sigmoid")  # smooth, so finite differences are exact enough
    x = make_batch().x_clean
    params = list(model.parameters())
    grads = torch.autograd.grad(input_gradient_penalty(model, x), params, allow_unused=True)
    assert grads[-1] is None  # the classifier bias does not change the input gradient
    assert all(float(g.abs().sum()) > 0 for g in grads[:-1])  # every other parameter gets a penalty gradient
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)]
    h = 1e-5

    def at(sign):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(m.parameters(), v):
                p.add_(sign * h * d)
        return float(input_gradient_penalty(m, x).detach())

    fd = (at(1) - at(-1)) / (2 * h)
    analytic = float(sum((g * d).sum() for g, d in zip(grads, v)))
    assert analytic == pytest.approx(fd, rel=1e-5)


def test_penalty_step_uses_x_clean_and_matches_naive_objective():
    model, batch = make_net(), make_batch()
    assert not torch.equal(batch.x, batch.x_clean)
    got, loss, steps = apply_rule(smooth_step(loss_decay=True, gp_weight=2.0), model, batch, epoch=1)

    def naive_step(x_gp):
        m = copy.deepcopy(model)
        params = list(m.parameters())
        w0 = [p.detach().clone() for p in params]
        objective = 0.55 * F.cross_entropy(m(batch.x), batch.y) + 2.0 * naive_penalty(m, x_gp)
        return manual_sgd(w0, torch.autograd.grad(objective, params))

    assert_params_close(got, naive_step(batch.x_clean))
    assert params_differ(got, naive_step(batch.x), 1e-6)  # the augmented images would give another step
    assert steps == 1
    assert loss == pytest.approx(ce_at(model, batch), rel=1e-12)


def test_smooth_composes_with_sam():
    model, batch = make_net(), make_batch()
    half = lambda z, y: 0.5 * F.cross_entropy(z, y)  # noqa: E731
    got, _, steps = apply_rule(smooth_step(True, 0.0, inner=sam_step(0.1)), model, batch, epoch=0)
    want, _, _ = apply_rule(sam_step(0.1), model, batch, loss_fn=half)
    assert_params_close(got, want)
    assert steps == 1
    # with the penalty: SAM on the full objective, penalty recomputed at the perturbed weights
    got, _, _ = apply_rule(smooth_step(False, 2.0, inner=gsam_step(0.1, 0.4)), model, batch)
    want = naive_sharpness(model, batch, 0.1, alpha=0.4, objective=lambda m: F.cross_entropy(m(batch.x), batch.y)
                           + 2.0 * naive_penalty(m, batch.x_clean))
    assert_params_close(got, want)


# ----------------------------------------------------------------------------- every rule


RULES = {
    "sam": sam_step(0.05),
    "sam-adaptive": sam_step(0.5, adaptive=True),
    "gsam": gsam_step(0.05, 0.4),
    "smooth": smooth_step(),
    "smooth-gp-only": smooth_step(loss_decay=False),
    "smooth+gsam": smooth_step(inner=gsam_step(0.05, 0.4)),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_steps_once_and_differs_from_plain(name):
    model, batch = make_net(), make_batch()
    got, loss, steps = apply_rule(RULES[name], model, batch)
    assert steps == 1
    assert isinstance(loss, float) and loss == pytest.approx(ce_at(model, batch))
    plain, _, _ = apply_rule(plain_step, model, batch)
    assert params_differ(got, plain, 1e-6)


def test_rules_train_through_train_model():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    rule = ExpertRegularizer(flat="gsam", sam_rho=0.01, smooth=True).step_rule()
    model = build_net("convnet:width=8", 1, 3, (8, 8), generator=generator(0))
    losses = train_model(model, x, y, TrainProtocol(epochs=2, batch_size=16), seed=0, step=rule)
    assert len(losses) == 2 and all(l == l and l < 10 for l in losses)


# ----------------------------------------------------------------------------- configuration


def test_regularizer_defaults_and_rules():
    assert ExpertRegularizer().step_rule() is plain_step
    assert ExpertRegularizer(smooth=True, loss_decay=False, gp_weight=0.0).step_rule() is plain_step
    assert ExpertRegularizer(gp_weight=5.0, loss_decay=False).step_rule() is plain_step  # smooth off
    model, batch = make_net(), make_batch()
    got, _, _ = apply_rule(ExpertRegularizer(flat="sam", sam_rho=0.1).step_rule(), model, batch)
    assert_params_close(got, naive_sharpness(model, batch, 0.1))
    got, _, _ = apply_rule(ExpertRegularizer(flat="gsam", sam_rho=0.1, gsam_alpha=0.7).step_rule(), model, batch)
    assert_params_close(got, naive_sharpness(model, batch, 0.1, alpha=0.7))
    got, _, _ = apply_rule(ExpertRegularizer(smooth=True, gp_weight=0.0).step_rule(), model, batch, epoch=0)
    want, _, _ = apply_rule(plain_step, model, batch, loss_fn=lambda z, t: 0.5 * F.cross_entropy(z, t))
    assert_params_close(got, want)


@pytest.mark.parametrize("bad", [dict(flat="adam"), dict(flat="SAM"), dict(sam_rho=0.0), dict(sam_rho=-0.1),
                                 dict(sam_rho=float("nan")), dict(gsam_alpha=-0.1), dict(gp_weight=-1.0),
                                 dict(gp_weight=float("inf"))])
def test_regularizer_validation(bad):
    with pytest.raises(ConfigError) as err:
        ExpertRegularizer(**bad).validate()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        ExpertRegularizer(**bad).step_rule()


def test_factories_reject_bad_values():
    for make in (lambda: sam_step(0.0), lambda: gsam_step(-1.0, 0.4), lambda: gsam_step(0.05, -0.5),
                 lambda: smooth_step(gp_weight=-2.0)):
        with pytest.raises(ConfigError):
            make()


def test_describe_is_json_and_round_trips():
    reg = ExpertRegularizer(flat="gsam", sam_rho=0.01, gsam_alpha=0.4, adaptive=True, smooth=True)
    d = json.loads(json.dumps(reg.describe()))
    assert d["flat"] == "gsam" and d["sam_rho"] == 0.01 and d["gsam_alpha"] == 0.4 and d["adaptive"] is True
    assert d["smooth"] is True and d["gp_weight"] == 2.0 and d["loss_decay"] is True
    assert "gsam" in d["rule"] and "smooth" in d["rule"]
    assert ExpertRegularizer(**{k: v for k, v in d.items() if k != "rule"}) == reg  # every setting is recorded
    assert ExpertRegularizer().describe()["rule"] == "plain_step"
