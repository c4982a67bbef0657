"""Runs that never report a false success.

A run none of whose iterations was accepted fails with one line naming the cause and leaves
``--out`` as it was; a finished run's rerun says what it did (already synthesized, restored
from the checkpoint, or kept a longer run) and the summary line matches the file on disk.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from .conftest import REPO, cli, digest, refused

ARCH = "convnet:width=8"
TM = ("--ipc", "1", "--iters", "4", "--syn-steps", "2", "--expert-epochs", "2", "--max-start-epoch", "2",
      "--checkpoint-every", "2")
DM = ("--dataset", "toy", "--ipc", "1", "--arch", ARCH, "--iters", "4", "--batch-real", "16", "--checkpoint-every", "2")
GM = ("--dataset", "toy", "--ipc", "1", "--arch", ARCH, "--iters", "2", "--outer-loop", "1", "--inner-loop", "1",
      "--batch-real", "16", "--checkpoint-every", "2")


def earlier(tmp_path: Path, toy_set: Path, name: str) -> Path:
    """A good set already at ``--out`` (from another run whose run folder is gone)."""
    out = tmp_path / name
    shutil.copy(toy_set, out)
    return out


def images(path: Path) -> torch.Tensor:
    with h5py.File(path, "r") as f:
        return torch.from_numpy(f["images"][()])


def iteration_of(path: Path) -> int:
    import json

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["provenance"])["iteration"]


@pytest.fixture(scope="module")
def nan_store(store_path, tmp_path_factory) -> Path:
    """The tiny expert store with every parameter of every expert NaN."""
    out = tmp_path_factory.mktemp("nan") / "store"
    shutil.copytree(store_path, out)
    for f in out.glob("expert_*.h5"):
        with h5py.File(f, "r+") as h:
            h["params"][...] = float("nan")
    return out


def nan_teacher(path: Path, arch: str) -> Path:
    """A teacher file on toy whose first weight tensor is NaN."""
    from condense.data import load_dataset
    from condense.labels.teacher_file import TeacherFile
    from condense.nets import build_net

    ds = load_dataset("toy")
    c, h, w = ds.info.shape
    net = build_net(arch, c, ds.info.num_classes, (h, w))
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    TeacherFile(net=net, arch=arch, dataset="toy", num_classes=ds.info.num_classes, image_shape=(c, h, w),
                class_names=tuple(ds.info.class_names or ()), transform=ds.transform, accuracy=float("nan")).save(path)
    return path


# --- no accepted update: refused, --out untouched ------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_tm_whose_learned_lr_is_always_rolled_back_fails_and_keeps_the_earlier_set(store_path, toy_set, tmp_path,
                                                                                   capsys, backend):
    out = earlier(tmp_path, toy_set, "tm.h5")
    before = digest(out)
    res = cli(capsys, "synth", "tm", "--backend", backend, "--trajectories", store_path, *TM, "--lr-lr", "1e3",
              "--out", out)
    refused(res, "no iteration was accepted in 4", "learned lr", "--lr-lr")
    assert digest(out) == before
    assert "wrote" not in res.out


def test_an_image_lr_beyond_float32_is_refused_before_any_work(store_path, tmp_path, capsys):
    out = tmp_path / "tm.h5"
    res = cli(capsys, "synth", "tm", "--trajectories", store_path, *TM, "--lr-img", "1e300", "--out", out)
    refused(res, "--lr-img", "out of range")
    assert not out.exists() and not (tmp_path / "tm.h5.run").exists()


def test_the_fix_the_refusal_asks_for_is_not_blocked_by_the_failed_run(store_path, tmp_path, capsys):
    out = tmp_path / "tm.h5"
    refused(cli(capsys, "synth", "tm", "--trajectories", store_path, *TM, "--lr-lr", "1e3", "--out", out),
            "--lr-lr")
    # the failed run left no checkpoint of its settings, so the lower --lr-lr is a fresh run here
    res = cli(capsys, "synth", "tm", "--trajectories", store_path, *TM, "--lr-lr", "1e-5", "--out", out)
    assert res.rc == 0, res.err
    assert iteration_of(out) == 4 and "4 iterations" in res.out


def test_a_run_stopped_by_bad_steps_with_none_accepted_writes_nothing(store_path, toy_set, tmp_path, capsys):
    out = earlier(tmp_path, toy_set, "tm.h5")
    before = digest(out)
    res = cli(capsys, "synth", "tm", "--trajectories", store_path, *TM, "--lr-lr", "1e3", "--max-bad-steps", "2",
              "--out", out)
    refused(res, "no iteration was accepted in 2", "2 bad steps in a row")
    assert digest(out) == before


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_tm_on_a_store_with_nan_parameters_names_the_expert(nan_store, tmp_path, capsys, backend):
    out = tmp_path / "tm.h5"
    res = cli(capsys, "synth", "tm", "--backend", backend, "--trajectories", nan_store, *TM, "--out", out)
    refused(res, "expert", str(nan_store), "non-finite parameters")
    assert not out.exists()


@pytest.mark.parametrize("method, flags", [("dm", DM), ("dam", DM), ("gm", GM)])
def test_image_methods_whose_every_step_is_rolled_back_fail(toy_set, tmp_path, capsys, method, flags, monkeypatch):
    from condense.methods.loop import ImageSynthesizer

    # every step leaves the images unusable, as an overflowing step would
    monkeypatch.setattr(ImageSynthesizer, "validate_state", lambda self: "non-finite values")
    out = earlier(tmp_path, toy_set, f"{method}.h5")
    before = digest(out)
    res = cli(capsys, "synth", method, *flags, "--out", out)
    refused(res, "no iteration was accepted", "non-finite", "nothing was written")
    assert digest(out) == before


def test_frepo_whose_every_step_is_rolled_back_fails(toy_set, tmp_path, capsys, monkeypatch):
    from condense.methods.loop import ImageSynthesizer

    monkeypatch.setattr(ImageSynthesizer, "validate_state", lambda self: "non-finite values")
    out = earlier(tmp_path, toy_set, "frepo.h5")
    before = digest(out)
    res = cli(capsys, "synth", "frepo", "--dataset", "toy", "--ipc", "1", "--arch", ARCH, "--iters", "2",
              "--batch-real", "32", "--pool-size", "2", "--max-online-steps", "2", "--out", out)
    refused(res, "no iteration was accepted", "nothing was written")
    assert digest(out) == before


def test_sre2l_refuses_a_teacher_with_nan_weights_up_front(toy_set, tmp_path, capsys):
    teacher = nan_teacher(tmp_path / "nan_teacher.h5", "convnet:norm=batch,width=8")
    out = earlier(tmp_path, toy_set, "sre2l.h5")
    before = digest(out)
    res = cli(capsys, "synth", "sre2l", "--teacher", teacher, "--ipc", "1", "--arch", ARCH, "--iters", "2",
              "--out", out)
    refused(res, "teacher", str(teacher), "non-finite weights")
    assert digest(out) == before and not Path(f"{out}.run").exists()


def test_rded_refuses_a_teacher_with_nan_weights(tmp_path, capsys):
    teacher = nan_teacher(tmp_path / "nan_teacher.h5", ARCH)
    out = tmp_path / "rded.h5"
    res = cli(capsys, "synth", "rded", "--teacher", teacher, "--ipc", "1", "--arch", ARCH, "--out", out)
    refused(res, "teacher", "non-finite weights")
    assert not out.exists()


def test_labels_refuse_a_teacher_file_with_nan_weights(toy_set, tmp_path, capsys):
    teacher = nan_teacher(tmp_path / "nan_teacher.h5", ARCH)
    out = tmp_path / "labelled.h5"
    res = cli(capsys, "labels", toy_set, "--teacher", teacher, "--out", out)
    refused(res, "teacher", "non-finite weights")
    assert not out.exists()


def test_labels_refuse_store_experts_with_nan_parameters(toy_set, nan_store, tmp_path, capsys):
    out = tmp_path / "labelled.h5"
    res = cli(capsys, "labels", toy_set, "--teacher", nan_store, "--out", out)
    refused(res, "teacher", "expert 0", "non-finite weights")
    assert not out.exists()


def test_baselines_have_no_update_to_accept_and_still_succeed(tmp_path, capsys):
    out = tmp_path / "random.h5"
    res = cli(capsys, "synth", "random", "--dataset", "toy", "--ipc", "1", "--out", out)
    assert res.rc == 0 and out.exists(), res.err


# --- the accepted steps across resumed segments ----------------------------------------------------

class Flaky:
    """A minimal Synthesizer on toy whose steps are accepted only for iterations in ``accept``."""

    method_name = "flaky"

    def __init__(self, accept):
        self.accept = accept
        self.images = torch.zeros(4, 3, 16, 16, requires_grad=True)
        self.opts = {"images": torch.optim.SGD([self.images], lr=0.1)}
        self.it = 0

    def learnables(self):
        return {"images": self.images}

    def optimizers(self):
        return self.opts

    def compute_grads(self, it):
        self.it = it
        self.images.grad = torch.ones_like(self.images)
        return {"loss": 1.0}

    def after_step(self, it):
        pass

    def extra_state(self):
        return {}

    def load_extra_state(self, state):
        pass

    def validate_state(self):
        return None if self.it in self.accept else "not this one"

    def synset(self, it):
        from condense.data import load_dataset
        from condense.synset import SynSet

        ds = load_dataset("toy")
        return SynSet.hard(self.images.detach().clone(), torch.arange(4), dataset="toy", num_classes=4,
                           method="flaky", transform=ds.transform, config={"method": "flaky"},
                           provenance={"seed": 0, "iteration": it})


def run_flaky(out, iters, accept):
    from condense.config.parts import Loop
    from condense.methods.loop import synthesize

    loop = Loop(iters=iters, checkpoint_every=2, max_bad_steps=100)
    return synthesize(Flaky(accept), loop, out, {"method": "flaky"}, progress=lambda m: None, bars=False)


def test_steps_accepted_in_an_earlier_segment_count(tmp_path):
    from condense.runtime.errors import CondenseError

    out = tmp_path / "flaky.h5"
    run_flaky(out, 2, accept={0})
    assert torch.load(Path(f"{out}.run") / "checkpoint.pt", weights_only=True)["accepted"] == 1
    assert run_flaky(out, 4, accept=set()).provenance["iteration"] == 4  # nothing new, but iteration 0 was
    with pytest.raises(CondenseError, match="no iteration was accepted in 4"):
        run_flaky(tmp_path / "none.h5", 4, accept=set())
    assert not (tmp_path / "none.h5").exists()
    assert not (tmp_path / "none.h5.run" / "checkpoint.pt").exists()


def test_a_checkpoint_that_did_not_count_its_steps_resumes_as_unknown(tmp_path):
    out = tmp_path / "flaky.h5"
    run_flaky(out, 2, accept={0})
    ckpt = Path(f"{out}.run") / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["accepted"]  # as written before the count existed
    torch.save(state, ckpt)
    assert run_flaky(out, 4, accept=set()).provenance["iteration"] == 4
    assert iteration_of(out) == 4


# --- finished runs: already synthesized, restored, or kept ---------------------------------------

@pytest.fixture
def finished_dm(tmp_path, capsys) -> Path:
    out = tmp_path / "dm.h5"
    res = cli(capsys, "synth", "dm", *DM, "--out", out)
    assert res.rc == 0 and iteration_of(out) == 4, res.err
    return out


def test_a_finished_set_rerun_is_already_synthesized(finished_dm, capsys):
    before = digest(finished_dm)
    res = cli(capsys, "synth", "dm", *DM, "--out", finished_dm)
    assert res.rc == 0 and f"{finished_dm}: already synthesized (4 iterations)" in res.out
    assert digest(finished_dm) == before


def test_a_deleted_finished_set_is_restored_from_its_checkpoint(finished_dm, capsys):
    want = images(finished_dm)
    finished_dm.unlink()
    res = cli(capsys, "synth", "dm", *DM, "--out", finished_dm)
    assert res.rc == 0, res.err
    assert f"restored {finished_dm} from its finished checkpoint (4 iterations)" in res.out
    assert "already synthesized" not in res.out
    assert torch.equal(images(finished_dm), want) and iteration_of(finished_dm) == 4


def test_another_set_in_place_of_a_finished_one_is_replaced_by_the_runs(finished_dm, toy_set, capsys):
    want = images(finished_dm)
    shutil.copy(toy_set, finished_dm)
    res = cli(capsys, "synth", "dm", *DM, "--out", finished_dm)
    assert res.rc == 0 and "restored" in res.out and "already synthesized" not in res.out, res.err
    assert torch.equal(images(finished_dm), want)


def test_fewer_iterations_than_a_finished_run_keep_it_and_say_so(finished_dm, capsys):
    before = digest(finished_dm)
    args = [a if a != "4" else "2" for a in DM]  # --iters 2 (and --checkpoint-every 2 as before)
    res = cli(capsys, "synth", "dm", *args, "--out", finished_dm)
    assert res.rc == 0, res.err
    assert f"{finished_dm} holds 4 iterations, more than the 2 asked: kept it; delete {finished_dm}.run" in res.out
    assert "4 iterations" in res.out.splitlines()[-1] and "2 iterations" not in res.out
    assert digest(finished_dm) == before


def test_fewer_iterations_and_a_deleted_set_restore_the_longer_run(finished_dm, capsys):
    want = images(finished_dm)
    finished_dm.unlink()
    args = [a if a != "4" else "2" for a in DM]
    res = cli(capsys, "synth", "dm", *args, "--out", finished_dm)
    assert res.rc == 0 and "restored" in res.out and "more than the 2 asked" in res.out, res.err
    assert torch.equal(images(finished_dm), want) and iteration_of(finished_dm) == 4


# --- a killed run -----------------------------------------------------------------------------------

def test_dm_killed_by_sigkill_resumes_to_the_uninterrupted_set(tmp_path, capsys):
    flags = ("--dataset", "toy", "--ipc", "1", "--arch", ARCH, "--iters", "10", "--batch-real", "16",
             "--checkpoint-every", "2")
    whole = tmp_path / "whole" / "dm.h5"
    assert cli(capsys, "synth", "dm", *flags, "--out", whole).rc == 0
    out = tmp_path / "killed" / "dm.h5"
    ckpt = Path(f"{out}.run") / "checkpoint.pt"
    p = subprocess.Popen([sys.executable, "-m", "condense", "--no-progress", "synth", "dm", *flags, "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not ckpt.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    if p.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert ckpt.exists()
    res = cli(capsys, "synth", "dm", *flags, "--out", out)
    assert res.rc == 0 and "resuming" in res.out, res.err
    assert torch.equal(images(out), images(whole)) and iteration_of(out) == 10


def test_a_method_that_returns_its_set_unwritten_is_no_wrote_line(toy_set, tmp_path, capsys, monkeypatch):
    from condense.synset import load_synset

    # a plugin's runner may return its set without saving it: the summary must not claim the file
    monkeypatch.setattr("condense.workflows.api.runner", lambda entry, backend: lambda *a, **k: load_synset(toy_set))
    out = tmp_path / "dm.h5"
    res = cli(capsys, "synth", "dm", *DM, "--out", out)
    refused(res, "returned without writing", str(out))
    assert "wrote" not in res.out and not out.exists()
