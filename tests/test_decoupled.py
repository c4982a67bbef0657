"""Decoupled distillation (issue #21): teachers, sre2l (SRe2L/CDA), rded, rrc views, fair scores.

The math is checked against naive references written here: the BatchNorm-statistics loss
and its gradient against a per-batch, per-channel loop over hooked layer inputs (the
reference's one forward per batch), CDA's schedule against its formula, RDED's stitching
against an explicit cell copy, the random-resized crop against slicing, DD-Ranking's
scores against their formulas.
"""
from __future__ import annotations

import json
import math

import h5py
import pytest
import torch

from condense.augment import DSAConfig, apply_dsa, crop_resize, parse_strategy, sample_dsa
from condense.runtime.errors import ConfigError, FormatError
from condense.labels.squeeze import TeacherConfig, train_teacher
from condense.labels.teacher_file import load_teacher_file
from condense.methods.rded import RDEDConfig, pad_center, run_rded, stitch
from condense.methods.sre2l import SRe2L, SRe2LConfig, batches, bn_layers, bn_loss, cda_min_scale, run_sre2l
from condense.runtime.rng import generator
from condense.synset import load_synset
from conftest import Killed, kill_after

CPU = torch.device("cpu")
QUIET = dict(progress=lambda s: None, bars=False)
ARCH = "convnet:width=8"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A toy ConvNet-BN teacher (2 epochs; quality is irrelevant, its BN statistics are real)."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.h5"
    train_teacher(TeacherConfig(dataset="toy", arch="convnet:norm=batch,width=8", epochs=2, batch_size=64,
                                out=str(out)), CPU, progress=False)
    return str(out)


def sre2l_cfg(teacher, tmp_path, **over) -> SRe2LConfig:
    base = dict(teacher=teacher, ipc=2, arch=ARCH, iters=6, lr_img=0.1, r_bn=0.05, checkpoint_every=3,
                out=str(tmp_path / "sre2l.h5"))
    return SRe2LConfig(**{**base, **over})


# --- teacher files ---------------------------------------------------------------------------------

def test_teacher_file_round_trips_weights_statistics_and_record(teacher, tmp_path):
    t = load_teacher_file(teacher)
    assert t.dataset == "toy" and t.arch.startswith("convnet:") and "norm=batch" in t.arch
    assert t.class_names == ("pattern-0", "pattern-1", "pattern-2", "pattern-3") and 0 <= t.accuracy <= 100
    assert t.config["protocol"]["epochs"] == 2 and t.data["val_size"] > 0
    bn = bn_layers(t.net)[0]
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # statistics were saved
    t.save(tmp_path / "copy.h5")
    again = load_teacher_file(tmp_path / "copy.h5")
    for (k, a), (_, b) in zip(t.net.state_dict().items(), again.net.state_dict().items()):
        assert torch.equal(a, b), k
    # a rerun with the same settings does not retrain
    before = (tmp_path / "copy.h5").read_bytes()
    cfg = TeacherConfig(dataset="toy", arch="convnet:norm=batch,width=8", epochs=2, batch_size=64,
                        out=str(tmp_path / "copy.h5"))
    train_teacher(cfg, CPU, progress=False)
    assert (tmp_path / "copy.h5").read_bytes() == before


