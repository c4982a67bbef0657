"""benchmarks/reference_ratios.py without the real references: patches, parsing, order, arithmetic."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_ratios as rr  # noqa: E402

MTT_FILES = {
    "buffer.py": "print('buffer')\n",
    "distill.py": "import torch\nimage_save = image_syn.cuda()\n",
    "utils.py": "    if dataset == 'CIFAR10':\n        pass\n    elif dataset == 'Tiny':\n        pass\n",
    "networks.py": ("    def forward(self, x):\n        out = self.features(x)\n        out = out.view(out.size(0), -1)\n"
                    "        out = self.classifier(out)\n        return out\n"),
}
DM_UTILS = "".join(f"    if param.Siamese:\r\n        v{i}[:] = v{i}[0]\r\n" for i in range(10))
DM_NETWORKS = ("class ConvNet:\r\n    def embed(self, x):\r\n        out = self.features(x)\r\n"
               "        out = out.view(out.size(0), -1)\r\n        return out\r\n")


def make_checkout(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_bytes(text.encode())
    return root


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_mtt_patches_apply_to_the_copy_only(tmp_path):
    checkout = make_checkout(tmp_path / "mtt", MTT_FILES)
    before = digest(checkout)
    rr.copy_checkout(checkout, tmp_path / "copy", ("buffer.py", "distill.py", "utils.py", "networks.py"),
                     rr.MTT_PATCHES)
    assert digest(checkout) == before
    distill = (tmp_path / "copy" / "distill.py").read_text()
    assert "image_syn.to(args.device)" in distill and ".cuda()" not in distill
    utils = (tmp_path / "copy" / "utils.py").read_text()
    assert utils.index("dataset == 'FashionMNIST'") < utils.index("dataset == 'Tiny'")
    assert "out.reshape(out.size(0), -1)" in (tmp_path / "copy" / "networks.py").read_text()


def test_dm_patches_keep_crlf_line_endings(tmp_path):
    checkout = make_checkout(tmp_path / "dm", {"main_DM.py": "", "utils.py": DM_UTILS, "networks.py": DM_NETWORKS})
    rr.copy_checkout(checkout, tmp_path / "copy", ("main_DM.py", "utils.py", "networks.py"), rr.DM_PATCHES)
    utils = (tmp_path / "copy" / "utils.py").read_bytes().decode()
    assert utils.count("[0].clone()\r\n") == 10 and "\n" not in utils.replace("\r\n", "")
    assert "out.reshape(out.size(0), -1)\r\n" in (tmp_path / "copy" / "networks.py").read_bytes().decode()


def test_a_checkout_without_the_pattern_is_one_line_and_exit_2(tmp_path, capsys):
    files = dict(MTT_FILES, **{"distill.py": "image_save = image_syn.to('cuda')\n"})
    checkout = make_checkout(tmp_path / "mtt", files)
    before = digest(checkout)
    fmnist = tmp_path / "data"
    fmnist.mkdir()
    for name in rr.IDX_FILES:
        (fmnist / name).write_bytes(b"")
    code = rr.main(["--mtt", str(checkout), "--parts", "tm", "--data-root", str(fmnist),
                    "--workdir", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert f"the checkout at {checkout} does not match the expected commit" in err
    assert "'image_save = image_syn.cuda()' in distill.py" in err
    assert digest(checkout) == before


def test_a_missing_file_is_refused_before_copying(tmp_path):
    checkout = make_checkout(tmp_path / "dm", {"main_DM.py": ""})
    with pytest.raises(rr.SetupError, match="utils.py, networks.py missing"):
        rr.copy_checkout(checkout, tmp_path / "copy", ("main_DM.py", "utils.py", "networks.py"), rr.DM_PATCHES)
    assert not (tmp_path / "copy").exists()


def test_tick_seconds_drops_the_warmup():
    log = "noise\n" + "".join(f"{rr.TICK} {t}\n" for t in (10.0, 15.0, 17.0, 20.0, 24.0)) + "iter = 0000\n"
    assert rr.tick_seconds(log, warmup=1, iters=3) == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="at least 6 iteration timestamps, found 5"):
        rr.tick_seconds(log, warmup=2, iters=3)


def test_metrics_seconds_reads_condense_rows(tmp_path):
    f = tmp_path / "metrics.csv"
    f.write_text("iteration,loss,seconds,event\n0,1.0,9.0,\n1,0.9,2.5,\n2,0.8,3.5,\n")
    assert rr.metrics_seconds(f, warmup=1, iters=2) == [2.5, 3.5]
    with pytest.raises(ValueError, match="expected 3 timed iterations, found 2"):
        rr.metrics_seconds(f, warmup=1, iters=3)


def test_rounds_interleave_condense_then_reference(tmp_path):
    order: list[tuple[str, str]] = []

    def runner(argv, cwd, env, log_path):
        order.append((argv[0], argv[1]))
        log_path.write_text(str(len(order)))  # what the side's parser reads back
        return 0, 0.1, 0.5

    def case(part, name):
        return rr.Case(part, name, [rr.Side(label, label == "ref", [label, name], Path("."), {},
                                            lambda text: [float(text)]) for label in ("condense", "ref")])

    cases = [case("tm", "a"), case("dm", "b")]
    rr.run_rounds(cases, 2, tmp_path, say=lambda s: None, runner=runner)
    assert order == [("condense", "a"), ("ref", "a"), ("condense", "b"), ("ref", "b")] * 2
    assert [(r["round"], r["side"], r["seconds"]) for r in cases[0].runs] == [
        (1, "condense", [1.0]), (1, "ref", [2.0]), (2, "condense", [5.0]), (2, "ref", [6.0])]


def test_ratio_is_reference_over_condense():
    case = rr.Case("tm", "syn_steps 20", [rr.Side("condense exact", False, [], Path("."), {}, len),
                                          rr.Side("condense constant", False, [], Path("."), {}, len),
                                          rr.Side("MTT", True, [], Path("."), {}, len)])
    for r, (exact, const, ref) in enumerate([([1.0, 1.2, 1.1], [2.0], [3.0, 3.3, 3.2]), ([0.9], [2.2], [2.7])], 1):
        case.runs += [{"round": r, "side": "condense exact", "reference": False, "seconds": exact, "peak_rss_gib": 2.0},
                      {"round": r, "side": "condense constant", "reference": False, "seconds": const, "peak_rss_gib": 1.2},
                      {"round": r, "side": "MTT", "reference": True, "seconds": ref, "peak_rss_gib": 4.0 + r}]
    exact, const = rr.summarize([case])
    assert exact["condense_s"] == pytest.approx(1.05) and exact["reference_s"] == pytest.approx(3.1)
    assert exact["ratio"] == pytest.approx(3.1 / 1.05)
    assert exact["ratio_per_round"] == pytest.approx([3.2 / 1.1, 2.7 / 0.9])
    assert const["ratio"] == pytest.approx(3.1 / 2.1)
    assert (const["condense_peak_gib"], const["reference_peak_gib"]) == (1.2, 6.0)
    assert "2.95x" in rr.table([exact, const])


def test_a_failing_child_names_its_log(tmp_path):
    def runner(argv, cwd, env, log_path):
        log_path.write_text("Traceback\nRuntimeError: boom\n")
        return 1, 0.1, 0.1

    with pytest.raises(rr.ChildError, match=r"ref \(dm b, round 1\) exited with 1: RuntimeError: boom \(log: "):
        rr.run_rounds([rr.Case("dm", "b", [rr.Side("ref", True, [], Path("."), {}, len)])], 1, tmp_path,
                      say=lambda s: None, runner=runner)


def test_run_child_reports_its_own_peak(tmp_path):
    grow = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    _, _, small = rr.run_child([sys.executable, "-c", "pass"], tmp_path, {}, tmp_path / "a.log")
    rc, _, big = rr.run_child([sys.executable, "-c", grow], tmp_path, {}, tmp_path / "b.log")
    assert rc == 0 and small < 0.2 and big - small > 0.25  # not this (torch-sized) process's RSS
    rc, _, _ = rr.run_child([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, {}, tmp_path / "c.log")
    assert rc == 3


def test_commit_is_the_checkouts_own_head(tmp_path):
    assert rr.commit_of(tmp_path) == "unknown"
    repo = make_checkout(tmp_path / "repo", {"distill.py": ""})
    (repo / "sub").mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert rr.commit_of(repo) == head
    assert rr.commit_of(repo / "sub") == "unknown"  # a folder inside another repository is not that commit


def test_wandb_stub_stamps_each_mtt_iteration(tmp_path):
    stubs = rr.write_stubs(tmp_path / "stubs")
    script = tmp_path / "distill.py"  # wandb as MTT's distill.py uses it
    script.write_text(
        "import argparse, time, wandb\n"
        "args = argparse.Namespace(ipc=10, lr_img=100.0)\n"
        "wandb.init(project='DatasetDistillation', config=args)\n"
        "args = type('', (), {})()\n"
        "for k in wandb.config._items: setattr(args, k, wandb.config._items[k])\n"
        "assert (args.ipc, wandb.run.name) == (10, 'reference-ratios')\n"
        "for it, pause in enumerate([0.0, 0.1, 0.3]):\n"
        "    wandb.log({'Progress': it}, step=it)\n"
        "    wandb.log({'Pixels': wandb.Histogram([1.0])}, step=it)\n"
        "    time.sleep(pause)\n"
        "wandb.finish()\n")
    env = {"PYTHONPATH": str(stubs)}
    rc, _, _ = rr.run_child([sys.executable, str(script)], tmp_path, env, tmp_path / "mtt.log")
    log = (tmp_path / "mtt.log").read_text()
    assert rc == 0, log
    first, second = rr.tick_seconds(log, warmup=1, iters=2)  # the 0.0 s warm-up iteration is dropped
    assert first >= 0.1 and second >= 0.3


def test_dm_driver_stamps_each_network_build(tmp_path):
    (tmp_path / "main_DM.py").write_text(
        "import sys, time\n"
        "def get_network(*args):\n    return None\n"
        "def main():\n"
        "    assert sys.argv[1:] == ['--Iteration', '3']\n"
        "    for pause in [0.0, 0.1, 0.3, 0.0]:\n"
        "        get_network('ConvNetW32')\n"
        "        time.sleep(pause)\n")
    (tmp_path / "driver.py").write_text(rr.DM_DRIVER)
    rc, _, _ = rr.run_child([sys.executable, "driver.py", "--Iteration", "3"], tmp_path, {}, tmp_path / "dm.log")
    log = (tmp_path / "dm.log").read_text()
    assert rc == 0, log
    first, second = rr.tick_seconds(log, warmup=1, iters=2)  # the 0.0 s warm-up iteration is dropped
    assert first >= 0.1 and second >= 0.3
