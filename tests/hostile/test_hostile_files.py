"""Hostile files in, outputs on a full, read-only or booby-trapped disk, two runs on one output.

Each case asserts the promised outcome: one line naming the problem and a non-zero exit, nothing
read that the user did not name, nothing written outside the output, no temporary file left,
and every earlier output intact.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from condense.runtime.files import output_lock
from condense.synset import load_synset

from .conftest import REPO, cli, cli_proc, digest, refused, temp_leftovers

SECRET = b"the victim's private bytes: 0123456789abcdef" * 4


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's that no run may read or change."""
    p = tmp_path / "victim.txt"
    p.write_bytes(SECRET)
    return p


def tampered(valid: Path, tmp_path: Path, change, name: str = "shared.h5") -> Path:
    """A copy of the valid file ``valid`` (a set, a teacher) with ``change(h5 file)`` applied."""
    path = tmp_path / name
    shutil.copy(valid, path)
    with h5py.File(path, "a") as f:
        change(f)
    return path


def _external_images(victim: Path):
    def change(f):
        shape, dtype = f["images"].shape, f["images"].dtype
        del f["images"]
        n = int(np.prod(shape)) * dtype.itemsize
        f.create_dataset("images", shape=shape, dtype=dtype, external=[(str(victim), 0, n)])
    return change


def _external_link(target: Path):
    def change(f):
        del f["images"]
        f["images"] = h5py.ExternalLink(str(target), "/images")
    return change


def _virtual_images(source: Path):
    def change(f):
        shape = f["images"].shape
        del f["images"]
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[:] = h5py.VirtualSource(str(source), "images", shape=shape)
        f.create_virtual_dataset("images", layout)
    return change


def _soft_link(f):
    f.move("images", "hidden")
    f["images"] = h5py.SoftLink("/hidden")


def _forged_shape(f):
    del f["images"]
    f.create_dataset("images", shape=(10**5, 3, 512, 512), dtype="f4")  # 300 GB declared, nothing stored


def _string_images(f):
    del f["images"]
    f.create_dataset("images", data=np.array([b"x" * 10] * 4))


def _unknown_filter(f):
    data = f["images"][()]
    del f["images"]
    f.create_dataset("images", data=data, chunks=data.shape, compression=32001, allow_unknown_filter=True)


def _many_names(f):
    for i in range(50):  # the images read fifty times over, were they trusted
        f["labels"][f"alias{i}"] = f["images"]


def _deep_json(f):
    f.attrs["config"] = "[" * 100_000 + "]" * 100_000


def _classes_as_text(f):
    f.attrs["num_classes"] = "ten"


def _huge_header(f):
    f.attrs["ipc"] = 10**9


HOSTILE_SETS = {
    "external storage": (lambda victim, good: _external_images(victim), "external file"),
    "external link": (lambda victim, good: _external_link(good), "external link"),
    "virtual dataset": (lambda victim, good: _virtual_images(good), "virtual dataset"),
    "soft link": (lambda victim, good: _soft_link, "SoftLink"),
    "forged shape": (lambda victim, good: _forged_shape, "declares shape"),
    "string data": (lambda victim, good: _string_images, "not numbers"),
    "unknown filter": (lambda victim, good: _unknown_filter, "filter 32001"),
    "deep json": (lambda victim, good: _deep_json, "not valid JSON"),
    "hard-link aliases": (lambda victim, good: _many_names, "names"),
    "text attribute": (lambda victim, good: _classes_as_text, "num_classes"),
    "huge header": (lambda victim, good: _huge_header, "'images' has shape"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SETS))
