"""Speed and memory ratios against the MTT and DM reference implementations, measured side by side.

Usage:
  python benchmarks/reference_ratios.py --mtt MTT_CHECKOUT --dm DM_CHECKOUT
      [--parts tm dm eval] [--rounds 2] [--iters 3] [--steps 20 80] [--modes exact constant]
      [--dm-ipc 1 10] [--eval-epochs 300] [--threads 2]
      [--store STORE] [--data-root DIR] [--json out.json]

MTT_CHECKOUT is GeorgeCazenavette/mtt-distillation (distill.py, utils.py, networks.py), DM_CHECKOUT
VICO-UoE/DatasetCondensation (main_DM.py, utils.py, networks.py), at the commits
docs/REFERENCES.md names. Neither runs as-is on a CPU with Fashion-MNIST, so each checkout is
copied into a temporary folder and the copy is patched (MTT_PATCHES, DM_PATCHES below: MTT
gets a Fashion-MNIST loader, ``.to(args.device)`` for its one ``.cuda()``, ``.reshape`` in
ConvNet.forward; DM gets ``.clone()`` in its siamese augmentation and ``.reshape`` in
ConvNet.embed). Each patch must match exactly; a checkout where one does not is refused with
one line and exit status 2. The user's checkout is only read. A no-op ``wandb`` module (and
a ``kornia`` one when kornia is missing: only MTT's ZCA uses it) is put first on the
references' PYTHONPATH; their Fashion-MNIST is torchvision's ``FashionMNIST/raw`` layout built
from condense's IDX files.

Parts (Fashion-MNIST, ConvNet D3 W32, instance norm, avg pool, DSA on):
  tm    condense ``synth tm`` (``--memory exact`` and ``constant``) vs MTT's distill.py: IPC 10,
        batch_syn 100, each --steps value, expert_epochs 2, max_start_epoch 2, on the same
        expert buffer (a condense store exported to MTT's replay_buffer_0.pt, then imported
        back with ``condense buffer --import-mtt`` so that both sides read identical values
        and train on the full training set).
  dm    condense ``synth dm`` vs DM's main_DM.py at IPC 1 and 10: init real, lr_img 1,
        batch_real 256.
  eval  condense ``eval`` (one run, --eval-epochs epochs, lr 0.01) vs MTT's evaluate_synset on
        the same IPC-10 set (class-balanced random real images).

Timing: every measurement is a fresh child process, so its peak RSS (wait4 of a slim launcher,
see run_child) is its own.
The sides of one case run one after the other, condense first, then again each round, so a
change in the machine's load hits both sides alike: absolute seconds on a shared machine
are noisy, the ratio much less. s/iteration is the median over the timed iterations of all
rounds, after --warmup untimed ones: condense's from its metrics.csv; the references print
nothing per iteration, so a timestamp is taken at the start of each iteration (MTT: the
wandb stub's ``Progress`` log; DM: a wrapper around ``get_network``, called once per
iteration) and successive stamps are differenced. Evaluation: condense's job seconds
(training, test pass and loading the data) vs the time of MTT's evaluate_synset call
(training and test pass; it trains epochs + 1 epochs, as the reference does). ratio =
reference time / condense time (> 1: condense is faster). Both sides run with the same
OMP/MKL thread count; condense keeps its own allocator tuning (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
TICK = "REFERENCE_RATIOS_TICK"
EVAL_SECONDS = "REFERENCE_RATIOS_EVAL_SECONDS"
ARCH = "convnet:width=32"  # the references' ConvNetW32 (24,138 parameters on Fashion-MNIST)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")
EXPERT_EPOCHS, MAX_START_EPOCH = 2, 2  # both sides; a store needs EXPERT_EPOCHS + MAX_START_EPOCH epochs


class SetupError(Exception):
    """A problem the user can fix (a checkout, a path): reported as one line, exit status 2."""


class ChildError(Exception):
    """A measured process failed: reported with its log, exit status 1."""


# ---------------------------------------------------------------- patches of the reference copies

@dataclass(frozen=True)
class Patch:
    """Replace ``old`` by ``new`` in ``file``; ``old`` must occur exactly ``count`` times.

    ``regex`` makes ``old`` a regular expression (``new`` may use its groups). Matching is
    on the text with its line endings made ``\\n``; the file keeps its own endings.
    """

    file: str
    old: str
    new: str
    why: str
    count: int = 1
    regex: bool = False


MTT_FASHION_MNIST = """\
    elif dataset == 'FashionMNIST':
        channel = 1
        im_size = (28, 28)
        num_classes = 10
        mean = [0.2861]
        std = [0.3530]
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
        dst_train = datasets.FashionMNIST(data_path, train=True, download=False, transform=transform)
        dst_test = datasets.FashionMNIST(data_path, train=False, download=False, transform=transform)
        class_names = dst_train.classes
        class_map = {x: x for x in range(num_classes)}

    elif dataset == 'Tiny':
