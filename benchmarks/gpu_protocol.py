"""One GPU session's measurements in one command: every method's device path, timings, and accuracy.

    python benchmarks/gpu_protocol.py --out runs/gpu-protocol                 # one H100-class GPU, <= 12 minutes
    python benchmarks/gpu_protocol.py --smoke --device cpu --out /tmp/gp     # the same code at toy size (seconds)

Three phases, each through the public API (``condense.record_experts``, ``synthesize``,
``train_teacher``, ``evaluate_sets``; ``condense labels``' own ``run_labels``):

1. **paths**: every method of the registry (``condense.methods.method_names()``) once at a
   tiny budget on the device (2 iterations, IPC 1, ConvNet D3 W32 on 2,000 training images),
   after a tiny expert store (for tm) and a tiny ConvNet-BN teacher (for sre2l, rded and infer); s2d
   on moving-toy's clips (ConvNet3D W8) after stills by dm on its frames;
   then tm and dm with ``--backend jax`` (frepo is JAX only), soft-label relabelling
   (``condense labels`` with per-epoch views, its labelling jobs on the device) and one
   evaluation of the relabelled set with seeds stacked. JAX runs on its default device: a
   row says ``jax on gpu`` or ``jax on cpu`` (JAX without a CUDA build is not a failure).
   A row that fails keeps its one-line error and makes the script exit 1 at the end.
2. **timings**: tm's iteration in exact and constant-memory mode (``memory``) at 20 and 80
   unrolled steps, dm's iteration, and one evaluation of 10 runs with the seeds stacked
   (``vmap_seeds``) against the same runs one after another. The setting is
   benchmarks/bench_tm.py's (the MTT reference run's: Fashion-MNIST, IPC 10, batch_syn 100,
   ConvNet D3 W32, DSA), so the numbers sit beside the CPU tables of docs/BENCHMARKS.md.
   s/iteration is the synthesis loop's own per-iteration wall time (metrics.csv's
   ``seconds``: gradients, step and checks, so a little more than bench_tm's gradient time),
   median over the iterations after the first; peak memory is
   ``torch.cuda.max_memory_allocated`` over the whole run (none on a CPU).
3. **accuracy**: the field's network, ConvNet-3 W128 with instance norm (``convnet``), on
   Fashion-MNIST: random real, dm and tm at IPC 1 and 10 on a reduced budget (BUDGETS
   below), evaluated with 5 runs of 300 epochs, seeds stacked, beside the published
   ConvNet-3 W128 figures of DC, DSA and KIP (docs/REFERENCES.md).

Writes ``results.json`` and ``table.md`` into ``--out`` after every phase (a failed phase
leaves the others' results and its one-line error), the libraries' own messages into
``log.txt``, and the sets and stores under ``work/`` (cleared at the start of each phase:
a rerun measures afresh). One line per phase on the terminal, with the elapsed time.

Budget: about 9 minutes on one H100, an estimate (no GPU was lent when this was written): the
CPU costs of docs/BENCHMARKS.md (2 cores) over the speed-ups of small convolution steps on a
GPU, where kernel launches rather than arithmetic bound them:

- paths ~2.5 min: three JAX compilations (frepo, tm and dm with --backend jax; 20-40 s each
  on a GPU, 10-20 s at toy size on a CPU), 12 torch rows of a few seconds (data loads and
  set grids included), the two labelling workers' start (~10 s);
- timings ~1 min: tm at 80 steps ~0.5 s/it exact, ~1 s/it constant (CPU: 8.4 and 11.9 s/it),
  6 iterations per configuration; 10 runs x 300 epochs of IPC 10, ~3 s stacked, ~15 s one
  after another;
- accuracy ~5.5 min: experts 5 x 7 epochs of the full training split at ~1.5 s/epoch
  (215 steps of ~5 ms and a test pass) ~1 min; tm 2 x 300 iterations at 0.1-0.2 s/it
  (20 unrolled W128 steps, launch-bound) ~1.5 min; dm 2 x 500 iterations at ~0.04 s/it
  (CPU 2.14 s/it at W128) ~0.7 min; the evaluation (6 sets x 5 runs x 300 one-batch epochs;
  random real's runs are not stacked: each trains on other images) ~1 min; dataset loads
  and grids ~1 min.

A slower card or compiler has the remaining 3 of the 12 minutes. Where one command may run
at most 10 minutes, ``--phases paths timings`` and then ``--phases accuracy`` into the same
``--out`` split the session over two commands into one report.
``--smoke`` took 32 s on 2 quiet CPU cores, 65 s when other jobs shared them (load ~7).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from condense.runtime.errors import error_line

PUBLISHED = {  # docs/REFERENCES.md: Fashion-MNIST, ConvNet-3 W128, IPC 1 / 10, from the methods' papers
    "DC": {1: 70.5, 10: 82.3},
    "DSA": {1: 70.6, 10: 84.6},
    "KIP": {1: 73.8, 10: 86.8},
}
REFERENCES = "docs/REFERENCES.md"
PHASES = ("paths", "timings", "accuracy")


@dataclass(frozen=True)
class Budget:
    """Every size the protocol uses: ``full`` is the GPU session, ``smoke`` the same code at toy size."""

    name: str
    dataset: str
    # phase 1: each method's device path once
    path_arch: str
    teacher_arch: str
    path_limit_train: int | None
    path_iters: int
    path_batch_real: int
    # phase 2: timings (benchmarks/bench_tm.py's setting)
    timing_arch: str
    timing_steps: tuple[int, ...]
    timing_ipc: int
    timing_batch_syn: int
    timing_iters: int  # timed iterations, after one more that warms up
    timing_dm_batch_real: int
    stack_runs: int
    stack_epochs: int
    # phase 3: accuracy of random real, dm and tm
    arch: str
    ipcs: tuple[int, ...]
    experts: int
    expert_epochs: int
    tm_iters: int
    tm_syn_steps: int
    tm_expert_epochs: int
    tm_max_start_epoch: int
    dm_iters: int
    dm_batch_real: int
    eval_runs: int
    eval_epochs: int

    def describe(self) -> str:
        """The accuracy budget in one line (the table's header)."""
        return (f"experts {self.experts} x {self.expert_epochs} epochs; tm {self.tm_iters} iterations (syn_steps "
                f"{self.tm_syn_steps}, expert_epochs {self.tm_expert_epochs}, max_start_epoch "
                f"{self.tm_max_start_epoch}, lr_img 100); dm {self.dm_iters} iterations (batch_real "
                f"{self.dm_batch_real}, init real); evaluation {self.eval_runs} runs x {self.eval_epochs} epochs, "
                f"seeds stacked (random real's, on different subsets, one after another)")


def _bench_tm_arch() -> str:
    """The network of benchmarks/bench_tm.py (the MTT reference run's), so the timings compare with it."""
    if str(Path(__file__).parent) not in sys.path:  # a script's folder is on it; an imported file's is not
        sys.path.insert(0, str(Path(__file__).parent))
    from bench_tm import ARCH

    return ARCH


BUDGETS = {
    "full": lambda: Budget(
        name="full", dataset="fashion-mnist",
        path_arch="convnet:width=32", teacher_arch="convnet:norm=batch,width=32", path_limit_train=2000,
        path_iters=2, path_batch_real=64,
        timing_arch=_bench_tm_arch(), timing_steps=(20, 80), timing_ipc=10, timing_batch_syn=100, timing_iters=5,
        timing_dm_batch_real=256, stack_runs=10, stack_epochs=300,
        arch="convnet", ipcs=(1, 10), experts=5, expert_epochs=7,
        tm_iters=300, tm_syn_steps=20, tm_expert_epochs=2, tm_max_start_epoch=5,
        dm_iters=500, dm_batch_real=256, eval_runs=5, eval_epochs=300),
    "smoke": lambda: Budget(
        name="smoke", dataset="toy",
        path_arch="convnet:width=8,depth=2", teacher_arch="convnet:norm=batch,width=8,depth=2", path_limit_train=None,
        path_iters=2, path_batch_real=16,
        timing_arch="convnet:width=8,depth=2", timing_steps=(2, 4), timing_ipc=2, timing_batch_syn=4,
        timing_iters=2, timing_dm_batch_real=16, stack_runs=2, stack_epochs=3,
        arch="convnet:width=8,depth=2", ipcs=(1, 10), experts=2, expert_epochs=3,
        tm_iters=3, tm_syn_steps=2, tm_expert_epochs=1, tm_max_start_epoch=2,
        dm_iters=3, dm_batch_real=16, eval_runs=2, eval_epochs=3),
}


class Protocol:
    """One run of the protocol: its budget, device, output folder and what it measured so far."""

    def __init__(self, budget: Budget, device: str, out: Path, log) -> None:
        self.b, self.device, self.out, self.log = budget, device, out, log
        self.t0 = time.perf_counter()
        fresh = {"budget": asdict(budget), "device": describe_device(device),
                 "published": {"source": REFERENCES, "figures": PUBLISHED},
                 "phases": {}, "paths": [], "timings": {}, "accuracy": {}}
        self.results: dict[str, Any] = json.loads(json.dumps(fresh))  # as results.json holds it
        previous = self.out / "results.json"
        if previous.is_file():  # a session split over calls (--phases): the other phases' results stay
            try:
                before = json.loads(previous.read_text())
            except ValueError:
                before = {}
            if all(before.get(k) == self.results[k] for k in ("budget", "device", "published")):
                self.results = before

    # --- plumbing -------------------------------------------------------------------------------------

    def work(self, phase: str) -> Path:
        """A fresh folder for a phase's files: a rerun measures again instead of resuming."""
        folder = self.out / "work" / phase
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def quiet(self):
        """The libraries' printed messages go to log.txt, so the terminal shows one line per phase."""
        return contextlib.redirect_stdout(self.log)

    def phase(self, name: str, run: Callable[[], str]) -> None:
        """Run one phase; record its wall time and status (a failure is its one line); write the report."""
        t = time.perf_counter()
        self.results[name] = type(self.results[name])()  # paths: a list of rows; the others: dicts
        self.results["phases"][name] = {"status": "running (interrupted)", "seconds": 0.0}
        self.write()  # what a killed run leaves says so
        try:
            with self.quiet():
                summary = run()
            status = {"status": "ok"}
        except Exception as e:  # the report must still be written, and the later phases run
            summary, status = f"failed: {error_line(e, 300)}", {"status": "error", "error": error_line(e, 300)}
        seconds = time.perf_counter() - t
        self.results["phases"][name] = {**status, "seconds": round(seconds, 1)}
        self.write()
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {name}: {summary} ({seconds:.1f} s)", flush=True)

    def write(self) -> None:
        self.results["total_seconds"] = round(sum(p["seconds"] for p in self.results["phases"].values()), 1)
        from condense.runtime.files import write_text  # whole files: a killed run leaves the last report

        write_text(self.out / "results.json", json.dumps(self.results, indent=2))
        write_text(self.out / "table.md", render(self.results))

    def failed(self) -> bool:
        return (any(p["status"] != "ok" for p in self.results["phases"].values())
                or any(r["status"] == "error" for r in self.results["paths"]))

    # --- phase 1 ---------------------------------------------------------------------------------------

    def paths(self) -> str:
        import condense
        from condense.config import make_config
        from condense.labels.run import LabelsConfig, run_labels
        from condense.methods import get_method, method_names

        b, dev, work = self.b, self.device, self.work("paths")
        rows = self.results["paths"]
        sets: dict[str, str] = {}
        common = {"dataset": b.dataset, "arch": b.path_arch, "limit_train": b.path_limit_train}

        def row(name: str, where: str, fn: Callable[[], Any]) -> None:
            t = time.perf_counter()
            try:
                fn()
                r = {"status": "ok"}
            except Exception as e:
                r = {"status": "error", "error": error_line(e, 300)}
            rows.append({"name": name, "device": where() if callable(where) else where, **r,
                         "seconds": round(time.perf_counter() - t, 2)})
            self.write()

        store, teacher = str(work / "experts"), str(work / "teacher.h5")
        row("buffer", dev, lambda: condense.record_experts(**common, experts=1, epochs=2, devices=[dev], out=store))
        row("teacher", dev, lambda: condense.train_teacher(**{**common, "arch": b.teacher_arch}, epochs=1,
                                                           device=dev, out=teacher))
        tiny = {**common, "ipc": 1, "iters": b.path_iters, "checkpoint_every": b.path_iters,
                "batch_real": b.path_batch_real, "trajectories": store, "teacher": teacher, "teachers": [teacher],
                "syn_steps": 2,
                "expert_epochs": 1, "max_start_epoch": 1, "embed_epochs": 1, "candidates": 8, "num_crop": 2,
                "pool_size": 2, "device": dev}
        runs = [(name, None) for name in method_names()]
        runs += [(name, "jax") for name in method_names()
                 if get_method(name).jax and not get_method(name).jax_only]
        for name, backend in runs:
            entry = get_method(name)
            jax = (backend or entry.default_backend) == "jax"
            label = f"{name} --backend jax" if backend else name
            out = str(work / f"{name}{'-jax' if backend else ''}.h5")
            accepted = {f.name for f in fields(entry.config)}
            kwargs = {k: v for k, v in tiny.items() if k in accepted and v is not None}
            if name == "infer":  # its budget holds a group: K real images and a compensator
                kwargs["ipc"] = 2
            stills, ssl_teacher = None, None
            if name == "krr-st":  # a self-supervised teacher's targets
                ssl_teacher = str(work / "teacher-ssl.h5")
                kwargs = {**kwargs, "teacher": ssl_teacher, "images": 8}
            if name == "s2d":  # clips: stills of moving-toy's frames, then the dynamic memory and integrator
                stills = str(work / "stills.h5")
                kwargs = {**{k: v for k, v in kwargs.items() if k != "limit_train"}, "dataset": "moving-toy",
                          "arch": "convnet3d:width=8,stride=1,dropout=0", "static": stills}

            def run() -> None:  # row() calls it at once
                if ssl_teacher is not None:
                    condense.train_teacher(**common, ssl="barlow-twins", projector=[32, 32], probe_epochs=2,
                                           epochs=1, device=dev, out=ssl_teacher)
                if stills is not None:
                    condense.synthesize("dm", dataset="moving-toy-frames", arch="convnet:width=8,depth=2", ipc=2,
                                        iters=b.path_iters, batch_real=b.path_batch_real, device=dev, out=stills)
                condense.synthesize(name, backend=backend, **kwargs, out=out)
            row(label, jax_device if jax else dev, run)
            sets[label] = out
        soft = str(work / "random.soft.h5")
        # one device labels in this process; two name worker processes (spawned, each with its own CUDA context)
        for label, labellers, out in [("labels", [dev], soft)] + (
                [("labels on 2 workers", [dev, dev], str(work / "random.soft2.h5"))] if dev != "cpu" else []):
            row(label, dev, lambda: run_labels(make_config(LabelsConfig, {  # row() calls it at once
                "synset": sets.get("random"), "teacher": teacher, "views": "per-epoch", "view_epochs": 2,
                "devices": labellers, "out": out}), bars=False))
        row("eval", dev, lambda: condense.evaluate_sets([soft], archs=[b.path_arch], runs=2, epochs=2,
                                                        vmap_seeds=True, devices=[dev], json=str(work / "eval.json")))
        row("eval --transfer", dev, lambda: condense.evaluate_sets(
            [sets.get("krr-st")], transfer=[b.dataset], runs=2, pretrain_epochs=2, finetune_iters=5, probe_epochs=2,
            devices=[dev], json=str(work / "transfer.json")))
        bad = [r["name"] for r in rows if r["status"] != "ok"]
        return f"{len(rows) - len(bad)} of {len(rows)} ok" + (f"; failed: {', '.join(bad)}" if bad else "")

    # --- phase 2 ---------------------------------------------------------------------------------------

    def timings(self) -> str:
        import condense

        b, dev, work = self.b, self.device, self.work("timings")
        timings = self.results["timings"]
        store = str(work / "experts")
        # the values of the experts do not matter to the timing (benchmarks/bench_tm.py uses drifted inits)
        condense.record_experts(dataset=b.dataset, arch=b.timing_arch, experts=1, epochs=4,
                                limit_train=b.path_limit_train, devices=[dev], out=store)
        tm = timings["tm"] = []
        for memory in ("exact", "constant"):
            for steps in b.timing_steps:
                tm.append({"memory": memory, "syn_steps": steps, "ipc": b.timing_ipc, "batch_syn": b.timing_batch_syn,
                           "arch": b.timing_arch, **self.iteration_time(
                               "tm", trajectories=store, ipc=b.timing_ipc, syn_steps=steps, expert_epochs=2,
                               max_start_epoch=2, batch_syn=b.timing_batch_syn, memory=memory,
                               out=str(work / f"tm-{memory}-{steps}.h5"))})
                self.write()
        timings["dm"] = {"ipc": b.timing_ipc, "batch_real": b.timing_dm_batch_real, "arch": b.timing_arch,
                         **self.iteration_time("dm", dataset=b.dataset, arch=b.timing_arch, ipc=b.timing_ipc,
                                               batch_real=b.timing_dm_batch_real, out=str(work / "dm.h5"))}
        self.write()
        ev = timings["eval"] = {"set": "dm", "runs": b.stack_runs, "ipc": b.timing_ipc, "epochs": b.stack_epochs,
                                "arch": b.timing_arch}

        def evaluate(stacked: bool, epochs: int, name: str) -> list[dict]:
            # dm's set: the random-real baseline is never stacked (each of its runs trains on other images)
            return condense.evaluate_sets(str(work / "dm.h5"), archs=[b.timing_arch], runs=b.stack_runs,
                                          epochs=epochs, random_baseline=False, vmap_seeds=stacked, devices=[dev],
                                          json=str(work / f"eval-{name}.json"))

        for stacked in (True, False):  # one epoch each first: imports, kernels and their tuning are not timed
            evaluate(stacked, 1, f"warm-{stacked}")
        for key, stacked in (("stacked_s", True), ("sequential_s", False)):
            t = time.perf_counter()
            rows = evaluate(stacked, b.stack_epochs, key)
            ev[key] = round(time.perf_counter() - t, 2)
            ev[key.replace("_s", "_mean")] = rows[0]["mean"]
            self.write()
        tm_text = ", ".join(f"{r['memory']} {r['syn_steps']}: {r['s_per_iter']:.3g} s/it" for r in tm)
        return (f"tm {tm_text}; dm {timings['dm']['s_per_iter']:.3g} s/it; eval stacked {ev['stacked_s']:.1f} s "
                f"vs one after another {ev['sequential_s']:.1f} s")

    def iteration_time(self, method: str, **fields_: Any) -> dict[str, Any]:
        """Median s/iteration of ``method`` (iterations after the first) and its peak CUDA memory."""
        import condense
        import torch

        seconds: list[float] = []
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        iters = self.b.timing_iters + 1
        condense.synthesize(method, **fields_, iters=iters, checkpoint_every=iters, device=self.device,
                            callback=lambda it, row, current: seconds.append(row["seconds"]))
        return {"s_per_iter": statistics.median(seconds[1:]), "first_s": seconds[0], "iters_timed": len(seconds) - 1,
                "peak_cuda_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None}

    # --- phase 3 ---------------------------------------------------------------------------------------

    def accuracy(self) -> str:
        import condense
        from condense.nets import parse_arch

        b, dev, work = self.b, self.device, self.work("accuracy")
        acc = self.results["accuracy"]
        acc.update({"dataset": b.dataset, "arch": str(parse_arch(b.arch)), "budget": b.describe(), "seconds": {}})

        def timed(step: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            value = fn()
            acc["seconds"][step] = round(time.perf_counter() - t, 1)
            self.write()
            return value

        store = str(work / "experts")
        timed("experts", lambda: condense.record_experts(dataset=b.dataset, arch=b.arch, experts=b.experts,
                                                         epochs=b.expert_epochs, devices=[dev], out=store))
        sets = []
        for ipc in b.ipcs:
            tm, dm = str(work / f"tm_ipc{ipc}.h5"), str(work / f"dm_ipc{ipc}.h5")
            timed(f"tm_ipc{ipc}", lambda: condense.synthesize(
                "tm", trajectories=store, ipc=ipc, iters=b.tm_iters, syn_steps=b.tm_syn_steps,
                expert_epochs=b.tm_expert_epochs, max_start_epoch=b.tm_max_start_epoch, lr_img=100.0, lr_lr=1e-5,
                checkpoint_every=b.tm_iters, device=dev, out=tm))
            timed(f"dm_ipc{ipc}", lambda: condense.synthesize(
                "dm", dataset=b.dataset, arch=b.arch, ipc=ipc, iters=b.dm_iters, lr_img=1.0,
                batch_real=b.dm_batch_real, init="real", checkpoint_every=b.dm_iters, device=dev, out=dm))
            sets += [tm, dm]
        rows = timed("eval", lambda: condense.evaluate_sets(
            sets, archs=[b.arch], runs=b.eval_runs, epochs=b.eval_epochs, vmap_seeds=True, devices=[dev],
            json=str(work / "eval.json")))
        acc["rows"] = [{"method": r["method"], "ipc": r["ipc"], "mean": r["mean"], "ci95": r["ci95"],
                        "n": len(r["accs"]), "accs": r["accs"]} for r in rows if r["variant"] == "set"]
        return "; ".join(f"{r['method']} IPC {r['ipc']} {r['mean']:.2f} %" for r in acc["rows"])


def jax_device() -> str:
    """Where JAX runs (its default backend), as a row's device: ``jax on gpu`` or ``jax on cpu``."""
    try:
        import jax
    except ImportError:
        return "jax (not installed)"
    return f"jax on {jax.default_backend()}"


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{device} ({os.cpu_count()} cores, torch {torch.__version__})"


# --- the report -----------------------------------------------------------------------------------------

def render(results: dict[str, Any]) -> str:
    """table.md: accuracy beside the published figures, the timings, and the device-path table."""
    b, phases = results["budget"], results["phases"]
    phases = {name: phases[name] for name in PHASES if name in phases}
    wall = ", ".join(f"{name} {p['seconds']:.0f} s" + ("" if p["status"] == "ok" else f" ({p['status']})")
                     for name, p in phases.items())
    lines = [f"# GPU protocol ({b['name']} budget)", "",
             f"Device: {results['device']}. Wall time {results.get('total_seconds', 0):.0f} s in all"
             + (f" ({wall})." if wall else "."), ""]
    failures = [f"- {name}: {p.get('error', p['status'])}" for name, p in phases.items() if p["status"] != "ok"]
    if failures:
        lines += ["Failed phases:", "", *failures, ""]
    lines += [_accuracy_table(results), "", _timing_table(results), "", _paths_table(results)]
    return "\n".join(lines) + "\n"


def _accuracy_table(results: dict[str, Any]) -> str:
    acc, b = results["accuracy"], results["budget"]
    ipcs = b["ipcs"]
    head = (f"## Accuracy: {b['dataset']}, {acc.get('arch', b['arch'])}\n\n"
            f"Budget: {Budget(**b).describe()}. Mean ± 95 % interval over n runs (test accuracy, %). "
            f"Published: the methods' papers on a GPU with their full budgets (ConvNet-3 W128; {REFERENCES}).\n\n"
            f"| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " | n |\n|---|" + "---|" * (len(ipcs) + 1))
    rows = acc.get("rows", [])
    lines = [head]
    for method, name in (("random", "random real"), ("dm", "dm"), ("tm", "tm")):
        cells, ns = [], set()
        for ipc in ipcs:
            r = next((r for r in rows if r["method"] == method and r["ipc"] == ipc), None)
            cells.append("—" if r is None else f"{r['mean']:.2f} ± {_ci(r['ci95'])}")
            if r is not None:
                ns.add(str(r["n"]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'/'.join(sorted(ns)) or '—'} |")
    for method, by_ipc in PUBLISHED.items():
        lines.append(f"| {method} (published) | " + " | ".join(f"{by_ipc[i]:.1f}" if i in by_ipc else "—"
                                                             for i in ipcs) + " | — |")
    seconds = acc.get("seconds", {})
    if seconds:
        lines.append("\nWall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".")
    return "\n".join(lines)


def _ci(value: float | None) -> str:
    return "nan" if value is None or value != value else f"{value:.2f}"


def _timing_table(results: dict[str, Any]) -> str:
    t = results["timings"]
    lines = ["## Timings (benchmarks/bench_tm.py's setting)", "",
             "s/iteration: the synthesis loop's per-iteration wall time, median after the first iteration; peak: "
             "torch.cuda.max_memory_allocated over the run.", "",
             "| what | setting | s/iteration | first iteration (s) | peak CUDA memory |", "|---|---|---|---|---|"]
    for r in t.get("tm", []):
        lines.append(f"| tm, memory {r['memory']} | syn_steps {r['syn_steps']}, IPC {r['ipc']}, batch_syn "
                     f"{r['batch_syn']}, {r['arch']} | {r['s_per_iter']:.3f} | {r['first_s']:.2f} | "
                     f"{_gib(r['peak_cuda_gib'])} |")
    if "s_per_iter" in t.get("dm", {}):
        r = t["dm"]
        lines.append(f"| dm | IPC {r['ipc']}, batch_real {r['batch_real']}, {r['arch']} | {r['s_per_iter']:.3f} | "
                     f"{r['first_s']:.2f} | {_gib(r['peak_cuda_gib'])} |")
    ev = t.get("eval", {})
    if "stacked_s" in ev:
        setting = f"the dm set above, {ev['runs']} runs, IPC {ev['ipc']}, {ev['epochs']} epochs, {ev['arch']}"
        lines += ["", "| evaluation | setting | wall time (s) | mean accuracy (%) |", "|---|---|---|---|",
                  f"| seeds stacked (vmap_seeds) | {setting} | {ev['stacked_s']:.2f} | {ev['stacked_mean']:.2f} |"]
        if "sequential_s" in ev:
            ratio = ev["sequential_s"] / max(ev["stacked_s"], 1e-9)
            lines.append(f"| one after another | {setting} | {ev['sequential_s']:.2f} ({ratio:.2f}x the stacked) | "
                         f"{ev['sequential_mean']:.2f} |")
    return "\n".join(lines)


def _gib(value: float | None) -> str:
    return "— (not CUDA)" if value is None else f"{value:.2f} GiB"


def _paths_table(results: dict[str, Any]) -> str:
    lines = ["## Device paths (each method once, tiny budget)", "",
             "JAX rows run on JAX's default device: `jax on cpu` beside a GPU means JAX has no CUDA build here.", "",
             "| method | device | status | seconds | error |", "|---|---|---|---|---|"]
    for r in results["paths"]:
        lines.append(f"| {r['name']} | {r['device']} | {r['status']} | {r['seconds']:.2f} | "
                     f"{r.get('error', '').replace('|', '/')} |")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="python benchmarks/gpu_protocol.py --smoke --device cpu --out /tmp/gp")
    ap.add_argument("--out", default="runs/gpu-protocol", help="folder for results.json, table.md, log.txt, work/")
    ap.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda; without a GPU only with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="the same code at toy size (seconds on a CPU)")
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                    help="run only these phases (e.g. to split a session into calls of at most 10 minutes)")
    args = ap.parse_args(argv)
    # the checkout's condense, whether or not (or wherever) the package is installed: this measures this tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    # JAX takes 75 % of a GPU's memory when it starts unless told otherwise; torch shares this GPU
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import torch

    from condense.jobs import parse_device
    from condense.runtime.errors import ConfigError
    from condense.runtime.perf import tune_cpu_allocator

    if args.device is None and not torch.cuda.is_available() and not args.smoke:
        print("gpu_protocol: no CUDA GPU here; give --device cpu (hours at the full budget) or --smoke",
              file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parse_device(device)
    except ConfigError as e:
        print(f"gpu_protocol: {e}", file=sys.stderr)
        return 2
    tune_cpu_allocator()  # what the condense command and its workers run with (docs/BENCHMARKS.md)
    if args.smoke:
        # toy tensors gain nothing from a second thread, and on a shared CPU the threads' barriers
        # measured 0.2-3 s per toy tm iteration against 0.05 s with one
        torch.set_num_threads(1)
        # the smoke checks the code path, not XLA's optimiser: a third less compile time on a CPU
        os.environ.setdefault("XLA_FLAGS",
                              "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = BUDGETS["smoke" if args.smoke else "full"]()
    with open(out / "log.txt", "w", buffering=1) as log:  # line-buffered: a killed run keeps its messages
        p = Protocol(budget, device, out, log)
        print(f"gpu protocol ({budget.name} budget) on {p.results['device']} into {out}", flush=True)
        for name in (n for n in PHASES if n in args.phases):
            p.phase(name, getattr(p, name))
    print(f"[{time.perf_counter() - p.t0:7.1f} s] wrote {out / 'results.json'} and {out / 'table.md'}", flush=True)
    return 1 if p.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
