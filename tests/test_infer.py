"""INFER: compensators on groups of real images, their stored form, labels and mixup.

The compensator loss and its gradient are checked against a naive loop written here (one
group and one teacher at a time, statistics by hand); the stored form against an instance
loop; a killed run resumes exactly and shards merge into the unsharded set.
"""
from __future__ import annotations

import h5py
import pytest
import torch
import torch.nn.functional as F

from condense.compensators import Compensated, expand, pixel_box
from condense.data.transform import PixelTransform
from condense.labels.squeeze import TeacherConfig, train_teacher
from condense.labels.teacher_file import load_teacher_file
from condense.methods.infer import Infer, InferConfig, groups_for, run_infer
from condense.runtime.errors import ConfigError, FormatError
from condense.synset import SynSet, load_synset
from condense.train import mix
from conftest import Killed, kill_after

CPU = torch.device("cpu")
QUIET = {"progress": lambda m: None, "bars": False}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[str]:
    """Two toy BN teachers of different architectures (1 epoch: quality is irrelevant)."""
    folder = tmp_path_factory.mktemp("teachers")
    out = []
    for name, arch in (("a.h5", "convnet:norm=batch,width=8"), ("b.h5", "convnet:norm=batch,width=8,depth=2")):
        train_teacher(TeacherConfig(dataset="toy", arch=arch, epochs=1, batch_size=64, out=str(folder / name)), CPU,
                      progress=False)
        out.append(str(folder / name))
    return out


def infer_cfg(teachers, folder, **over) -> InferConfig:
    kw = dict(teachers=teachers, ipc=3, iters=6, checkpoint_every=3, arch="convnet:width=8", r_bn=1.0,
              out=str(folder / "infer.h5"))
    return InferConfig(**{**kw, **over})


# --- the stored form -----------------------------------------------------------------------------

def test_groups_fill_the_budget_as_infer_counts_it():
    assert groups_for(10, 10, 2) == 8 and groups_for(10, 10, 4) == 7 and groups_for(10, 100, 4) == 9
    assert groups_for(1, 10, 2) == 0
    for ipc, k, m in ((10, 10, 2), (50, 100, 4), (3, 4, 2)):
        g = groups_for(ipc, k, m)
        assert g * (k + m) <= ipc * k < (g + 1) * (k + m)


def test_instances_are_each_real_image_then_with_each_compensator_clipped_in_class_order():
    t = PixelTransform(kind="normalize", mean=(0.5,), std=(0.25,))
    base, comp = torch.randn(2, 3, 1, 4, 4), 3 * torch.randn(2, 2, 1, 4, 4)
    images, classes = expand(base, comp, pixel_box(t, 1))
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    rows = []
    for c in range(3):
        for g in range(2):
            rows.append(base[g, c])
            rows += [(base[g, c] + comp[g, m]).clamp(lo, hi) for m in range(2)]
    assert torch.equal(images, torch.stack(rows))
    assert classes.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    zca_like = expand(base, comp, None)[0]
    assert torch.equal(zca_like[1], base[0, 0] + comp[0, 0])  # nothing clipped without a pixel box


def compensated_set(k=3, groups=2, members=2) -> SynSet:
    t = PixelTransform(kind="normalize", mean=(0.5,), std=(0.25,))
    c = Compensated(torch.rand(groups, k, 1, 4, 4) * 4 - 2, torch.randn(groups, members, 1, 4, 4))
    images, classes = c.expand(t)
    return SynSet.hard(images, classes, dataset="toy", num_classes=k, method="infer", transform=t, compensated=c)


