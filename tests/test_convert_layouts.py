"""``condense convert`` with the reference repositories' real layouts, both ways.

Fixtures are written as the reference code writes them (torch.save of bare tensors or of DC/DSA/DM's
dict), at the toy dataset's shapes: 4 classes of [3, 16, 16] images.
"""
from __future__ import annotations

import os

import pytest
import torch

from condense.cli.main import main
from condense.data import load_dataset
from condense.synset import LabelSpec, SynSet, load_synset

K, SHAPE, IPC = 4, (3, 16, 16), 2
N = K * IPC


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(res, *needles):
    code, _, err = res
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def images():
    return torch.randn(N, *SHAPE, generator=torch.Generator().manual_seed(0))


def hard():
    return torch.arange(K).repeat_interleave(IPC)


def logits():
    return torch.randn(N, K, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def toy():
    return load_dataset("toy")


def make_set(toy, path, *, soft=False, lr=0.01):
    kw = dict(dataset="toy", num_classes=K, method="test", transform=toy.transform, data=dict(toy.meta), lr=lr)
    if soft:
        s = SynSet(images=images(), classes=hard(), labels=logits(), label_spec=LabelSpec(kind="logits", loss="kl"), **kw)
    else:
        s = SynSet.hard(images(), hard(), **kw)
    s.save(path)
    return s


def same(a, b):
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.label_spec.kind == b.label_spec.kind
    assert (b.lr is None) if a.lr is None else b.lr == pytest.approx(a.lr)
    assert b.transform.describe() == a.transform.describe() and b.dataset == "toy"


# --- round trips: h5 -> layout -> h5 ------------------------------------------------------------

@pytest.mark.parametrize("layout, out, soft", [
    ("mtt", "mtt_dir", False), ("mtt", "datm_dir", True), ("ddranking", "ddr", False), ("ddranking", "ddr", True),
    ("dm", "res.pt", False), ("dict", "old.pt", True)])
def test_round_trip(layout, out, soft, toy, tmp_path, capsys):
    s = make_set(toy, tmp_path / "s.h5", soft=soft, lr=None if layout == "dm" else 0.01)
    assert cli(capsys, "convert", tmp_path / "s.h5", tmp_path / out, "--to", layout)[0] == 0
    code, stdout, err = cli(capsys, "convert", tmp_path / out, tmp_path / "back.h5", "--dataset", "toy")
    assert code == 0, err
    assert f"{layout} layout" in stdout  # detected, not named
    same(s, load_synset(tmp_path / "back.h5"))


def test_mtt_folder_holds_bare_tensors_as_distill_py_saves_them(toy, tmp_path, capsys):
    make_set(toy, tmp_path / "s.h5", soft=True)
    assert cli(capsys, "convert", tmp_path / "s.h5", tmp_path / "out", "--to", "mtt")[0] == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["images_best.pt", "labels_best.pt", "lr_best.pt"]
    load = lambda name: torch.load(tmp_path / "out" / name, weights_only=True)  # noqa: E731
    assert load("images_best.pt").shape == (N, *SHAPE) and load("labels_best.pt").dtype == torch.float32
    assert load("lr_best.pt").ndim == 0 and float(load("lr_best.pt")) == pytest.approx(0.01)


def test_ddranking_and_dm_files(toy, tmp_path, capsys):
    make_set(toy, tmp_path / "s.h5", lr=None)
    assert cli(capsys, "convert", tmp_path / "s.h5", tmp_path / "ddr", "--to", "ddranking")[0] == 0
    assert sorted(os.listdir(tmp_path / "ddr")) == ["images.pt", "labels.pt"]  # no lr learned: no lr.pt
    assert torch.load(tmp_path / "ddr" / "labels.pt", weights_only=True).dtype == torch.int64
    assert cli(capsys, "convert", tmp_path / "s.h5", tmp_path / "res.pt", "--to", "dm")[0] == 0
    obj = torch.load(tmp_path / "res.pt", weights_only=True)
    assert set(obj) == {"data", "accs_all_exps"} and len(obj["data"]) == 1 and obj["data"][0][0].shape == (N, *SHAPE)


# --- imports of fixtures written as the reference code writes them ------------------------------

def test_datm_soft_labels_and_lr_import(tmp_path, capsys):
    d = tmp_path / "logged"
    d.mkdir()
    torch.save(images(), d / "images_best.pt")
    torch.save(logits(), d / "labels_best.pt")
    torch.save(torch.tensor(0.03), d / "lr_best.pt")
    assert cli(capsys, "convert", d, tmp_path / "s.h5", "--dataset", "toy")[0] == 0
    s = load_synset(tmp_path / "s.h5")
    assert s.label_spec.kind == "logits" and torch.equal(s.labels, logits()) and s.lr == pytest.approx(0.03)
    assert torch.equal(s.classes, hard())
    assert "arch" not in s.config  # the layout does not say: condense eval then asks for --arch
    # --arch records the network the set was distilled with (canonical), evaluation's default
    assert cli(capsys, "convert", d, tmp_path / "a.h5", "--dataset", "toy", "--arch", "convnet:width=8")[0] == 0
    assert load_synset(tmp_path / "a.h5").config["arch"] == "convnet:act=relu,depth=3,norm=instance,pool=avg,width=8"
    code, _, err = cli(capsys, "convert", d, tmp_path / "b.h5", "--dataset", "toy", "--arch", "convnet:nope=1")
    assert code != 0 and "nope" in err and not (tmp_path / "b.h5").exists()


def test_mtt_iteration_snapshot(tmp_path, capsys):
    d = tmp_path / "logged"
    d.mkdir()
    torch.save(images(), d / "images_best.pt")
    torch.save(hard(), d / "labels_best.pt")
    torch.save(images() * 2, d / "images_500.pt")
    torch.save(hard(), d / "labels_500.pt")
    torch.save(torch.tensor([0.02]), d / "lr_500.pt")  # a 1-element lr
    assert cli(capsys, "convert", d, tmp_path / "s.h5", "--dataset", "toy", "--iteration", "500")[0] == 0
    s = load_synset(tmp_path / "s.h5")
    assert torch.equal(s.images, images() * 2) and s.lr == pytest.approx(0.02)
    refused(cli(capsys, "convert", d, tmp_path / "t.h5", "--dataset", "toy", "--iteration", "7"), "images_7.pt", "missing")
    assert not (tmp_path / "t.h5").exists()


def test_dm_experiment_pick(tmp_path, capsys):
    data = [[images() + e, hard()] for e in range(3)]
    torch.save({"data": data, "accs_all_exps": {"ConvNet": [0.5, 0.6]}}, tmp_path / "res_DM_toy_ConvNet_2ipc.pt")
    assert cli(capsys, "convert", tmp_path / "res_DM_toy_ConvNet_2ipc.pt", tmp_path / "s.h5",
               "--dataset", "toy", "--experiment", "2")[0] == 0
    assert torch.equal(load_synset(tmp_path / "s.h5").images, images() + 2)
    refused(cli(capsys, "convert", tmp_path / "res_DM_toy_ConvNet_2ipc.pt", tmp_path / "t.h5", "--dataset", "toy",
                "--experiment", "3"), "--experiment 3 is out of range", "3 experiment(s)")
    assert not (tmp_path / "t.h5").exists()


def test_ddranking_folder_detected(tmp_path, capsys):
    d = tmp_path / "syn"
    d.mkdir()
    torch.save(images(), d / "images.pt")
    torch.save(torch.softmax(logits(), 1), d / "labels.pt")
    code, out, _ = cli(capsys, "convert", d, tmp_path / "s.h5", "--dataset", "toy")
    assert code == 0 and "ddranking layout" in out and "logits labels" in out


# --- refusals: one line, exit 2, nothing written -------------------------------------------------

class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _folder(tmp_path, imgs, labels, names=("images_best.pt", "labels_best.pt")):
    d = tmp_path / "in"
    d.mkdir()
    if imgs is not None:
        torch.save(imgs, d / names[0])
    if labels is not None:
        torch.save(labels, d / names[1])
    return d


@pytest.mark.parametrize("case, make, needles", [
    ("pickle", lambda t: _folder(t, images(), Evil()), ("labels_best.pt", "refusing to unpickle")),
    ("shape", lambda t: _folder(t, torch.randn(N, 1, 28, 28), hard()), ("images_best.pt", "do not fit toy")),
    ("range", lambda t: _folder(t, images(), hard() + 1), ("labels_best.pt", "outside toy's classes")),
    ("missing labels", lambda t: _folder(t, images(), None), ("labels_best.pt", "missing")),
    ("soft shape", lambda t: _folder(t, images(), torch.randn(N, 10), ("images.pt", "labels.pt")),
     ("labels.pt", "soft labels must be float [8, 4]")),
    ("not a tensor", lambda t: _folder(t, {"x": images()}, hard()), ("images_best.pt", "must be a tensor")),
    ("bad lr", lambda t: (torch.save(torch.tensor(-1.0), _folder(t, images(), hard()) / "lr_best.pt"), t / "in")[1],
     ("lr_best.pt", "positive")),
    ("empty folder", lambda t: (t / "in").mkdir() or t / "in", ("neither images_best.pt",)),
    ("dm list", lambda t: (torch.save({"data": []}, t / "r.pt"), t / "r.pt")[1], ("non-empty list",)),
])
def test_a_bad_import_is_one_line_and_writes_nothing(case, make, needles, tmp_path, capsys):
    src = make(tmp_path)
    refused(cli(capsys, "convert", src, tmp_path / "out.h5", "--dataset", "toy"), *needles)
    assert not (tmp_path / "out.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.h5")]


