"""JAX tm: matching loss and gradients (images, lr, labels) equal torch's (float64); the same
iterations as the torch method on a torch-recorded store; the shared loop's guarantees."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from condense.augment import DSAConfig, sample_dsa  # noqa: E402
from condense.jax.nets import build_jax_net  # noqa: E402
from condense.jax import tm as jtm  # noqa: E402
from condense.jax.tm import JaxTrajectoryMatching, padded_plan, run_tm  # noqa: E402
from condense.methods.loop import synthesize  # noqa: E402
from condense.methods.tm import TrajectoryMatching, dataset_of_store, soft_cross_entropy  # noqa: E402
from condense.methods.tm_math import Step, Target, match_exact  # noqa: E402
from condense.nets import FlatLayout, build_net  # noqa: E402
from condense.runtime.rng import generator  # noqa: E402
from condense.synset import load_synset  # noqa: E402
from trajectories import open_store  # noqa: E402
from conftest import tm_cfg  # noqa: E402

torch.set_num_threads(1)
CPU = torch.device("cpu")
ARCH = "convnet:width=4,depth=2"
QUIET = {"progress": lambda s: None, "bars": False}


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("soft, dsa, path", [(False, False, "exact"), (True, True, "remat"),
                                             (False, True, "adjoint"), (True, False, "adjoint")])
def test_matching_loss_and_gradients_equal_torch_in_float64(soft, dsa, path, monkeypatch):
    # exact: the CPU's unrolled scan; remat: the GPUs' rolled scan with jax.checkpoint per step (--memory
    # constant there); adjoint: --memory constant on a CPU, one compiled step at a time
    monkeypatch.setattr(jtm, "scan_unroll", lambda: 1 if path == "remat" else True)
    monkeypatch.setattr(jtm, "constant_strategy", lambda: "remat" if path == "remat" else "adjoint")
    with jax.enable_x64(True):
        net = build_net(ARCH, 1, 3, (8, 8), generator=generator(0)).double()
        twin = build_jax_net(ARCH, 1, 3, (8, 8))
        start = FlatLayout.of(net).flatten(net)
        g = torch.Generator().manual_seed(1)
        mid = start + 0.03 * torch.randn(start.numel(), generator=g, dtype=torch.float64)
        target = start + 0.05 * torch.randn(start.numel(), generator=g, dtype=torch.float64)
        images = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64).requires_grad_(True)
        labels = (torch.randn(6, 3, generator=g, dtype=torch.float64).requires_grad_(True) if soft
                  else torch.tensor([0, 0, 1, 1, 2, 2]))
        log_lr = torch.tensor(0.02, dtype=torch.float64).log().requires_grad_(True)
        batches = [[4, 0, 2], [1, 3], [5, 2, 0], [1]]  # unequal sizes: the JAX plan pads and masks
        # per-image parameters (the default share): the JAX plan pads the draws with the batches
        plan = [Step(torch.tensor(b), sample_dsa(DSAConfig(), len(b), (1, 8, 8), generator(5, t)) if dsa else None)
                for t, b in enumerate(batches)]
        targets = [Target(4, target), Target(2, mid, 0.5)]  # with an intermediate target (AST)
        loss_fn = (lambda z, y: 1.3 * soft_cross_entropy(z, y)) if soft else (lambda z, y: 1.3 * F.cross_entropy(z, y))
        loss = match_exact(net, start, targets, images, labels, log_lr.exp(), plan, loss_fn)
        wrt = [images, log_lr] + ([labels] if soft else [])
        grads = torch.autograd.grad(loss, wrt)

        idx, mask, draws = padded_plan(plan)
        spec = ((4, 1.0), (2, 0.5))
        f = partial(jtm.matcher(twin, soft, "exact" if path == "exact" else "constant", soft), spec)
        loss_j, grads_j = f(jnp.asarray(images.detach().numpy()), jnp.asarray(log_lr.detach().numpy()),
                            jnp.asarray(labels.detach().numpy()), jnp.asarray(start.numpy()),
                            [jnp.asarray(target.numpy()), jnp.asarray(mid.numpy())], idx, mask, draws, jnp.asarray(1.3))
        assert loss_j.dtype == jnp.float64
        assert abs(float(loss_j) - float(loss.detach())) / float(loss.detach()) < 1e-9
        for a, b in zip(grads_j, grads):  # the issue asks 1e-4; float64 gives ~1e-13
            assert rel(a, b) < 1e-9 and float(np.abs(np.asarray(a)).max()) > 0


def both(cfg):
    store = open_store(cfg.trajectories)
    ds = dataset_of_store(store, cfg)
    return JaxTrajectoryMatching(cfg, store, ds), TrajectoryMatching(cfg, store, ds, CPU)


@pytest.mark.parametrize("over", [dict(), dict(labels="learned", batch_syn=3, ast=["middle-loss", "balance-loss"]),
                                  dict(memory="constant", labels="learned", batch_syn=3)])
def test_an_iteration_equals_the_torch_method_on_a_torch_recorded_store(store_path, tmp_path, over):
    ours, theirs = both(tm_cfg(store_path, tmp_path, **over))
    a, b = ours.compute_grads(1), theirs.compute_grads(1)
    assert abs(a["loss"] - b["loss"]) / b["loss"] < 1e-4 and (a["expert"], a["start_epoch"]) == (b["expert"], b["start_epoch"])
    for name, t in theirs.learnables().items():
        mine = ours.learnables()[name].grad
        assert float((mine - t.grad).norm() / t.grad.norm()) < 1e-3, name  # float32 through second-order grads


def test_loss_goes_down_resume_equals_uninterrupted_and_bad_steps_roll_back(store_path, tmp_path, monkeypatch):
    method, _ = both(tm_cfg(store_path, tmp_path, lr_img=100.0))
    before = method.compute_grads(0)["loss"]
    synthesize(method, tm_cfg(store_path, tmp_path, iters=8), tmp_path / "tm.h5", {"method": "tm"}, **QUIET)
    assert method.compute_grads(0)["loss"] < before

    whole = run_tm(tm_cfg(store_path, tmp_path / "a", iters=4, checkpoint_every=2), **QUIET)
    run_tm(tm_cfg(store_path, tmp_path / "b", iters=2, checkpoint_every=2), **QUIET)  # "killed" after its checkpoint
    resumed = run_tm(tm_cfg(store_path, tmp_path / "b", iters=4, checkpoint_every=2), **QUIET)
    assert torch.equal(whole.images, resumed.images) and whole.lr == resumed.lr
    saved = load_synset(tmp_path / "b" / "tm.h5")
    assert torch.equal(saved.images, whole.images) and saved.config["backend"] == "jax"

    method, _ = both(tm_cfg(store_path, tmp_path / "c", iters=2))
    real = method.compute_grads

    def explode(it):
        out = real(it)
        if it == 1:
            method.lr_param.grad = torch.tensor(-1e6)  # would make the lr astronomically large
        return out

    monkeypatch.setattr(method, "compute_grads", explode)
    events = []
    synthesize(method, tm_cfg(store_path, tmp_path / "c", iters=1), tmp_path / "c" / "x.h5", {"method": "tm"},
               **QUIET)
    lr_before = float(method.lr_param.detach())
    momentum = [t.clone() for t in method.opts["log_lr"].state_dict()["optax_leaves"]]
    synthesize(method, tm_cfg(store_path, tmp_path / "c", iters=2), tmp_path / "c" / "x.h5", {"method": "tm"},
               progress=events.append, bars=False)
    assert any("rolled back: learned lr" in e for e in events)
    assert float(method.lr_param.detach()) == lr_before  # the value and the optax momentum are restored
    assert all(torch.equal(a, b) for a, b in zip(momentum, method.opts["log_lr"].state_dict()["optax_leaves"]))


def test_cli_synth_backend_jax(store_path, tmp_path, capsys, monkeypatch):
    from condense.cli.main import main

    out = tmp_path / "cli.h5"
    argv = ["synth", "tm", "--backend", "jax", "--trajectories", store_path, "--ipc", "2", "--iters", "2",
            "--syn-steps", "4", "--max-start-epoch", "2", "--lr-img", "10", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    s = load_synset(out)
    assert s.method == "tm" and s.ipc == 2 and s.lr is not None and s.config["backend"] == "jax"
    assert "--backend jax" in capsys.readouterr().out
    assert main(["synth", "gm", "--backend", "jax", "--dataset", "toy", "--out", str(tmp_path / "g.h5")]) == 2
    err = capsys.readouterr().err
    assert "method 'gm' has no JAX version; --backend jax runs: dm, frepo, krr-st, tm" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(__import__("sys").modules, "optax", None)  # as if optax were not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--backend jax needs jax, flax, optax (optax is not installed): pip install 'condense[jax]'" in err and len(err.strip().splitlines()) == 1
