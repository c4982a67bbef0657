"""Pipelines with several expert stores and evaluation steps (the tm-ablation shape): named
stores, chosen sets, the validation split, the cost log, the ablation table, resume, errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from condense.cli.main import main
from condense.config import load_preset
from condense.synset import load_synset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    assert main(["run", "--preset", "toy/tm-ablation", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def test_steps_read_the_store_they_name_and_evals_the_sets_they_list(ablation):
    assert Path(load_synset(ablation / "ftd_ipc1.h5").provenance["store"]) == ablation / "experts-flat"
    assert Path(load_synset(ablation / "tm_ipc1.h5").provenance["store"]) == ablation / "experts"
    assert load_synset(ablation / "tm-direct_ipc1.h5").config["lr_param"] == "direct"
    assert Path(load_synset(ablation / "ast_ipc1.h5").provenance["store"]) == ablation / "experts-smooth"
    val = json.loads((ablation / "results-val.json").read_text())
    assert val["protocol"]["split"] == "val"
    assert sorted(Path(r["synset"]).name for r in val["results"]) == ["tm-direct_ipc1.h5", "tm_ipc1.h5"]
    test = json.loads((ablation / "results.json").read_text())
    assert {Path(r["synset"]).name if r["synset"] else "random" for r in test["results"]} == \
        {"tm_ipc1.h5", "tm-direct_ipc1.h5", "ftd_ipc1.h5", "ast_ipc1.h5", "random"}
    assert test["protocol"]["split"] == "test"
    fixed = json.loads((ablation / "results-fixed.json").read_text())["results"]
    assert [(Path(r["synset"]).name, r["lr"]) for r in fixed] == [("tm_ipc1.h5", 0.01)]
    assert (ablation / "plots-val" / "accuracy.png").exists() and (ablation / "plots" / "accuracy.png").exists()


def test_the_smooth_store_records_asts_schedule_and_the_plain_one_keeps_its_keys(ablation):
    smooth = json.loads((ablation / "experts-smooth" / "manifest.json").read_text())["protocol"]
    assert (smooth["decay_epoch"], smooth["decay_restart"], smooth["decay_factor"]) == (2, True, 0.6)
    plain = json.loads((ablation / "experts" / "manifest.json").read_text())["protocol"]
    assert "decay_epoch" not in plain and "decay_restart" not in plain  # stores of condense <= 0.3 still resume


def test_every_step_logs_its_wall_time_cpu_time_and_peak_memory(ablation):
    rows = [json.loads(line) for line in (ablation / "steps.jsonl").read_text().splitlines()]
    steps = load_preset("toy/tm-ablation")["run"]["steps"]
    assert [r["step"] for r in rows[:len(steps)]] == steps
    for r in rows:
        assert r["seconds"] >= 0 and r["cpu_seconds"] >= 0 and r["peak_rss_mib"] > 50 and r["peak_scope"] == "block"


def test_the_ablation_table_reads_the_run(ablation, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tm_ablation_table.py"), str(ablation),
                          "--plot", str(tmp_path / "a.png")], capture_output=True, text=True, check=True).stdout
    accuracy, _, rest = out.partition("Validation-only selection")
    lines = {line.split("|")[1].strip(): line for line in accuracy.splitlines() if line.startswith("| `")}
    assert set(lines) == {"`tm`", "`tm-direct`", "`tm@0.01`", "`ftd`", "`ast`", "`random`"}
    assert "`buffer` (2 experts" in rest and "`buffer-flat` (2 experts" in rest and "`buffer-smooth` (2 experts" in rest
    results = {Path(r["synset"]).stem if r["synset"] else "random": r
               for r in json.loads((ablation / "results.json").read_text())["results"]}
    assert f"{results['ftd_ipc1']['mean']:.2f} ± {results['ftd_ipc1']['ci95']:.2f}" in lines["`ftd`"]
    assert "lr_param direct (α, MTT)" in out and "not in this run yet: tm-late, ast-smooth" in out
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_rerunning_resumes_every_step(ablation, capsys):
    assert main(["run", "--preset", "toy/tm-ablation", "--out", str(ablation), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("already recorded") == 3 and out.count("already synthesized") == 4
    assert out.count("jobs already finished") == 3


@pytest.mark.parametrize("change, message", [
    (lambda d: d["eval-val"].update(sets=["synth-nope"]), "lists set 'synth-nope', which is not a synth step run"),
    (lambda d: d["synth-ftd-ipc1"].update(trajectories="buffer-nope"), "reads the store of step 'buffer-nope'"),
])
def test_bad_references_are_one_line(change, message, tmp_path, capsys):
    data = load_preset("toy/tm-ablation")
    change(data)
    data["run"]["steps"] = ["buffer", "synth-ftd-ipc1", "eval-val"] if "ftd" in message or "store" in message \
        else ["buffer", "synth-tm-ipc1", "eval-val"]
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump(data))
    assert main(["run", "--preset", str(preset), "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