@pytest.mark.parametrize("argv, needle", [
    (("{h5}", "{t}/x", ), "say which layout"),
    (("{h5}", "{t}/x", "--to", "dm"), "writes one .pt file"),
    (("{h5}", "{t}/x.pt", "--to", "mtt"), "writes a folder"),
    (("{h5}", "{t}/x.pt", "--iteration", "3"), "--iteration has no effect"),
    (("{t}/res.pt", "{t}/y.h5", "--dataset", "toy", "--iteration", "3"), "--iteration has no effect"),
    (("{t}/res.pt", "{t}/y.h5", "--dataset", "toy", "--from", "mtt"), "reads a folder"),
])
def test_flag_refusals(argv, needle, toy, tmp_path, capsys):
    make_set(toy, tmp_path / "s.h5")
    torch.save({"data": [[images(), hard()]], "accs_all_exps": {}}, tmp_path / "res.pt")
    args = [a.format(h5=tmp_path / "s.h5", t=tmp_path) for a in argv]
    refused(cli(capsys, "convert", *args), needle)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y.h5").exists()


def test_export_refuses_per_view_labels_and_a_stale_lr(toy, tmp_path, capsys):
    s = make_set(toy, tmp_path / "s.h5", lr=None)
    per_view = s.with_labels(torch.randn(3, N, K), LabelSpec(kind="logits", loss="kl", view_mode="per-view",
                                                            view_seed=0, view_strategy="flip"))
    per_view.save(tmp_path / "pv.h5")
    refused(cli(capsys, "convert", tmp_path / "pv.h5", tmp_path / "o", "--to", "mtt"), "per view")
    assert not (tmp_path / "o").exists()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "lr_best.pt").write_bytes(b"old")
    refused(cli(capsys, "convert", tmp_path / "s.h5", tmp_path / "o", "--to", "mtt"), "lr_best.pt", "another set")
    assert sorted(os.listdir(tmp_path / "o")) == ["lr_best.pt"]


def test_export_never_writes_through_a_symlinked_file(toy, tmp_path, capsys):
    make_set(toy, tmp_path / "s.h5")
    (tmp_path / "o").mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"kept")
    (tmp_path / "o" / "images_best.pt").symlink_to(victim)
    assert cli(capsys, "convert", tmp_path / "s.h5", tmp_path / "o", "--to", "mtt")[0] == 0
    assert victim.read_bytes() == b"kept" and not (tmp_path / "o" / "images_best.pt").is_symlink()
