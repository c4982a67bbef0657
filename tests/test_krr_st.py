"""Self-supervised distillation: the Barlow Twins teacher (loss against a naive loop, training
lowering it, the teacher file with its projector, a linear probe above chance), KRR-ST's kernel
regression and its gradients against a naive float64 solve, the image gradient through a network
against finite differences, the loss going down on toy data, kill-and-resume, the representation
label kind in the set file, and one-line errors."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from condense.data import load_dataset
from condense.labels.squeeze import TeacherConfig, train_teacher
from condense.labels.ssl import barlow_twins_loss, projector
from condense.labels.teacher_file import load_teacher_file
from condense.runtime.errors import ConfigError, FormatError
from condense.synset import LabelSpec, SynSet, load_synset, training_targets
from conftest import Killed, kill_after

torch.set_num_threads(1)
ARCH = "convnet:width=8,depth=2"
QUIET = {"progress": lambda s: None, "bars": False}


def naive_barlow_twins(z1, z2, lambd, eps=1e-5):
    """Barlow Twins' loss with explicit loops over the cross-correlation entries (float64)."""
    b, p = z1.shape
    n1 = [(z1[:, i] - z1[:, i].mean()) / np.sqrt(z1[:, i].var() + eps) for i in range(p)]
    n2 = [(z2[:, j] - z2[:, j].mean()) / np.sqrt(z2[:, j].var() + eps) for j in range(p)]
    loss = 0.0
    for i in range(p):
        for j in range(p):
            c = float((n1[i] * n2[j]).sum()) / b
            loss += (1 - c) ** 2 if i == j else lambd * c ** 2
    return loss


def test_barlow_twins_loss_equals_a_naive_loop_and_its_gradient_finite_differences():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    t1 = torch.tensor(z1, requires_grad=True)
    loss = barlow_twins_loss(t1, torch.tensor(z2), 0.3)
    assert abs(loss.item() - naive_barlow_twins(z1, z2, 0.3)) < 1e-10
    loss.backward()
    d = rng.normal(size=z1.shape) * 1e-6
    numeric = (naive_barlow_twins(z1 + d, z2, 0.3) - naive_barlow_twins(z1 - d, z2, 0.3)) / 2
    assert abs(float((t1.grad.numpy() * d).sum()) - numeric) / abs(numeric) < 1e-5
    same = torch.tensor(z1)
    assert float(barlow_twins_loss(same, same, 0.0)) < 1e-4  # identical views: C's diagonal is 1


@pytest.fixture(scope="module")
def ssl_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "bt.h5"
    cfg = TeacherConfig(dataset="toy", arch=ARCH, ssl="barlow-twins", epochs=4, lr=0.05, batch_size=64,
                        projector=[32, 32], probe_epochs=30, out=str(out))
    return train_teacher(cfg, progress=False), str(out)


def test_the_ssl_teacher_learns_and_its_file_keeps_projector_and_probe(ssl_teacher):
    t, path = ssl_teacher
    losses = t.ssl["losses"]
    assert losses[-1] < losses[0]  # Barlow Twins' loss went down
    assert t.accuracy > 40.0  # the linear probe on the representation: 4 classes (chance 25 %)
    back = load_teacher_file(path)
    assert back.ssl["method"] == "barlow-twins" and back.representation_dim == t.net.embed_dim
    x = load_dataset("toy").x_test[:16]
    with torch.no_grad():
        assert torch.equal(back.net(x), t.net(x))  # the probe's standardisation is folded into the head
        assert torch.allclose(back.projector(back.net.embed(x)), t.projector(t.net.embed(x)))
    assert "self-supervised, barlow-twins" in back.summary(path)


def test_a_malformed_ssl_record_or_projector_is_one_format_error(ssl_teacher, tmp_path):
    _, path = ssl_teacher
    for name, edit in (("record", lambda f: f.attrs.__setitem__("ssl", '{"method": "simclr", "projector": [32]}')),
                       ("sizes", lambda f: f.attrs.__setitem__("ssl", '{"method": "barlow-twins", '
                                                                      '"projector": [99999999]}')),
                       ("weights", lambda f: f["projector"].__delitem__("0"))):
        bad = tmp_path / f"{name}.h5"
        bad.write_bytes(open(path, "rb").read())
        with h5py.File(bad, "r+") as f:
            edit(f)
        with pytest.raises(FormatError):
            load_teacher_file(bad)