def test_a_compensated_set_stores_base_and_compensators_and_expands_on_load(tmp_path):
    s = compensated_set()
    assert s.ipc == 6 and s.storage_bytes()["images"] == 10 * 16 * 4 and s.budget_ipc == 4  # 10 images / 3 classes
    s.save(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        assert "images" not in f and f["compensated/base"].shape == (2, 3, 1, 4, 4) and f.attrs["version"] == 2
    back = load_synset(tmp_path / "s.h5")
    assert torch.equal(back.images, s.images) and back.compensated is not None
    assert back.storage_bytes() == s.storage_bytes()
    # images changed after the fact: the compensated form no longer holds, the images are stored as they are
    edited = SynSet.hard(s.images + 0.5, s.classes, dataset="toy", num_classes=3, method="infer",
                         transform=s.transform, compensated=s.compensated)
    assert edited.storage_bytes()["images"] == s.images.numel() * 4
    edited.save(tmp_path / "e.h5")
    with h5py.File(tmp_path / "e.h5") as f:
        assert "images" in f and "compensated" not in f and f.attrs["version"] == 1


@pytest.mark.parametrize("damage, message", [
    (lambda f: f["compensated"].attrs.__setitem__("members", 3), "does not give ipc"),
    (lambda f: f["compensated"].attrs.__setitem__("groups", 10 ** 9), "does not give ipc"),
    (lambda f: (f["compensated"].__delitem__("compensators"),
                f["compensated"].create_dataset("compensators", data=torch.zeros(2, 2, 1, 4, 5).numpy())), "shape"),
    (lambda f: f["compensated/base"].__setitem__((0, 0, 0, 0, 0), float("nan")), "NaN"),
    (lambda f: f["classes"].__setitem__(slice(0, 2), [1, 1]), "class"),
])
def test_a_damaged_compensated_file_is_one_format_error(tmp_path, damage, message):
    compensated_set().save(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        damage(f)
    with pytest.raises(FormatError, match=message):
        load_synset(tmp_path / "s.h5")


# --- the loss against a naive loop --------------------------------------------------------------

def naive_loss(method: Infer, it: int) -> torch.Tensor:
    """Σ over groups g and teachers m, one at a time: CE + r_bn · Σ_l m_l (‖μ̂ − μ‖ + ‖σ̂² − σ²‖) of
    teacher m on its compensator's K instances, rolled as recovery_views rolls them."""
    from condense.methods.sre2l import STREAM_JITTER
    from condense.runtime.rng import generator

    cfg, total = method.cfg, 0.0
    lo, hi = method.box
    for row, g in enumerate(method.group_ids):
        for m, (net, running) in enumerate(method.members):
            x = torch.maximum(torch.minimum(method.base[g] + method.images[row, m], hi), lo)
            off = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,),
                                generator=generator(cfg.seed, it, g * len(method.members) + m, STREAM_JITTER))
            x = torch.roll(x, shifts=(int(off[0]), int(off[1])), dims=(2, 3))
            seen = []
            bns = [mod for mod in net.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
            hooks = [b.register_forward_pre_hook(lambda _m, a: seen.append(a[0])) for b in bns]
            logits = net(x)
            for h in hooks:
                h.remove()
            term = 0.0
            for layer, (a, (mu, var)) in enumerate(zip(seen, running)):
                mean = a.mean(dim=(0, 2, 3))
                v = ((a - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
                w = cfg.first_bn_multiplier if layer == 0 else 1.0
                term = term + w * (torch.sqrt(((mean - mu) ** 2).sum()) + torch.sqrt(((v - var) ** 2).sum()))
            total = total + F.cross_entropy(logits, torch.arange(len(x))) + cfg.r_bn * term
    return total


@pytest.mark.parametrize("chunk", [None, 4])
def test_loss_and_gradient_equal_a_naive_loop_over_groups_and_teachers(teachers, tmp_path, chunk):
    method = Infer(infer_cfg(teachers, tmp_path, chunk=chunk), CPU)
    with torch.no_grad():
        method.images.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    method.compute_grads(2)
    fast = method.images.grad.clone()
    method.images.grad = None
    want = naive_loss(method, 2)
    (naive,) = torch.autograd.grad(want, method.images)
    got = sum(method.loss(2, t, rows)[0] for t, rows in method.work())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-6)
    assert (fast[:, 0] != 0).any() and (fast[:, 1] != 0).any()  # both teachers move their compensators


def test_infer_lowers_its_loss_and_a_killed_run_resumes_exactly(teachers, tmp_path):
    probe = Infer(infer_cfg(teachers, tmp_path / "probe", jitter=0), CPU)
    before = sum(probe.loss(0, t, r)[0].item() for t, r in probe.work())
    whole = run_infer(infer_cfg(teachers, tmp_path / "a", jitter=0, iters=20, checkpoint_every=5), CPU, **QUIET)
    probe.images.data.copy_(whole.compensated.compensators)
    assert sum(probe.loss(0, t, r)[0].item() for t, r in probe.work()) < 0.8 * before

    a = run_infer(infer_cfg(teachers, tmp_path / "c"), CPU, **QUIET)
    with pytest.raises(Killed):
        run_infer(infer_cfg(teachers, tmp_path / "b", eval_every=1), CPU, **QUIET, evaluate=kill_after(4))
    resumed = run_infer(infer_cfg(teachers, tmp_path / "b"), CPU, **QUIET)
    assert torch.equal(a.compensated.compensators, resumed.compensated.compensators)
    saved = load_synset(tmp_path / "b" / "infer.h5")
    assert torch.equal(saved.images, resumed.images) and saved.ipc == 6 and saved.budget_ipc == 3
    # the real images are training images, recorded by index
    from condense.data import load_dataset

    toy = load_dataset("toy")
    idx = torch.tensor(saved.provenance["init_indices"]).view(4, 2)  # class by class, G = 2 each
    assert torch.equal(saved.compensated.base, toy.x_train[idx].transpose(0, 1))


def test_shards_on_two_workers_merge_into_the_unsharded_set(teachers, tmp_path):
    whole = run_infer(infer_cfg(teachers, tmp_path / "a"), CPU, **QUIET)
    spread = run_infer(infer_cfg(teachers, tmp_path / "b", devices=["cpu", "cpu"]), CPU, **QUIET)
    torch.testing.assert_close(spread.compensated.compensators, whole.compensated.compensators, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(spread.labels, whole.labels, rtol=1e-4, atol=1e-4)
    assert len(spread.provenance["shards"]) == 2 and "shard" not in spread.config
    assert load_synset(spread.provenance["shards"][1]).provenance["group_rows"] == [1]


def test_bad_settings_are_one_line_each(teachers, tmp_path):
    with pytest.raises(ConfigError, match="needs --teachers"):
        Infer(infer_cfg([], tmp_path), CPU)
    with pytest.raises(ConfigError, match="cannot hold one group"):
        Infer(infer_cfg(teachers, tmp_path, ipc=1), CPU)
    with pytest.raises(ConfigError, match="each teacher file once"):
        Infer(infer_cfg([teachers[0], teachers[0]], tmp_path), CPU)


# --- labels and mixup ------------------------------------------------------------------------------

def test_static_labels_are_the_mean_of_the_teachers_logits_and_random_real_gets_the_same(teachers, tmp_path):
    from condense.labels.recipe import recipe_of, remake

    s = run_infer(infer_cfg(teachers, tmp_path, iters=2, checkpoint_every=2, temperature=20.0), CPU, **QUIET)
    with torch.no_grad():
        want = sum(load_teacher_file(t).net.eval()(s.images) for t in teachers) / 2
    torch.testing.assert_close(s.labels, want, rtol=1e-5, atol=1e-5)
    assert s.label_spec.kind == "logits" and s.label_spec.temperature == 20.0 and s.label_spec.view_mode == "static"
    assert s.storage_bytes()["labels"] == s.images.shape[0] * 4 * 4  # one float per instance and class
    recipe, why = recipe_of(s)
    assert why is None and recipe["views"] == "static"
    images = torch.randn(5, *s.image_shape)
    labels, spec = remake(recipe, images, torch.zeros(5, dtype=torch.long), num_classes=4)
    with torch.no_grad():
        want = sum(load_teacher_file(t).net.eval()(images) for t in teachers) / 2
    torch.testing.assert_close(labels, want, rtol=1e-5, atol=1e-5)
    assert spec.temperature == 20.0


def test_mixup_mixes_images_and_labels_alike_and_hard_labels_give_the_mixed_cross_entropy():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    x, logits = torch.randn(6, 1, 4, 4), torch.randn(6, 5)
    mx, my = mix(x, logits, None, 0.8, g())
    mx2, y2 = mix(x, torch.arange(6), 6, 0.8, g())  # the same draw on hard labels: one-hot rows reveal λ and π
    assert torch.equal(mx, mx2) and not torch.equal(mx, x)
    lam_hat = float(y2[0, 0])  # y2[i] = λ e_i + (1 − λ) e_π(i)
    perm = [int(torch.argmax(y2[i] - lam_hat * torch.eye(6)[i])) for i in range(6)]
    assert 0 < lam_hat < 1 and sorted(perm) == list(range(6))
    torch.testing.assert_close(mx, lam_hat * x + (1 - lam_hat) * x[perm])
    torch.testing.assert_close(my, lam_hat * logits + (1 - lam_hat) * logits[perm])
    out = torch.randn(6, 6)
    mixed_ce = F.cross_entropy(out, y2)
    naive = lam_hat * F.cross_entropy(out, torch.arange(6)) + (1 - lam_hat) * F.cross_entropy(out, torch.tensor(perm))
    torch.testing.assert_close(mixed_ce, naive)


def test_mixup_is_part_of_the_protocol_only_when_on():
    from condense.train import TrainProtocol, protocol_dict

    assert "mixup" not in protocol_dict(TrainProtocol())  # earlier job keys stay valid
    assert protocol_dict(TrainProtocol(mixup=0.8))["mixup"] == 0.8
    with pytest.raises(ConfigError, match="mixup"):
        TrainProtocol(mixup=-1.0).validate()
