"""Files written by condense 0.4.0 still load, resume and evaluate (tests/fixtures/v0_4_0).

The fixtures were written by 0.4.0 with the commands in their README; the values asserted
here are what 0.4.0 wrote and read back. A failure means the code of the day no longer
reads, resumes or identifies a 0.4.0 file as 0.4.0 did (e.g. a checkpoint identity or a
job key that hashes other fields), which users' existing runs would suffer too.

The CLI is called through the helpers below only, so a change of the command form (such
as ``synth --method dm`` -> ``synth dm``) is made in one place.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from condense import load_synset
from condense.cli.main import main
from condense.labels.teacher_file import load_teacher_file
from trajectories import open_store

torch.set_num_threads(1)  # the 0.4.0 files were written at one thread

FIXTURES = Path(__file__).parent / "fixtures" / "v0_4_0"

# The 0.4.0 commands' flags (README.md there); the out flags are given per test.
BUFFER = ("--dataset", "toy", "--arch", "convnet:width=8", "--epochs", "3", "--batch-size", "32", "--out", "store")
METHOD_FLAGS = {
    "tm": ("--trajectories", "store", "--ipc", "2", "--syn-steps", "4", "--expert-epochs", "1", "--max-start-epoch",
           "2", "--lr-img", "10", "--checkpoint-every", "3", "--device", "cpu"),
    "dm": ("--dataset", "toy", "--ipc", "2", "--arch", "convnet:width=8", "--batch-real", "16", "--lr-img", "1",
           "--checkpoint-every", "3", "--device", "cpu"),
}
LABELS = ("--teacher", "store", "--views", "static", "--codec", "topk:k=2,bits=8", "--out", "tm_top2.h5")
# 0.4.0 trained condense's schedule; the reference schedule (the default since 0.8) is another job
EVAL = ("dm.h5", "--runs", "2", "--epochs", "2", "--json", "eval/results.json", "--schedule", "condense")
ONE_TEST_IMAGE = 100.0 / 128  # toy's test split: an accuracy off by one prediction


def cli(*argv: str) -> int:
    """``condense ARGV --no-progress`` in this process; its exit status."""
    return main([*argv, "--no-progress"])


def synth(method: str, *flags: str) -> int:
    return cli("synth", method, *flags)


def buffer(*flags: str) -> int:
    return cli("buffer", *flags)


def labels(path: str, *flags: str) -> int:
    return cli("labels", path, *flags)


def evaluate(*args: str) -> int:
    return cli("eval", *args)


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    """A copy of the 0.4.0 files as the working directory: they record paths relative to it,
    and the tests must never change the fixtures themselves."""
    work = tmp_path / "v0_4_0"
    shutil.copytree(FIXTURES, work)
    monkeypatch.chdir(work)
    return work


def sha(t: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-256 of a tensor's bytes."""
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metrics(run_folder: Path) -> list[dict[str, str]]:
    with open(run_folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


CANONICAL = "convnet:act=relu,depth=3,norm=instance,pool=avg,width=8"
TM_LR = 0.008678345009684563
# file: (method, SHA-256 prefix of the float32 image bytes, learned lr, iteration, arch, the config's out)
SETS = {
    "tm.h5": ("tm", "65cb7dbee7d7a62f", TM_LR, 6, CANONICAL, "tm.h5"),
    "tm_interrupted.h5": ("tm", "463ad01e8c5896df", 0.009135754778981209, 3, CANONICAL, "tm_interrupted.h5"),
    "dm.h5": ("dm", "184626c29f1b88df", None, 6, CANONICAL, "dm.h5"),
    "dm_interrupted.h5": ("dm", "c0f7345f080c4d71", None, 3, CANONICAL, "dm_interrupted.h5"),
    "random.h5": ("random", "9cdf8cbd23ac7496", None, None, "convnet:width=8", "random.h5"),
    "tm_top2.h5": ("tm", "65cb7dbee7d7a62f", TM_LR, 6, CANONICAL, "tm.h5"),  # relabelled: tm.h5's config
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_set_loads_as_written(files, name):
    method, images_sha, lr, iteration, arch, out = SETS[name]
    s = load_synset(files / name)
    assert (s.method, s.dataset, s.ipc, s.num_classes) == (method, "toy", 2, 4)
    assert s.images.dtype == torch.float32 and tuple(s.images.shape) == (8, 3, 16, 16)
    assert sha(s.images) == images_sha
    assert s.classes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert s.lr == lr
    assert s.transform.kind == "normalize"
    assert s.config["arch"] == arch and s.config["out"] == out
    assert s.provenance.get("iteration") == iteration
    if name != "tm_top2.h5":
        assert s.label_spec.kind == "hard" and s.label_spec.codec == "none"
        assert torch.equal(s.labels, s.classes)
    if name == "random.h5":
        assert s.indices.tolist() == [49, 34, 100, 70, 143, 133, 215, 203]


def test_codec_labels_decode_as_written(files):
    """topk:k=2,bits=8 keeps each image's two largest probabilities as value / 255 and spreads
    what remains evenly over the other two classes; the stored arrays are read verbatim."""
    s = load_synset(files / "tm_top2.h5")
    spec = s.label_spec
    assert (spec.kind, spec.loss, spec.codec, spec.view_mode, spec.temperature) == \
           ("probabilities", "kl", "topk:k=2,bits=8", "static", 1.0)
    indices = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [1, 3], [3, 1], [2, 3], [3, 2]], dtype=np.uint8)
    values = np.array([[70, 64], [98, 63], [79, 71], [91, 64], [72, 69], [68, 66], [66, 64], [69, 63]], dtype=np.uint8)
    assert set(s.label_payload) == {"indices", "values"}
    assert np.array_equal(s.label_payload["indices"], indices) and np.array_equal(s.label_payload["values"], values)
    kept = values / 255.0
    expected = np.repeat(((1.0 - kept.sum(1)) / 2)[:, None], 4, axis=1)
    np.put_along_axis(expected, indices.astype(np.int64), kept, axis=1)
    assert s.labels.dtype == torch.float32 and tuple(s.labels.shape) == (8, 4)
    torch.testing.assert_close(s.labels, torch.from_numpy(expected).float(), rtol=0, atol=1e-6)
    assert sha(s.labels) == "c58552f8253c0cae"
    assert s.storage_bytes()["labels"] == 32
    assert torch.equal(s.images, load_synset(files / "tm.h5").images)


