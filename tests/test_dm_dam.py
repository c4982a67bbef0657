"""Distribution matching and attention matching: the math against naive loops, the loop's guarantees."""
from __future__ import annotations

import pytest
import torch

from condense.data import load_dataset
from condense.runtime.errors import CondenseError, ConfigError
from condense.methods.dam import AttentionMatching, DAMConfig, attention_map, dam_loss, maps_and_embedding, run_dam
from condense.methods.dm import DistributionMatching, DMConfig, dm_loss, run_dm
from condense.methods.loop import synthesize
from condense.nets import build_net
from condense.runtime.rng import generator
from condense.synset import load_synset

torch.set_num_threads(1)
CPU = torch.device("cpu")
ARCH = "convnet:width=8,depth=2"
QUIET = {"progress": lambda s: None, "bars": False}


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


def small_net(dtype=torch.float64):
    return build_net(ARCH, 3, 4, (16, 16), generator=generator(0)).to(dtype)


def class_batches(dtype=torch.float64, sizes=(5, 3, 4), syn=(2, 1, 3)):
    g = torch.Generator().manual_seed(3)
    reals = [torch.randn(n, 3, 16, 16, generator=g, dtype=dtype) for n in sizes]
    syns = [torch.randn(n, 3, 16, 16, generator=g, dtype=dtype).requires_grad_(True) for n in syn]
    return reals, syns


# --- the math ---------------------------------------------------------------------------------------

def test_dm_loss_is_zero_when_the_synthetic_batch_is_the_real_one():
    net = small_net()
    reals, _ = class_batches()
    assert (dm_loss(net.embed, reals, [r.clone() for r in reals]).item()) == pytest.approx(0.0, abs=1e-12)


def test_dm_loss_and_gradient_equal_a_naive_loop():
    net = small_net()
    reals, syns = class_batches()
    loss = dm_loss(net.embed, reals, syns)
    grads = torch.autograd.grad(loss, syns)
    naive = 0.0
    for r, s in zip(reals, syns):  # per class: its own forward passes, sum of squares by hand
        mr = sum(net.embed(r[i:i + 1])[0] for i in range(len(r))) / len(r)
        ms = sum(net.embed(s[i:i + 1])[0] for i in range(len(s))) / len(s)
        naive = naive + sum((mr[d] - ms[d]) ** 2 for d in range(mr.numel()))
    naive_grads = torch.autograd.grad(naive, syns)
    torch.testing.assert_close(loss, naive)
    for a, b in zip(grads, naive_grads):
        torch.testing.assert_close(a, b)
    assert loss > 0 and all(g.abs().sum() > 0 for g in grads)


def test_chunked_real_means_equal_one_pass_for_dm_and_dam():
    net = small_net()
    reals, syns = class_batches(sizes=(7, 3, 5))
    for chunk in (1, 2, 4, 100):
        torch.testing.assert_close(dm_loss(net.embed, reals, syns, chunk), dm_loss(net.embed, reals, syns))
        torch.testing.assert_close(dam_loss(maps_and_embedding(net), reals, syns, 4.0, 0.01, 100.0, chunk),
                                   dam_loss(maps_and_embedding(net), reals, syns, 4.0, 0.01, 100.0))


def test_chunking_is_refused_for_batch_norm_nets(toy):
    cfg = DMConfig(dataset="toy", ipc=1, arch="convnet:width=8,depth=2", iters=1, real_chunk=4, out="unused.h5")
    method = DistributionMatching(cfg, toy, CPU)
    assert method.real_chunk(method.network(0)) == 4
    cfg_bn = DMConfig(dataset="toy", ipc=1, arch="convnet:width=8,depth=2,norm=batch", iters=1, real_chunk=4,
                      out="unused.h5")
    method_bn = DistributionMatching(cfg_bn, toy, CPU)
    assert method_bn.real_chunk(method_bn.network(0)) == 0  # batch statistics would change per chunk
    assert DistributionMatching(DMConfig(dataset="toy", arch=ARCH, out="u.h5"), toy, CPU).chunk == 32  # CPU default


def test_attention_map_equals_a_naive_computation():
    f = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[-1.0, 1.0], [2.0, 0.5]]]])  # [1, 2, 2, 2]
    for p in (1.0, 4.0):
        a = [abs(f[0, 0, i, j].item()) ** p + abs(f[0, 1, i, j].item()) ** p for i in range(2) for j in range(2)]
        norm = sum(v * v for v in a) ** 0.5
        torch.testing.assert_close(attention_map(f, p), torch.tensor([[v / norm for v in a]]))
    two = torch.cat([f, 3 * f])  # each image is normalised on its own
    torch.testing.assert_close(attention_map(two, 4.0)[1], attention_map(f, 4.0)[0])