@pytest.mark.parametrize("command", ["show", "convert", "eval"])
def test_a_hostile_set_is_refused_by_every_reader(case, command, toy_set, victim, tmp_path, capsys):
    make, needle = HOSTILE_SETS[case]
    path = tampered(toy_set, tmp_path, make(victim, toy_set))
    out = tmp_path / "out"
    argv = {"show": ["show", path, "--out", out.with_suffix(".png")],
            "convert": ["convert", path, out.with_suffix(".pt")],
            "eval": ["eval", path, "--runs", "1", "--epochs", "1", "--json", out.with_suffix(".json"),
                     "--no-random-baseline"]}[command]
    line = refused(cli(capsys, *argv), str(path.name), needle)
    assert "0123456789abcdef" not in line
    assert not list(tmp_path.glob("out*")), "nothing is written for a refused input"
    assert victim.read_bytes() == SECRET


def test_the_library_reader_refuses_external_storage_too(toy_set, victim, tmp_path):
    from condense.runtime.errors import FormatError

    path = tampered(toy_set, tmp_path, _external_images(victim))
    with pytest.raises(FormatError, match="external file"):
        load_synset(path)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "set.h5"
    os.mkfifo(fifo)
    res = cli_proc("show", fifo, "--out", tmp_path / "x.png", timeout=60)
    refused(res, "not a regular file")


# --- teachers and stores ---------------------------------------------------------------------------

def _teacher_weight_elsewhere(victim):
    def change(f):
        ds = f["state/0"]
        shape, dtype = ds.shape, ds.dtype
        del f["state/0"]
        f["state"].create_dataset("0", shape=shape, dtype=dtype,
                                  external=[(str(victim), 0, int(np.prod(shape)) * dtype.itemsize)])
    return change


@pytest.mark.parametrize("change, needle", [
    (lambda victim: _teacher_weight_elsewhere(victim), "external file"),
    (lambda victim: (lambda f: f.attrs.__setitem__("num_classes", 10**9)), "out of range"),
    (lambda victim: (lambda f: f.attrs.__setitem__("image_shape", [3, 10**5, 10**5])), "out of range"),
    (lambda victim: (lambda f: (f["state"].__delitem__("0"), f["state"].create_dataset("0", data=np.zeros(3, np.float32)))),
     "has shape"),
    (lambda victim: (lambda f: f.attrs.__setitem__("arch", "convnet:width=4096")), "has shape"),
], ids=["external weight", "forged classes", "forged image size", "wrong weight shape", "other arch"])
def test_a_hostile_teacher_is_refused(change, needle, toy_teacher, victim, tmp_path, capsys):
    path = tampered(toy_teacher, tmp_path, change(victim), "teacher.h5")
    refused(cli(capsys, "teacher", "--info", path), path.name, needle)
    assert victim.read_bytes() == SECRET


def test_relabelling_with_a_hostile_teacher_writes_nothing(toy_set, toy_teacher, victim, tmp_path, capsys):
    teacher = tampered(toy_teacher, tmp_path, _teacher_weight_elsewhere(victim), "teacher.h5")
    out = tmp_path / "soft.h5"
    refused(cli(capsys, "labels", toy_set, "--teacher", teacher, "--out", out), "external file")
    assert not out.exists() and not temp_leftovers(tmp_path)


