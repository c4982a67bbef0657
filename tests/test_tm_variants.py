"""The trajectory-matching variants against their papers' formulas, computed naively here:
AST's weight perturbation, balanced loss and student momentum, FTD's EMA, TESLA's
per-iteration labels, DATM's threshold, MTT's direct lr parametrisation."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from condense.runtime.errors import CondenseError, ConfigError
from condense.methods.loop import synthesize
from condense.methods.tm import STREAM_PERTURB, TrajectoryMatching, dataset_of_store, run_tm
from condense.methods.tm_math import balance_scale, match_exact
from condense.nets import functional_call
from condense.runtime.rng import generator
from condense.synset import load_synset
from trajectories import open_store
from conftest import iteration_inputs, tm_cfg

torch.set_num_threads(1)
CPU = torch.device("cpu")
QUIET = dict(progress=lambda s: None, bars=False)


def make(cfg) -> TrajectoryMatching:
    store = open_store(cfg.trajectories)
    return TrajectoryMatching(cfg, store, dataset_of_store(store, cfg), CPU)


def test_weight_perturbation_is_asts_formula(store_path, tmp_path):
    """AST's weightPerturb: for every conv weight W (4-D), d ~ N(0, 1) of W's shape,
    W' = W + (d / ‖d‖_F) ⊙ W; biases, norm and linear parameters untouched."""
    method = make(tm_cfg(store_path, tmp_path, ast=["weight-perturb"]))
    metrics, seen = iteration_inputs(method, 3)
    start, plain = seen["start"], method.store.epoch(metrics["expert"], metrics["start_epoch"])
    layout = method.store.layout
    g = generator(method.cfg.seed, 3, 0, STREAM_PERTURB)
    convs = 0
    for shape, offset in zip(layout.shapes, layout.offsets):
        n = math.prod(shape)
        w, w_new = plain[offset:offset + n].reshape(shape), start[offset:offset + n].reshape(shape)
        if len(shape) != 4:
            assert torch.equal(w_new, w)
            continue
        convs += 1
        d = torch.randn(shape, generator=g)
        torch.testing.assert_close(w_new, w + d / torch.linalg.vector_norm(d) * w, rtol=1e-6, atol=1e-7)
        ratio = (w_new - w)[w != 0] / w[w != 0]  # the relative change has unit Frobenius norm per layer
        assert float(ratio.norm()) == pytest.approx(1.0, rel=1e-4)
    assert convs == 3  # ConvNet D3: three conv layers


def test_ema_is_a_naive_exponential_average(store_path, tmp_path):
    """FTD: the saved images are e_T with e_0 = X_0 and e_t = d·e_{t-1} + (1 − d)·X_t."""
    decay = 0.7
    method = make(tm_cfg(store_path, tmp_path, ema=decay, iters=4, lr_img=100.0))
    seen = [method.images.detach().clone()]
    after = method.after_step

    def record(it):
        seen.append(method.images.detach().clone())
        after(it)

    method.after_step = record
    cfg = method.cfg
    synthesize(method, cfg, cfg.out, {"method": "tm"}, **QUIET)
    e = seen[0]
    for x in seen[1:]:
        e = decay * e + (1 - decay) * x
    assert len(seen) == 5 and not torch.equal(seen[-1], seen[0])
    torch.testing.assert_close(load_synset(cfg.out).images, e, rtol=1e-6, atol=1e-7)


def test_balanced_loss_scale_is_asts_and_scales_the_inner_loss(store_path, tmp_path):
    """AST: h = max_start_epoch // 2; the inner CE is × log₅(s − h + 8) for s ≥ h and
    ÷ log₅(h − s + 8) below. Values computed by hand (log 8 / log 5 = 1.29203, ...)."""
    assert [balance_scale(s, 2) for s in (0, 1, 2)] == pytest.approx([0.7324868, 1.2920297, 1.3652124], rel=1e-6)
    assert [balance_scale(s, 20) for s in (0, 10, 15)] == pytest.approx([0.5568273, 1.2920297, 1.5936926], rel=1e-6)
    # With plain SGD, scaling the inner loss by c is the same student as the lr scaled by c.
    for it in range(3):
        ours = make(tm_cfg(store_path, tmp_path, ast=["balance-loss"], lr_init=0.01))  # max_start_epoch 2
        got = ours.compute_grads(it)
        same = make(tm_cfg(store_path, tmp_path, lr_init=0.01 * balance_scale(got["start_epoch"], 2)))
        assert got["loss"] == pytest.approx(same.compute_grads(it)["loss"], rel=1e-5)


