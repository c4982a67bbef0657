"""benchmarks/gpu_protocol.py: its smoke run writes every section, and without a GPU it refuses in one line."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from condense.methods import method_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_protocol.py"
_spec = importlib.util.spec_from_file_location("gpu_protocol", SCRIPT)  # benchmarks/ is not a package
gpu_protocol = sys.modules["gpu_protocol"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_protocol)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-protocol")
    return run("--smoke", "--device", "cpu", "--out", str(out)), out


def test_smoke_run_writes_every_section(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout + proc.stderr
    phase_lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split("] ")[1].split(":")[0] for line in phase_lines[:3]] == list(gpu_protocol.PHASES)
    r = json.loads((out / "results.json").read_text())
    smoke_budget = gpu_protocol.BUDGETS["smoke"]()
    assert {name: p["status"] for name, p in r["phases"].items()} == dict.fromkeys(gpu_protocol.PHASES, "ok")
    assert r["total_seconds"] == pytest.approx(sum(p["seconds"] for p in r["phases"].values()), abs=0.2)

    paths = {row["name"]: row for row in r["paths"]}
    for name in [*method_names(), "tm --backend jax", "dm --backend jax", "buffer", "teacher", "labels", "eval",
                 "eval --transfer"]:
        assert paths[name]["status"] == "ok" and paths[name]["seconds"] >= 0, paths.get(name)
    assert paths["frepo"]["device"] == paths["tm --backend jax"]["device"] == "jax on cpu"
    assert paths["dm"]["device"] == "cpu"

    tm = r["timings"]["tm"]
    assert sorted((t["memory"], t["syn_steps"]) for t in tm) == sorted(
        (m, n) for m in ("exact", "constant") for n in smoke_budget.timing_steps)
    for t in [*tm, r["timings"]["dm"]]:
        assert t["s_per_iter"] > 0 and t["iters_timed"] == smoke_budget.timing_iters and t["peak_cuda_gib"] is None
    ev = r["timings"]["eval"]
    assert ev["stacked_s"] > 0 and ev["sequential_s"] > 0 and ev["runs"] == smoke_budget.stack_runs
    assert ev["stacked_mean"] == pytest.approx(ev["sequential_mean"], abs=1e-6)  # the same runs, trained either way

    rows = {(row["method"], row["ipc"]): row for row in r["accuracy"]["rows"]}
    assert set(rows) == {(m, ipc) for m in ("random", "dm", "tm") for ipc in (1, 10)}
    assert all(row["n"] == smoke_budget.eval_runs == len(row["accs"]) for row in rows.values())
    assert r["published"] == {"source": "docs/REFERENCES.md",
                              "figures": {"DC": {"1": 70.5, "10": 82.3}, "DSA": {"1": 70.6, "10": 84.6},
                                          "KIP": {"1": 73.8, "10": 86.8}}}

    table = (out / "table.md").read_text()
    for text in ("| DC (published) | 70.5 | 82.3 |", "| DSA (published) | 70.6 | 84.6 |",
                 "| KIP (published) | 73.8 | 86.8 |", "docs/REFERENCES.md", smoke_budget.describe(),
                 "| tm, memory constant | syn_steps 4", "| seeds stacked (vmap_seeds) |",
                 "| frepo | jax on cpu | ok |"):
        assert text in table, text


def test_a_session_split_over_calls_keeps_the_other_phases(tmp_path):
    smoke = gpu_protocol.BUDGETS["smoke"]()
    row = {"name": "tm", "device": "cpu", "status": "ok", "seconds": 1.0}
    with open(os.devnull, "w") as log:
        first = gpu_protocol.Protocol(smoke, "cpu", tmp_path, log)
        first.phase("paths", lambda: first.results["paths"].append(row) or "1 row")
        second = gpu_protocol.Protocol(smoke, "cpu", tmp_path, log)  # e.g. --phases timings in a later call
        second.phase("timings", lambda: second.results["timings"].update(tm=[]) or "no rows")
        r = json.loads((tmp_path / "results.json").read_text())
        assert r["paths"] == [row] and r["timings"] == {"tm": []}
        assert set(r["phases"]) == {"paths", "timings"}
        other = gpu_protocol.Protocol(dataclasses.replace(smoke, eval_runs=3), "cpu", tmp_path, log)
        assert other.results["paths"] == [] and other.results["phases"] == {}  # another budget starts afresh


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    proc = run("--out", str(tmp_path / "x"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--smoke" in lines[0] and "--device cpu" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_failed_phase_and_a_failed_row_are_reported_and_fail_the_run(tmp_path):
    with open(os.devnull, "w") as log:
        p = gpu_protocol.Protocol(gpu_protocol.BUDGETS["smoke"](), "cpu", tmp_path, log)
        row = {"name": "tm", "device": "cpu", "status": "error", "error": "CondenseError: out of memory",
               "seconds": 1.0}
        p.phase("paths", lambda: p.results["paths"].append(row) or "1 row")
        assert p.results["phases"]["paths"]["status"] == "ok" and p.failed()  # the row's error fails the run
        p.phase("timings", lambda: 1 / 0)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["phases"]["timings"]["status"] == "error" and r["paths"] == [row]
    assert r["phases"]["timings"]["error"] == "ZeroDivisionError: division by zero"
    table = (tmp_path / "table.md").read_text()
    assert "- timings: ZeroDivisionError: division by zero" in table
    assert "| tm | cpu | error | 1.00 | CondenseError: out of memory |" in table