"""

MTT_PATCHES = (
    Patch("utils.py", "    elif dataset == 'Tiny':\n", MTT_FASHION_MNIST,
          "no Fashion-MNIST loader: add one (the normalisation of docs/REFERENCES.md)"),
    Patch("distill.py", "image_save = image_syn.cuda()", "image_save = image_syn.to(args.device)",
          "hard-coded .cuda() when the set is saved"),
    Patch("networks.py", "        out = self.features(x)\n        out = out.view(out.size(0), -1)\n"
                         "        out = self.classifier(out)\n",
          "        out = self.features(x)\n        out = out.reshape(out.size(0), -1)\n"
          "        out = self.classifier(out)\n",
          "ConvNet.forward's .view fails on the CPU's non-contiguous features: .reshape (as DM's embed)"),
)

DM_PATCHES = (
    Patch("utils.py", r"\b(\w+)\[:\] = \1\[0\]$", r"\1[:] = \1[0].clone()",
          "siamese augmentation writes a tensor into itself (refused since torch 2.x): clone first",
          count=10, regex=True),
    Patch("networks.py", "    def embed(self, x):\n        out = self.features(x)\n        out = out.view(out.size(0), -1)\n",
          "    def embed(self, x):\n        out = self.features(x)\n        out = out.reshape(out.size(0), -1)\n",
          "ConvNet.embed's .view fails on the CPU's non-contiguous features: .reshape"),
)


def apply_patches(folder: Path, patches: Sequence[Patch], checkout: Path) -> None:
    """Apply ``patches`` to the copy in ``folder``; SetupError names the first one that does not match."""
    for p in patches:
        path = folder / p.file
        if not path.is_file():
            raise SetupError(f"the checkout at {checkout} does not match the expected commit; {p.file} is missing")
        raw = path.read_bytes().decode("utf-8")
        crlf = "\r\n" in raw
        text = raw.replace("\r\n", "\n")
        if p.regex:
            found = len(re.findall(p.old, text, flags=re.M))
        else:
            found = text.count(p.old)
        if found != p.count:
            shown = p.old.strip().splitlines()[0] if p.old.strip() else p.old
            raise SetupError(f"the checkout at {checkout} does not match the expected commit; expected pattern "
                             f"{shown!r} in {p.file} {p.count} time(s), found {found}")
        text = re.sub(p.old, p.new, text, flags=re.M) if p.regex else text.replace(p.old, p.new)
        if crlf:
            text = text.replace("\n", "\r\n")
        path.write_bytes(text.encode("utf-8"))


def copy_checkout(checkout: Path, dest: Path, needed: Sequence[str], patches: Sequence[Patch]) -> None:
    """Copy ``checkout`` (without .git) to ``dest`` and patch the copy; the checkout is only read."""
    if not checkout.is_dir():
        raise SetupError(f"no reference checkout at {checkout}")
    missing = [n for n in needed if not (checkout / n).is_file()]
    if missing:
        raise SetupError(f"the checkout at {checkout} does not match the expected commit; {', '.join(missing)} missing")
    shutil.copytree(checkout, dest, ignore=shutil.ignore_patterns(".git"), symlinks=True)
    apply_patches(dest, patches, checkout)


def commit_of(checkout: Path) -> str:
    """The checkout's commit when it is the top of a git work tree, else ``"unknown"``."""
    try:
        top = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != checkout.resolve():
        return "unknown"
    return lines[1]


# ---------------------------------------------------------------- what the reference processes get