@pytest.fixture
def store_copy(store_path, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(store_path, dst)
    return dst


def _tm(store: Path, out: Path, *extra: str) -> list[str]:
    return ["synth", "tm", "--trajectories", store, "--ipc", "1", "--iters", "2", "--syn-steps", "2",
            "--expert-epochs", "1", "--max-start-epoch", "1", "--out", out, *extra]


def test_a_store_expert_reading_another_file_is_refused(store_copy, victim, tmp_path, capsys):
    expert = store_copy / "expert_00000.h5"
    with h5py.File(expert, "a") as f:
        shape, dtype = f["params"].shape, f["params"].dtype
        del f["params"]
        f.create_dataset("params", shape=shape, dtype=dtype, external=[(str(victim), 0, int(np.prod(shape)) * 4)])
    out = tmp_path / "tm.h5"
    refused(cli(capsys, *_tm(store_copy, out)), "expert_00000.h5", "external file")
    assert not out.exists()


def test_a_symlinked_expert_is_not_followed(store_copy, tmp_path, capsys):
    expert = store_copy / "expert_00000.h5"
    moved = tmp_path / "elsewhere.h5"
    expert.rename(moved)
    expert.symlink_to(moved)
    refused(cli(capsys, *_tm(store_copy, tmp_path / "tm.h5")), "symbolic link")


@pytest.mark.parametrize("manifest, needle", [
    (lambda m: "[" * 200_000 + "]" * 200_000, "unreadable manifest"),
    (lambda m: json.dumps(dict(m, epochs=-3)), "'epochs' must be a positive integer"),
    (lambda m: json.dumps(dict(m, n_params="many")), "'n_params' must be a positive integer"),
    (lambda m: json.dumps(dict(m, checksums=[1, 2])), "'checksums' must be a mapping"),
    (lambda m: json.dumps(m) + " " * (17 << 20), "too large for a manifest"),
], ids=["deep json", "negative epochs", "text params", "bad checksums", "huge file"])
def test_a_hostile_manifest_is_refused(manifest, needle, store_copy, tmp_path, capsys):
    path = store_copy / "manifest.json"
    path.write_text(manifest(json.loads(path.read_text())))
    refused(cli(capsys, *_tm(store_copy, tmp_path / "tm.h5")), needle)


def test_a_pickle_posing_as_a_pt_set_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "set.pt"
    torch.save({"image_syn": Evil(), "label_syn": torch.zeros(2)}, bad)
    refused(cli(capsys, "convert", bad, tmp_path / "set.h5", "--dataset", "toy"), "refusing to unpickle")
    assert not marker.exists() and not (tmp_path / "set.h5").exists()


# --- full and read-only disks ----------------------------------------------------------------------

def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free
    if free > leave:
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * (free - leave))


def dm(out: Path, *extra: str) -> list[str]:
    return ["synth", "dm", "--dataset", "toy", "--ipc", "2", "--iters", "2", "--checkpoint-every", "1",
            "--out", out, *extra]


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk):
    fill(small_disk, 20_000)
    res = cli_proc(*dm(small_disk / "dm.h5"))
    refused(res, "no space left on device", str(small_disk))
    assert not temp_leftovers(small_disk)


def test_a_full_disk_keeps_the_earlier_set(small_disk, tmp_path):
    out = small_disk / "dm.h5"
    assert cli_proc(*dm(out)).rc == 0
    before = digest(out)
    shutil.rmtree(small_disk / "dm.h5.run")
    fill(small_disk, 8_000)
    refused(cli_proc(*dm(out, "--seed", "1")), "no space left on device")
    assert digest(out) == before and not temp_leftovers(small_disk)


@pytest.mark.parametrize("command", ["buffer", "teacher", "labels"])
def test_every_writer_meets_a_full_disk_with_one_line(command, small_disk, toy_set, toy_teacher):
    fill(small_disk, 4_000)
    out = small_disk / "out"
    argv = {"buffer": ["buffer", "--dataset", "toy", "--arch", "convnet:width=8", "--experts", "1", "--epochs", "1",
                       "--out", out],
            "teacher": ["teacher", "--dataset", "toy", "--arch", "convnet:width=64", "--epochs", "1",
                        "--out", out.with_suffix(".h5")],
            "labels": ["labels", toy_set, "--teacher", toy_teacher, "--out", out.with_suffix(".h5")]}[command]
    res = cli_proc(*argv, timeout=300)
    refused(res, "no space left on device")
    assert not temp_leftovers(small_disk)


