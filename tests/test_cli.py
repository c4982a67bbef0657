"""The CLI contract: subcommands, --help, the smoke job, show/convert, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from condense.cli.main import build_parser, main
from condense.synset import load_synset

COMMANDS = ("buffer", "synth", "labels", "eval", "run", "show", "datasets", "convert")


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert command in capsys.readouterr().out


def test_top_level_help_lists_the_contract_commands():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


def test_datasets_lists_found_and_missing(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "datasets", "--data-root", str(tmp_path))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) >= {"fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "tiny-imagenet", "toy"}
    assert " yes " in lines["toy"] and "4 " in lines["toy"] and "3x16x16" in lines["toy"]
    assert " no " in lines["cifar10"] and str(tmp_path) in lines["cifar10"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["run", "--preset", "toy/smoke", "--out", str(out), "--runs", "2", "--epochs", "3", "--ipc", "2",
                 "--device", "cpu"]) == 0
    return out


def test_smoke_job_writes_sets_grids_and_results(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    (row,) = results["results"]
    assert row["method"] == "random" and row["ipc"] == 2 and len(row["accs"]) == 2
    assert row["mean"] == pytest.approx(sum(row["accs"]) / 2)
    assert row["storage_bytes"]["images"] == 4 * 2 * 3 * 16 * 16 * 4
    s = load_synset(smoke_run / "random_ipc2.h5")
    assert s.ipc == 2 and s.dataset == "toy" and s.indices is not None and s.data["val_size"] > 0
    assert (smoke_run / "random_ipc2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["config"]["epochs"] == 3, "flags override the preset"


def test_show_writes_png(smoke_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "show", str(smoke_run / "random_ipc2.h5"), "--out", str(tmp_path / "g.png"))
    assert code == 0 and "8 images" in out
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_convert_round_trip(smoke_run, tmp_path, capsys):
    src = smoke_run / "random_ipc2.h5"
    assert run_cli(capsys, "convert", str(src), str(tmp_path / "s.pt"))[0] == 0
    assert run_cli(capsys, "convert", str(tmp_path / "s.pt"), str(tmp_path / "back.h5"), "--dataset", "toy")[0] == 0
    a, b = load_synset(src), load_synset(tmp_path / "back.h5")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.transform.describe() == b.transform.describe()


@pytest.mark.parametrize("argv, message", [
    (("show", "missing.h5", "--out", "x.png"), "no such file"),
    (("run", "--preset", "nope/none"), "unknown preset"),
    (("run", "--preset", "toy/smoke", "--ipc", "0"), "ipc values must be positive"),
    (("run", "--dataset", "imagenet-9000"), "imagenet-9000"),
    (("buffer", "--experts", "5"), "not available yet"),
    (("convert", "a.txt", "b.h5"), "convert goes"),
    (("convert", "a.pt", "b.h5"), "needs --dataset"),
])
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_missing_device_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--preset", "toy/smoke", "--device", "cuda", "--out", str(tmp_path))
    assert code == 2 and "no CUDA GPU" in err


def test_console_script_errors_without_traceback_unless_debug(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    cmd = [sys.executable, "-m", "condense.cli.main", "show", str(bad), "--out", str(tmp_path / "x.png")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr.strip().count("\n") == 0 and "not a readable HDF5" in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