WANDB_STUB = f'''"""No-op wandb for the reference runs (reference_ratios.py): logs nothing, keeps the config,
and prints a timestamp when an iteration starts (MTT logs "Progress" first thing each iteration)."""
import time


class _Config:
    def __init__(self, items):
        self._items = dict(items)


class _Run:
    name = "reference-ratios"


config = _Config({{}})
run = _Run()


def init(config=None, **kwargs):
    globals()["config"] = _Config(vars(config) if config is not None and not isinstance(config, dict) else config or {{}})
    return run


def log(data, step=None, **kwargs):
    if "Progress" in data:
        print("{TICK}", time.perf_counter(), flush=True)


def finish(*args, **kwargs):
    print("{TICK}", time.perf_counter(), flush=True)


class Histogram:
    def __init__(self, *args, **kwargs):
        pass


class Image:
    def __init__(self, *args, **kwargs):
        pass
'''

KORNIA_STUB = '''"""Stand-in for kornia, which MTT's utils.py imports but only uses for ZCA (not run here)."""


def __getattr__(name):
    raise ImportError("kornia is not installed; reference_ratios.py runs MTT without ZCA")
'''

DM_DRIVER = f'''"""Runs DM's main_DM.main() and prints a timestamp each time it builds a network: once at the
start of every iteration (its evaluations are off: --num_eval 0)."""
import sys
import time

import main_DM

_build = main_DM.get_network


def _stamped(*args, **kwargs):
    print("{TICK}", time.perf_counter(), flush=True)
    return _build(*args, **kwargs)


main_DM.get_network = _stamped
sys.argv[0] = "main_DM.py"
main_DM.main()
'''

MTT_EVAL_DRIVER = f'''"""Times MTT's evaluate_synset on a set file: python this.py SET.pt DATA EPOCHS."""
import sys
import time
from types import SimpleNamespace

import torch

from utils import ParamDiffAug, evaluate_synset, get_dataset, get_network

path, data, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = SimpleNamespace(dataset="FashionMNIST", zca=False, device="cpu", dsa=True,
                       dsa_strategy="color_crop_cutout_flip_scale_rotate", dsa_param=ParamDiffAug(),
                       dc_aug_param=None, lr_net=0.01, epoch_eval_train=epochs, batch_train=256)
(channel, im_size, num_classes, _names, _mean, _std, _train, _test, testloader,
 *_maps) = get_dataset("FashionMNIST", data, 256, args=args)
s = torch.load(path, weights_only=True)
net = get_network("ConvNetW32", channel, num_classes, im_size)
t0 = time.perf_counter()
_, _, acc = evaluate_synset(0, net, s["image_syn"], s["label_syn"], testloader, args)
print("{EVAL_SECONDS}", time.perf_counter() - t0, acc, flush=True)
'''


def write_stubs(folder: Path) -> Path:
    """The module folder put first on the references' PYTHONPATH."""
    (folder / "wandb").mkdir(parents=True)
    (folder / "wandb" / "__init__.py").write_text(WANDB_STUB)
    if importlib.util.find_spec("kornia") is None:  # the real one when it is installed
        (folder / "kornia").mkdir()
        (folder / "kornia" / "__init__.py").write_text(KORNIA_STUB)
    return folder


def find_idx(root: Path) -> dict[str, Path]:
    """The four Fashion-MNIST IDX files (plain or .gz) in ``root`` or its torchvision layout
    (condense's own lookup, :func:`condense.data.readers.find_idx`)."""
    from condense.data import readers

    folder = readers.find_idx(root, "FashionMNIST")
    if folder is None:
        raise SetupError(f"no Fashion-MNIST IDX files (plain or .gz) in {root} (give --data-root)")
    return {name: next(p for p in (folder / name, folder / f"{name}.gz") if p.is_file()) for name in IDX_FILES}