@pytest.mark.parametrize("command", ["show", "convert", "eval", "run"])
def test_every_report_meets_a_full_disk_with_one_line(command, small_disk, toy_set):
    fill(small_disk, 2_000)
    argv = {"show": ["show", toy_set, "--out", small_disk / "grid.png"],
            "convert": ["convert", toy_set, small_disk / "set.pt"],
            "eval": ["eval", toy_set, "--runs", "1", "--epochs", "1", "--no-random-baseline",
                     "--json", small_disk / "r.json"],
            "run": ["run", "--preset", "toy/smoke", "--out", small_disk / "pipeline"]}[command]
    refused(cli_proc(*argv, timeout=300), "no space left on device")
    assert not temp_leftovers(small_disk)


def _read_only_argv(command: str, ro: Path, toy_set: Path, toy_teacher: Path) -> list[str]:
    return {
        "synth": dm(ro / "dm.h5"),
        "buffer": ["buffer", "--dataset", "toy", "--arch", "convnet:width=8", "--experts", "1", "--epochs", "1",
                   "--out", ro / "store"],
        "teacher": ["teacher", "--dataset", "toy", "--arch", "convnet:width=8", "--epochs", "1", "--out", ro / "t.h5"],
        "labels": ["labels", toy_set, "--teacher", toy_teacher, "--out", ro / "soft.h5"],
        "eval": ["eval", toy_set, "--runs", "1", "--epochs", "1", "--no-random-baseline", "--json", ro / "r.json"],
        "show": ["show", toy_set, "--out", ro / "grid.png"],
        "convert": ["convert", toy_set, ro / "set.pt"],
        "run": ["run", "--preset", "toy/smoke", "--out", ro / "pipeline"],
    }[command]


@pytest.mark.parametrize("command", ["synth", "buffer", "teacher", "labels", "eval", "show", "convert", "run"])
def test_a_read_only_output_is_one_line_naming_it(command, read_only_dir, toy_set, toy_teacher, capsys):
    res = cli(capsys, *_read_only_argv(command, read_only_dir, toy_set, toy_teacher))
    refused(res, str(read_only_dir))
    assert (read_only_dir / "before.txt").read_text() == "kept"


def test_eval_plots_on_a_read_only_folder(read_only_dir, toy_set, tmp_path, capsys):
    res = cli(capsys, "eval", toy_set, "--runs", "1", "--epochs", "1", "--no-random-baseline",
              "--json", tmp_path / "r.json", "--plots", read_only_dir / "plots")
    refused(res, str(read_only_dir))


# --- symlinks planted where outputs go ---------------------------------------------------------------

@pytest.mark.parametrize("planted", ["config.json", "env.json", "grid_000001.png"])
def test_a_symlink_in_the_run_folder_is_replaced_not_written_through(planted, victim, tmp_path, capsys):
    out = tmp_path / "dm.h5"
    (tmp_path / "dm.h5.run").mkdir()
    (tmp_path / "dm.h5.run" / planted).symlink_to(victim)
    assert cli(capsys, *dm(out)).rc == 0
    assert victim.read_bytes() == SECRET
    assert not (tmp_path / "dm.h5.run" / planted).is_symlink()


def test_a_symlinked_checkpoint_is_not_read(victim, tmp_path, capsys):
    (tmp_path / "dm.h5.run").mkdir()
    (tmp_path / "dm.h5.run" / "checkpoint.pt").symlink_to(victim)
    refused(cli(capsys, *dm(tmp_path / "dm.h5")), "checkpoint.pt", "symbolic link")
    assert victim.read_bytes() == SECRET and not (tmp_path / "dm.h5").exists()


def test_a_symlinked_metrics_log_is_refused(victim, tmp_path, capsys):
    (tmp_path / "dm.h5.run").mkdir()
    (tmp_path / "dm.h5.run" / "metrics.csv").symlink_to(victim)
    refused(cli(capsys, *dm(tmp_path / "dm.h5")), "metrics.csv", "symbolic link")
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("planted", ["dm.h5", "dm.png"])
def test_a_symlink_at_the_output_is_replaced(planted, victim, tmp_path, capsys):
    (tmp_path / planted).symlink_to(victim)
    assert cli(capsys, *dm(tmp_path / "dm.h5")).rc == 0
    assert victim.read_bytes() == SECRET
    assert load_synset(tmp_path / "dm.h5").ipc == 2


