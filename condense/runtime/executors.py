"""Executors: where the evaluation harness and the sharded methods run their jobs (:mod:`condense.jobs`).

One entry point, :func:`execute`, yields one :class:`~condense.jobs.JobResult` per job in
completion order, whatever the executor:

- ``local``: :func:`condense.jobs.run_jobs`: in this process for one device, else a pool
  of one spawn worker per listed device (``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]``
  for CPU workers). Devices are checked first (:func:`condense.jobs.parse_device`).
- ``ray``: one Ray task per job. ``address`` None or ``"local"`` starts a local Ray
  instance with one CPU per core (shut down again afterwards); ``"auto"`` connects to the
  cluster started on this machine (``ray start --head``) or named by ``RAY_ADDRESS``;
  ``"host:port"`` or ``"ray://host:port"`` connects to that cluster. A Ray session this
  process has already opened is used as it is. Where the cluster has GPUs every task
  asks for one GPU and runs its job on ``"cuda"``; otherwise tasks run on ``"cpu"``
  and ask for ``threads`` CPUs. Ray does not retry a job whose worker died: it is
  reported as failed, like any other failing job.

``threads`` is torch's thread count in every worker (in-process: for the duration of
each job). Results are identical across executors at the same thread count (and the
same device type); that is what "identical across executors" means.
Defaults: local keeps :func:`~condense.jobs.run_jobs`'s split of the cores; ray uses 1
thread per task, i.e. one task per core.

User mistakes (an unknown executor or device, ray not installed, an unreachable cluster)
raise :class:`~condense.runtime.errors.ConfigError` with a one-line message, when
:func:`execute` is called, before any job runs. A failing job never stops the others.

Work made of independent items keyed 0..n-1 (sre2l's recovery batches, each with its own
randomness keyed by its number) is spread the same way for every method: :func:`run_shards`
runs one job per shard, shard k of K doing the keys :func:`shard_keys` gives it (every K-th
from k) as its own resumable run in :func:`shard_path`, and returns their values in shard
order; :func:`merge_shards` puts the shards' sets together by the rows each names. Since an
item's result depends on its key alone, the merged set is the one a single process makes.
"""
from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from condense.runtime.errors import ConfigError, error_line
from condense.runtime.extras import require_extra
from condense.runtime.perf import tune_cpu_allocator
from condense.jobs import Job, JobResult, parse_device, run_jobs, run_one

if TYPE_CHECKING:
    from condense.synset import SynSet

EXECUTORS = ("local", "ray")
RAY_DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0  # how long to wait for a Ray cluster's port to answer


def execute(jobs: Sequence[Job], *, executor: str = "local", devices: Sequence[str] | None = None,
            address: str | None = None, threads: int | None = None) -> Iterator[JobResult]:
    """Run ``jobs`` with ``executor``; yields one :class:`JobResult` per job as each finishes.

    devices: local only (default ``["cpu"]``, in-process; ray accepts only None or that
    default, as callers pass their configured devices through). address: ray only (see the
    module docstring). threads: torch threads per worker (>= 1). Options are checked
    now (a Ray cluster's size when the first result is asked for); jobs run while the
    returned iterator is consumed, and closing it early stops the workers or cancels the
    Ray tasks still pending.
    """
    jobs = list(jobs)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    if executor == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray; the local executor runs on this machine")
        devices = list(devices) if devices is not None else ["cpu"]
        if not devices:
            raise ConfigError("no devices given: use e.g. cpu, cuda or cuda:0,cuda:1")
        for d in devices:
            parse_device(d)
        return run_jobs(jobs, devices, threads=threads)
    if executor == "ray":
        if devices is not None and list(devices) != ["cpu"]:  # ["cpu"] is the local default: harmless
            raise ConfigError("--devices is for the local executor; Ray places jobs on the cluster's "
                              "GPUs (or CPUs) itself")
        ray = _import_ray()
        _check_reachable(address)
        return _run_ray(ray, jobs, address, threads or 1)
    raise ConfigError(f"unknown executor {executor!r} (use one of: {', '.join(EXECUTORS)})")


def _import_ray() -> Any:
    require_extra("ray", "--executor ray")
    import ray

    return ray


def _check_reachable(address: str | None) -> None:
    """Fail fast (one line) when a named cluster does not answer: ray.init would retry for minutes."""
    if address is None or address == "local":
        return
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address  # private: may move
            target = canonicalize_bootstrap_address("auto")
        except Exception:  # an unknown Ray version: let ray.init find the cluster
            return
        if target is None:
            raise ConfigError("--address auto: no running Ray cluster found on this machine "
                              "(start one with 'ray start --head', or set RAY_ADDRESS)")
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(RAY_DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"bad Ray address {address!r} (use host:port, ray://host:port, auto or local)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {hostport}: {e.strerror or e}") from None