def torchvision_layout(files: dict[str, Path], folder: Path) -> Path:
    """``folder/FashionMNIST/raw/`` with the uncompressed IDX files torchvision's loader checks for."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, src in files.items():
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as fin, open(raw / name, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            (raw / name).symlink_to(src.resolve())
    return folder


# ---------------------------------------------------------------- child processes and their output

@dataclass(frozen=True)
class Side:
    """One side of a case: how to run it and how to read its seconds from what it left."""

    label: str            # "condense exact", "MTT", ...
    reference: bool       # which side of the ratio
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    seconds: Callable[[str], list[float]]  # log text -> per-iteration (or per-evaluation) seconds


@dataclass
class Case:
    """Sides measured against each other: the condense sides, then the reference."""

    part: str
    name: str
    sides: list[Side]
    runs: list[dict] = field(default_factory=list)


def tick_seconds(log: str, warmup: int, iters: int) -> list[float]:
    """Seconds of iterations ``warmup .. warmup + iters - 1`` from start-of-iteration timestamps."""
    ticks = [float(line.split()[1]) for line in log.splitlines() if line.startswith(TICK + " ")]
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    if len(gaps) < warmup + iters:
        raise ValueError(f"expected at least {warmup + iters + 1} iteration timestamps, found {len(ticks)}")
    return gaps[warmup:warmup + iters]


def metrics_seconds(metrics_csv: Path, warmup: int, iters: int) -> list[float]:
    """Seconds of iterations ``warmup ..`` from condense's metrics.csv (one row per iteration)."""
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    secs = [float(r["seconds"]) for r in rows if int(r["iteration"]) >= warmup]
    if len(secs) < iters:
        raise ValueError(f"{metrics_csv}: expected {iters} timed iterations, found {len(secs)}")
    return secs[:iters]


def eval_job_seconds(jobs_jsonl: Path) -> list[float]:
    """The seconds of condense eval's finished jobs (one per run)."""
    rows = [json.loads(line) for line in jobs_jsonl.read_text().splitlines() if line.strip()]
    return [float(r["seconds"]) for r in rows if r.get("ok")]


def marked_seconds(log: str) -> list[float]:
    """Seconds printed by MTT_EVAL_DRIVER."""
    return [float(line.split()[1]) for line in log.splitlines() if line.startswith(EVAL_SECONDS + " ")]


# Linux carries a process's RSS at exec into its ru_maxrss, so a child forked straight from this
# process (torch imported) would report at least this process's size: a slim Python in between
# starts each measured process and reports the peak of that one alone.
_MEASURED = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); "
             "_, status, usage = os.wait4(p.pid, 0); open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
             "code = os.waitstatus_to_exitcode(status); sys.exit(code if code >= 0 else 128 - code)")


def run_child(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> tuple[int, float, float]:
    """Run one process to its end; (exit status, wall seconds, peak RSS in GiB of that process)."""
    rss_file = log_path.with_suffix(".maxrss")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, "-c", _MEASURED, str(rss_file), *argv], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    peak = int(rss_file.read_text()) / 2 ** 20 if rss_file.exists() else float("nan")
    rss_file.unlink(missing_ok=True)
    return rc, wall, peak


def run_rounds(cases: Sequence[Case], rounds: int, logs: Path, say: Callable[[str], None] = print,
               runner: Callable[[list[str], Path, dict[str, str], Path], tuple[int, float, float]] = run_child) -> None:
    """Each round, each case's sides one after the other (condense first); results go to ``case.runs``."""
    for r in range(rounds):
        for case in cases:
            for side in case.sides:
                slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{case.part}-{case.name}-{side.label}-r{r}").strip("-")
                log_path = logs / f"{slug}.log"
                rc, wall, peak = runner(side.argv, side.cwd, side.env, log_path)
                text = log_path.read_text(errors="replace") if log_path.exists() else ""
                if rc != 0:
                    raise ChildError(f"{side.label} ({case.part} {case.name}, round {r + 1}) exited with {rc}: "
                                     f"{last_line(text)} (log: {log_path})")
                try:
                    secs = side.seconds(text)
                except (OSError, ValueError, KeyError) as e:
                    raise ChildError(f"{side.label} ({case.part} {case.name}, round {r + 1}): cannot read its "
                                     f"timings: {e} (log: {log_path})") from None
                case.runs.append({"round": r + 1, "side": side.label, "reference": side.reference,
                                  "seconds": secs, "peak_rss_gib": peak, "wall_s": wall})
                say(f"round {r + 1}: {case.part} {case.name}: {side.label}: median {statistics.median(secs):.3f} s "
                    f"over {len(secs)}, peak RSS {peak:.2f} GiB, process {wall:.0f} s")


