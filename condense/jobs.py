"""The job API: independent units of work (one expert, one evaluation run) run anywhere.

A :class:`Job` is a picklable description: an importable function named as
``"package.module:function"`` plus plain keyword arguments. :func:`run_jobs` runs a list
of jobs in this process (one device) or in one worker process per listed device
(``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]`` for CPU workers), all pulling from one
queue. Results stream back as jobs finish; a failing job is reported with its error and
the others carry on. The function is called as ``fn(**kwargs, device=device)`` and must
write its own durable output (an expert file, a result row), so a killed run loses
only unfinished jobs.

Workers use the 'spawn' start method (safe with CUDA and threads) and split the CPU
cores between them: ``torch.set_num_threads(cores // workers)``, at least 1, unless
``threads`` is given. Results are identical to in-process runs when the thread count is
the same (``run_jobs(jobs, ["cpu"], threads=1)`` vs ``run_jobs(jobs, ["cpu", "cpu"], threads=1)``).
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .runtime.errors import CondenseError, ConfigError
from .runtime.perf import tune_cpu_allocator


@dataclass(frozen=True)
class Job:
    key: str
    fn: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    key: str
    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    device: str = "cpu"


def resolve(fn: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function."""
    module, _, name = fn.partition(":")
    if not module or not name:
        raise ConfigError(f"job function must be 'module:function', got {fn!r}")
    return getattr(importlib.import_module(module), name)


def run_one(job: Job, device: str) -> JobResult:
    """Run one job here, on ``device``; an exception becomes a failed :class:`JobResult`."""
    t0 = time.perf_counter()
    try:
        value = resolve(job.fn)(**job.kwargs, device=device)
        return JobResult(job.key, True, value, seconds=time.perf_counter() - t0, device=device)
    except Exception as e:  # reported to the caller as a failed job, never swallowed
        first = str(e).splitlines()[0] if str(e) else ""
        detail = "" if isinstance(e, CondenseError) else "\n" + traceback.format_exc()
        return JobResult(job.key, False, error=f"{type(e).__name__}: {first}{detail}",
                         seconds=time.perf_counter() - t0, device=device)


def _worker(device: str, threads: int, todo: Any, done: Any) -> None:
    tune_cpu_allocator()  # a worker process is ours, as the command's own process is
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    while (job := todo.get()) is not None:
        done.put(run_one(job, device))


def parse_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device; ConfigError if unknown or absent here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r} (use cpu, cuda or cuda:N)")
    return device


def resolve_device(name: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or None (= cuda if available, else cpu), refused if absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parse_device(name)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_jobs(jobs: Sequence[Job], devices: Sequence[str] = ("cpu",),
             threads: int | None = None) -> Iterator[JobResult]:
    """Run ``jobs`` on ``devices`` (one worker each; a single device runs in-process).

    Yields one :class:`JobResult` per job, in completion order. ``threads``: torch's
    thread count in every worker (and in-process, restored afterwards); None keeps the
    defaults (in-process: unchanged; workers: CPU cores split between CPU workers, 1 per
    GPU worker).
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    devices = list(devices) or ["cpu"]
    if len(devices) == 1 or len(jobs) <= 1:
        for job in jobs:
            before = torch.get_num_threads()
            if threads is not None:
                torch.set_num_threads(threads)
            try:
                result = run_one(job, devices[0])
            finally:
                torch.set_num_threads(before)
            yield result
        return
    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    cpu_threads = threads or threads_per_worker(sum(d == "cpu" for d in devices))
    workers = [ctx.Process(target=_worker, args=(d, cpu_threads if d == "cpu" else threads or 1, todo, done),
                           daemon=True)
               for d in devices[:len(jobs)]]
    for job in jobs:
        todo.put(job)
    for _ in workers:
        todo.put(None)
    for w in workers:
        w.start()
    try:
        for _ in range(len(jobs)):
            while True:
                try:
                    yield done.get(timeout=1.0)
                    break
                except queue.Empty:  # nothing yet: make sure somebody is still working
                    if not any(w.is_alive() for w in workers) and done.empty():
                        raise RuntimeError("all job workers died (killed, or out of memory)") from None
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()
