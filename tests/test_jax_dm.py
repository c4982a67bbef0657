"""JAX dm: loss and image gradient equal torch's (float64); the same iterations as the torch method;
the shared loop's guarantees (loss goes down, resume equals an uninterrupted run)."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from condense.augment import DSAConfig, apply_dsa, sample_dsa  # noqa: E402
from condense.data import load_dataset  # noqa: E402
from condense.jax.augment import from_torch  # noqa: E402
from condense.jax.dm import JaxDistributionMatching, dm_loss, run_dm  # noqa: E402
from condense.jax.nets import build_jax_net  # noqa: E402
from condense.methods import dm as torch_dm  # noqa: E402
from condense.nets import FlatLayout, build_net  # noqa: E402
from condense.runtime.rng import generator  # noqa: E402
from condense.synset import load_synset  # noqa: E402

torch.set_num_threads(1)
ARCH = "convnet:width=8,depth=2"
QUIET = {"progress": lambda s: None, "bars": False}


def rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("dsa, chunk", [(False, 0), (False, 2), (True, 0)])
def test_loss_and_image_gradient_equal_torch_in_float64(dsa, chunk):
    with jax.enable_x64(True):
        net = build_net(ARCH, 3, 4, (16, 16), generator=generator(0)).double()
        twin = build_jax_net(ARCH, 3, 4, (16, 16))
        params = twin.params(jnp.asarray(FlatLayout.of(net).flatten(net).numpy()))
        g = torch.Generator().manual_seed(3)
        reals = [torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64) for n in (5, 3, 4)]
        syn = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64).requires_grad_(True)
        parts = [slice(0, 2), slice(2, 3), slice(3, 6)]
        draws = [sample_dsa(DSAConfig(share="batch"), 1, (3, 16, 16), generator(7, c)) if dsa else None for c in range(3)]

        def aug(x, d):
            return x if d is None else apply_dsa(x, d)

        loss = torch_dm.dm_loss(net.embed, [aug(r, d) for r, d in zip(reals, draws)],
                                [aug(syn[p], d) for p, d in zip(parts, draws)], chunk)
        (grad,) = torch.autograd.grad(loss, syn)

        jdraws = [None if d is None else from_torch(d) for d in draws]
        from condense.jax.augment import apply_dsa as japply

        def objective(images):
            return dm_loss(partial(twin.embed, params), [japply(jnp.asarray(r.numpy()), d) for r, d in zip(reals, jdraws)],
                           [japply(images[p], d) for p, d in zip(parts, jdraws)], chunk)

        loss_j, grad_j = jax.jit(jax.value_and_grad(objective))(jnp.asarray(syn.detach().numpy()))
        assert loss_j.dtype == jnp.float64 and float(loss.detach()) > 0
        assert abs(float(loss_j) - float(loss.detach())) / float(loss.detach()) < 1e-9
        assert rel(grad_j, grad) < 1e-9  # the issue asks 1e-4; float64 gives ~1e-15


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


def cfg(tmp_path, **over):
    base = dict(dataset="toy", ipc=2, arch=ARCH, iters=4, batch_real=16, lr_img=1.0, checkpoint_every=2,
                out=str(tmp_path / "dm.h5"))
    return torch_dm.DMConfig(**{**base, **over})


def test_an_iteration_equals_the_torch_method_with_the_same_seed(toy, tmp_path):
    """Same network, real batches and DSA draws per iteration (sampled once, torch side): float32 rounding only."""
    c = cfg(tmp_path, real_chunk=4)
    ours, theirs = JaxDistributionMatching(c, toy), torch_dm.DistributionMatching(c, toy, torch.device("cpu"))
    for it in (0, 1):
        for m in (ours, theirs):
            m.images.grad = None
        a, b = ours.compute_grads(it)["loss"], theirs.compute_grads(it)["loss"]
        assert abs(a - b) / b < 1e-4
        assert float((ours.images.grad - theirs.images.grad).norm() / theirs.images.grad.norm()) < 1e-4


def test_loss_goes_down_and_resume_equals_an_uninterrupted_run(toy, tmp_path):
    method = JaxDistributionMatching(cfg(tmp_path), toy)

    def held_out_loss():  # networks and batches of iterations the run never sees
        return sum(method.compute_grads(it)["loss"] for it in range(100, 104))

    before = held_out_loss()
    from condense.methods.loop import synthesize

    synthesize(method, cfg(tmp_path, iters=8), tmp_path / "x.h5", {"method": "dm"}, **QUIET)
    assert held_out_loss() < 0.8 * before  # measured: 87.6 -> 59.0, as the torch method

    whole = run_dm(cfg(tmp_path / "a"), **QUIET)
    run_dm(cfg(tmp_path / "b", iters=2), **QUIET)  # "killed" after its checkpoint at 2
    resumed = run_dm(cfg(tmp_path / "b"), **QUIET)
    assert torch.equal(whole.images, resumed.images)
    saved = load_synset(tmp_path / "b" / "dm.h5")
    assert torch.equal(saved.images, whole.images) and saved.config["backend"] == "jax"
    assert (tmp_path / "b" / "dm.h5.run" / "metrics.csv").read_text().count("\n") == 5  # header + 4 iterations


def test_cli_synth_dm_backend_jax(tmp_path):
    from condense.cli.main import main

    out = tmp_path / "cli.h5"
    assert main(["synth", "dm", "--backend", "jax", "--dataset", "toy", "--ipc", "2", "--arch", ARCH,
                 "--batch-real", "16", "--iters", "2", "--out", str(out), "--device", "cpu"]) == 0
    s = load_synset(out)
    assert s.method == "dm" and s.ipc == 2 and s.config["backend"] == "jax" and s.provenance["iteration"] == 2