def summarize(cases: Sequence[Case]) -> list[dict]:
    """One row per (case, condense side): medians over all rounds, ratio = reference / condense."""
    rows = []
    for case in cases:
        ref = [x for x in case.runs if x["reference"]]
        ref_label = next(s.label for s in case.sides if s.reference)
        ref_s = statistics.median(s for x in ref for s in x["seconds"])
        ref_peak = max(x["peak_rss_gib"] for x in ref)
        for side in (s for s in case.sides if not s.reference):
            own = [x for x in case.runs if x["side"] == side.label]
            own_s = statistics.median(s for x in own for s in x["seconds"])
            per_round = [statistics.median(r["seconds"]) / statistics.median(o["seconds"])
                         for o in own for r in ref if r["round"] == o["round"]]
            rows.append({"part": case.part, "case": case.name, "condense": side.label, "reference": ref_label,
                         "condense_s": own_s, "reference_s": ref_s, "ratio": ref_s / own_s,
                         "ratio_per_round": per_round,
                         "condense_peak_gib": max(x["peak_rss_gib"] for x in own), "reference_peak_gib": ref_peak})
    return rows


def table(rows: Sequence[dict]) -> str:
    """The summary as aligned text."""
    head = ("part", "case", "condense side", "condense s", "reference s", "ratio", "rounds' ratios",
            "condense GiB", "reference GiB")
    body = [(r["part"], r["case"], r["condense"], f"{r['condense_s']:.3f}", f"{r['reference_s']:.3f}",
             f"{r['ratio']:.2f}x", " ".join(f"{x:.2f}" for x in r["ratio_per_round"]),
             f"{r['condense_peak_gib']:.2f}", f"{r['reference_peak_gib']:.2f}") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------- the cases

@dataclass
class Setup:
    """Where everything of one benchmark run lives."""

    work: Path
    threads: int
    warmup: int
    iters: int
    data_root: Path           # condense's --data-root
    ref_data: Path            # torchvision layout for the references
    stubs: Path
    mtt: Path | None = None   # patched copies
    dm: Path | None = None

    def env(self, reference: bool) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
        if reference:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.stubs), env.get("PYTHONPATH")]))
        return env

    def condense(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "condense", "--no-progress", *args]


def condense_synth_side(setup: Setup, label: str, out: Path, args: Sequence[str]) -> Side:
    """A ``condense synth`` side timed from its metrics.csv; each run starts from an empty run folder."""
    iters = setup.warmup + setup.iters
    argv = setup.condense("synth", *args, "--iters", str(iters), "--checkpoint-every", str(10 * iters),
                          "--device", "cpu", "--data-root", str(setup.data_root), "--out", str(out))
    return fresh_side(setup, label, argv, out,
                      lambda run_folder: metrics_seconds(run_folder / "metrics.csv", setup.warmup, setup.iters))


def fresh_side(setup: Setup, label: str, argv: list[str], out: Path,
               read: Callable[[Path], list[float]]) -> Side:
    """A condense side writing ``out`` (and ``<out>.run``), timed by ``read(run folder)``; every run
    starts from an empty run folder and its files are removed once read, so no round resumes another."""
    run_folder = Path(f"{out}.run")

    def seconds(_log: str) -> list[float]:
        try:
            return read(run_folder)
        finally:
            shutil.rmtree(run_folder, ignore_errors=True)
            out.unlink(missing_ok=True)

    return Side(label, False, [sys.executable, "-c", _FRESH, str(run_folder), str(out), *argv], REPO,
                setup.env(False), seconds)


# a side starts from a clean slate even after an interrupted earlier run left its files
_FRESH = ("import os, shutil, sys; shutil.rmtree(sys.argv[1], ignore_errors=True); "
          "os.path.exists(sys.argv[2]) and os.unlink(sys.argv[2]); "
          "os.execv(sys.argv[3], sys.argv[3:])")