def test_student_momentum_is_wired_and_constant_memory_agrees(store_path, tmp_path):
    plain = make(tm_cfg(store_path, tmp_path))
    heavy = make(tm_cfg(store_path, tmp_path, student_momentum=0.9))
    metrics, seen = iteration_inputs(heavy, 0)
    ref = match_exact(heavy.net, seen["start"], seen["targets"], heavy.images, heavy.labels, heavy.student_lr(),
                      seen["steps"], F.cross_entropy, 0.9)
    assert metrics["loss"] == pytest.approx(float(ref.detach()), rel=1e-6)
    assert plain.compute_grads(0)["loss"] != pytest.approx(float(ref.detach()), rel=1e-3)
    over = dict(student_momentum=0.9, lr_param="direct")
    a = run_tm(tm_cfg(store_path, tmp_path / "a", **over), CPU, **QUIET)
    b = run_tm(tm_cfg(store_path, tmp_path / "b", memory="constant", **over), CPU, **QUIET)
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
    assert a.lr == pytest.approx(b.lr, rel=1e-4)


def test_direct_lr_is_mtts_sgd_on_alpha_and_exp_chains_onto_rho(store_path, tmp_path):
    lr_lr = 1e-5
    direct = make(tm_cfg(store_path, tmp_path, lr_param="direct", lr_lr=lr_lr))
    log = make(tm_cfg(store_path, tmp_path, lr_lr=lr_lr))
    direct.compute_grads(0)
    log.compute_grads(0)
    alpha, g = 0.01, float(direct.lr_param.grad)  # the toy experts' lr; ∂ℓ/∂α
    assert "lr" in direct.learnables() and "log_lr" in log.learnables()
    assert float(log.lr_param.grad) == pytest.approx(alpha * g, rel=1e-5)  # ∂ℓ/∂ρ = α ∂ℓ/∂α
    direct.optimizers()["lr"].step()
    log.optimizers()["log_lr"].step()
    assert direct.learned_lr() == pytest.approx(alpha - lr_lr * g, rel=1e-6)  # MTT: α ← α − lr_lr·g
    assert log.learned_lr() == pytest.approx(alpha * math.exp(-lr_lr / alpha * g), rel=1e-6)


def test_tesla_labels_are_recomputed_every_iteration_from_the_target_epoch(store_path, tmp_path):
    method = make(tm_cfg(store_path, tmp_path, labels="expert"))  # --label-refresh iteration is the default
    for it in range(3):
        metrics = method.compute_grads(it)
        target = method.store.epoch(metrics["expert"], metrics["start_epoch"] + method.cfg.expert_epochs)
        with torch.no_grad():
            expected = functional_call(method.net, target, method.images.detach())
        torch.testing.assert_close(method.labels, expected)
    once = make(tm_cfg(store_path, tmp_path, labels="expert-once"))
    first = once.labels.clone()
    for it in range(3):
        once.compute_grads(it)
    assert torch.equal(once.labels, first)
    s = run_tm(tm_cfg(store_path, tmp_path / "t", labels="expert", memory="constant"), CPU, **QUIET)
    assert s.label_spec.kind == "logits" and s.labels.shape == (8, 4)


def test_datm_threshold_skips_are_not_bad_steps(store_path, tmp_path, monkeypatch):
    cfg = tm_cfg(store_path, tmp_path, iters=6, max_bad_steps=2, skip_loss_above=1e-9)  # every step is above it
    method = make(cfg)
    before = method.images.detach().clone()
    events = []
    # not aborted after 2: all 6 run; a run none of whose steps was taken then fails, its set unwritten
    with pytest.raises(CondenseError, match="no iteration was accepted in 6: every step was skipped"):
        synthesize(method, cfg, cfg.out, {"method": "tm"}, progress=events.append, bars=False)
    assert sum("above 1e-09" in e for e in events) == 6
    assert torch.equal(method.images.detach(), before) and not os.path.exists(cfg.out)
    # ... and they do not break a streak of real bad steps either: NaN, skip, NaN is two in a row.
    cfg = tm_cfg(store_path, tmp_path / "n", iters=6, max_bad_steps=2, skip_loss_above=1e-9)
    method = make(cfg)
    real = method.compute_grads
    monkeypatch.setattr(method, "compute_grads", lambda it: real(it) if it == 1 else {"loss": float("nan")})
    with pytest.raises(CondenseError, match=r"accepted in 3 \(stopped after 2 bad steps in a row\)"):
        synthesize(method, cfg, cfg.out, {"method": "tm"}, **QUIET)


@pytest.mark.parametrize("over, message", [
    (dict(lr_param="log"), "--lr-param must be one of exp, direct"),
    (dict(student_momentum=1.0), "--student-momentum must be in"),
    (dict(labels="epoch"), "--labels must be one of"),
])
def test_bad_variant_settings(store_path, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        run_tm(tm_cfg(store_path, tmp_path, **over), CPU, **QUIET)


def test_jax_backend_refuses_what_it_does_not_implement(store_path, tmp_path):
    pytest.importorskip("jax")
    from condense.jax.tm import run_tm as run_jax

    for over, flag in ((dict(lr_param="direct"), "--lr-param direct"), (dict(student_momentum=0.9), "--student-momentum")):
        with pytest.raises(ConfigError, match=f"{flag} is not in the JAX backend"):
            run_jax(tm_cfg(store_path, tmp_path, **over), **QUIET)