def test_dam_loss_equals_a_naive_loop_and_is_zero_for_equal_batches():
    net = small_net()
    reals, syns = class_batches()
    p, lam, scale = 4.0, 0.01, 100.0
    loss, sam, mmd = dam_loss(maps_and_embedding(net), reals, syns, p, lam, scale)
    naive_sam, naive_mmd = 0.0, 0.0
    for r, s in zip(reals, syns):
        fr, fs = net.feature_maps(r), net.feature_maps(s)
        for a, b in zip(fr[:-1], fs[:-1]):  # every stage but the last
            ar = torch.stack([(x.abs() ** p).sum(0).flatten() / (x.abs() ** p).sum(0).flatten().norm() for x in a])
            as_ = torch.stack([(x.abs() ** p).sum(0).flatten() / (x.abs() ** p).sum(0).flatten().norm() for x in b])
            naive_sam = naive_sam + ((ar.mean(0) - as_.mean(0)) ** 2).sum()
        naive_mmd = naive_mmd + ((net.embed(r).mean(0) - net.embed(s).mean(0)) ** 2).sum()
    naive = scale * (naive_sam + lam * naive_mmd)
    torch.testing.assert_close((loss, sam, mmd), (naive, naive_sam, naive_mmd))
    torch.testing.assert_close(torch.autograd.grad(loss, syns), torch.autograd.grad(naive, syns))
    assert (dam_loss(maps_and_embedding(net), reals, [r.clone() for r in reals], p, lam)[0].item()) == pytest.approx(0, abs=1e-12)


# --- the methods --------------------------------------------------------------------------------------

def dm_cfg(tmp_path, **kw):
    base = dict(dataset="toy", ipc=2, arch=ARCH, iters=3, batch_real=16, checkpoint_every=3, out=str(tmp_path / "dm.h5"))
    return DMConfig(**{**base, **kw})


def dam_cfg(tmp_path, **kw):
    base = dict(dataset="toy", ipc=2, arch=ARCH, iters=3, batch_real=16, checkpoint_every=3,
                out=str(tmp_path / "dam.h5"))
    return DAMConfig(**{**base, **kw})


def test_dm_iterations_lower_the_matching_loss(toy, tmp_path):
    method = DistributionMatching(dm_cfg(tmp_path), toy, CPU)
    before = method.loss(0).item()
    synthesize(method, dm_cfg(tmp_path, iters=10), tmp_path / "dm.h5", {"method": "dm"}, **QUIET)
    assert method.loss(0).item() < before


def test_dam_iterations_lower_the_matching_loss(toy, tmp_path):
    # lr_img 0.1: with p = 4 the toy set's 16x16 maps overshoot at the paper's lr_img 1
    method = AttentionMatching(dam_cfg(tmp_path, lr_img=0.1), toy, CPU)
    before = method.loss(0).item()
    synthesize(method, dam_cfg(tmp_path, lr_img=0.1, iters=10), tmp_path / "dam.h5", {"method": "dam"}, **QUIET)
    assert method.loss(0).item() < before


def test_the_dam_method_steps_on_dam_loss_with_its_settings(toy, tmp_path):
    method = AttentionMatching(dam_cfg(tmp_path, power=1.0, mmd_weight=0.5, loss_scale=3.0), toy, CPU)
    metrics = method.compute_grads(2)
    net = method.network(2)
    reals, syns = method.batches(2)
    loss, sam, mmd = dam_loss(maps_and_embedding(net), reals, syns, 1.0, 0.5, 3.0, method.real_chunk(net))
    assert metrics == {"loss": float(loss.detach()), "sam": float(sam.detach()), "mmd": float(mmd.detach())}
    torch.testing.assert_close(method.images.grad, torch.autograd.grad(loss, method.images)[0])


@pytest.mark.parametrize("run, make_cfg, name", [(run_dm, dm_cfg, "dm"), (run_dam, dam_cfg, "dam")])
def test_resume_equals_uninterrupted(toy, tmp_path, run, make_cfg, name):
    whole = run(make_cfg(tmp_path / "a", iters=6), CPU, **QUIET)
    run(make_cfg(tmp_path / "b", iters=3), CPU, **QUIET)  # "killed" at 3
    resumed = run(make_cfg(tmp_path / "b", iters=6), CPU, **QUIET)
    assert torch.equal(whole.images, resumed.images)
    saved = load_synset(tmp_path / "b" / f"{name}.h5")
    assert torch.equal(saved.images, whole.images) and saved.provenance["iteration"] == 6
    assert saved.method == name and saved.config["method"] == name and saved.config["arch"].startswith("convnet:")
    assert saved.ipc == 2 and saved.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (tmp_path / "b" / f"{name}.h5.run" / "metrics.csv").read_text().count("\n") == 7  # header + 6 rows
    initial = load_dataset("toy").x_train[torch.tensor(saved.provenance["init_indices"])]
    assert not torch.equal(saved.images, initial)  # the images moved


