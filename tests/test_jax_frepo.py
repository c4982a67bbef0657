"""JAX frepo: the kernel-regression loss and its gradients against a naive numpy reference
(float64), the image gradient through a network against finite differences, the loss going
down on toy data, kill-and-resume equal to an uninterrupted run, and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from condense.data import load_dataset  # noqa: E402
from condense.jax.frepo import FRePo, frepo_loss, krr_loss, margin_loss, run_frepo  # noqa: E402
from condense.jax.nets import build_jax_net  # noqa: E402
from condense.methods.frepo import FRePoConfig  # noqa: E402
from condense.methods.loop import synthesize  # noqa: E402
from condense.nets import FlatLayout, build_net  # noqa: E402
from condense.runtime.rng import generator  # noqa: E402
from condense.synset import load_synset  # noqa: E402
from conftest import Killed, kill_after  # noqa: E402

torch.set_num_threads(1)
ARCH = "convnet:width=8,depth=2"
QUIET = {"progress": lambda s: None, "bars": False}
REG = 1e-3  # larger than the default so the reference's explicit inverse stays well conditioned


def naive_loss_and_grad(f_s, f_t, y_s, y_t, reg):
    """The loss, written out with an explicit inverse, and its gradients w.r.t. f_s and y_s derived
    by hand (reverse mode through A = K_ss + reg·tr(K_ss)/n·I, α = A⁻¹ y_s, P = K_ts α)."""
    n, m = f_s.shape[0], f_t.shape[0]
    k_ss, k_ts = f_s @ f_s.T, f_t @ f_s.T
    a = k_ss + reg * np.trace(k_ss) / n * np.eye(n)
    a_inv = np.linalg.inv(a)
    alpha = a_inv @ y_s
    r = k_ts @ alpha - y_t
    loss = 0.5 * (r ** 2).sum() / m
    d_p = r / m
    d_kts = d_p @ alpha.T
    d_alpha = k_ts.T @ d_p
    d_a = -a_inv.T @ d_alpha @ alpha.T
    d_kss = d_a + reg / n * np.trace(d_a) * np.eye(n)
    d_fs = d_kts.T @ f_t + (d_kss + d_kss.T) @ f_s
    return loss, d_fs, a_inv.T @ d_alpha


def test_krr_loss_and_gradients_equal_a_naive_numpy_reference_in_float64():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(6, 9)), rng.normal(size=(11, 9))
    y_s, y_t = rng.normal(size=(6, 3)), np.eye(3)[rng.integers(0, 3, 11)] - 1 / 3
    loss, d_fs, d_ys = naive_loss_and_grad(f_s, f_t, y_s, y_t, REG)
    with jax.enable_x64(True):
        value, (g_fs, g_ys) = jax.value_and_grad(krr_loss, argnums=(0, 2))(
            jnp.asarray(f_s), jnp.asarray(f_t), jnp.asarray(y_s), jnp.asarray(y_t), REG)
        assert value.dtype == jnp.float64
    assert abs(float(value) - loss) / loss < 1e-10  # measured ~1e-15
    assert np.abs(np.asarray(g_fs) - d_fs).max() / np.abs(d_fs).max() < 1e-8
    assert np.abs(np.asarray(g_ys) - d_ys).max() / np.abs(d_ys).max() < 1e-8

    y = np.array([[3.0, 1.0, 2.9, 0.0], [1.0, -1.0, 0.0, 0.5]])  # margins 0.1 and 0.5 (capped at 1/K = 0.25)
    assert abs(float(margin_loss(jnp.asarray(y))) + (0.1 + 0.25) / 2) < 1e-6


@pytest.mark.parametrize("flip", [False, True])
def test_image_gradient_through_the_network_equals_finite_differences(flip):
    with jax.enable_x64(True):
        net = build_net(ARCH, 3, 4, (16, 16), generator=generator(0)).double()
        twin = build_jax_net(ARCH, 3, 4, (16, 16))
        flat = jnp.asarray(FlatLayout.of(net).flatten(net).numpy())
        rng = np.random.default_rng(1)
        images, labels = jnp.asarray(rng.normal(size=(4, 3, 16, 16))), jnp.asarray(rng.normal(size=(4, 4)))
        x_real, y_real = jnp.asarray(rng.normal(size=(10, 3, 16, 16))), jnp.asarray(rng.normal(size=(10, 4)))

        @jax.jit
        def loss(x, y):
            return frepo_loss(twin, flip, REG, x, y, flat, x_real, y_real)[0]

        g_x, g_y = jax.jit(jax.grad(loss, argnums=(0, 1)))(images, labels)
        for g, direction_of in ((g_x, lambda d: (images + d, labels)), (g_y, lambda d: (images, labels + d))):
            d = jnp.asarray(rng.normal(size=g.shape)) * 1e-6
            numeric = (loss(*direction_of(d)) - loss(*direction_of(-d))) / 2
            assert abs(float((g * d).sum()) - float(numeric)) / abs(float(numeric)) < 1e-6  # measured ~1e-9


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


def cfg(tmp_path, **over):
    base = dict(dataset="toy", ipc=2, arch=ARCH, iters=4, batch_real=64, pool_size=3, max_online_steps=2,
                lr_img=3e-2, checkpoint_every=2, out=str(tmp_path / "frepo.h5"))
    return FRePoConfig(**{**base, **over})


def test_iterations_lower_the_loss_on_toy_data(toy, tmp_path):
    method = FRePo(cfg(tmp_path), toy)
    x, y = method.x_train, jax.nn.one_hot(method.y_train, 4) - 0.25
    judges = [method.fresh_network(99, j) for j in range(3)]  # networks the run never trains or uses

    def held_out_loss():  # kernel-regression loss of the whole toy training split on the set
        images, labels = jnp.asarray(method.images.detach().numpy()), jnp.asarray(method.labels.detach().numpy())
        return sum(float(method._loss(images, labels, f, x, y)[0][1]) for f in judges) / len(judges)

    before = held_out_loss()
    synthesize(method, cfg(tmp_path, iters=10), tmp_path / "x.h5", {"method": "frepo"}, **QUIET)
    after = held_out_loss()
    assert after < 0.85 * before, (before, after)  # measured: 0.157 -> 0.123
    assert int(method.pool.steps.max()) <= 3  # every member was re-initialised after max_online_steps


def test_kill_and_resume_equals_an_uninterrupted_run(toy, tmp_path):
    whole = run_frepo(cfg(tmp_path / "a"), **QUIET)

    with pytest.raises(Killed):
        run_frepo(cfg(tmp_path / "b", eval_every=1), **QUIET, evaluate=kill_after(3))
    resumed = run_frepo(cfg(tmp_path / "b"), **QUIET)
    assert torch.equal(whole.images, resumed.images) and torch.equal(whole.labels, resumed.labels)
    initial = (torch.nn.functional.one_hot(whole.classes, 4).float() - 0.25) / 0.4 ** 0.5  # centred, / sqrt(K/10)
    assert (whole.labels - initial).abs().max() > 1e-3  # the labels were learned
    saved = load_synset(tmp_path / "b" / "frepo.h5")
    assert saved.label_spec.kind == "regression" and saved.label_spec.loss == "mse"
    assert torch.equal(saved.labels, whole.labels) and saved.config["backend"] == "jax"


def test_cli_frepo_defaults_to_jax_and_torch_is_one_error_line(tmp_path, capsys):
    from condense.cli.main import main

    out = tmp_path / "cli.h5"
    argv = ["synth", "frepo", "--dataset", "toy", "--ipc", "1", "--arch", ARCH, "--batch-real", "32",
            "--pool-size", "2", "--iters", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    s = load_synset(out)
    assert s.method == "frepo" and s.config["backend"] == "jax" and s.labels.shape == (4, 4)
    assert "--backend jax" in capsys.readouterr().out
    for bad, message in ((["--backend", "torch"], "method 'frepo' runs only in JAX"),
                         (["--pool-size", "0"], "--pool-size must be positive"),
                         (["--optimizer", "sgd"], "--optimizer must be one of lamb, adam")):
        assert main(argv + bad) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "cli.h5.run" / "metrics.csv").read_text().count("\n") == 3  # header + 2: bad runs did nothing


def test_a_pipeline_runs_a_frepo_step_with_its_jax_runner(tmp_path):
    from condense.workflows.pipeline import RunConfig, run_pipeline

    preset = tmp_path / "p.yaml"
    preset.write_text(f"synth-frepo:\n  method: frepo\n  dataset: toy\n  ipc: 1\n  arch: {ARCH!r}\n"
                      "  batch_real: 32\n  pool_size: 2\n  iters: 2\n")
    run_pipeline(str(preset), RunConfig(steps=["synth-frepo"], out=str(tmp_path / "out")), note=lambda s: None,
                 bars=False)
    s = load_synset(tmp_path / "out" / "frepo_ipc1.h5")
    assert s.method == "frepo" and s.config["backend"] == "jax" and s.provenance["iteration"] == 2


DATA_PARALLEL = """
import torch
from condense.data import load_dataset
from condense.jax.frepo import FRePo
from condense.methods.frepo import FRePoConfig
torch.set_num_threads(1)
cfg = FRePoConfig(dataset="toy", ipc=2, arch="{arch}", batch_real=64, pool_size=2, out="unused.h5")
method = FRePo(cfg, load_dataset("toy"))
assert method.shardings is not None
split = method.compute_grads(0)["loss"], method.images.grad.clone(), method.labels.grad.clone()
method.shardings = None
one = method.compute_grads(0)["loss"], method.images.grad, method.labels.grad
print(abs(split[0] - one[0]) / abs(one[0]), *(float((a - b).norm() / b.norm()) for a, b in zip(split[1:], one[1:])))
"""


@pytest.mark.slow  # a fresh process compiling twice: ~15-30 s here, over this file's CI budget
def test_the_real_batch_split_over_two_devices_gives_one_devices_numbers():
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", DATA_PARALLEL.format(arch=ARCH)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [float(v) for v in done.stdout.split()]
    assert max(errors) < 1e-4, errors  # float32, sums in another order; measured 0, 8e-7, 1.5e-6
