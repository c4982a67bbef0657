"""Executors: in-process, a pool of CPU workers and Ray give the same numbers; failures and bad options;
independent keyed work in shards merges into what one process makes."""
from __future__ import annotations

import sys
import time

import pytest
import torch

from condense.runtime.errors import CondenseError, ConfigError
from condense.runtime.executors import merge_shards, run_shards, shard_keys
from condense.jobs import Job
from condense.runtime.rng import generator
from condense.synset import SynSet, load_synset
from condense.train import TrainProtocol
from condense.runtime.executors import EXECUTORS, execute


def _jobs() -> list[Job]:
    """Three tiny trainings (different seeds, so different accuracies) and one job that fails."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16, generator=g), torch.arange(16) % 4
    test = (torch.randn(64, 3, 16, 16, generator=g), torch.arange(64) % 4)
    common = dict(images=x, labels=y, protocol=TrainProtocol(epochs=2, batch_size=8), test=test, num_classes=4)
    jobs = [Job(f"seed {s}", "condense.train:evaluate", {**common, "arch": "convnet:width=8,depth=2", "seed": s})
            for s in range(3)]
    return jobs + [Job("broken", "condense.train:evaluate", {**common, "arch": "nope", "seed": 0})]


def _by_key(results) -> dict:
    results = list(results)
    by_key = {r.key: r for r in results}
    assert len(by_key) == len(results) == 4  # every job reported once, the failure did not stop the others
    return by_key


@pytest.fixture(scope="module")
def in_process():
    return _by_key(execute(_jobs(), threads=1))


@pytest.fixture(scope="module")
def ray_run():
    """One local Ray instance for the module: started by execute itself, which must shut it down."""
    ray = pytest.importorskip("ray")
    t0 = time.perf_counter()
    results = _by_key(execute(_jobs(), executor="ray", devices=["cpu"], threads=1))  # ["cpu"]: what callers pass by default
    return results, time.perf_counter() - t0, ray.is_initialized()


def check_against(reference: dict, results: dict) -> None:
    for key in ("seed 0", "seed 1", "seed 2"):
        assert results[key].ok, results[key].error
        assert results[key].value == reference[key].value  # exact: same thread count, same numbers
    broken = results["broken"]
    assert not broken.ok and broken.error == "ArchError: unknown architecture 'nope'; available: " \
        + reference["broken"].error.split("available: ")[1]


def test_in_process_reports_failure_and_restores_threads(in_process):
    before = torch.get_num_threads()
    assert len({in_process[f"seed {s}"].value for s in range(3)}) > 1  # the seeds matter: a meaningful comparison
    assert all(0.0 <= in_process[f"seed {s}"].value <= 1.0 for s in range(3))
    broken = in_process["broken"]
    assert not broken.ok and broken.error.startswith("ArchError: unknown architecture 'nope'")
    assert "\n" not in broken.error  # a user error: one line, no traceback
    list(execute(_jobs()[:1], threads=1))
    assert torch.get_num_threads() == before


def test_pool_of_two_cpu_workers_matches_in_process(in_process):
    results = _by_key(execute(_jobs(), devices=["cpu", "cpu"], threads=1))
    check_against(in_process, results)


def test_ray_matches_in_process(in_process, ray_run):
    results, _, still_up = ray_run
    check_against(in_process, results)
    assert all(r.device == "cpu" for r in results.values())
    assert not still_up  # execute started Ray, so it shut it down


def test_unreachable_ray_address_is_one_quick_line():
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^cannot reach the Ray cluster at 127\.0\.0\.1:1: ") as e:
        execute(_jobs(), executor="ray", address="127.0.0.1:1")
    assert "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 60  # refused at once, not ray.init's minutes of retries
    with pytest.raises(ConfigError, match="bad Ray address"):
        execute(_jobs(), executor="ray", address="127.0.0.1:port")


def test_ray_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes 'import ray' fail
    with pytest.raises(ConfigError, match=r"^--executor ray needs the ray package: pip install 'condense\[ray\]'$"):
        execute(_jobs(), executor="ray")


@pytest.mark.parametrize("devices, message", [
    (["gpu"], "unknown device 'gpu'"),
    (["cpu", "tpu:0"], "unknown device 'tpu:0'"),
    (["cuda:7"], "cuda:7"),
    ([], "no devices given"),
])
def test_bad_devices(devices, message):
    if devices == ["cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match=message) as e:
        execute(_jobs(), devices=devices)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(executor="dask"), r"unknown executor 'dask' \(use one of: local, ray\)"),
    (dict(threads=0), "threads must be a positive integer"),
    (dict(address="127.0.0.1:6379"), "--address is for --executor ray"),
    (dict(executor="ray", devices=["cpu", "cpu"]), "--devices is for the local executor"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        execute(_jobs(), **kwargs)


def test_executors_listed():
    assert EXECUTORS == ("local", "ray")


# --- independent, keyed work in shards ------------------------------------------------------------

def keyed_draws(n: int, shard: int, shards: int, fail: int = -1, device: str = "cpu") -> dict[int, float]:
    """A shard job: per key of its share of 0..n-1, a number from that key's own generator (an item's
    result depends on its key alone, as sre2l's batches); shard ``fail`` raises."""
    if shard == fail:
        raise ValueError(f"shard {shard} broke")
    return {k: float(torch.rand(1, generator=generator(k))) for k in shard_keys(n, shard, shards)}


def test_shards_split_the_keys_and_merge_into_what_one_process_makes():
    assert [shard_keys(7, k, 3) for k in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    whole = keyed_draws(7, 0, 1)
    parts = run_shards("test_executors:keyed_draws", {"n": 7}, 3, devices=["cpu", "cpu"], note=lambda m: None)
    assert [list(p) for p in parts] == [[0, 3, 6], [1, 4], [2, 5]]  # shard order, whichever finished first
    merged = {k: v for p in parts for k, v in p.items()}
    assert [merged[k] for k in range(7)] == [whole[k] for k in range(7)]  # exact
    with pytest.raises(CondenseError, match=r"^1 of 3 shards failed \(rerun to resume\); first: shard1: "
                                            r"ValueError: shard 1 broke$"):
        run_shards("test_executors:keyed_draws", {"n": 7, "fail": 1}, 3, note=lambda m: None)


def test_merge_shards_puts_each_shards_rows_back_and_refuses_a_gap(tmp_path):
    whole = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    classes = torch.arange(3).repeat_interleave(2)

    def part(k: int, rows: list[int]) -> str:  # a shard's set: its rows, zeros elsewhere
        images = torch.zeros_like(whole)
        images[rows] = whole[rows]
        path = str(tmp_path / f"part{k}.h5")
        SynSet.hard(images, classes, dataset="toy", num_classes=3, method="sre2l",
                    config={"method": "sre2l", "shard": [k, 2]},
                    provenance={"seed": 0, "shard": [k, 2], "rows": rows}).save(path)
        return path

    paths = [part(0, [0, 2, 4]), part(1, [1, 3, 5])]
    merged = merge_shards(paths, str(tmp_path / "set.h5"))
    assert torch.equal(merged.images, whole) and torch.equal(load_synset(tmp_path / "set.h5").images, whole)
    assert merged.config == {"method": "sre2l"} and merged.provenance == {"seed": 0, "shards": paths}
    with pytest.raises(CondenseError, match="do not cover every image of the set"):
        merge_shards(paths[:1], str(tmp_path / "gap.h5"))
