"""Transfer evaluation: downstream images brought to a network's shape, the backbone carried with a
fresh head, fine-tuning that learns, random real with the teacher's targets against a naive
construction, the whole `condense eval --transfer` at toy size (rows, paired differences, resume),
and the downstream readers on generated files."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from condense.cli.main import main
from condense.data import load_dataset
from condense.labels.squeeze import TeacherConfig, train_teacher
from condense.nets import build_net
from condense.runtime.errors import DataError
from condense.runtime.rng import generator
from condense.train import accuracy
from evals.transfer import adapt, finetune, training_data, with_new_head

torch.set_num_threads(1)
ARCH = "convnet:width=8,depth=2"


def test_adapt_repeats_or_averages_channels_and_resizes():
    x = torch.rand(5, 1, 8, 8)
    y = adapt(x, (3, 16, 16))
    assert y.shape == (5, 3, 16, 16) and torch.equal(y[:, 0], y[:, 2])
    same = torch.rand(2, 3, 4, 4)
    assert torch.allclose(adapt(same, (1, 4, 4))[:, 0], same.mean(1))
    const = torch.full((1, 1, 8, 8), 0.7)
    assert torch.allclose(adapt(const, (1, 28, 28)), torch.full((1, 1, 28, 28), 0.7))  # resizing keeps a flat image


def test_the_backbone_is_carried_and_the_head_is_fresh():
    pre = build_net(ARCH, 3, 7, (16, 16), generator=generator(1))
    net = with_new_head(pre, ARCH, 4, seed=0, run=0)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(net.embed(x), pre.embed(x)) and net.head.out_features == 4
    assert not torch.equal(net.head.weight[:4], pre.head.weight[:4])


def test_finetuning_learns_the_downstream_task():
    ds = load_dataset("toy")
    net = build_net(ARCH, 3, 4, (16, 16), generator=generator(0))
    before = accuracy(net, ds.x_test, ds.y_test)
    finetune(net, ds.x_train, ds.y_train, iters=60, batch=64, lr=0.05, weight_decay=5e-4, seed=0, run=0)
    assert accuracy(net, ds.x_test, ds.y_test) > max(0.6, before + 0.2)


@pytest.fixture(scope="module")
def krr_set(tmp_path_factory):
    pytest.importorskip("jax")
    from condense.jax.krr_st import run_krr_st
    from condense.methods.krr_st import KRRSTConfig

    folder = tmp_path_factory.mktemp("transfer")
    teacher = folder / "bt.h5"
    train_teacher(TeacherConfig(dataset="toy", arch=ARCH, ssl="barlow-twins", epochs=2, lr=0.05, batch_size=64,
                                projector=[32, 32], probe_epochs=5, out=str(teacher)), progress=False)
    out = folder / "krr.h5"
    run_krr_st(KRRSTConfig(dataset="toy", images=8, arch=ARCH, teacher=str(teacher), iters=3, batch_real=64,
                           pool_size=2, out=str(out)), progress=lambda s: None, bars=False)
    return str(out), str(teacher)


def test_random_real_gets_the_teachers_targets_of_its_own_images(krr_set):
    from condense.labels.teacher_file import load_teacher_file
    from condense.synset import file_sha256

    _, teacher = krr_set
    src = {"kind": "random", "dataset": "toy", "labels": "representation", "images": 8, "teacher": teacher,
           "teacher_sha256": file_sha256(teacher)}
    x, y, spec = training_data(src, seed=0, run=3)
    ds = load_dataset("toy")
    idx = torch.randperm(ds.x_train.shape[0], generator=generator(0, 3, 71))[:8]  # STREAM_RANDOM: seed, run
    assert torch.equal(x, ds.x_train[idx]) and spec.kind == "representation"
    with torch.no_grad():
        assert torch.allclose(y, load_teacher_file(teacher).net.embed(ds.x_train[idx]))
    assert not torch.equal(training_data(src, seed=0, run=4)[0], x)  # each run draws its own images


def test_condense_eval_transfer_end_to_end_and_resumes(krr_set, tmp_path, capsys):
    path, teacher = krr_set
    labelled = tmp_path / "random.h5"
    assert main(["synth", "random", "--dataset", "toy", "--ipc", "2", "--arch", ARCH, "--out", str(labelled),
                 "--no-progress"]) == 0
    report = tmp_path / "r.json"
    argv = ["eval", path, str(labelled), "--transfer", "toy", "--runs", "2", "--pretrain-epochs", "5",
            "--finetune-iters", "20", "--probe-epochs", "5", "--json", str(report), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads(report.read_text())["results"]
    sources = {r["source"] for r in rows}
    assert {"krr-st, 8 images, no classes (krr.h5)", "random, IPC 2 (random.h5)", "no pre-training",
            "random real, 8 images, teacher targets", "random real, IPC 2, hard labels",
            "full data, barlow-twins teacher"} == sources
    krr = next(r for r in rows if r["synset"] == path and r["mode"] == "finetune")
    rnd = next(r for r in rows if r["source"] == "random real, 8 images, teacher targets" and r["mode"] == "finetune")
    assert len(krr["accs"]) == 2 and all(0 <= a <= 100 for a in krr["accs"])
    assert krr["vs_random"]["mean"] == pytest.approx(np.mean(np.subtract(krr["accs"], rnd["accs"])))
    assert "vs_none" in krr and {r["mode"] for r in rows} == {"finetune", "probe"}
    capsys.readouterr()
    assert main(argv) == 0  # a rerun trains nothing: every job is in jobs.jsonl
    assert "resuming: 12 of 12 jobs already finished" in capsys.readouterr().out
    assert json.loads(report.read_text())["results"] == rows

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer_table.py"
    table = subprocess.run([sys.executable, str(script), str(report)], capture_output=True, text=True,
                           check=True).stdout
    line = {cells[1].strip(): cells[2:-1] for cells in (x.split("|") for x in table.splitlines() if x.startswith("| "))
            if cells[1].strip() in ("krr-st 8 images", "random real, 8 images, teacher targets")}
    assert line["krr-st 8 images"][0].strip() == f"{krr['mean']:.2f} ± {krr['ci95']:.2f}"
    diff = table.split("KRR-ST (8 images) minus")[1]
    assert f"{krr['vs_random']['mean']:+.2f} ± {krr['vs_random']['ci95']:.2f}" in diff
    assert "| random 8 images (IPC 2, hard labels) |" in diff  # the labelled set of the same storage, paired


def test_transfer_errors_are_one_line(krr_set, tmp_path, capsys):
    path, _ = krr_set
    for argv, message in ((["eval", path, "--runs", "1"], "evaluate it by transfer"),
                          (["eval", path, "--transfer", "toy", "--arch", "convnet:width=4,depth=2"],
                           "the evaluation's architecture is"),
                          (["eval", "--transfer", "toy"], "give at least one set file"),
                          (["eval", path, "--transfer", "toy", "--teacher", str(tmp_path / "no.h5")], "is not there")):
        assert main(argv + ["--no-progress", "--json", str(tmp_path / "x.json")]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def write_csv(path, x, y):
    with gzip.open(path, "wt") as f:
        for row, label in zip(x, y):
            f.write(",".join(str(int(v)) for v in [*row, label]) + "\n")


def test_digit_readers_split_stratified_and_refuse_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 60)
    write_csv(tmp_path / "digits.csv.gz", rng.integers(0, 17, (600, 64)), y)
    ds = load_dataset("sklearn-digits", tmp_path)
    assert ds.x_train.shape == (100, 1, 8, 8) and ds.x_test.shape == (500, 1, 8, 8)
    assert torch.bincount(ds.y_test).tolist() == [50] * 10 and ds.x_val.shape[0] == 0
    write_csv(tmp_path / "mnist_5k.csv.gz", rng.integers(0, 256, (1200, 784)), np.repeat(np.arange(10), 120))
    assert load_dataset("mnist-5k", tmp_path).x_train.shape == (200, 1, 28, 28)
    write_csv(tmp_path / "digits.csv.gz", rng.integers(0, 40, (600, 64)), y)  # grey levels above 16
    with pytest.raises(DataError, match="outside 0..16"):
        load_dataset("sklearn-digits", tmp_path)
    write_csv(tmp_path / "digits.csv.gz", rng.integers(0, 17, (600, 10)), y)
    with pytest.raises(DataError, match="rows of 11 values"):
        load_dataset("sklearn-digits", tmp_path)


def test_few_label_fashion_mnist_is_a_balanced_fraction():
    from condense.data import available

    if not available("fashion-mnist")[0]:
        pytest.skip("Fashion-MNIST files not installed")
    one = load_dataset("fashion-mnist-1pct")
    assert one.x_train.shape[0] == 600 and torch.bincount(one.y_train).tolist() == [60] * 10
    assert one.x_test.shape[0] == 10000


class Payload:  # an object only a full unpickler would rebuild
    pass


def test_the_reference_prepared_tensors_load_and_hostile_ones_are_one_line(tmp_path):
    from condense.runtime.errors import CondenseError

    d = tmp_path / "flowers"
    d.mkdir()

    def write(x_tr, y_tr=None):
        torch.save(x_tr, d / "X_tr_32.pth")
        torch.save(torch.randint(0, 102, (6,)) if y_tr is None else y_tr, d / "Y_tr_32.pth")
        torch.save(torch.rand(4, 3, 32, 32), d / "X_te_32.pth")
        torch.save(torch.randint(0, 102, (4,)), d / "Y_te_32.pth")

    write(torch.rand(6, 3, 32, 32))
    ds = load_dataset("flowers", tmp_path / "flowers")
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.info.num_classes == 102
    for bad, message in ((torch.rand(6, 3, 28, 28), "expected"),
                         ({"x": torch.rand(6, 3, 32, 32)}, "one tensor"),
                         (torch.rand(6, 3, 32, 32) * 3, r"outside \[0, 1\]")):
        write(bad)
        with pytest.raises(CondenseError, match=message):
            load_dataset("flowers", tmp_path / "flowers")
    write(torch.rand(6, 3, 32, 32), torch.full((6,), 500))
    with pytest.raises(DataError, match="labels outside"):
        load_dataset("flowers", tmp_path / "flowers")

    torch.save(Payload(), d / "X_tr_32.pth")
    with pytest.raises(DataError, match="not weights-only"):
        load_dataset("flowers", tmp_path / "flowers")
