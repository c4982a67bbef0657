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


def test_same_seed_reproduces_the_numbers_exactly(smoke_run, tmp_path):
    argv = ["run", "--preset", "toy/smoke", "--runs", "2", "--epochs", "3", "--ipc", "2", "--device", "cpu"]
    assert main(argv + ["--out", str(tmp_path / "again")]) == 0
    assert main(argv + ["--out", str(tmp_path / "other"), "--seed", "5"]) == 0
    first = json.loads((smoke_run / "results.json").read_text())["results"][0]
    again = json.loads((tmp_path / "again" / "results.json").read_text())["results"][0]
    other = json.loads((tmp_path / "other" / "results.json").read_text())["results"][0]
    assert again["accs"] == first["accs"]
    assert torch.equal(load_synset(tmp_path / "again" / "random_ipc2.h5").images, load_synset(smoke_run / "random_ipc2.h5").images)
    assert not torch.equal(load_synset(tmp_path / "other" / "random_ipc2.h5").indices,
                           load_synset(smoke_run / "random_ipc2.h5").indices)
    assert other["subset_seeds"] == [5, 6]


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
    (("labels", "--codec", "topk"), "not available yet"),
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


def test_plugins_register_datasets_and_archs_for_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_plugin.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from condense.data import DatasetInfo, register_dataset\n"
        "from condense.nets import register_arch\n"
        "def load(root):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    y = torch.arange(2).repeat(20)\n"
        "    return torch.rand(40, 1, 8, 8, generator=g), y, torch.rand(10, 1, 8, 8, generator=g), y[:10]\n"
        "register_dataset('plugin-set', DatasetInfo(name='plugin-set', num_classes=2, channels=1, image_size=(8, 8),\n"
        "                 mean=(0.5,), std=(0.3,), val_size=4), load, needs_files=False, replace_existing=True)\n"
        "class Lin(nn.Sequential):\n"
        "    def __init__(self, channels, num_classes, image_size, hidden):\n"
        "        super().__init__(nn.Flatten(), nn.Linear(channels * image_size[0] * image_size[1], num_classes))\n"
        "register_arch('tinylin', Lin, {'hidden': 4}, overwrite=True)\n")
    from condense.data import datasets
    from condense.nets import specs

    # Registrations must not leak into other tests: give this test copies of the registries.
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))
    monkeypatch.setattr(specs, "_REGISTRY", dict(specs._REGISTRY))
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONDENSE_PLUGINS", "my_plugin")
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0 and "plugin-set" in out
    code, out, err = run_cli(capsys, "run", "--dataset", "plugin-set", "--arch", "tinylin", "--ipc", "2", "--runs", "1",
                             "--epochs", "2", "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 0, err
    monkeypatch.setenv("CONDENSE_PLUGINS", "no_such_plugin_module")
    code, _, err = run_cli(capsys, "datasets")
    assert code == 2 and "no_such_plugin_module" in err