def tm_cases(setup: Setup, store: Path, buffers: Path, steps: Sequence[int],
             modes: Sequence[str] = ("exact", "constant")) -> list[Case]:
    """condense in each memory mode vs MTT's distill.py, one case per syn_steps value."""
    cases = []
    for n in steps:
        common = ["--ipc", "10", "--batch-syn", "100", "--syn-steps", str(n), "--expert-epochs", str(EXPERT_EPOCHS),
                  "--max-start-epoch", str(MAX_START_EPOCH), "--lr-img", "100", "--init", "real"]
        sides = [condense_synth_side(setup, f"condense {mode}", setup.work / f"tm_{mode}_{n}.h5",
                                     ["tm", "--trajectories", str(store), "--memory", mode, *common])
                 for mode in modes]
        # MTT runs iterations 0..Iteration and its stub stamps each start and the end
        iteration = setup.warmup + setup.iters - 1
        mtt = [sys.executable, "distill.py", "--dataset", "FashionMNIST", "--model", "ConvNetW32", "--ipc", "10",
               "--batch_syn", "100", "--syn_steps", str(n), "--expert_epochs", str(EXPERT_EPOCHS),
               "--max_start_epoch", str(MAX_START_EPOCH), "--lr_img", "100", "--lr_teacher", "0.01",
               "--pix_init", "real", "--dsa", "True", "--Iteration", str(iteration), "--eval_it", str(iteration + 1),
               "--num_eval", "0", "--data_path", str(setup.ref_data), "--buffer_path", str(buffers)]
        sides.append(Side("MTT", True, mtt, setup.mtt, setup.env(True),
                          lambda log: tick_seconds(log, setup.warmup, setup.iters)))
        cases.append(Case("tm", f"syn_steps {n}", sides))
    return cases


def dm_cases(setup: Setup, ipcs: Sequence[int] = (1, 10)) -> list[Case]:
    """condense synth dm vs DM's main_DM.py at each IPC."""
    cases = []
    (setup.dm / "_reference_ratios_dm.py").write_text(DM_DRIVER)
    for ipc in ipcs:
        side = condense_synth_side(setup, "condense", setup.work / f"dm_{ipc}.h5",
                                   ["dm", "--dataset", "fashion-mnist", "--arch", ARCH, "--ipc", str(ipc),
                                    "--init", "real", "--lr-img", "1", "--batch-real", "256"])
        # main_DM runs iterations 0..Iteration, stamped at each start: Iteration = timed + warm-up gaps
        ref = [sys.executable, "_reference_ratios_dm.py", "--dataset", "FashionMNIST", "--model", "ConvNetW32",
               "--ipc", str(ipc), "--num_exp", "1", "--num_eval", "0", "--eval_mode", "S",
               "--Iteration", str(setup.warmup + setup.iters), "--lr_img", "1", "--batch_real", "256",
               "--init", "real", "--data_path", str(setup.ref_data), "--save_path", str(setup.work / "dm_result")]
        cases.append(Case("dm", f"IPC {ipc}", [side, Side("DM", True, ref, setup.dm, setup.env(True),
                                                           lambda log: tick_seconds(log, setup.warmup, setup.iters))]))
    return cases


def eval_cases(setup: Setup, set_h5: Path, set_pt: Path, epochs: int) -> list[Case]:
    """condense eval vs MTT's evaluate_synset on one IPC-10 set."""
    (setup.mtt / "_reference_ratios_eval.py").write_text(MTT_EVAL_DRIVER)
    out = setup.work / "eval.json"
    argv = setup.condense("eval", str(set_h5), "--runs", "1", "--epochs", str(epochs), "--lr", "0.01",
                          "--arch", ARCH, "--no-random-baseline", "--data-root", str(setup.data_root),
                          "--json", str(out))
    def job_seconds(run_folder: Path) -> list[float]:
        secs = eval_job_seconds(run_folder / "jobs.jsonl")
        if not secs:
            raise ValueError("no finished evaluation job")
        return secs

    mine = fresh_side(setup, "condense", argv, out, job_seconds)
    ref = Side("MTT evaluate_synset", True,
               [sys.executable, "_reference_ratios_eval.py", str(set_pt), str(setup.ref_data), str(epochs)],
               setup.mtt, setup.env(True), marked_seconds)
    return [Case("eval", f"IPC 10, {epochs} epochs", [mine, ref])]


# ---------------------------------------------------------------- inputs made once

