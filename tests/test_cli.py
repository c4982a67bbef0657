"""The CLI contract: subcommands, --help, the smoke job, show/convert, one-line errors."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from condense.cli.main import build_parser, main
from condense.synset import load_synset

COMMANDS = ("buffer", "teacher", "synth", "labels", "eval", "run", "show", "datasets", "convert")


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


def test_no_progress_and_debug_are_global_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--no-progress" in out and "--debug" in out


def test_synth_lists_methods_and_each_method_only_its_options(capsys):
    from condense.methods import method_names

    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert all(f"    {m} " in out for m in method_names())
    counts = {}
    for m in method_names():
        with pytest.raises(SystemExit):
            main(["synth", m, "--help"])
        out = capsys.readouterr().out
        counts[m] = sum(1 for line in out.splitlines() if line.startswith("  --"))
        assert "data options:" in out and "run options:" in out
    assert max(counts.values()) <= 36, counts  # one screen; tm, the largest, with --texture
    assert counts["random"] < counts["dm"] < counts["tm"]  # no option shows for a method it does not affect


def test_synth_method_flag_still_works_with_a_deprecation_notice(capsys, tmp_path):
    code, out, err = run_cli(capsys, "synth", "--method", "random", "--dataset", "toy", "--ipc", "1",
                             "--out", str(tmp_path / "r.h5"), "--device", "cpu")
    assert code == 0 and "wrote" in out
    assert "--method is deprecated" in err and "condense synth random" in err
    code, _, err = run_cli(capsys, "synth", "tm", "--lr-lr", "0")
    assert code == 2 and err.strip() == "condense synth: error: --lr-lr must be positive, got 0"


def help_sections(capsys, *argv) -> dict[str, list[str]]:
    """``condense ARGV --help`` as {options group title: the flags listed under it}."""
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    sections: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith(" ") and line.endswith("options:"):
            sections[line[:-1]] = current = []
        elif line.startswith("  --") and sections:
            current.append(line.split()[0].rstrip(","))
    return sections


def command_configs():
    from condense.labels.run import LabelsConfig
    from condense.labels.squeeze import TeacherConfig
    from evals.grid import EvalConfig
    from condense.workflows.pipeline import RunConfig
    from trajectories.record import BufferConfig

    return {"buffer": BufferConfig, "teacher": TeacherConfig, "labels": LabelsConfig, "eval": EvalConfig,
            "run": RunConfig}


@pytest.mark.parametrize("command", ("buffer", "teacher", "labels", "eval", "run"))
def test_command_flags_are_its_configs_fields_grouped_by_part(command, capsys):
    from condense.config import declared

    sections = help_sections(capsys, command)
    fields = [f for f in dataclasses.fields(command_configs()[command]) if f.name not in ("synset", "steps")]
    if command == "labels":  # and the options only --curve has (condense/workflows/label_curve.py)
        from condense.workflows.label_curve import CurveConfig

        fields += [f for f in dataclasses.fields(CurveConfig) if f.name not in {g.name for g in fields} | {"synset"}]
    for f in fields:  # synset is labels' positional SET, steps the run preset's own
        meta = declared(f)
        assert (meta.flag or f"--{f.name.replace('_', '-')}") in sections[f"{meta.part} options"], f.name
    generated = sum(len(v) for k, v in sections.items() if k != "options")
    assert generated == len(fields)


def test_buffer_and_eval_help_show_the_declared_help_bounds_and_defaults(capsys):
    sections = help_sections(capsys, "buffer")
    assert list(sections) == ["options", "data options", "run options", "training options", "augmentation options",
                              "workers options", "buffer options"]
    assert "--experts" in sections["buffer options"] and "--momentum" in sections["training options"]
    with pytest.raises(SystemExit):
        main(["buffer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--experts N number of experts (positive, at most 10000; default 5)" in text
    assert "--momentum X SGD momentum (in [0, 1); default 0.0)" in text
    sections = help_sections(capsys, "eval")
    assert {"--arch", "--split"} <= set(sections["eval options"]) and "--ipc" in sections["data options"]
    assert "--runs" in sections["evaluation options"]


@pytest.mark.parametrize("argv, message", [
    (("buffer", "--momentum", "1"), "condense buffer: error: --momentum must be in [0, 1), got 1"),
    (("teacher", "--seed", "-1"), "condense teacher: error: --seed must be >= 0, got -1"),
    (("labels", "s.h5", "--committee", "0", "--out", "o.h5"), "condense labels: error: --committee must be positive, at most 1000, got 0"),
    (("eval", "--full-accuracy", "101"), "condense eval: error: --full-accuracy must be positive, at most 100, got 101"),
    (("run", "--epochs", "0"), "condense run: error: --epochs must be positive, got 0"),
])
def test_a_bad_value_is_one_line_naming_the_flag_and_its_bounds(argv, message, capsys):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.strip() == message


@pytest.mark.parametrize("command, section, wrong, near", [
    ("buffer", "buffer", "expert", "experts"), ("teacher", "teacher", "epoch", "epochs"),
    ("eval", "eval", "arch", "archs"), ("run", "run", "step", "steps")])
def test_a_mistyped_preset_key_names_the_nearest_valid_keys(command, section, wrong, near, capsys, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"description: d\nsource: s\n{section}:\n  {wrong}: 3\n")
    code, _, err = run_cli(capsys, command, "--preset", str(preset))
    assert code == 2 and err.count("\n") == 1
    assert f"unknown option {wrong!r} in preset {str(preset)!r}" in err and f"did you mean {near}" in err


def test_no_progress_leaves_stderr_empty(capsys, tmp_path):
    argv = ["teacher", "--dataset", "toy", "--arch", "convnet:norm=batch,width=8", "--epochs", "1",
            "--out", str(tmp_path / "t.h5")]
    code, out, err = run_cli(capsys, *argv, "--no-progress")
    assert code == 0 and "wrote" in out and err == ""
    code, _, err = run_cli(capsys, *argv[:-1], str(tmp_path / "t2.h5"))
    assert code == 0 and "teacher" in err  # the bar, when not asked away


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
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    assert main(["run", "--preset", "toy/quickstart", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def test_quickstart_pipeline_writes_experts_sets_grids_results_and_plots(quickstart):
    results = json.loads((quickstart / "results.json").read_text())
    rows = {(r["method"], r["baseline"]): r for r in results["results"]}
    assert set(rows) == {("tm", None), ("dm", None), ("random", "random")}
    for row in rows.values():
        assert row["ipc"] == 1 and len(row["accs"]) == 2 and row["mean"] == pytest.approx(sum(row["accs"]) / 2)
    assert rows[("dm", None)]["storage_bytes"]["images"] == 4 * 1 * 3 * 16 * 16 * 4
    assert {x["score"] for x in results["scores"]} == {"vs_random"}
    assert len(list((quickstart / "experts").glob("expert_*.h5"))) == 2
    for name in ("tm_ipc1", "dm_ipc1"):
        s = load_synset(quickstart / f"{name}.h5")
        assert s.ipc == 1 and s.dataset == "toy" and s.method == name[:2]
        assert (quickstart / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (quickstart / "plots" / "accuracy.png").exists()
    assert load_synset(quickstart / "tm_ipc1.h5").lr is not None, "tm learns its lr"


def test_rerunning_the_pipeline_resumes_every_step(quickstart, capsys):
    before = json.loads((quickstart / "results.json").read_text())["results"]
    assert main(["run", "--preset", "toy/quickstart", "--out", str(quickstart), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already recorded" in out and out.count("already synthesized") == 2 and "6 of 6 jobs already finished" in out
    assert json.loads((quickstart / "results.json").read_text())["results"] == before


def test_smoke_preset_evaluates_the_random_baseline(tmp_path):
    assert main(["run", "--preset", "toy/smoke", "--out", str(tmp_path), "--runs", "2", "--epochs", "2",
                 "--no-progress"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    # "2 epochs" under the reference schedule: its loop's 3
    assert [(r["baseline"], r["ipc"], r["epochs"], r["runs"]) for r in rows] == [("random", 1, 3, 2), ("random", 4, 3, 2)]


def test_show_writes_png(quickstart, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "show", str(quickstart / "dm_ipc1.h5"), "--out", str(tmp_path / "g.png"))
    assert code == 0 and "4 images" in out
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_convert_round_trip(quickstart, tmp_path, capsys):
    src = quickstart / "dm_ipc1.h5"
    assert run_cli(capsys, "convert", str(src), str(tmp_path / "s.pt"))[0] == 0
    assert run_cli(capsys, "convert", str(tmp_path / "s.pt"), str(tmp_path / "back.h5"), "--dataset", "toy")[0] == 0
    a, b = load_synset(src), load_synset(tmp_path / "back.h5")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.transform.describe() == b.transform.describe()


@pytest.mark.parametrize("argv, message", [
    (("show", "missing.h5", "--out", "x.png"), "no such file"),
    (("run", "--preset", "nope/none"), "unknown preset"),
    (("run", "--preset", "toy/smoke", "--runs", "0"), "--runs must be positive, at most 1000"),
    (("run", "--preset", "fashion-mnist/tm-ipc1-cpu"), "has no 'run' section"),
    (("labels", "set.h5", "--codec", "topk", "--out", "o.h5"), "needs k="),
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
    code, out, err = run_cli(capsys, "eval", "--baseline", "random", "--dataset", "plugin-set", "--arch", "tinylin",
                             "--ipc", "2", "--runs", "1", "--epochs", "2", "--json", str(tmp_path / "o.json"),
                             "--no-progress")
    assert code == 0, err
    assert "random real" in out and "tinylin" in out
    monkeypatch.setenv("CONDENSE_PLUGINS", "no_such_plugin_module")
    code, _, err = run_cli(capsys, "datasets")
    assert code == 2 and "no_such_plugin_module" in err


@pytest.mark.parametrize("method, extra", [("random", ()), ("dm", ("--iters", "2", "--arch", "convnet:width=8"))])
def test_synth_limit_train_uses_and_records_a_balanced_subset(method, extra, capsys, tmp_path):
    out = tmp_path / f"{method}.h5"
    code, _, err = run_cli(capsys, "synth", method, "--dataset", "toy", "--ipc", "2", "--limit-train", "40",
                           "--out", str(out), "--device", "cpu", "--no-progress", *extra)
    assert code == 0, err
    assert (tmp_path / f"{method}.png").read_bytes()[:4] == b"\x89PNG"  # the set's grid beside it
    s = load_synset(out)
    assert s.data["limit_train"] == 40 and s.config["limit_train"] == 40
    if method == "random":  # the images come from the 40 kept training images
        from condense.data import load_dataset

        limited = load_dataset("toy", limit_train=40)
        assert all(any(torch.equal(img, x) for x in limited.x_train) for img in s.images)
    code, _, err = run_cli(capsys, "synth", method, "--dataset", "toy", "--ipc", "1", "--limit-train", "2",
                           "--out", str(tmp_path / "bad.h5"), "--device", "cpu", "--no-progress", *extra)
    assert code == 2 and err.count("\n") == 1 and "cannot cover 4 classes" in err


def test_log_names_what_to_install_and_belongs_to_synth(capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as on a machine without it
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    code, _, err = run_cli(capsys, "synth", "random", "--dataset", "toy", "--out", str(tmp_path / "r.h5"),
                           "--log", "tensorboard")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install tensorboard" in err
    assert not (tmp_path / "r.h5").exists()  # refused before any work
    code, _, err = run_cli(capsys, "--log", "wandb", "datasets")
    assert code == 2 and "--log applies to condense synth" in err


def test_synth_names_the_grid_it_wrote(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "synth", "random", "--dataset", "toy", "--out", str(tmp_path / "r.h5"))
    assert code == 0 and f"grid {tmp_path / 'r.png'}" in out and (tmp_path / "r.png").exists()