def test_representation_targets_are_a_label_kind_of_their_own(tmp_path):
    x, y = torch.randn(6, 1, 8, 8), torch.randn(6, 5)
    s = SynSet(images=x, classes=torch.zeros(6, dtype=torch.int64), labels=y, dataset="toy", num_classes=1,
               method="krr-st", label_spec=LabelSpec(kind="representation", loss="mse"))
    s.save(tmp_path / "s.h5")
    back = load_synset(tmp_path / "s.h5")
    assert back.label_spec.kind == "representation" and torch.equal(back.labels, y)
    assert back.storage_bytes()["labels"] == 6 * 5 * 4
    with pytest.raises(ConfigError, match="no classes"):
        training_targets(back, hard=True)
    for bad in (dict(loss="ce"), dict(loss="kl")):
        with pytest.raises(FormatError):
            LabelSpec(kind="representation", **bad).validate()
    with pytest.raises(FormatError, match="without classes"):
        SynSet(images=x, classes=torch.arange(6) % 2, labels=y, dataset="toy", num_classes=2, method="krr-st",
               label_spec=LabelSpec(kind="representation", loss="mse")).validate()


# --- KRR-ST (JAX) ---------------------------------------------------------------------------------

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from condense.jax.krr_st import KRRST, krr_st_loss, krr_st_predict, load_teacher, run_krr_st  # noqa: E402
from condense.jax.nets import build_jax_net  # noqa: E402
from condense.methods.krr_st import KRRSTConfig  # noqa: E402
from condense.methods.loop import synthesize  # noqa: E402
from condense.nets import FlatLayout, build_net  # noqa: E402
from condense.runtime.rng import generator  # noqa: E402

REG = 1e-3  # larger than the default so the naive solve stays well conditioned


def naive_predict_loss_and_grad(f_s, f_t, y_s, y_t, reg):
    """KRR-ST's loss written out with numpy's solve in float64, and its gradients w.r.t. f_s and y_s
    derived by hand, the ridge λ = reg·tr(K_ss) held fixed (reverse mode through A = K_ss + λI,
    α = A⁻¹ y_s, P = K_ts α, with the bias column added to both feature matrices)."""
    fs, ft = np.hstack([f_s, np.ones((len(f_s), 1))]), np.hstack([f_t, np.ones((len(f_t), 1))])
    k_ss, k_ts = fs @ fs.T, ft @ fs.T
    a = k_ss + reg * np.trace(k_ss) * np.eye(len(fs))
    alpha = np.linalg.solve(a, y_s)
    pred = k_ts @ alpha
    r = pred - y_t
    loss = (r ** 2).mean()
    d_p = 2 * r / r.size
    d_alpha = k_ts.T @ d_p
    d_ys = np.linalg.solve(a.T, d_alpha)
    d_kss = -d_ys @ alpha.T
    d_fs = (d_p @ alpha.T).T @ ft + (d_kss + d_kss.T) @ fs
    return pred, loss, d_fs[:, :-1], d_ys


def test_krr_solution_and_gradients_equal_a_naive_float64_solve():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(6, 9)), rng.normal(size=(11, 9))
    y_s, y_t = rng.normal(size=(6, 4)), rng.normal(size=(11, 4))
    pred, loss, d_fs, d_ys = naive_predict_loss_and_grad(f_s, f_t, y_s, y_t, REG)

    def loss_of(fs, ys):
        return jnp.mean((krr_st_predict(fs, jnp.asarray(f_t), ys, REG) - jnp.asarray(y_t)) ** 2)

    with jax.enable_x64(True):
        got = krr_st_predict(jnp.asarray(f_s), jnp.asarray(f_t), jnp.asarray(y_s), REG)
        assert got.dtype == jnp.float64
        value, (g_fs, g_ys) = jax.value_and_grad(loss_of, argnums=(0, 1))(jnp.asarray(f_s), jnp.asarray(y_s))
    assert np.abs(np.asarray(got) - pred).max() / np.abs(pred).max() < 1e-10
    assert abs(float(value) - loss) / loss < 1e-10
    assert np.abs(np.asarray(g_fs) - d_fs).max() / np.abs(d_fs).max() < 1e-8
    assert np.abs(np.asarray(g_ys) - d_ys).max() / np.abs(d_ys).max() < 1e-8