def test_store_reads(files):
    store = open_store(files / "store")
    assert len(store) == 2 and store.epochs == 3
    assert store.meta["n_params"] == 1572 and store.meta["store_key"] == "f912ccb1fa5598bb"
    assert store.meta["arch"] == CANONICAL and store.meta["dataset"] == "toy"
    assert tuple(store.expert(0).shape) == (4, 1572) and store.expert(0).dtype == torch.float32
    assert (sha(store.expert(0)), sha(store.expert(1))) == ("958b10b152a367da", "228b61c7f6f983f5")
    assert torch.equal(store.epoch(1, 2), store.expert(1)[2])
    assert store.test_acc(0).tolist() == [0.234375, 0.3125, 0.3203125, 0.421875]
    assert store.test_acc(1).tolist() == [0.3046875, 0.4140625, 0.4609375, 0.6640625]


def test_store_resumes(files, capsys):
    """Asking the 0.4.0 store for a third expert records that one only: the store key the
    code of the day computes from the same flags is the one 0.4.0 wrote."""
    before = [file_sha(files / "store" / f"expert_0000{i}.h5") for i in range(2)]
    assert buffer(*BUFFER, "--experts", "3") == 0
    out = capsys.readouterr().out
    assert "recording experts 2..2 (1 to go)" in out
    assert len(open_store(files / "store")) == 3
    assert [file_sha(files / "store" / f"expert_0000{i}.h5") for i in range(2)] == before


@pytest.mark.parametrize("method", ["tm", "dm"])
def test_interrupted_run_resumes(files, capsys, method):
    """The run stopped at its checkpoint at iteration 3 continues from there and ends with the
    uninterrupted run's set. Bit-equal at one thread under 0.4.0; the tolerance allows another
    CPU's rounding (two threads: 2.4e-7), far below what the three iterations change (0.25)."""
    out_file = f"{method}_interrupted.h5"
    before = metrics(files / f"{out_file}.run")
    assert synth(method, *METHOD_FLAGS[method], "--iters", "6", "--out", out_file) == 0
    assert f"resuming {out_file} at iteration 3" in capsys.readouterr().out
    rows = metrics(files / f"{out_file}.run")
    assert [int(r["iteration"]) for r in rows] == list(range(6))  # appended to 0.4.0's rows, not restarted
    assert rows[:3] == before
    reference = metrics(files / f"{method}.h5.run")
    assert [float(r["loss"]) for r in rows[3:]] == pytest.approx([float(r["loss"]) for r in reference[3:]], rel=1e-5)
    got, want = load_synset(files / out_file), load_synset(files / f"{method}.h5")
    torch.testing.assert_close(got.images, want.images, rtol=0, atol=1e-5)
    assert got.lr == (None if want.lr is None else pytest.approx(want.lr, rel=1e-6))
    assert got.provenance["iteration"] == 6 and torch.equal(got.labels, want.labels)