def _ray_job(job: Job, device: str, threads: int) -> JobResult:
    """The body of every Ray task: the allocator and thread count of the local executor's workers, then the job."""
    tune_cpu_allocator()
    torch.set_num_threads(threads)
    return run_one(job, device)


def _run_ray(ray: Any, jobs: list[Job], address: str | None, threads: int) -> Iterator[JobResult]:
    started = False
    if not ray.is_initialized():
        try:
            if address is None or address == "local":
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)
            else:
                ray.init(address=address)
        except Exception as e:
            where = "start a local Ray instance" if address in (None, "local") else f"connect to Ray at {address}"
            raise ConfigError(f"could not {where}: {error_line(e)}") from None
        started = True
    pending: dict[Any, Job] = {}
    try:
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) > 0:
            device, options = "cuda", {"num_gpus": 1, "num_cpus": threads}
        else:
            device, options = "cpu", {"num_cpus": threads}
        most = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if threads > most:
            raise ConfigError(f"{threads} threads per task, but no Ray node has more than {most:g} CPUs")
        task = ray.remote(_ray_job).options(max_retries=0, **options)
        pending = {task.remote(job, device, threads): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the worker died, or the result did not come back
                    result = JobResult(job.key, False, error=error_line(e), device=device)
                yield result
    finally:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        if started:
            ray.shutdown()


def default_workers(executor: str, devices: Sequence[str] | None) -> int:
    """Into how many jobs work that can be split is split by default: one per listed device on
    the local executor, 2 Ray tasks (Ray places tasks itself; devices are the local executor's)."""
    return 2 if executor == "ray" else len(devices or ["cpu"])


def run_all(jobs: Sequence[Job], *, executor: str = "local", devices: Sequence[str] | None = None,
            address: str | None = None, note=print, what: str = "jobs") -> dict[str, Any]:
    """Run every job (:func:`execute`) and return their values by key; a failure of any is one
    CondenseError line after the others finished (naming how many of ``what`` failed)."""
    from condense.runtime.errors import CondenseError

    values, errors = {}, []
    for res in execute(jobs, executor=executor, devices=devices if executor == "local" else None, address=address):
        if res.ok:
            values[res.key] = res.value
            note(f"{res.key} done on {res.device} ({res.seconds:.0f} s)")
        else:
            errors.append(f"{res.key}: {res.error.splitlines()[0]}")
    if errors:
        raise CondenseError(f"{len(errors)} of {len(jobs)} {what} failed (rerun to resume); first: {errors[0]}")
    return values


def shard_keys(n: int, shard: int, shards: int) -> list[int]:
    """The keys of the work items 0..n-1 that shard ``shard`` of ``shards`` does: every ``shards``-th
    from ``shard`` (strided, so items ordered by class or size are shared alike)."""
    return list(range(shard, n, shards))


def shard_path(out: str, shard: int, shards: int) -> str:
    """The file shard ``shard`` of ``shards`` of the result ``out`` writes (and resumes from)."""
    return f"{out}.shard{shard}of{shards}.h5"


def run_shards(fn: str, kwargs: dict[str, Any], shards: int, *, executor: str = "local",
               devices: Sequence[str] | None = None, address: str | None = None, note=print,
               what: str = "shards") -> list[Any]:
    """Run the jobs ``fn(**kwargs, shard=k, shards=shards, device=...)`` for k = 0..shards-1 on
    ``executor`` (:func:`run_all`: one CondenseError line if any failed) and return their values in
    shard order, whichever finished first."""
    jobs = [Job(f"shard{k}", fn, {**kwargs, "shard": k, "shards": shards}) for k in range(shards)]
    values = run_all(jobs, executor=executor, devices=devices, address=address, note=note, what=what)
    return [values[job.key] for job in jobs]


def merge_shards(paths: Sequence[str], out: str) -> SynSet:
    """One hard-label set, saved to ``out``, from shard sets: each contributes the rows its provenance
    names (``rows``; its ``shard`` and ``rows`` are dropped, ``shards`` lists the files). A
    CondenseError line when the shards leave a row uncovered."""
    from condense.runtime.errors import CondenseError
    from condense.synset import SynSet, load_synset

    parts = [load_synset(p) for p in paths]
    images = torch.zeros_like(parts[0].images)
    covered = torch.zeros(len(images), dtype=torch.bool)
    for p in parts:
        rows = torch.tensor(p.provenance["rows"])
        images[rows] = p.images[rows]
        covered[rows] = True
    if not bool(covered.all()):
        raise CondenseError(f"the shards {', '.join(paths)} do not cover every image of the set")
    first = parts[0]
    config = {k: v for k, v in first.config.items() if k != "shard"}
    provenance = {k: v for k, v in first.provenance.items() if k not in ("shard", "rows")}
    s = SynSet.hard(images, first.classes.clone(), dataset=first.dataset, num_classes=first.num_classes,
                    method=first.method, transform=first.transform, data=first.data, config=config,
                    provenance={**provenance, "shards": [str(p) for p in paths]})
    s.save(out)
    return s