def test_a_symlinked_run_folder_is_refused(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "dm.h5.run").symlink_to(elsewhere)
    refused(cli(capsys, *dm(tmp_path / "dm.h5")), "run folder", "symbolic link")
    assert not list(elsewhere.iterdir())


def test_a_symlinked_jobs_log_is_refused(toy_set, victim, tmp_path, capsys):
    (tmp_path / "r.json.run").mkdir()
    (tmp_path / "r.json.run" / "jobs.jsonl").symlink_to(victim)
    res = cli(capsys, "eval", toy_set, "--runs", "1", "--epochs", "1", "--no-random-baseline",
              "--json", tmp_path / "r.json")
    refused(res, "jobs.jsonl")
    assert victim.read_bytes() == SECRET


def test_a_symlinked_lock_file_is_refused(victim, tmp_path, capsys):
    (tmp_path / ".dm.h5.lock").symlink_to(victim)
    refused(cli(capsys, *dm(tmp_path / "dm.h5")), "symbolic link")
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("step_out", ["../../escaped.h5", "/tmp/condense-escaped.h5", "sub/../../x.h5"])
def test_pipeline_outputs_stay_in_the_run_folder(step_out, tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text(f"run:\n  steps: [synth-dm]\nsynth-dm:\n  method: dm\n  dataset: toy\n  ipc: 1\n  iters: 1\n  out: {step_out}\n")
    res = cli(capsys, "run", "--preset", preset, "--out", tmp_path / "run" / "here")
    refused(res, "inside the run folder")
    assert not (tmp_path / "escaped.h5").exists() and not Path("/tmp/condense-escaped.h5").exists()


def test_a_symlinked_steps_log_is_refused(victim, tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  steps: [synth-dm]\nsynth-dm:\n  method: dm\n  dataset: toy\n  ipc: 1\n  iters: 1\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "steps.jsonl").symlink_to(victim)
    refused(cli(capsys, "run", "--preset", preset, "--out", tmp_path / "run"), "steps.jsonl")
    assert victim.read_bytes() == SECRET


# --- one run per output ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["synth", "buffer", "teacher", "labels", "eval", "run"])
def test_a_second_run_on_the_same_output_is_refused(command, toy_set, toy_teacher, tmp_path, capsys):
    argv = _read_only_argv(command, tmp_path, toy_set, toy_teacher)
    target = Path(argv[argv.index("--json") + 1] if "--json" in argv else argv[argv.index("--out") + 1])
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from condense.runtime.files import output_lock\n"
                              "with output_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)", str(target)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "held"
        line = refused(cli(capsys, *argv), "in use by pid", str(child.pid))
        assert str(target) in line
    finally:
        child.kill()
        child.wait()
    assert cli(capsys, *argv).rc == 0, "a killed holder leaves no lock behind"


def test_the_same_process_may_nest_its_own_lock(tmp_path):
    with output_lock(tmp_path / "x"):
        with output_lock(tmp_path / "x"):
            pass
        assert (tmp_path / ".x.lock").exists()
    assert not (tmp_path / ".x.lock").exists()


# --- killed, then run again --------------------------------------------------------------------------

def kill_then_rerun(argv: list, ready, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start ``condense ARGV``, SIGKILL it once ``ready()`` holds, then rerun it to the end."""
    cmd = [sys.executable, "-m", "condense", "--no-progress", *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    while not ready() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_buffer_killed_then_rerun_equals_an_uninterrupted_store(tmp_path):
    from trajectories import open_store

    argv = ["buffer", "--dataset", "toy", "--arch", "convnet:width=8", "--experts", "3", "--epochs", "2"]
    killed = tmp_path / "killed"
    res = kill_then_rerun([*argv, "--out", killed], lambda: (killed / "expert_00000.h5").exists(), tmp_path)
    assert res.returncode == 0, res.stderr
    assert cli_proc(*argv, "--out", tmp_path / "whole").rc == 0
    a, b = open_store(killed), open_store(tmp_path / "whole")
    assert len(a) == len(b) == 3
    for i in range(3):
        assert torch.equal(a.expert(i), b.expert(i))
    assert sorted(json.loads((killed / "manifest.json").read_text())["checksums"]) == [
        "expert_00000.h5", "expert_00001.h5", "expert_00002.h5"]


def test_eval_killed_then_rerun_equals_an_uninterrupted_report(toy_set, tmp_path):
    argv = ["eval", toy_set, "--runs", "3", "--epochs", "2", "--no-random-baseline"]
    killed = tmp_path / "killed.json"
    res = kill_then_rerun([*argv, "--json", killed], lambda: (tmp_path / "killed.json.run" / "jobs.jsonl").exists(),
                          tmp_path)
    assert res.returncode == 0, res.stderr
    assert cli_proc(*argv, "--json", tmp_path / "whole.json").rc == 0
    accs = [json.loads(p.read_text())["results"][0]["accs"] for p in (killed, tmp_path / "whole.json")]
    assert accs[0] == accs[1]


@pytest.mark.parametrize("command", ["teacher", "labels"])
def test_killed_then_rerun_gives_the_uninterrupted_file(command, toy_set, toy_teacher, tmp_path):
    argv = {"teacher": ["teacher", "--dataset", "toy", "--arch", "convnet:width=8", "--epochs", "3"],
            "labels": ["labels", toy_set, "--teacher", toy_teacher]}[command]
    killed = tmp_path / "killed.h5"
    res = kill_then_rerun([*argv, "--out", killed], lambda: bool(list(tmp_path.glob(".killed.h5*"))), tmp_path)
    assert res.returncode == 0, res.stderr
    assert cli_proc(*argv, "--out", tmp_path / "whole.h5").rc == 0
    if command == "teacher":
        from condense.labels.teacher_file import load_teacher_file

        a, b = (load_teacher_file(p).net.state_dict() for p in (killed, tmp_path / "whole.h5"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert torch.equal(load_synset(killed).labels, load_synset(tmp_path / "whole.h5").labels)
    assert not temp_leftovers(tmp_path)


def test_a_killed_writers_temporary_files_are_removed_by_the_rerun(tmp_path, capsys):
    out = tmp_path / "dm.h5"
    (tmp_path / "dm.h5.run").mkdir()
    stale = [tmp_path / ".dm.h5.tmp-99999-0", tmp_path / "dm.h5.run" / ".checkpoint.pt.tmp-99999-0"]
    for p in stale:
        p.write_bytes(b"half")
    assert cli(capsys, *dm(out)).rc == 0
    assert not any(p.exists() for p in stale) and not temp_leftovers(tmp_path)


@pytest.mark.parametrize("line", ['{"key": "K", "ok": true, "accs": [1e9]}', '{"key": "K", "ok": true, "accs": "x"}',
                                  '[' * 50_000 + ']' * 50_000, '{"key": "K", "ok": true, "accs": [50], "curves": 3}'],
                         ids=["impossible accuracy", "text accuracy", "deep json", "bad curves"])
def test_a_forged_jobs_log_line_is_not_trusted(line, toy_set, tmp_path, capsys):
    argv = ["eval", toy_set, "--runs", "1", "--epochs", "1", "--no-random-baseline", "--json", tmp_path / "r.json"]
    assert cli(capsys, *argv).rc == 0
    log = tmp_path / "r.json.run" / "jobs.jsonl"
    real = json.loads(log.read_text().splitlines()[0])
    log.write_text(line.replace('"K"', json.dumps(real["key"])) + "\n")
    assert cli(capsys, *argv).rc == 0
    accs = json.loads((tmp_path / "r.json").read_text())["results"][0]["accs"]
    assert accs == real["accs"], "the forged line was ignored and its job run again"


def _deflated_copy(src: Path, dst: Path) -> None:
    """``src`` (a torch zip archive) rewritten with every member deflated."""
    import zipfile

    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info.filename))


def test_a_compressed_torch_archive_is_refused(tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save({"image_syn": torch.zeros(4, 3, 16, 16), "label_syn": torch.arange(4)}, plain)
    bomb = tmp_path / "set.pt"
    _deflated_copy(plain, bomb)
    refused(cli(capsys, "convert", bomb, tmp_path / "set.h5", "--dataset", "toy"), "compressed torch archive")
    assert not (tmp_path / "set.h5").exists()


def test_teacher_weights_in_a_compressed_archive_are_refused(tmp_path, capsys):
    from condense.nets import build_net

    plain = tmp_path / "plain.pt"
    torch.save(build_net("convnet:width=8", 3, 4, (16, 16)).state_dict(), plain)
    _deflated_copy(plain, tmp_path / "w.pt")
    res = cli(capsys, "teacher", "--dataset", "toy", "--arch", "convnet:width=8", "--weights", tmp_path / "w.pt",
              "--out", tmp_path / "t.h5")
    refused(res, "compressed torch archive")
    assert not (tmp_path / "t.h5").exists()


def test_a_pipeline_killed_then_rerun_equals_an_uninterrupted_one(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  steps: [eval]\neval:\n  baseline: random\n  dataset: toy\n  ipc: [1, 2]\n"
                      "  archs: [convnet:width=8]\n  runs: 3\n  epochs: 3\n")
    killed = tmp_path / "killed"
    res = kill_then_rerun(["run", "--preset", preset, "--out", killed],
                          lambda: (killed / "results.json.run" / "jobs.jsonl").exists(), tmp_path)
    assert res.returncode == 0, res.stderr
    assert cli_proc("run", "--preset", preset, "--out", tmp_path / "whole").rc == 0
    accs = [[r["accs"] for r in json.loads((p / "results.json").read_text())["results"]]
            for p in (killed, tmp_path / "whole")]
    assert accs[0] == accs[1]


def _labelled_by(teacher: str, sha: str = "0" * 64):
    def change(f):
        f["labels"].attrs.update({"kind": "probabilities", "loss": "kl"})
        n, k = f["classes"].shape[0], int(f.attrs["num_classes"])
        del f["labels/data"]
        f["labels"].create_dataset("data", data=np.full((n, k), 1.0 / k, np.float32))
        f["labels"].attrs["shape"] = [n, k]
        prov = json.loads(f.attrs["provenance"])
        prov["labels"] = {"teacher": {"file": teacher, "sha256": sha}, "views": "static", "temperature": 1.0}
        f.attrs["provenance"] = json.dumps(prov)
    return change


@pytest.mark.parametrize("named", ["victim", "fifo", "malformed"])
def test_eval_reads_no_teacher_a_hostile_set_names(named, toy_set, victim, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if named == "malformed":
        def change(f):
            _labelled_by(str(victim))(f)
            prov = json.loads(f.attrs["provenance"])
            prov["labels"] = {"teacher": {"file": "x"}, "views": 3}
            f.attrs["provenance"] = json.dumps(prov)
        path = tampered(toy_set, tmp_path, change)
        needle = "provenance is malformed"
    else:
        path = tampered(toy_set, tmp_path, _labelled_by(str(victim if named == "victim" else fifo)))
        needle = "not a teacher" if named == "victim" else "not a regular file"
    res = cli_proc("eval", path, "--runs", "1", "--epochs", "1", "--json", tmp_path / "r.json", timeout=120)
    refused(res, needle)
    assert victim.read_bytes() == SECRET and not (tmp_path / "r.json").exists()
