"""The expert recorder: what is saved, regularisers, kill-and-resume, parallel workers, bad input."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from condense.cli.main import main
from condense.data import load_dataset
from condense.nets import FlatLayout, build_net
from condense.runtime.rng import generator
from condense.train import STREAM_INIT, train_model
from trajectories import open_store
from trajectories.record import BufferConfig, record_store

ARCH = "convnet:width=8"
TOY = dict(dataset="toy", arch=ARCH, epochs=3, batch_size=64, limit_train=128)


def record(tmp_path, name="store", **over) -> "open_store":
    cfg = BufferConfig(**{**TOY, "experts": 1, "out": str(tmp_path / name), **over})
    record_store(cfg, progress=lambda s: None, bars=False)
    return open_store(cfg.out)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    torch.set_num_threads(1)
    return record(tmp_path_factory.mktemp("plain"), experts=2)


def test_rows_are_the_init_and_the_parameters_after_each_epoch(plain):
    ds = load_dataset("toy", limit_train=128)
    for i in range(2):
        net = build_net(ARCH, 3, 4, (16, 16), generator=generator(0, i, 0, 0, STREAM_INIT))
        layout = FlatLayout.of(net)
        assert torch.equal(plain.epoch(i, 0), layout.flatten(net))
        seen = []
        cfg = BufferConfig(**TOY)
        train_model(net, ds.x_train, ds.y_train, cfg.protocol(), seed=0, run=i, lr=cfg.lr,
                    on_epoch=lambda e, m, l: seen.append(layout.flatten(m)))
        assert torch.equal(plain.expert(i)[1:], torch.stack(seen))
    assert not torch.equal(plain.epoch(0, 3), plain.epoch(1, 3)), "experts differ (their own init and batches)"
    acc = plain.test_acc(0)
    assert acc.shape == (4,) and ((acc >= 0) & (acc <= 1)).all()


def test_manifest_is_self_describing(plain):
    m = plain.meta
    assert m["dataset"] == "toy" and m["arch"].startswith("convnet:") and m["epochs"] == 3
    assert m["protocol"]["lr"] == 0.01 and m["protocol"]["momentum"] == 0.0 and m["protocol"]["dsa"]
    assert m["regularizer"]["flat"] == "none" and m["transform"]["kind"] == "normalize"
    assert m["data"]["val_size"] > 0 and m["data"]["limit_train"] == 128 and m["seed"] == 0
    assert m["n_params"] == plain.layout.numel


@pytest.mark.parametrize("over", [dict(flat="sam", sam_rho=0.05), dict(flat="gsam", sam_rho=0.05),
                                  dict(smooth=True, gp_weight=2.0)])
def test_regularisers_change_training(tmp_path, plain, over):
    store = record(tmp_path, **over)
    assert torch.equal(store.epoch(0, 0), plain.epoch(0, 0)), "same init"
    assert not torch.equal(store.epoch(0, 3), plain.epoch(0, 3)), "different training"
    assert store.meta["regularizer"]["flat"] == over.get("flat", "none")
    assert store.meta["regularizer"]["smooth"] == over.get("smooth", False)


def buffer_cmd(out, experts=3):
    return [sys.executable, "-m", "condense.cli.main", "buffer", "--dataset", "toy", "--arch", "convnet:width=16",
            "--experts", str(experts), "--epochs", "4", "--batch-size", "16", "--out", str(out)]


ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "store"
    subprocess.run(buffer_cmd(out), env=ONE_THREAD, check=True, capture_output=True)
    return open_store(out)


def assert_same_store(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        assert torch.equal(a.expert(i), b.expert(i)), f"expert {i} differs"


def test_kill_9_then_rerun_gives_the_uninterrupted_store(tmp_path, uninterrupted):
    out = tmp_path / "store"
    proc = subprocess.Popen(buffer_cmd(out), env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "expert_00000.h5").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(open_store(out))
    assert finished < 3, "killed before the end (make the experts slower if this fails)"
    subprocess.run(buffer_cmd(out), env=ONE_THREAD, check=True, capture_output=True)
    assert_same_store(open_store(out), uninterrupted)
    assert not list(out.glob(".expert_*"))


def test_two_cpu_workers_give_the_same_store(tmp_path, uninterrupted):
    out = tmp_path / "store"
    subprocess.run(buffer_cmd(out) + ["--devices", "cpu,cpu"], env=ONE_THREAD, check=True, capture_output=True)
    assert_same_store(open_store(out), uninterrupted)


def test_show_plots_a_store(plain, tmp_path, capsys):
    assert main(["show", str(plain.folder), "--out", str(tmp_path / "traj.png")]) == 0
    assert (tmp_path / "traj.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "imagenet-9000"], "imagenet-9000"),
    (["--arch", "transformer"], "unknown architecture"),
    (["--experts", "0"], "--experts must be positive"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--flat", "gsam", "--sam-rho", "-1"], "rho"),
    (["--devices", "cuda:7"], "cuda:7"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    code = main(["buffer", "--dataset", "toy", "--arch", ARCH, "--epochs", "1", "--out", str(tmp_path / "s"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_out_holding_another_store_is_refused(plain, capsys):
    before = plain.expert(0)
    code = main(["buffer", "--dataset", "toy", "--arch", ARCH, "--epochs", "3", "--batch-size", "64",
                 "--limit-train", "128", "--lr", "0.05", "--out", str(plain.folder)])
    err = capsys.readouterr().err
    assert code == 2 and "other settings" in err and "protocol" in err
    assert torch.equal(open_store(plain.folder).expert(0), before)


def test_rerun_of_a_finished_store_records_nothing(plain, capsys):
    cfg = dataclasses.replace(BufferConfig(**TOY), experts=2, out=str(plain.folder))
    assert record_store(cfg, progress=lambda s: None, bars=False) == []


def test_a_store_of_the_old_per_batch_dsa_is_marked_and_not_mixed(tmp_path, capsys):
    """A manifest written before the DSA fix has no dsa_share: its experts drew once per batch.
    It reads as 'batch', and resuming it with the per-image semantics is refused (nothing lost)."""
    import json

    old = record(tmp_path, "old", dsa_share="batch")
    assert old.dsa_share == "batch" and old.meta["protocol"]["dsa_share"] == "batch"
    manifest = old.folder / "manifest.json"
    meta = json.loads(manifest.read_text())
    del meta["protocol"]["dsa_share"]  # as condense 0.1 wrote it
    manifest.write_text(json.dumps(meta))
    before = open_store(old.folder)
    assert before.dsa_share == "batch"
    expert = before.expert(0)
    code = main(["buffer", "--dataset", "toy", "--arch", ARCH, "--epochs", "3", "--batch-size", "64",
                 "--limit-train", "128", "--experts", "2", "--out", str(old.folder)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "DSA share 'batch'" in err and "--dsa-share batch" in err
    assert torch.equal(open_store(old.folder).expert(0), expert) and len(open_store(old.folder)) == 1
    code = main(["buffer", "--dataset", "toy", "--arch", ARCH, "--epochs", "3", "--batch-size", "64",
                 "--limit-train", "128", "--experts", "2", "--dsa-share", "batch", "--out", str(old.folder)])
    assert code == 0  # the old semantics, named, resume the old store
    resumed = open_store(old.folder)
    assert len(resumed) == 2 and resumed.meta["store_key"] == before.meta["store_key"]
    assert torch.equal(resumed.expert(0), expert)
    new = record(tmp_path, "new")
    assert new.dsa_share == "image" and not torch.equal(new.expert(0)[-1], expert[-1])  # the semantics matter