def test_bad_teacher_files_are_one_line_errors(teacher, tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        load_teacher_file(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "condense.synset"
    with pytest.raises(FormatError, match="not a condense teacher"):
        load_teacher_file(tmp_path / "other.h5")
    t = load_teacher_file(teacher)
    t.net = torch.nn.Linear(2, 2)  # weights of another network under this arch
    t.save(tmp_path / "wrong.h5")
    with pytest.raises(FormatError, match="do not fit"):
        load_teacher_file(tmp_path / "wrong.h5")


def permuted_teacher(teacher, tmp_path) -> str:
    t = load_teacher_file(teacher)
    t.class_names = tuple(reversed(t.class_names))
    return str(t.save(tmp_path / "permuted.h5"))


def test_class_order_mismatch_and_a_set_without_teacher_are_one_line_each(teacher, tmp_path, capsys):
    from condense.cli.main import main

    s = run_sre2l(sre2l_cfg(teacher, tmp_path, iters=1), CPU, **QUIET)
    assert s.provenance["teacher"]["file"] == teacher
    bad = permuted_teacher(teacher, tmp_path)
    assert main(["labels", s.config["out"], "--teacher", bad, "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class order" in err[0] and "pattern-0" in err[0]
    assert main(["synth", "random", "--dataset", "toy", "--ipc", "1", "--out", str(tmp_path / "r.h5")]) == 0
    capsys.readouterr()
    assert main(["labels", str(tmp_path / "r.h5"), "--views", "per-epoch", "--out", str(tmp_path / "y.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "records no teacher" in err[0]
    assert main(["synth", "sre2l", "--ipc", "1", "--out", str(tmp_path / "z.h5")]) == 2
    assert "needs --teacher" in capsys.readouterr().err
    # the set's own teacher is the default: per-view labels on rrc+flip views
    assert main(["labels", s.config["out"], "--views", "per-epoch", "--view-epochs", "3", "--view-strategy",
                 "rrc+flip", "--out", str(tmp_path / "soft.h5")]) == 0
    soft = load_synset(tmp_path / "soft.h5")
    assert soft.labels.shape == (3, 8, 4) and soft.label_spec.view_strategy == "rrc+flip"


# --- sre2l ----------------------------------------------------------------------------------------

def naive_bn_term(inputs, running, sizes, first=10.0):
    """Per batch: Σ_l m_l (‖mean − μ‖ + ‖var − σ²‖), every statistic an explicit loop over channels."""
    out = []
    start = 0
    for size in sizes:
        total = 0.0
        for l, (x, (mu, var)) in enumerate(zip(inputs, running)):
            xb = x[start:start + size]
            dm, dv = 0.0, 0.0
            for c in range(xb.shape[1]):
                v = xb[:, c].reshape(-1)
                m = v.sum() / v.numel()
                s2 = ((v - m) ** 2).sum() / v.numel()
                dm = dm + (m - mu[c]) ** 2
                dv = dv + (s2 - var[c]) ** 2
            total = total + (first if l == 0 else 1.0) * (dm.sqrt() + dv.sqrt())
        out.append(total)
        start += size
    return torch.stack(out)


@pytest.mark.parametrize("sizes", [[3, 3, 3], [4, 2]])
def test_bn_loss_and_gradient_equal_a_naive_per_layer_loop(sizes):
    g = generator(5)
    n = sum(sizes)
    inputs = [torch.randn(n, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(n, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)]
    running = [(torch.randn(3, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)),
               (torch.randn(2, generator=g, dtype=torch.float64), torch.rand(2, generator=g, dtype=torch.float64))]
    ours = bn_loss(inputs, running, sizes)
    ref = naive_bn_term(inputs, running, sizes)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    w = torch.arange(1.0, len(sizes) + 1, dtype=torch.float64)  # a weighting that tells the batches apart
    ga = torch.autograd.grad((ours * w).sum(), inputs)
    gb = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def reference_loss(method: SRe2L, it: int) -> torch.Tensor:
    """SRe2L's way: each batch through the teacher alone, a hook per BN layer computing its term with
    the reference's permute/view variance, CE + r_bn · (first · r_1 + Σ r_l), summed over batches."""
    cfg = method.cfg
    x_all = method.augment(method.images, it)  # the same views (sampling is tested apart)
    y_all = method.classes
    total, start = 0.0, 0
    for size in method.sizes:
        terms = []

        def hook(module, args):
            x = args[0]
            nch = x.shape[1]
            mean = x.mean([0, 2, 3])
            var = x.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
            terms.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

        handles = [m.register_forward_pre_hook(hook) for m in bn_layers(method.net)]
        logits = method.net(x_all[start:start + size])
        for h in handles:
            h.remove()
        ce = torch.nn.functional.cross_entropy(logits, y_all[start:start + size])
        bn = cfg.first_bn_multiplier * terms[0] + sum(terms[1:])
        total = total + ce + cfg.r_bn * bn
        start += size
    return total


@pytest.mark.parametrize("class_batches", [False, True])
def test_one_forward_for_all_batches_equals_a_forward_per_batch(teacher, tmp_path, class_batches):
    method = SRe2L(sre2l_cfg(teacher, tmp_path, ipc=3, batch_size=2 if class_batches else 3,
                             class_batches=class_batches), CPU)
    assert len(set(method.sizes)) == 2  # unequal batches take the per-batch path of the statistics
    ours, _, _ = method.loss(1)
    (g_ours,) = torch.autograd.grad(ours, method.images)
    ref = reference_loss(method, 1)
    (g_ref,) = torch.autograd.grad(ref, method.images)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_chunked_forwards_give_the_gradient_of_one_forward(teacher, tmp_path):
    whole = SRe2L(sre2l_cfg(teacher, tmp_path, ipc=3, batch_size=3, chunk=1000), CPU)
    chunked = SRe2L(sre2l_cfg(teacher, tmp_path, ipc=3, batch_size=3, chunk=4), CPU)
    assert len(whole.parts()) == 1 and [(p.start, p.stop) for p in chunked.parts()] == [(0, 2), (2, 4), (4, 6)]
    a, b = whole.compute_grads(2), chunked.compute_grads(2)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    torch.testing.assert_close(chunked.images.grad, whole.images.grad, rtol=1e-4, atol=1e-6)


def test_bfloat16_forwards_keep_float32_statistics_loss_and_gradient(teacher, tmp_path):
    # No GPU in CI: CPU autocast runs the same bfloat16 teacher forward that --amp runs on CUDA,
    # so the casts that keep the BN statistics, the CE and the image gradient in float32 are checked here.
    from condense.labels.teachers import teacher_of_file

    method = SRe2L(sre2l_cfg(teacher, tmp_path, ipc=3, batch_size=3), CPU)
    labeller = teacher_of_file(teacher, load_teacher_file(teacher))
    ref, _, _ = method.loss(1)
    (g_ref,) = torch.autograd.grad(ref, method.images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, ce, bn = method.loss(1)
        logits = labeller.logits(method.images.detach())
    assert low.dtype == ce.dtype == bn.dtype == logits.dtype == torch.float32
    (g_low,) = torch.autograd.grad(low, method.images)
    assert g_low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=3e-2, atol=1e-3)
    assert torch.nn.functional.cosine_similarity(g_low.flatten(), g_ref.flatten(), dim=0) > 0.98
    torch.testing.assert_close(logits, labeller.logits(method.images.detach()), rtol=5e-2, atol=5e-2)


def test_batches_are_sre2l_and_lpld_layouts():
    assert [b.tolist() for b in batches(3, 2, 100, False)] == [[0, 2, 4], [1, 3, 5]]  # image j of every class
    assert [b.tolist() for b in batches(3, 2, 2, False)] == [[0, 2], [4], [1, 3], [5]]
    assert [b.tolist() for b in batches(2, 3, 2, True)] == [[0, 1], [2], [3, 4], [5]]  # one class per batch


def test_cda_schedule_follows_its_formula():
    assert cda_min_scale(0, 100) == 1.0
    assert cda_min_scale(50, 100) == pytest.approx(0.08 + 0.92 * 0.5)
    assert cda_min_scale(25, 100) == pytest.approx(0.08 + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert cda_min_scale(100, 100) == 0.08 and cda_min_scale(60, 100, milestone=0.5) == 0.08
    assert cda_min_scale(25, 100, "linear") == pytest.approx(0.08 + 0.92 * 0.75)
    assert cda_min_scale(49, 100, "step", milestone=0.5) == 1.0
    assert cda_min_scale(0, 100, milestone=0.0) == 0.08  # milestone 0: no curriculum (CDA's default)


def test_recovery_lowers_the_loss_and_a_killed_run_resumes_exactly(teacher, tmp_path):
    method = SRe2L(sre2l_cfg(teacher, tmp_path / "probe", jitter=0, min_scale=1.0, flip=False), CPU)
    before = method.loss(0)[0].item()
    whole = run_sre2l(sre2l_cfg(teacher, tmp_path / "a", iters=20, jitter=0, min_scale=1.0, flip=False,
                                checkpoint_every=5), CPU, **QUIET)
    method.images.data.copy_(whole.images)
    assert method.loss(0)[0].item() < 0.85 * before  # measured 4.26 -> 3.29

    cfg = sre2l_cfg(teacher, tmp_path / "b", curriculum="cda")
    a = run_sre2l(sre2l_cfg(teacher, tmp_path / "c", curriculum="cda"), CPU, **QUIET)
    with pytest.raises(Killed):
        run_sre2l(sre2l_cfg(teacher, tmp_path / "b", curriculum="cda", eval_every=1), CPU, **QUIET,
                  evaluate=kill_after(4))
    resumed = run_sre2l(cfg, CPU, **QUIET)
    assert torch.equal(a.images, resumed.images)
    saved = load_synset(cfg.out)
    assert saved.method == "sre2l" and saved.provenance["teacher"]["sha256"] == saved.config["teacher_sha256"]
    assert saved.classes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    lo = saved.transform.from_pixels(torch.zeros(1, 3, 1, 1))
    hi = saved.transform.from_pixels(torch.ones(1, 3, 1, 1))
    assert bool((saved.images >= lo - 1e-6).all() and (saved.images <= hi + 1e-6).all())  # clipped to pixels
    rows = (tmp_path / "b" / "sre2l.h5.run" / "metrics.csv").read_text().splitlines()
    assert "min_scale" in rows[0] and float(rows[1].split(",")[rows[0].split(",").index("min_scale")]) == 1.0


def test_shards_on_two_workers_merge_into_the_unsharded_set(teacher, tmp_path):
    whole = run_sre2l(sre2l_cfg(teacher, tmp_path / "a", ipc=3, batch_size=3), CPU, **QUIET)
    spread = run_sre2l(sre2l_cfg(teacher, tmp_path / "b", ipc=3, batch_size=3, devices=["cpu", "cpu"]), CPU, **QUIET)
    torch.testing.assert_close(spread.images, whole.images, rtol=1e-4, atol=1e-5)
    assert len(spread.provenance["shards"]) == 2 and "shard" not in spread.config
    part = load_synset(spread.provenance["shards"][1])
    # batches of 3 classes: [0, 3, 6], [9], [1, 4, 7], [10], ...; shard 1 holds batches 1, 3, 5
    assert part.provenance["shard"] == [1, 2] and part.provenance["rows"] == [9, 10, 11]


# --- rded ------------------------------------------------------------------------------------------

def test_stitch_puts_patch_k_ipc_plus_i_in_cell_k_of_image_i():
    ipc, f = 2, 2
    patches = torch.arange(ipc * f * f, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 3, 3)
    out = stitch(patches, ipc, f)
    assert out.shape == (2, 1, 6, 6)
    for i in range(ipc):
        for k in range(f * f):
            r, c = divmod(k, f)
            assert bool((out[i, 0, 3 * r:3 * r + 3, 3 * c:3 * c + 3] == k * ipc + i).all())
    padded = pad_center(torch.ones(1, 1, 2, 2), (4, 4))
    assert padded.sum() == 4 and padded[0, 0, 1:3, 1:3].sum() == 4


def test_rded_picks_the_teachers_most_realistic_crops_deterministically(teacher, tmp_path):
    cfg = RDEDConfig(teacher=teacher, ipc=2, arch=ARCH, factor=2, num_crop=3, candidates=12, out=str(tmp_path / "r.h5"))
    s = run_rded(cfg, CPU, **QUIET)
    again = run_rded(RDEDConfig(**{**cfg.__dict__, "out": str(tmp_path / "r2.h5")}), CPU, **QUIET)
    assert torch.equal(s.images, again.images) and s.images.shape == (8, 3, 16, 16)
    from condense.data import load_dataset

    ds = load_dataset("toy")
    sources = s.provenance["cell_sources"]
    assert len(sources) == 8 and all(len(cells) == 4 for cells in sources)
    assert all(int(ds.y_train[j]) == int(c) for cells, c in zip(sources, s.classes) for j in cells)
    # the kept crops score at least as well as every other candidate's best crop (lowest teacher CE)
    from condense.methods.rded import select_class

    t = load_teacher_file(teacher).net.eval()
    members = torch.nonzero(ds.y_train == 1).flatten()
    images, picked = select_class(t, ds.x_train, members, 1, cfg, CPU)
    assert torch.equal(images, s.images[2:4])
    other = run_rded(RDEDConfig(**{**cfg.__dict__, "seed": 1, "out": str(tmp_path / "r3.h5")}), CPU, **QUIET)
    assert not torch.equal(other.images, s.images)


# --- random-resized crop --------------------------------------------------------------------------

def test_rrc_crops_as_slicing_and_rrc_flip_applies_both():
    x = torch.randn(2, 3, 8, 8)
    half = crop_resize(x, torch.tensor([[0.5, 0.5, 0.5, 0.0]]), (4, 4))  # top-right quarter at its own size
    torch.testing.assert_close(half, x[:, :, :4, 4:], rtol=1e-5, atol=1e-5)
    whole = crop_resize(x, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), (8, 8))
    torch.testing.assert_close(whole, x, rtol=1e-5, atol=1e-5)
    assert parse_strategy("rrc+flip") == ("rrc", "flip")
    with pytest.raises(ConfigError, match="mixes"):
        parse_strategy("rrc+flip_color")
    d = sample_dsa(DSAConfig(strategy="rrc+flip", share="view"), 400, (3, 8, 8), generator(0))
    assert bool(d.active.all())
    w, h = d.rrc[:, 0], d.rrc[:, 1]
    area = w * h
    assert float(area.min()) >= 0.08 - 1e-6 and float(area.max()) <= 1.0
    assert bool((d.rrc[:, 2] + w <= 1 + 1e-6).all() and (d.rrc[:, 3] + h <= 1 + 1e-6).all())
    assert 0.35 < float(d.flip.float().mean()) < 0.65
    # a DSA strategy's draws are untouched by the new transform's existence
    a = sample_dsa(DSAConfig(), 5, (3, 8, 8), generator(1))
    assert a.rrc is None
    y = apply_dsa(x, sample_dsa(DSAConfig(strategy="rrc+flip"), 2, (3, 8, 8), generator(2)))
    assert y.shape == x.shape


# --- fair scores ------------------------------------------------------------------------------------

def test_fair_scores_follow_dd_rankings_formulas():
    from evals.report import fair_scores

    def row(accs, **kw):
        base = {"synset": None, "arch": "a", "ipc": 10, "variant": "set", "baseline": None, "accs": accs}
        return {**base, **kw}

    set_row = row([70.0, 72.0], synset="s.h5", labels="teacher t", random_labels="teacher t", dsa_strategy="rrc+flip")
    rows = [set_row,
            row([60.0, 64.0], synset="s.h5", variant="hard", labels="hard"),
            row([50.0, 54.0], synset="s.h5", variant="no-dsa", labels="teacher t"),
            row([65.0, 66.0], baseline="random", labels="teacher t", dsa_strategy="rrc+flip"),
            row([45.0, 47.0], baseline="random", variant="no-dsa", labels="teacher t", dsa_strategy=None),
            row([90.0, 92.0], baseline="full", ipc=None, labels="hard")]
    got = {s["score"]: s for s in fair_scores(rows, set_row)}
    e = lambda x: (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))  # noqa: E731
    hlr = [91 - 60, 91 - 64]
    ior = [70 - 65, 72 - 66]
    assert got["hlr"]["mean"] == pytest.approx(sum(hlr) / 2) and got["ior"]["mean"] == pytest.approx(sum(ior) / 2)
    lrs = [100 * e((0.5 * i - 0.5 * h) / 100) for i, h in zip(ior, hlr)]
    assert got["lrs"]["mean"] == pytest.approx(sum(lrs) / 2)
    ars = [100 * e((0.5 * (70 - 65) + 0.5 * (50 - 45)) / 100), 100 * e((0.5 * (72 - 66) + 0.5 * (54 - 47)) / 100)]
    assert got["ars"]["mean"] == pytest.approx(sum(ars) / 2)
    assert e(0.0) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1))) and e(1.0) == pytest.approx(1.0)


def test_eval_scores_train_random_real_under_the_sets_teacher_labels(teacher, tmp_path):
    from condense.labels.run import LabelsConfig, run_labels
    from evals import EvalConfig, run_eval

    s = run_rded(RDEDConfig(teacher=teacher, ipc=1, arch=ARCH, factor=2, num_crop=2, candidates=8,
                            out=str(tmp_path / "rded.h5")), CPU, **QUIET)
    soft = str(tmp_path / "rded.soft.h5")
    run_labels(LabelsConfig(synset=s.config["out"], views="per-epoch", view_epochs=4, view_strategy="rrc+flip",
                            temperature=4.0, out=soft), progress=lambda m: None, bars=False)
    cfg = EvalConfig(runs=2, epochs=3, scores=True, full_runs=1, json=str(tmp_path / "ev" / "results.json"),
                     plots=str(tmp_path / "ev" / "plots"))
    notes = []
    doc = run_eval(cfg, [soft], note=notes.append, bars=False)
    rows = doc["results"]
    fair_png = tmp_path / "ev" / "plots" / "fair.png"
    assert fair_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and any(str(fair_png) in n for n in notes)
    from evals.report import plot_fair

    assert plot_fair(rows, [], tmp_path / "none") is None and not (tmp_path / "none").exists()
    rnd = [r for r in rows if r["baseline"] == "random"]
    assert {r["labels"] for r in rnd} == {"teacher teacher.h5, per-epoch rrc+flip", "hard"}
    assert all(r["dsa_strategy"] in ("rrc+flip", None) for r in rows if r["baseline"] != "full")
    assert {s["score"] for s in doc["scores"]} >= {"vs_random", "hlr", "ior", "lrs", "ars"}
    full = next(r for r in rows if r["baseline"] == "full")
    assert full["epochs"] == 21 and full["runs"] == 1  # the reference keeps its own length (its loop: 20 + 1) beside sets
    assert any("fair scores" in n for n in notes)
    # the random baseline's labels are the teacher's on exactly the views it trains on
    from condense.augment import views
    from condense.synset import file_sha256
    from evals.protocol import Source, label_recipe, training_data

    labelled = load_synset(soft)
    src = Source.of_synset(soft, labelled, file_sha256(soft)).random_baseline(1, label_recipe(labelled))
    images, labels, spec, _ = training_data(src, "set", 0, 1)
    assert labels.shape == (4, 4, 4) and spec.view_strategy == "rrc+flip" and spec.temperature == 4.0
    net = load_teacher_file(teacher).net.eval()
    with torch.no_grad():
        expected = net(views(images, DSAConfig(strategy="rrc+flip"), 0, 2))
    torch.testing.assert_close(labels[2], expected, rtol=1e-5, atol=1e-5)
    # a moved teacher is one line at plan time
    import os

    from evals.grid import plan

    os.rename(teacher, teacher + ".moved")
    try:
        with pytest.raises(ConfigError, match="is not there"):
            run_eval(EvalConfig(runs=1, epochs=1, json=str(tmp_path / "ev2.json")), [soft], note=notes.append,
                     bars=False)
        # --teacher names where it is now; another file there is refused, not used to label random real
        assert plan(EvalConfig(runs=1, scores=True, teacher=teacher + ".moved"), [soft])
        other = tmp_path / "other-teacher.h5"
        other.write_bytes(open(teacher + ".moved", "rb").read() + b"\0")
        with pytest.raises(ConfigError, match="is not the file that labelled the set"):
            plan(EvalConfig(runs=1, scores=True, teacher=str(other)), [soft])
    finally:
        os.rename(teacher + ".moved", teacher)


# --- the pipeline ------------------------------------------------------------------------------------

def test_the_decoupled_pipeline_runs_scores_every_family_and_resumes(tmp_path, capsys):
    from condense.cli.main import main

    argv = ["run", "--preset", "toy/decoupled", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    sets = {r["synset"].rsplit("/", 1)[-1] for r in doc["results"] if r["synset"]}
    assert sets == {"sre2l_ipc1.soft.h5", "rded_ipc1.soft.h5", "rded_ipc1.top2.h5", "dm_ipc1.h5"}
    fair = {(s["synset"].rsplit("/", 1)[-1], s["score"]) for s in doc["scores"]}
    for name in sets:
        assert {(name, k) for k in ("hlr", "ior", "lrs", "ars")} <= fair, name
    top2 = load_synset(tmp_path / "rded_ipc1.top2.h5")
    assert top2.label_spec.codec.startswith("topk") and top2.provenance["labels"]["views"] == "per-epoch"
    assert load_synset(tmp_path / "sre2l_ipc1.soft.h5").provenance["teacher"]["file"] == str(tmp_path / "teacher.h5")
    out = capsys.readouterr().out
    assert "fair scores" in out
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fair_scores_table.py"
    table = subprocess.run([sys.executable, str(script), str(tmp_path / "results.json"), "--steps",
                            str(tmp_path / "steps.jsonl")], capture_output=True, text=True, check=True).stdout
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    assert {"`sre2l_ipc1.soft.h5`", "`rded_ipc1.top2.h5`", "`dm_ipc1.h5`", "`synth-sre2l`"} <= set(lines)
    lrs = next(x for x in doc["scores"] if x["score"] == "lrs" and x["synset"].endswith("dm_ipc1.h5"))
    assert f"{lrs['mean']:.2f}" in lines["`dm_ipc1.h5`"]
    assert main(argv) == 0  # a rerun finds every step done
    out = capsys.readouterr().out
    assert "already trained" in out and "already synthesized" in out and "already selected" in out
    assert "already labelled" in out and "resuming" in out


def test_per_view_labels_spread_over_two_workers_equal_one_process(teacher, tmp_path):
    from condense.labels.run import LabelsConfig, run_labels

    s = run_rded(RDEDConfig(teacher=teacher, ipc=1, arch=ARCH, num_crop=2, candidates=8, out=str(tmp_path / "r.h5")),
                 CPU, **QUIET)
    base = dict(synset=s.config["out"], views="per-epoch", view_epochs=5, view_strategy="rrc+flip", temperature=2.0)
    one = run_labels(LabelsConfig(**base, out=str(tmp_path / "one.h5")), progress=lambda m: None, bars=False)
    two = run_labels(LabelsConfig(**base, devices=["cpu", "cpu"], out=str(tmp_path / "two.h5")),
                     progress=lambda m: None, bars=False)
    torch.testing.assert_close(two.labels, one.labels, rtol=1e-5, atol=1e-5)
    assert two.label_spec == one.label_spec
    assert two.provenance["labels_run"] == one.provenance["labels_run"]  # where it ran is not what it is



def test_labels_on_one_named_device_run_there_in_process(teacher, tmp_path, monkeypatch):
    """``--devices cuda:0`` labels on that device in this process (it used to stay on the CPU)."""
    import condense.labels.run as labels_run
    from condense.labels.run import LabelsConfig, run_labels

    s = run_rded(RDEDConfig(teacher=teacher, ipc=1, arch=ARCH, num_crop=2, candidates=8, out=str(tmp_path / "r.h5")),
                 CPU, **QUIET)
    seen = []
    real = labels_run.label_images
    monkeypatch.setattr(labels_run, "label_images",
                        lambda images, teacher, *a, **kw: seen.append(images.device) or real(images, teacher, *a, **kw))
    base = dict(synset=s.config["out"], views="per-epoch", view_epochs=3, view_strategy="rrc+flip")
    here = run_labels(LabelsConfig(**base, devices=["cpu"], out=str(tmp_path / "one.h5")),
                      progress=lambda m: None, bars=False)
    assert seen == [torch.device("cpu")]  # went through label_on, once, in this process
    assert here.labels.shape[:2] == (3, s.images.shape[0])

def test_regression_targets_train_on_their_classes_in_the_hard_row(tmp_path):
    from condense.data import load_dataset
    from condense.synset import LabelSpec, SynSet, file_sha256
    from evals.protocol import Source, training_data

    ds = load_dataset("toy")
    classes = torch.arange(4).repeat_interleave(2)
    targets = torch.randn(8, 4, generator=generator(3))  # FRePo-like learned class scores
    s = SynSet(images=ds.x_train[:8].clone(), classes=classes, labels=targets, dataset="toy", num_classes=4,
               method="frepo", label_spec=LabelSpec(kind="regression", loss="mse"), transform=ds.transform,
               data=dict(ds.meta), config={"arch": ARCH})
    path = str(s.save(tmp_path / "frepo.h5"))
    src = Source.of_synset(path, s, file_sha256(path))
    _, labels, spec, _ = training_data(src, "hard", 0, 0)
    assert torch.equal(labels, classes) and spec.kind == "hard"
    from evals.grid import EvalConfig, plan

    variants = {(g.method, g.variant) for g in plan(EvalConfig(runs=1, epochs=1, scores=True, full_runs=1), [path])}
    assert ("frepo", "hard") in variants and ("full", "set") in variants
