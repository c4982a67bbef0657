"""``condense labels SET --curve`` / :func:`condense.label_curve`: the storage-vs-accuracy curve of one
set's labels, at toy size (IPC 2, a 1-epoch teacher, 2 codecs, 1 run x 2 epochs: seconds)."""
from __future__ import annotations

import json
import os

import pytest

import condense
from condense.cli.main import main
from condense.runtime.errors import CondenseError
from condense.workflows.label_curve import CurveConfig, tabulate

CODECS = ["fp16", "topk:k=1,bits=4"]
VARIANTS = {"hard", "static", "per-view", *CODECS}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A toy set, a toy teacher, and one curve run through the command (its output and folder)."""
    root = tmp_path_factory.mktemp("curve")
    condense.synthesize("random", dataset="toy", ipc=2, out=root / "set.h5")
    condense.train_teacher(dataset="toy", arch="convnet:norm=batch,width=8,depth=2", epochs=1, batch_size=32,
                           out=root / "teacher.pt")
    argv = ["--no-progress", "labels", str(root / "set.h5"), "--curve", "--teacher", str(root / "teacher.pt"),
            "--out", str(root / "curve"), "--runs", "1", "--view-epochs", "2"]
    for c in CODECS:
        argv += ["--codecs", c]
    return root, argv


def run(capsys, argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_curve_has_every_variant_with_its_bytes_accuracy_and_plot(made, capsys):
    root, argv = made
    code, out, err = run(capsys, argv)
    assert code == 0, err
    for name in VARIANTS:  # a line per variant as it is made
        assert any(line.startswith(f"{name}: ") for line in out.splitlines()), out
    doc = json.loads((root / "curve" / "labels.json").read_text())
    rows = {r["variant"]: r for r in doc["rows"]}
    assert set(rows) == VARIANTS
    b = {k: r["label_bytes"] for k, r in rows.items()}
    # top-1 at 4 bits < hard int64 < static float32 < per-view float32 (2 epochs of views); fp16 is half of that
    assert b["topk:k=1,bits=4"] < b["hard"] < b["static"] < b["per-view"]
    assert b["fp16"] * 2 == b["per-view"] and rows["per-view"]["fraction_of_per_view"] == 1.0
    assert [r["label_bytes"] for r in doc["rows"]] == sorted(b.values())
    assert rows["topk:k=1,bits=4"]["codec"] == "topk:k=1,bits=4" and rows["hard"]["codec"] == "none"
    for r in [*doc["rows"], doc["random"]]:
        assert 0 <= r["mean"] <= 100 and r["n"] == 1
    assert doc["dsa_share"] == "view" and doc["epochs"] == 2
    table = (root / "curve" / "labels.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS) and "random real" in table
    png = root / "curve" / "labels.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_resumes_and_the_api_returns_the_same_rows(made, capsys):
    root, argv = made
    if not (root / "curve" / "labels.json").exists():
        assert run(capsys, argv)[0] == 0
    folder = root / "curve"
    jobs = (folder / "eval.json.run" / "jobs.jsonl").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")}
    code, out, err = run(capsys, argv)
    assert code == 0, err
    assert "per-view: " in out and out.count("reused") == len(VARIANTS) - 1  # hard is the input itself
    assert (folder / "eval.json.run" / "jobs.jsonl").read_text() == jobs  # no network retrained
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")} == stamps  # no variant remade
    doc = condense.label_curve(root / "set.h5", teacher=root / "teacher.pt", out=folder, codecs=CODECS, runs=1,
                               view_epochs=2)
    assert (folder / "eval.json.run" / "jobs.jsonl").read_text() == jobs
    assert doc["rows"] == json.loads((folder / "labels.json").read_text())["rows"]


@pytest.mark.parametrize("extra, words", [
    (["--codecs", "zip"], "unknown label codec 'zip'"),
    (["--codecs", "topk:k=1,bits=3"], "bits"),
    (["--codec", "fp16"], "--codec has no effect here"),
    (["--views", "static"], "--views has no effect here"),
])
def test_a_bad_curve_line_is_one_line_and_exit_2(made, capsys, tmp_path, extra, words):
    root, _ = made
    code, out, err = run(capsys, ["labels", str(root / "set.h5"), "--curve", "--teacher", str(root / "teacher.pt"),
                                  "--out", str(tmp_path / "c"), *extra])
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "c").exists()  # refused before any work


def test_curve_options_without_curve_are_refused(made, capsys, tmp_path):
    root, _ = made
    code, _, err = run(capsys, ["labels", str(root / "set.h5"), "--teacher", str(root / "teacher.pt"),
                                "--out", str(tmp_path / "x.h5"), "--runs", "3"])
    assert code == 2 and "--runs has no effect here: only --curve" in err


def test_an_evaluation_without_a_variant_row_is_not_success(tmp_path):
    cfg = CurveConfig(synset=str(tmp_path / "set.h5"), out=str(tmp_path / "c"))
    with pytest.raises(CondenseError, match="produced no result for hard, per-view"):
        tabulate([], {"hard": tmp_path / "set.h5", "per-view": tmp_path / "c" / "per-view.h5"}, {}, cfg)


def test_an_input_with_soft_labels_is_refused(made, capsys, tmp_path):
    root, _ = made
    soft = tmp_path / "soft.h5"
    assert run(capsys, ["--no-progress", "labels", str(root / "set.h5"), "--teacher", str(root / "teacher.pt"),
                        "--out", str(soft)])[0] == 0
    code, _, err = run(capsys, ["labels", str(soft), "--curve", "--teacher", str(root / "teacher.pt"),
                                "--out", str(tmp_path / "c")])
    assert code == 2 and "starts from a hard-label set" in err and os.path.exists(soft)
