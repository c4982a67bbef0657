"""Trajectory matching: the core math against naive references, the variants, the loop's guarantees."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call as torch_functional_call

from condense.augment import DSAConfig, apply_dsa, sample_dsa
from condense.runtime.errors import CondenseError, ConfigError
from condense.methods.loop import synthesize
from condense.methods.tm import TrajectoryMatching, dataset_of_store, run_tm, soft_cross_entropy
from condense.methods.tm_math import Step, Target, match_constant_memory, match_exact
from condense.nets import FlatLayout, build_net
from condense.runtime.rng import generator
from condense.synset import load_synset
from trajectories import open_store
from conftest import iteration_inputs, tm_cfg

torch.set_num_threads(1)
CPU = torch.device("cpu")


# --- the core math ---------------------------------------------------------------------------------

def small_problem(dtype=torch.float64, soft=False):
    net = build_net("convnet:width=4,depth=2", 1, 3, (8, 8), generator=generator(0)).to(dtype)
    layout = FlatLayout.of(net)
    start = layout.flatten(net)
    g = torch.Generator().manual_seed(1)
    mid = start + 0.03 * torch.randn(layout.numel, generator=g, dtype=dtype)
    target = start + 0.05 * torch.randn(layout.numel, generator=g, dtype=dtype)
    images = torch.randn(6, 1, 8, 8, generator=g, dtype=dtype).requires_grad_(True)
    labels = torch.randn(6, 3, generator=g, dtype=dtype).requires_grad_(True) if soft else torch.tensor([0, 0, 1, 1, 2, 2])
    lr = torch.tensor(0.02, dtype=dtype).requires_grad_(True)  # α itself: each parametrisation chains onto it
    plan = [Step(torch.tensor([4, 0, 2]), sample_dsa(DSAConfig(), 3, (1, 8, 8), generator(5, t))) for t in range(3)]
    plan.append(Step(torch.tensor([1, 3, 5])))
    return net, layout, start, mid, target, images, labels, lr, plan


def naive_matching_loss(net, layout, start, targets, images, labels, lr, plan, loss_fn, momentum=0.0):
    """An independent reference: per-tensor parameters and momentum buffers, an explicit Python
    loop of heavy-ball SGD steps (buffer = μ·buffer + grad, p -= α·buffer, as torch.optim.SGD)."""
    params = {n: start[o:o + math.prod(s)].reshape(s).detach().requires_grad_(True)
              for n, s, o in zip(layout.names, layout.shapes, layout.offsets)}
    bufs = {n: torch.zeros_like(p) for n, p in params.items()}
    states = [params]
    for step in plan:
        x = images[step.indices]
        if step.draw is not None:
            x = apply_dsa(x, step.draw)
        loss = loss_fn(torch_functional_call(net, states[-1], (x,)), labels[step.indices])
        grads = torch.autograd.grad(loss, list(states[-1].values()), create_graph=True)
        bufs = {n: momentum * bufs[n] + gr for n, gr in zip(bufs, grads)}
        states.append({n: p - lr * bufs[n] for n, p in states[-1].items()})
    total = 0.0
    for t, target_flat, w in targets:
        num = sum(((states[t][n] - target_flat[o:o + p.numel()].reshape(p.shape)) ** 2).sum()
                  for (n, p), o in zip(states[t].items(), layout.offsets))
        total = total + w * num / ((start - target_flat) ** 2).sum()
    return total


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_exact_loss_and_gradients_equal_a_naive_loop(momentum):
    net, layout, start, mid, target, images, labels, lr, plan = small_problem()
    ours = match_exact(net, start, [Target(4, target)], images, labels, lr, plan, F.cross_entropy, momentum)
    ref = naive_matching_loss(net, layout, start, [(4, target, 1.0)], images, labels, lr, plan, F.cross_entropy,
                              momentum)
    g_ours = torch.autograd.grad(ours, [images, lr])
    g_ref = torch.autograd.grad(ref, [images, lr])
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert float(g_ours[0].abs().max()) > 0 and float(g_ours[1]) != 0


def test_student_momentum_changes_the_trajectory():
    net, layout, start, mid, target, images, labels, lr, plan = small_problem()
    plain = match_exact(net, start, [Target(4, target)], images, labels, lr, plan, F.cross_entropy, 0.0)
    heavy = match_exact(net, start, [Target(4, target)], images, labels, lr, plan, F.cross_entropy, 0.9)
    assert abs(float(plain.detach()) - float(heavy.detach())) > 1e-6


@pytest.mark.parametrize("soft, momentum", [(False, 0.0), (True, 0.0), (False, 0.9), (True, 0.9)])
def test_constant_memory_gradients_equal_exact_ones(soft, momentum):
    net, layout, start, mid, target, images, labels, lr, plan = small_problem(soft=soft)
    loss_fn = soft_cross_entropy if soft else F.cross_entropy
    targets = [Target(4, target), Target(2, mid, 0.5)]  # with an intermediate target (AST)
    exact = match_exact(net, start, targets, images, labels, lr, plan, loss_fn, momentum)
    inputs = [images, lr] + ([labels] if soft else [])
    g_exact = torch.autograd.grad(exact, inputs)
    loss, g_const = match_constant_memory(net, start, targets, images, labels, lr, plan, loss_fn, momentum)
    assert loss == pytest.approx(float(exact.detach()), rel=1e-12)
    for name, ge in zip(["images", "lr", "labels"], g_exact):
        torch.testing.assert_close(g_const[name], ge, rtol=1e-10, atol=1e-15)
    ref = naive_matching_loss(net, layout, start, [(4, target, 1.0), (2, mid, 0.5)], images, labels, lr, plan,
                              loss_fn, momentum)
    assert float(ref.detach()) == pytest.approx(loss, rel=1e-12)


def test_constant_memory_in_float32_stays_close():
    net, layout, start, mid, target, images, labels, lr, plan = small_problem(torch.float32)
    exact = match_exact(net, start, [Target(4, target)], images, labels, lr, plan, F.cross_entropy)
    g_exact = torch.autograd.grad(exact, [images, lr])
    _, g = match_constant_memory(net, start, [Target(4, target)], images, labels, lr, plan, F.cross_entropy)
    rel = (g["images"] - g_exact[0]).norm() / g_exact[0].norm()
    assert float(rel) < 1e-4
    assert float(g["lr"]) == pytest.approx(float(g_exact[1]), rel=1e-3)


# --- the method on a tiny store --------------------------------------------------------------------

def make(cfg):
    store = open_store(cfg.trajectories)
    return TrajectoryMatching(cfg, store, dataset_of_store(store, cfg), CPU)


def test_iterations_lower_the_matching_loss(store_path, tmp_path):
    method = make(tm_cfg(store_path, tmp_path, lr_img=100.0, syn_steps=6))
    before = method.compute_grads(0)["loss"]
    synthesize(method, tm_cfg(store_path, tmp_path, iters=25), tmp_path / "tm.h5", {"method": "tm"},
               progress=lambda s: None, bars=False)
    assert method.compute_grads(0)["loss"] < before


def test_resume_equals_uninterrupted(store_path, tmp_path):
    whole = run_tm(tm_cfg(store_path, tmp_path / "a", iters=6), CPU, progress=lambda s: None, bars=False)
    run_tm(tm_cfg(store_path, tmp_path / "b", iters=3), CPU, progress=lambda s: None, bars=False)  # "killed" at 3
    resumed = run_tm(tm_cfg(store_path, tmp_path / "b", iters=6), CPU, progress=lambda s: None, bars=False)
    assert torch.equal(whole.images, resumed.images) and whole.lr == resumed.lr
    saved = load_synset(tmp_path / "b" / "tm.h5")
    assert torch.equal(saved.images, whole.images) and saved.provenance["iteration"] == 6
    assert (tmp_path / "b" / "tm.h5.run" / "metrics.csv").read_text().count("\n") == 7  # header + 6 iterations


def test_exact_and_constant_modes_give_the_same_set(store_path, tmp_path):
    a = run_tm(tm_cfg(store_path, tmp_path / "a"), CPU, progress=lambda s: None, bars=False)
    b = run_tm(tm_cfg(store_path, tmp_path / "b", memory="constant"), CPU, progress=lambda s: None, bars=False)
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)


def test_nan_steps_are_skipped_then_stop_with_the_last_good_set(store_path, tmp_path, monkeypatch):
    cfg = tm_cfg(store_path, tmp_path, iters=8, max_bad_steps=3)
    method = make(cfg)
    real = method.compute_grads
    monkeypatch.setattr(method, "compute_grads", lambda it: real(it) if it < 2 or it == 3 else {"loss": float("nan")})
    events = []
    with pytest.raises(CondenseError, match="3 bad steps in a row"):
        synthesize(method, cfg, cfg.out, {"method": "tm"}, progress=events.append, bars=False)
    assert any("iteration 2: skipped" in e for e in events)
    saved = load_synset(cfg.out)
    assert bool(torch.isfinite(saved.images).all())


def test_a_step_that_breaks_the_lr_is_rolled_back(store_path, tmp_path, monkeypatch):
    cfg = tm_cfg(store_path, tmp_path, iters=2)
    method = make(cfg)
    real = method.compute_grads

    def explode(it):
        out = real(it)
        if it == 1:
            method.lr_param.grad = torch.tensor(-1e6)  # would make the lr astronomically large
        return out

    monkeypatch.setattr(method, "compute_grads", explode)
    events = []
    synthesize(method, cfg, cfg.out, {"method": "tm"}, progress=events.append, bars=False)
    assert any("rolled back: learned lr" in e for e in events)
    assert load_synset(cfg.out).lr < 1.0


def test_variants_do_what_they_say(store_path, tmp_path):
    base = make(tm_cfg(store_path, tmp_path))
    assert [base.window(it) for it in (0, 500, 5000)] == [2, 2, 2]
    lin = make(tm_cfg(store_path, tmp_path, max_start_epoch=2, min_start_epoch=0, window_growth=[1, 10]))
    assert [lin.window(it) for it in (0, 9, 10, 100)] == [1, 1, 2, 2]
    perturbed = make(tm_cfg(store_path, tmp_path, ast=["weight-perturb"]))
    metrics, seen = iteration_inputs(perturbed, 0)
    plain_start = base.store.epoch(metrics["expert"], metrics["start_epoch"])
    changed = torch.nonzero(seen["start"] != plain_start).flatten()
    assert len(changed) and all(any(a <= int(i) < b for a, b in perturbed.conv_slices) for i in changed)
    middle = make(tm_cfg(store_path, tmp_path, ast=["middle-loss"], syn_steps=4, expert_epochs=2))
    metrics, seen = iteration_inputs(middle, 0)
    expert, s = metrics["expert"], metrics["start_epoch"]
    targets = seen["targets"]
    assert [(t.step, torch.equal(t.params, base.store.epoch(expert, s + e))) for t, e in zip(targets, (2, 1))] == \
        [(4, True), (2, True)]


def test_expert_labels_and_inits(store_path, tmp_path):
    learned = make(tm_cfg(store_path, tmp_path, labels="learned", init="correct"))
    teacher = learned.store.epoch(0, learned.store.epochs)
    from condense.nets import functional_call
    assert bool((functional_call(learned.net, teacher, learned.images.detach()).argmax(1) == learned.classes).all())
    assert learned.labels.shape == (8, 4) and learned.labels.requires_grad
    before = learned.labels.detach().clone()
    synthesize(learned, tm_cfg(store_path, tmp_path), tmp_path / "l.h5", {"method": "tm"},
               progress=lambda s: None, bars=False)
    assert not torch.equal(before, learned.labels.detach())
    s = load_synset(tmp_path / "l.h5")
    assert s.label_spec.kind == "logits" and s.labels.shape == (8, 4)
    fixed = make(tm_cfg(store_path, tmp_path, labels="expert"))
    assert not fixed.labels.requires_grad and "labels" not in fixed.learnables()
    confident = make(tm_cfg(store_path, tmp_path, init="confident", ipc=3))
    probs = functional_call(confident.net, teacher, confident.ds.x_train).softmax(1)
    for c in range(4):
        members = torch.nonzero(confident.ds.y_train == c).flatten()
        best = probs[members, c].topk(3).values
        torch.testing.assert_close(probs[confident.indices[confident.classes == c], c].sort(descending=True).values, best)
    km = make(tm_cfg(store_path, tmp_path, init="kmeans", ipc=3))
    assert len(set(km.indices.tolist())) == 12 and torch.equal(km.classes, torch.arange(4).repeat_interleave(3))
    ema = run_tm(tm_cfg(store_path, tmp_path / "e", ema=0.5), CPU, progress=lambda s: None, bars=False)
    raw = run_tm(tm_cfg(store_path, tmp_path / "r"), CPU, progress=lambda s: None, bars=False)
    assert not torch.equal(ema.images, raw.images)


@pytest.mark.parametrize("over, message", [
    (dict(trajectories="/nonexistent/store"), "no such trajectory store"),
    (dict(ipc=0), "--ipc must be positive"),
    (dict(syn_steps=0), "--syn-steps must be positive"),
    (dict(max_start_epoch=3, expert_epochs=2), "exceeds the 4 epochs stored"),
    (dict(memory="cheap"), "--memory must be one of"),
    (dict(window_growth=[9, 10]), "--window-growth is START_MAX,END_ITER"),
])
def test_bad_input(store_path, tmp_path, over, message):
    with pytest.raises((ConfigError, CondenseError), match=message):
        run_tm(tm_cfg(store_path, tmp_path, **over), CPU, progress=lambda s: None, bars=False)


def test_cli_synth_tm_writes_the_set_and_refuses_bad_input(store_path, tmp_path, capsys):
    from condense.cli.main import main

    out = tmp_path / "cli.h5"
    argv = ["synth", "tm", "--trajectories", store_path, "--ipc", "1", "--iters", "2", "--syn-steps", "2",
            "--max-start-epoch", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv + ["--eval-every", "1", "--eval-epochs", "1"]) == 0
    s = load_synset(out)
    assert s.method == "tm" and s.ipc == 1 and s.lr is not None
    import csv
    rows = list(csv.DictReader(open(tmp_path / "cli.h5.run" / "metrics.csv")))
    assert len(rows) == 2 and all(0.0 <= float(r["eval_acc"]) <= 1.0 for r in rows)
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    capsys.readouterr()
    assert main(["synth", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["synth", "--ipc", "1"]) == 2
    assert "give a method" in capsys.readouterr().err
    assert main(argv[:-4] + ["--out", str(out), "--max-start-epoch", "9"]) == 2
    assert "exceeds the 4 epochs stored" in capsys.readouterr().err


def test_kill_9_then_rerun_gives_the_uninterrupted_set(store_path, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    def cmd(out):
        return [sys.executable, "-m", "condense.cli.main", "synth", "tm", "--trajectories", store_path,
                "--ipc", "2", "--iters", "12", "--syn-steps", "4", "--max-start-epoch", "2", "--lr-img", "10",
                "--checkpoint-every", "2", "--out", str(out), "--device", "cpu"]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd(tmp_path / "whole.h5"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed.h5"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed.h5.run" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_synset(tmp_path / "killed.h5").provenance["iteration"] < 12, "killed before the end"
    subprocess.run(cmd(tmp_path / "killed.h5"), env=env, check=True, capture_output=True)
    a, b = load_synset(tmp_path / "whole.h5"), load_synset(tmp_path / "killed.h5")
    assert torch.equal(a.images, b.images) and a.lr == b.lr


def test_identity_keeps_the_0_4_0_names_of_the_folded_options():
    """--ast, --window-growth and --labels expert-once fold 0.4.0 fields; a run's identity (what a
    checkpoint must match to resume) still names them as 0.4.0 did."""
    from condense.methods.tm import TMConfig

    c = TMConfig(trajectories="s", ast=["balance-loss", "weight-perturb"], window_growth=[2, 50], labels="expert-once")
    d = c.identity()
    assert "ast" not in d and "window_growth" not in d
    assert {k: d[k] for k in ("balance_loss", "middle_loss", "weight_perturb", "window_schedule", "window_start_max",
                              "window_end_iter", "labels", "label_refresh")} == {
        "balance_loss": True, "middle_loss": False, "weight_perturb": True, "window_schedule": "linear",
        "window_start_max": 2, "window_end_iter": 50, "labels": "expert", "label_refresh": "once"}
    plain = TMConfig(trajectories="s").identity()
    assert (plain["window_schedule"], plain["window_end_iter"], plain["label_refresh"]) == ("fixed", 1000, None)
