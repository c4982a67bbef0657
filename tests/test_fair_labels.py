"""Fair scores for every kind of label, and CV-DD's committee.

Random real must be labelled as the set was: each label kind's random-real labels are checked
against a naive construction written here (a store's experts averaged in probability, a
CV-DD committee's weighted logits, DATM's experts' logits, a codec applied afterwards); kinds
that cannot be remade say why; the committee's recovery loss is checked against a per-member
loop, its weights against softmax(prior / τ).
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from condense.data import load_dataset
from condense.data.subset import class_balanced_indices
from condense.labels.squeeze import TeacherConfig, train_teacher
from condense.labels.teacher_file import load_teacher_file
from condense.runtime.errors import ConfigError
from condense.synset import LabelSpec, file_sha256, load_synset, real_subset

CPU = torch.device("cpu")
ARCH = "convnet:width=8"
QUIET = {"progress": lambda m: None, "bars": False}


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[str]:
    """Two toy BN teachers of different architectures (1 epoch: quality is irrelevant), their
    recorded validation accuracies set to 60 and 70 % so that the vote weights differ."""
    import h5py

    folder = tmp_path_factory.mktemp("teachers")
    out = []
    for name, arch, val in (("a.h5", "convnet:norm=batch,width=8", 60.0),
                            ("b.h5", "convnet:norm=batch,width=8,depth=2", 70.0)):
        train_teacher(TeacherConfig(dataset="toy", arch=arch, epochs=1, batch_size=64, out=str(folder / name)), CPU,
                      progress=False)
        with h5py.File(folder / name, "r+") as f:
            f.attrs["val_accuracy"] = val
        out.append(str(folder / name))
    return out


def hard_set(toy, tmp_path, name="hard.h5", **config):
    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 5), "herding", config={"arch": ARCH, **config})
    return str(s.save(tmp_path / name))


def random_labels(path: str, run: int = 0):
    """(images, labels, spec) random real run ``run`` trains on beside the set ``path``."""
    from evals.protocol import Source, label_recipe, training_data

    s = load_synset(path)
    src = Source.of_synset(path, s, file_sha256(path)).random_baseline(s.ipc, label_recipe(s))
    images, labels, spec, _ = training_data(src, "set", 0, run)
    return images, labels, spec


def label(path, out, **kw):
    from condense.labels.run import LabelsConfig, run_labels

    run_labels(LabelsConfig(synset=path, out=str(out), **kw), **QUIET)
    return str(out)


# --- the committee ---------------------------------------------------------------------------------

def test_committee_weights_are_a_softmax_of_the_priors_over_the_temperature():
    from condense.labels.teachers import committee_weights

    w = committee_weights([64.0, 60.6, 51.6], 10.0)
    e = [pytest.approx(v) for v in torch.softmax(torch.tensor([6.4, 6.06, 5.16], dtype=torch.float64), 0).tolist()]
    assert w == e and sum(w) == pytest.approx(1.0)
    assert committee_weights([70.0, 70.0], 5.0) == [0.5, 0.5]


def test_a_members_prior_is_its_validation_accuracy_else_its_test_accuracy(teachers):
    import dataclasses

    from condense.labels.teachers import member_prior

    tf = load_teacher_file(teachers[0])
    assert member_prior(tf) == 60.0
    assert member_prior(dataclasses.replace(tf, val_accuracy=None)) == pytest.approx(tf.accuracy)


def test_committee_labels_are_the_weighted_sum_of_the_members_logits(toy, teachers, tmp_path):
    a, b = teachers
    path = hard_set(toy, tmp_path)
    out = label(path, tmp_path / "c.h5", teacher=a, committee_teacher=[b], committee_temperature=10.0,
                views="static", temperature=3.0)
    s = load_synset(out)
    w = torch.softmax(torch.tensor([6.0, 7.0], dtype=torch.float64), 0).tolist()
    with torch.no_grad():
        want = sum(wi * load_teacher_file(t).net.eval()(s.images) for wi, t in zip(w, teachers))
    torch.testing.assert_close(s.labels, want, rtol=1e-5, atol=1e-5)
    assert s.provenance["labels"]["teacher"]["weights"] == pytest.approx(w)
    assert s.provenance["labels"]["teacher"]["prior"] == [60.0, 70.0]  # the members' validation accuracies
    # random real: the same committee, the same weights, on its own images
    images, labels, spec = random_labels(out, run=1)
    with torch.no_grad():
        want = sum(wi * load_teacher_file(t).net.eval()(images) for wi, t in zip(w, teachers))
    torch.testing.assert_close(labels, want, rtol=1e-5, atol=1e-5)
    assert spec.temperature == 3.0 and spec.kind == "logits"


def test_bad_committees_are_one_line_errors(toy, teachers, tmp_path, store_path):
    from condense.labels.teachers import load_committee

    a, b = teachers
    path = hard_set(toy, tmp_path)
    with pytest.raises(ConfigError, match="1 priors for 2"):
        load_committee([a, b], temperature=10.0, prior=[60.0])
    with pytest.raises(ConfigError, match="positive"):
        load_committee([a, b], temperature=0.0)
    with pytest.raises(ConfigError, match="once"):
        label(path, tmp_path / "x.h5", teacher=a, committee_teacher=[a])
    with pytest.raises(ConfigError, match="not a teacher file"):
        label(path, tmp_path / "x.h5", teacher=store_path, committee_teacher=[b])


def test_committee_recovery_loss_is_the_weighted_sum_of_each_members_loss(teachers, tmp_path):
    from condense.methods.sre2l import SRe2L, SRe2LConfig, bn_layers

    a, b = teachers
    cfg = SRe2LConfig(teacher=a, committee_teacher=[b], ipc=2, arch=ARCH, iters=4,
                      r_bn=0.05, out=str(tmp_path / "s.h5"))
    method = SRe2L(cfg, CPU)
    w = torch.softmax(torch.tensor([12.0, 14.0], dtype=torch.float64), 0).tolist()  # τ = 5: CV-DD's recovery
    total, _, _ = method.loss(0)
    total.backward()
    got = method.images.grad.clone()
    # naive: per member, per batch, a forward with hooks, CE + r_bn · Σ_l m_l (‖μ_B − μ‖ + ‖σ²_B − σ²‖)
    images = method.images.detach().clone().requires_grad_(True)
    x = method.augment(images, 0)
    want = 0.0
    for wi, t in zip(w, teachers):
        net = load_teacher_file(t).net.eval()
        layers = bn_layers(net)
        seen = []
        handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in layers]
        start = 0
        for size in method.sizes:
            seen.clear()
            z = net(x[start:start + size])
            bn = sum((10.0 if l == 0 else 1.0) * (torch.linalg.vector_norm(h.mean((0, 2, 3)) - m.running_mean)
                                                  + torch.linalg.vector_norm(h.var((0, 2, 3), unbiased=False)
                                                                             - m.running_var))
                     for l, (h, m) in enumerate(zip(seen, layers)))
            want = want + wi * (F.cross_entropy(z, method.classes[start:start + size]) + 0.05 * bn)
            start += size
        for h in handles:
            h.remove()
    torch.testing.assert_close(total, want, rtol=1e-5, atol=1e-5)
    want.backward()
    torch.testing.assert_close(got, images.grad, rtol=1e-4, atol=1e-6)
    s = method.synset(0)
    assert s.provenance["committee"]["weights"] == pytest.approx(w)
    assert len(method.config()["committee_sha256"]) == 2


def test_a_single_teacher_recovery_keeps_its_config(teachers, tmp_path):
    """Without a committee the run's identity is 0.7's: no committee keys, so earlier runs resume (its
    loss is checked against a per-batch loop in test_decoupled)."""
    from condense.methods.sre2l import SRe2L, SRe2LConfig

    method = SRe2L(SRe2LConfig(teacher=teachers[0], ipc=2, arch=ARCH, iters=4, out=str(tmp_path / "s.h5")), CPU)
    assert not any(k.startswith("committee") for k in method.config())
    assert "committee" not in method.synset(0).provenance and [w for *_, w in method.members] == [1.0]


# --- random real labelled as the set was -----------------------------------------------------------

def test_store_experts_label_random_real_as_they_labelled_the_set(toy, store_path, tmp_path):
    from condense.nets import build_net
    from trajectories.store import open_store

    path = hard_set(toy, tmp_path)
    out = label(path, tmp_path / "s.h5", teacher=store_path, committee=2, views="static", temperature=2.0)
    images, labels, spec = random_labels(out)
    store = open_store(store_path)
    probs = []
    for i in range(2):
        net = build_net(store.meta["arch"], 3, 4, (16, 16))
        store.layout.load_into(net, store.epoch(i, store.epochs))
        with torch.no_grad():
            probs.append(torch.softmax(net.eval()(images) / 2.0, 1))
    torch.testing.assert_close(labels, 2.0 * torch.log(torch.stack(probs).mean(0)), rtol=1e-5, atol=1e-5)
    assert spec.temperature == 2.0
    from evals.protocol import labels_tag, label_recipe

    assert labels_tag(label_recipe(load_synset(out))).startswith("store store experts 0-1, static")


def test_a_codec_applied_to_the_sets_labels_is_applied_to_random_reals(toy, teachers, tmp_path):
    from condense.codecs import decode_labels, encode_labels

    path = hard_set(toy, tmp_path)
    out = label(path, tmp_path / "q.h5", teacher=teachers[0], views="static", codec="topk:k=1,bits=8")
    images, labels, spec = random_labels(out)
    with torch.no_grad():
        plain = load_teacher_file(teachers[0]).net.eval()(images)
    spec0 = LabelSpec(kind="logits", loss="kl", temperature=1.0)
    from condense.codecs import LabelContext

    ctx = LabelContext(images, spec0, 4)
    want = decode_labels(spec.codec, encode_labels(spec.codec, plain, ctx), tuple(plain.shape),
                         LabelContext(images, spec, 4))
    torch.testing.assert_close(labels, want)
    assert spec.codec == load_synset(out).label_spec.codec


def test_tm_expert_labels_remade_and_learned_ones_say_why(toy, store_path, tmp_path):
    from conftest import tm_cfg
    from condense.methods.tm import run_tm
    from condense.nets import build_net
    from evals.grid import EvalConfig, plan
    from trajectories.store import open_store

    made = {}
    for mode in ("expert-once", "learned"):
        cfg = tm_cfg(store_path, tmp_path, labels=mode, iters=2, out=str(tmp_path / f"tm-{mode}.h5"))
        run_tm(cfg, CPU, **QUIET)
        made[mode] = cfg.out
    images, labels, spec = random_labels(made["expert-once"])
    from evals.protocol import Source, dataset_of

    s = load_synset(made["expert-once"])
    ds = dataset_of(Source.of_synset(made["expert-once"], s, file_sha256(made["expert-once"])))
    classes = ds.y_train[class_balanced_indices(ds.y_train, s.ipc, 0)]
    # naive DATM: the mean logits of the experts right about each image, else the first expert's
    store = open_store(store_path)
    zs = []
    for i in range(len(store)):
        net = build_net(s.config["arch"], 3, 4, (16, 16))
        store.layout.load_into(net, store.epoch(i, store.epochs))
        with torch.no_grad():
            zs.append(net(images))
    want = torch.empty_like(zs[0])
    for n in range(images.shape[0]):
        right = [z[n] for z in zs if int(z[n].argmax()) == int(classes[n])]
        want[n] = torch.stack(right).mean(0) if right else zs[0][n]
    torch.testing.assert_close(labels, want, rtol=1e-5, atol=1e-5)
    groups = plan(EvalConfig(runs=1, epochs=1, scores=True, full_runs=1, json=str(tmp_path / "e.json")),
                  [made["expert-once"], made["learned"]])
    why = {g.source.path: g.comparison for g in groups if g.source.kind == "synset"}
    assert why[made["expert-once"]] is None and "learned with the images (DATM)" in why[made["learned"]]
    rnd = {g.source.labels for g in groups if g.source.kind == "random"}
    assert any(r and "expert_logits" in json.loads(r) for r in rnd)


def test_labels_without_a_recipe_are_compared_with_hard_random_real_and_say_why(toy, tmp_path):
    from evals.grid import EvalConfig, plan

    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 5), "imported", config={"arch": ARCH})
    s = s.with_labels(F.one_hot(s.labels, 4).float() * 4, LabelSpec(kind="logits", loss="kl", temperature=1.0))
    path = str(s.save(tmp_path / "imported.h5"))
    groups = plan(EvalConfig(runs=1, epochs=1, scores=True, full_runs=1, json=str(tmp_path / "e.json")), [path])
    set_group = next(g for g in groups if g.source.kind == "synset")
    assert "record nothing" in set_group.comparison
    assert all(g.source.labels is None for g in groups if g.source.kind == "random")


def test_a_set_without_an_architecture_needs_arch(toy, tmp_path):
    from evals.grid import EvalConfig, plan

    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 5), "imported")
    path = str(s.save(tmp_path / "noarch.h5"))
    with pytest.raises(ConfigError, match="records no architecture"):
        plan(EvalConfig(runs=1, epochs=1, json=str(tmp_path / "e.json")), [path])
    assert plan(EvalConfig(runs=1, epochs=1, archs=[ARCH], json=str(tmp_path / "e.json")), [path])


def test_random_real_and_the_full_data_reference_respect_the_sets_data_limit(tmp_path):
    from evals.grid import EvalConfig, plan
    from evals.protocol import training_data

    limited = load_dataset("toy", limit_train=40)
    s = real_subset(limited, class_balanced_indices(limited.y_train, 2, 5), "herding", config={"arch": ARCH})
    path = str(s.save(tmp_path / "limited.h5"))
    groups = plan(EvalConfig(runs=1, epochs=1, scores=True, full_runs=1, json=str(tmp_path / "e.json")), [path])
    full = next(g for g in groups if g.source.kind == "full")
    rnd = next(g for g in groups if g.source.kind == "random")
    assert full.source.limit_train == rnd.source.limit_train == 40
    x, y, _, _ = training_data(full.source, "set", 0, 0)
    assert x.shape[0] == 40
    xr, yr, _, _ = training_data(rnd.source, "set", 0, 0)
    idx = class_balanced_indices(limited.y_train, 2, 0)  # naive: the same draw from the limited pool
    torch.testing.assert_close(xr, limited.x_train[idx])


def test_the_fair_table_names_random_reals_labels_and_why_they_differ():
    from evals.report import fair_table

    row = {"synset": "/x/datm.h5", "method": "tm", "ipc": 10, "arch": ARCH, "variant": "set", "baseline": None,
           "labels": "own logits", "random_labels": "experts' logits (store)", "mean": 70.0, "std": 1.0,
           "comparison": "its labels were learned with the images (DATM): ...", "storage_bytes": {}}
    scores = [{"synset": "/x/datm.h5", "arch": ARCH, "score": "ior", "mean": 1.0, "ci95": 0.5}]
    text = fair_table([row], scores)
    assert "experts' logits (store)" in text and "datm.h5: its labels were learned with the images (DATM)" in text
    assert "otherwise than the set" not in fair_table([{**row, "comparison": None}], scores)


def test_random_labels_hard_is_a_choice_the_report_names(toy, teachers, tmp_path):
    from evals.grid import EvalConfig, plan

    out = label(hard_set(toy, tmp_path), tmp_path / "t.h5", teacher=teachers[0], views="static")
    fair = plan(EvalConfig(runs=1, epochs=1, json=str(tmp_path / "e.json")), [out])
    assert {g.source.labels is None for g in fair if g.source.kind == "random"} == {False}
    cheap = plan(EvalConfig(runs=1, epochs=1, random_labels="hard", json=str(tmp_path / "e.json")), [out])
    assert all(g.source.labels is None for g in cheap if g.source.kind == "random")
    assert "--random-labels hard" in next(g for g in cheap if g.source.kind == "synset").comparison


def test_labels_of_a_committee_set_default_to_its_committee(teachers, tmp_path):
    from condense.methods.sre2l import SRe2LConfig, run_sre2l

    a, b = teachers
    s = run_sre2l(SRe2LConfig(teacher=a, committee_teacher=[b], ipc=1, arch=ARCH, iters=2, out=str(tmp_path / "s.h5")),
                  CPU, **QUIET)
    out = load_synset(label(s.config["out"], tmp_path / "l.h5", views="static"))
    members = [m["file"] for m in out.provenance["labels"]["teacher"]["committee"]]
    assert members == [a, b] and out.provenance["labels"]["teacher"]["temperature"] == 10.0


@pytest.mark.parametrize("change", [
    {"label_codecs": [{"codec": "nope:k=1"}]},
    {"label_codecs": [7]},
    {"label_codecs": [{"codec": "projector:rank=2"}], "labels_run": {"projector_steps": "many"}},
    {"labels": {"teacher": {"file": "t.h5", "sha256": "0"}, "views": "sideways", "temperature": 1.0}},
    {"labels": {"teacher": {"store": "s"}, "views": "static", "temperature": 1.0}},
])
def test_a_malformed_label_recipe_is_one_line_at_plan_time(toy, teachers, tmp_path, change):
    import h5py

    from condense.runtime.errors import FormatError
    from evals.grid import EvalConfig, plan

    out = label(hard_set(toy, tmp_path), tmp_path / "t.h5", teacher=teachers[0], views="static")
    with h5py.File(out, "r+") as f:
        f.attrs["provenance"] = json.dumps({**json.loads(f.attrs["provenance"]), **change})
    with pytest.raises(FormatError, match="provenance is malformed"):
        plan(EvalConfig(runs=1, epochs=1, json=str(tmp_path / "e.json")), [out])


def test_frepo_targets_are_compared_with_hard_random_real_and_say_why(toy, tmp_path):
    from evals.grid import EvalConfig, plan

    s = real_subset(toy, class_balanced_indices(toy.y_train, 2, 5), "frepo", config={"arch": ARCH})
    targets = F.one_hot(s.labels, 4).float() - 0.25
    s = s.with_labels(targets, LabelSpec(kind="regression", loss="mse"))
    path = str(s.save(tmp_path / "frepo.h5"))
    groups = plan(EvalConfig(runs=1, epochs=1, scores=True, full_runs=1, json=str(tmp_path / "e.json")), [path])
    assert "learned with the images (FRePo)" in next(g for g in groups if g.source.kind == "synset").comparison
    assert all(g.source.labels is None for g in groups if g.source.kind == "random")


def test_a_set_is_scored_against_the_random_and_full_rows_of_its_own_training_pool():
    """Sets made from a --limit-train subset and from the whole split get their own random-real and full-data
    rows (trained apart); the report pairs each set with the rows of its pool, not the first it meets."""
    from evals.report import random_row_of, scores

    def row(baseline, limit, mean, synset=None):
        return {"baseline": baseline, "synset": synset, "ipc": 10, "arch": "a", "variant": "set", "labels": "hard",
                "limit_train": limit, "accs": [mean] * 3, "mean": mean, "dsa_strategy": "x", "storage_bytes": {},
                "method": "m"}

    rows = [row("random", 100, 60.0), row("full", 100, 80.0), row("random", None, 70.0), row("full", None, 90.0),
            row(None, None, 75.0, "whole.h5"), row(None, 100, 65.0, "part.h5")]
    assert random_row_of(rows, rows[4])["mean"] == 70.0 and random_row_of(rows, rows[5])["mean"] == 60.0
    hlr = {s["synset"]: s["mean"] for s in scores(rows) if s["score"] == "hlr"}
    assert hlr == {"whole.h5": 15.0, "part.h5": 15.0}  # 90 - 75 and 80 - 65