def test_a_refused_resume_leaves_the_run_folder_as_it_was(toy, tmp_path):
    run_dm(dm_cfg(tmp_path, iters=3), CPU, **QUIET)
    folder = tmp_path / "dm.h5.run"
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    assert '"seed": 0' in before["config.json"].decode()
    with pytest.raises(CondenseError, match="belongs to a run with other settings"):
        run_dm(dm_cfg(tmp_path, iters=6, seed=1), CPU, **QUIET)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # config.json still the run's own


def test_a_different_seed_gives_a_different_set(toy, tmp_path):
    a = run_dm(dm_cfg(tmp_path / "a"), CPU, **QUIET)
    b = run_dm(dm_cfg(tmp_path / "b", seed=1), CPU, **QUIET)
    assert not torch.equal(a.images, b.images)


@pytest.mark.parametrize("cls, make_cfg", [(DistributionMatching, dm_cfg), (AttentionMatching, dam_cfg)])
def test_loss_is_zero_when_the_set_is_the_iterations_real_batch(toy, tmp_path, cls, make_cfg):
    # the same real batches without augmentation (DSA draws come from their own stream)...
    raw, _ = cls(make_cfg(tmp_path, batch_real=2, dsa=False), toy, CPU).batches(5)
    method = cls(make_cfg(tmp_path, batch_real=2), toy, CPU)
    with torch.no_grad():
        method.images.copy_(torch.cat(raw))
    # ...augmented by ONE draw per class for real and synthetic: the loss vanishes only if siamese
    assert method.loss(5).item() == pytest.approx(0.0, abs=1e-9)
    assert method.loss(6).item() > 1e-6


def test_siamese_augmentation_keeps_equal_images_equal(toy, tmp_path):
    method = DistributionMatching(dm_cfg(tmp_path, ipc=1), toy, CPU)
    reals, syns = method.batches(0)
    assert all(r.shape[1:] == s.shape[1:] for r, s in zip(reals, syns))
    assert [len(r) for r in reals] == [16] * 4 and [len(s) for s in syns] == [1] * 4


@pytest.mark.parametrize("make_cfg", [dm_cfg, dam_cfg])
@pytest.mark.parametrize("kw, message", [
    ({"ipc": 0}, "--ipc must be positive, at most 10000, got 0"),
    ({"ipc": 59}, "--ipc 59 exceeds the smallest class of toy (58 training images)"),
    ({"iters": 0}, "--iters must be positive"),
    ({"batch_real": -1}, "--batch-real must be positive"),
    ({"init": "kmeans"}, "--init must be one of real, noise"),
    ({"lr_img": 0.0}, "--lr-img must be positive"),
])
def test_bad_input_is_one_clear_config_error(toy, tmp_path, make_cfg, kw, message):
    run = run_dm if make_cfg is dm_cfg else run_dam
    with pytest.raises(ConfigError) as e:
        run(make_cfg(tmp_path, **kw), CPU, **QUIET)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_dam_specific_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"--power must be in \[1, 16\]"):
        dam_cfg(tmp_path, power=0.5).validate()
    with pytest.raises(ConfigError, match="--mmd-weight must be >= 0"):
        dam_cfg(tmp_path, mmd_weight=-1.0).validate()


def test_defaults_follow_the_papers():
    dm, dam = DMConfig(), DAMConfig()
    assert (dm.lr_img, dm.batch_real, dm.arch, dm.init, dm.dsa) == (1.0, 256, "convnet", "real", True)
    assert (dam.power, dam.iters, dam.mmd_weight, dam.lr_img, dam.batch_real) == (4.0, 8000, 0.01, 1.0, 64)


@pytest.mark.parametrize("field,value,message", [("checkpoint_every", 0, "--checkpoint-every must be positive"),
                                                  ("iters", 0, "--iters must be positive"),
                                                  ("eval_every", -1, "--eval-every must be >= 0")])
def test_every_iterative_method_checks_the_loop_settings(field, value, message):
    from condense.methods.gm import GMConfig
    from condense.methods.tm import TMConfig

    for cfg in (DMConfig(), DAMConfig(), GMConfig(), TMConfig(trajectories="store")):
        setattr(cfg, field, value)
        with pytest.raises(ConfigError, match=message):
            cfg.validate()