def test_image_gradient_through_the_network_equals_finite_differences():
    """Finite differences of the loss with the ridge frozen at its value for the unperturbed images
    (the method holds λ fixed in its gradient, as the reference)."""
    from condense.jax.krr import krr_solve
    from condense.jax.krr_st import with_bias

    with jax.enable_x64(True):
        net = build_net(ARCH, 3, 5, (16, 16), generator=generator(0)).double()
        twin = build_jax_net(ARCH, 3, 5, (16, 16))
        flat = jnp.asarray(FlatLayout.of(net).flatten(net).numpy())
        params = twin.params(flat)
        rng = np.random.default_rng(1)
        images, targets = jnp.asarray(rng.normal(size=(4, 3, 16, 16))), jnp.asarray(rng.normal(size=(4, 5)))
        x_real, y_real = jnp.asarray(rng.normal(size=(10, 3, 16, 16))), jnp.asarray(rng.normal(size=(10, 5)))
        f_s0 = with_bias(twin.embed(params, images))
        ridge = REG * float(jnp.trace(f_s0 @ f_s0.T))
        f_t = with_bias(twin.embed(params, x_real))

        @jax.jit
        def frozen(x, y):
            f_s = with_bias(twin.embed(params, x))
            return jnp.mean((krr_solve(f_s @ f_s.T, f_t @ f_s.T, y, ridge) - y_real) ** 2)

        g_x, g_y = jax.jit(jax.grad(lambda x, y: krr_st_loss(twin, REG, x, y, flat, x_real, y_real),
                                    argnums=(0, 1)))(images, targets)
        for g, direction_of in ((g_x, lambda d: (images + d, targets)), (g_y, lambda d: (images, targets + d))):
            d = jnp.asarray(rng.normal(size=g.shape)) * 1e-6
            numeric = (frozen(*direction_of(d)) - frozen(*direction_of(-d))) / 2
            assert abs(float((g * d).sum()) - float(numeric)) / abs(float(numeric)) < 1e-6


def cfg(tmp_path, teacher, **over):
    base = dict(dataset="toy", images=8, arch=ARCH, teacher=teacher, iters=4, batch_real=64, pool_size=3,
                max_online_steps=2, lr_img=1e-2, checkpoint_every=2, out=str(tmp_path / "krr.h5"))
    return KRRSTConfig(**{**base, **over})


def test_iterations_lower_the_loss_on_toy_data(ssl_teacher, tmp_path):
    c = cfg(tmp_path, ssl_teacher[1], iters=30)
    ds = load_dataset("toy")
    method = KRRST(c, ds, *load_teacher(c, ds))
    x = jnp.asarray(ds.x_train.numpy())
    y = jnp.asarray(method.represent(ds.x_train).numpy())
    judges = [method.fresh_network(99, j) for j in range(3)]  # networks the run never trains or uses

    def held_out_loss():  # the kernel-regression loss of the whole (un-augmented) training split
        images, targets = jnp.asarray(method.images.detach().numpy()), jnp.asarray(method.targets.detach().numpy())
        return sum(float(method._loss(images, targets, f, x, y)[0]) for f in judges) / len(judges)

    before = held_out_loss()
    synthesize(method, c, tmp_path / "x.h5", {"method": "krr-st"}, **QUIET)
    after = held_out_loss()
    assert after < 0.9 * before, (before, after)
    assert int(method.pool.steps.max()) <= 3  # members are re-initialised after max_online_steps


def test_kill_and_resume_equals_an_uninterrupted_run(ssl_teacher, tmp_path):
    whole = run_krr_st(cfg(tmp_path / "a", ssl_teacher[1]), **QUIET)
    with pytest.raises(Killed):
        run_krr_st(cfg(tmp_path / "b", ssl_teacher[1], eval_every=1), **QUIET, evaluate=kill_after(2))
    resumed = run_krr_st(cfg(tmp_path / "b", ssl_teacher[1]), **QUIET)
    assert torch.equal(whole.images, resumed.images) and torch.equal(whole.labels, resumed.labels)
    saved = load_synset(tmp_path / "b" / "krr.h5")
    assert saved.label_spec.kind == "representation" and saved.num_classes == 1
    assert saved.labels.shape == (8, load_teacher_file(ssl_teacher[1]).representation_dim)
    assert saved.config["teacher_sha256"] and saved.config["backend"] == "jax"


def test_cli_errors_are_one_line(ssl_teacher, tmp_path, capsys):
    from condense.cli.main import main

    supervised = tmp_path / "sup.h5"
    train_teacher(TeacherConfig(dataset="toy", arch=ARCH, epochs=1, out=str(supervised)), progress=False)
    base = ["synth", "krr-st", "--dataset", "toy", "--arch", ARCH, "--images", "8", "--iters", "1", "--no-progress",
            "--out", str(tmp_path / "k.h5")]
    for extra, message in (([], "krr-st needs --teacher"),
                           (["--teacher", str(supervised)], "was trained with labels"),
                           (["--teacher", ssl_teacher[1], "--backend", "torch"], "runs only in JAX"),
                           (["--teacher", ssl_teacher[1], "--images", "100000"], "exceeds the 232 training images")):
        assert main(base + extra) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_teacher_flags_of_the_other_mode_are_refused_in_one_line(tmp_path, capsys):
    from condense.cli.main import main

    for argv, message in ((["--projector", "8,8"], "it is an --ssl option"),
                          (["--ssl", "barlow-twins", "--dsa-strategy", "rrc+flip"], "--ssl trains on its own two views")):
        assert main(["teacher", "--dataset", "toy", "--out", str(tmp_path / "t.h5"), *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