@pytest.mark.parametrize("method", ["tm", "dm"])
def test_finished_run_is_not_redone(files, capsys, method):
    before = file_sha(files / f"{method}.h5")
    assert synth(method, *METHOD_FLAGS[method], "--iters", "6", "--out", f"{method}.h5") == 0
    assert f"{method}.h5: already synthesized (6 iterations)" in capsys.readouterr().out
    assert file_sha(files / f"{method}.h5") == before


def test_labelling_run_is_not_redone(files, capsys):
    """The labelled set records its settings; the same command finds them and keeps the file."""
    before = file_sha(files / "tm_top2.h5")
    assert labels("tm.h5", *LABELS) == 0
    assert "tm_top2.h5: already labelled with these settings" in capsys.readouterr().out
    assert file_sha(files / "tm_top2.h5") == before


def test_teacher_file_loads(files):
    t = load_teacher_file(files / "teacher.h5")
    assert (t.arch, t.dataset, t.num_classes, tuple(t.image_shape)) == \
           ("convnet:act=relu,depth=3,norm=batch,pool=avg,width=8", "toy", 4, (3, 16, 16))
    assert (t.accuracy, t.val_accuracy) == (25.0, 25.0)
    assert t.class_names == ("pattern-0", "pattern-1", "pattern-2", "pattern-3")
    assert sum(p.numel() for p in t.net.parameters()) == 1572
    state = torch.cat([v.flatten().float() for v in t.net.state_dict().values()])
    assert sha(state) == "2115b1cff934e4d8"
    with torch.no_grad():
        logits = t.net(load_synset(files / "dm.h5").images[:2])
    torch.testing.assert_close(logits, torch.tensor([[-0.10110943, 0.09458707, -0.08798428, -0.22488494],
                                                     [-0.08502090, 0.11066732, -0.10848229, -0.22721598]]),
                               rtol=0, atol=1e-5)


def test_eval_job_log_resumes(files, capsys):
    """The 0.4.0 job log holds 3 of the 4 jobs: the rerun trains the fourth only and reports
    0.4.0's numbers (the logged ones verbatim, the new one up to a test image)."""
    log = files / "eval" / "results.json.run" / "jobs.jsonl"
    logged = log.read_text().splitlines()
    from evals.grid import EvalConfig, ResultLog, jobs_of, plan

    # under the default (reference) schedule none of 0.4.0's jobs is reused: the schedule is in the job key
    cfg = EvalConfig(runs=2, epochs=2, json="eval/results.json")
    keys = {job.key for _, job in jobs_of(plan(cfg, ["dm.h5"]), cfg, note=lambda m: None)}
    assert len(keys) == 4 and not keys & set(ResultLog(files / "eval" / "results.json.run").load())
    assert evaluate(*EVAL) == 0
    assert "resuming: 3 of 4 jobs already finished" in capsys.readouterr().out
    lines = log.read_text().splitlines()
    assert len(lines) == 4 and lines[:3] == logged
    rows = json.loads((files / "eval" / "results.json").read_text())["results"]
    want = json.loads((files / "eval_reference.json").read_text())["results"]
    assert [(r["synset"], r["method"], r["variant"], r["baseline"], r["runs"], r["epochs"]) for r in rows] == \
           [("dm.h5", "dm", "set", None, 2, 2), (None, "random", "set", "random", 2, 2)]
    assert rows[0]["accs"] == want[0]["accs"] and rows[1]["accs"][0] == want[1]["accs"][0]
    assert rows[1]["accs"][1] == pytest.approx(want[1]["accs"][1], abs=ONE_TEST_IMAGE)


def test_sets_evaluate(files):
    """A soft-label codec set with a learned lr (and its hard variant) and a hard-label set train
    and score as under 0.4.0 (README: 23.4375, 24.21875, 23.4375 %)."""
    assert evaluate("tm_top2.h5", "tm.h5", "--runs", "1", "--epochs", "1", "--no-random-baseline",
                    "--json", "e2e/results.json", "--schedule", "condense") == 0
    rows = json.loads((files / "e2e" / "results.json").read_text())["results"]
    assert [(r["synset"], r["variant"], r["labels"], r["runs"]) for r in rows] == \
           [("tm_top2.h5", "set", "store store expert 0, static > topk:k=2,bits=8", 1), ("tm_top2.h5", "hard", "hard", 1),
            ("tm.h5", "set", "hard", 1)]
    assert [r["accs"][0] for r in rows] == pytest.approx([23.4375, 24.21875, 23.4375], abs=ONE_TEST_IMAGE)