def prepare(argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, what: str) -> None:
    """Run a preparation command; ChildError with its last line when it fails."""
    rc, _, _ = run_child(argv, cwd, env, log_path)
    if rc != 0:
        raise ChildError(f"{what} failed ({rc}): {last_line(log_path.read_text(errors='replace'))} (log: {log_path})")


def last_line(text: str) -> str:
    """The last non-empty line of a child's log (what it died saying)."""
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "no output")


def expert_buffer(setup: Setup, store: Path | None, logs: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
    """(condense store, MTT buffer_path) holding the same experts, trained on the full training set."""
    if store is None:
        store = setup.work / "recorded"
        say("recording a small expert store (1 expert, 4 epochs on 2,000 images) ...")
        prepare(setup.condense("buffer", "--dataset", "fashion-mnist", "--arch", ARCH, "--experts", "1",
                               "--epochs", str(EXPERT_EPOCHS + MAX_START_EPOCH), "--limit-train", "2000",
                               "--data-root", str(setup.data_root), "--out", str(store)),
                REPO, setup.env(False), logs / "buffer.log", "condense buffer")
    buffers = setup.work / "buffers"
    pt = buffers / "FashionMNIST" / "ConvNetW32" / "replay_buffer_0.pt"
    pt.parent.mkdir(parents=True)
    export_mtt_buffer(store, pt)
    imported = setup.work / "imported"
    prepare(setup.condense("buffer", "--import-mtt", str(pt), "--dataset", "fashion-mnist", "--arch", ARCH,
                           "--data-root", str(setup.data_root), "--out", str(imported)),
            REPO, setup.env(False), logs / "import.log", "condense buffer --import-mtt")
    return imported, buffers


def export_mtt_buffer(store: Path, pt: Path) -> None:
    """Write the store's experts as MTT's replay buffer: experts x epochs x tensors in parameters() order."""
    import torch

    sys.path.insert(0, str(REPO))
    from condense.nets import parse_arch
    from trajectories import open_store

    try:
        st = open_store(store)
    except Exception as e:  # noqa: BLE001  (any unreadable store is one line for the user)
        raise SetupError(f"cannot read the store {store}: {str(e).splitlines()[0]}") from None
    if st.meta.get("dataset") != "fashion-mnist" or st.meta.get("arch") != str(parse_arch(ARCH)):
        raise SetupError(f"the store {store} holds {st.meta.get('arch')} on {st.meta.get('dataset')}; "
                         f"it must be {ARCH} on fashion-mnist")
    if st.epochs < EXPERT_EPOCHS + MAX_START_EPOCH - 1:
        raise SetupError(f"the store {store} has {st.epochs} epochs; it needs {EXPERT_EPOCHS + MAX_START_EPOCH - 1}")
    experts = [[[t.clone() for t in st.layout.unflatten(st.epoch(i, e)).values()] for e in range(st.epochs + 1)]
               for i in range(len(st))]
    torch.save(experts, pt)


def random_set(setup: Setup, logs: Path) -> tuple[Path, Path]:
    """An IPC-10 set of random real images, as a condense set file and as MTT's .pt dict."""
    h5, pt = setup.work / "random10.h5", setup.work / "random10.pt"
    prepare(setup.condense("synth", "random", "--dataset", "fashion-mnist", "--ipc", "10",
                           "--data-root", str(setup.data_root), "--out", str(h5)),
            REPO, setup.env(False), logs / "random.log", "condense synth random")
    prepare(setup.condense("convert", str(h5), str(pt)), REPO, setup.env(False), logs / "convert.log",
            "condense convert")
    return h5, pt


# ---------------------------------------------------------------- main

def machine_facts(threads: int) -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": threads, "load_avg": os.getloadavg()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mtt", type=Path, help="GeorgeCazenavette/mtt-distillation checkout (parts tm, eval)")
    ap.add_argument("--dm", type=Path, help="VICO-UoE/DatasetCondensation checkout (part dm)")
    ap.add_argument("--parts", nargs="+", choices=("tm", "dm", "eval"), default=["tm", "dm", "eval"])
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each case (default 2)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per process (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first iterations per process (default 1)")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 80], help="tm syn_steps values (default 20 80)")
    ap.add_argument("--modes", nargs="+", choices=("exact", "constant"), default=["exact", "constant"],
                    help="condense tm memory modes (default exact constant)")
    ap.add_argument("--dm-ipc", type=int, nargs="+", default=[1, 10], help="dm IPC values (default 1 10)")
    ap.add_argument("--eval-epochs", type=int, default=300, help="evaluation epochs (default 300)")
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of every process (default 2)")
    ap.add_argument("--store", type=Path, help=f"condense store ({ARCH}, fashion-mnist) to use instead of "
                                               "recording a small one")
    ap.add_argument("--data-root", type=Path, help="folder of the Fashion-MNIST IDX files "
                                                   f"(default $CONDENSE_DATA/fashion-mnist, then {DEFAULT_DATA})")
    ap.add_argument("--workdir", type=Path, help="keep the copies, logs and files here (default: a temporary "
                                                 "folder, removed unless a run fails)")
    ap.add_argument("--json", type=Path, help="write the results here")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except SetupError as e:
        print(f"reference_ratios: error: {e}", file=sys.stderr)
        return 2
    except ChildError as e:
        print(f"reference_ratios: error: {e}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    if min(args.rounds, args.iters) < 1 or args.warmup < 0:
        raise SetupError("--rounds and --iters must be positive and --warmup >= 0")
    if {"tm", "eval"} & set(args.parts) and args.mtt is None:
        raise SetupError("parts tm and eval need --mtt PATH (a GeorgeCazenavette/mtt-distillation checkout)")
    if "dm" in args.parts and args.dm is None:
        raise SetupError("part dm needs --dm PATH (a VICO-UoE/DatasetCondensation checkout)")
    data_root = args.data_root or (Path(os.environ["CONDENSE_DATA"]) / "fashion-mnist"
                                   if os.environ.get("CONDENSE_DATA") else DEFAULT_DATA)
    files = find_idx(data_root)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reference_ratios-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    setup = Setup(work=work, threads=args.threads, warmup=args.warmup, iters=args.iters, data_root=data_root,
                  ref_data=work / "data", stubs=work / "stubs")
    keep = False
    try:
        # every checkout is checked before anything slow runs
        if {"tm", "eval"} & set(args.parts):
            setup.mtt = work / "mtt"
            copy_checkout(args.mtt, setup.mtt, ("buffer.py", "distill.py", "utils.py", "networks.py"), MTT_PATCHES)
        if "dm" in args.parts:
            setup.dm = work / "dm"
            copy_checkout(args.dm, setup.dm, ("main_DM.py", "utils.py", "networks.py"), DM_PATCHES)
        torchvision_layout(files, setup.ref_data)
        write_stubs(setup.stubs)
        cases: list[Case] = []
        if "tm" in args.parts:
            store, buffers = expert_buffer(setup, args.store, logs, print)
            cases += tm_cases(setup, store, buffers, args.steps, args.modes)
        if "dm" in args.parts:
            cases += dm_cases(setup, args.dm_ipc)
        if "eval" in args.parts:
            h5, pt = random_set(setup, logs)
            cases += eval_cases(setup, h5, pt, args.eval_epochs)
        facts = machine_facts(args.threads)
        run_rounds(cases, args.rounds, logs)
        rows = summarize(cases)
        print()
        print(table(rows))
        result = {
            "machine": facts, "load_avg_after": os.getloadavg(),
            "references": {name: {"path": str(p), "commit": commit_of(p)}
                           for name, p in (("mtt", args.mtt), ("dm", args.dm)) if p is not None},
            "settings": {"parts": args.parts, "rounds": args.rounds, "iters": args.iters, "warmup": args.warmup,
                         "steps": args.steps, "modes": args.modes, "dm_ipc": args.dm_ipc, "eval_epochs": args.eval_epochs,
                         "threads": args.threads, "store": str(args.store) if args.store else "recorded",
                         "expert_epochs": EXPERT_EPOCHS, "max_start_epoch": MAX_START_EPOCH},
            "rows": rows,
            "runs": [{"part": c.part, "case": c.name, **r} for c in cases for r in c.runs],
        }
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    except ChildError:
        keep = True  # its message names a log in there
        raise
    finally:
        if args.workdir is None and not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
