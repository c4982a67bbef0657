"""The allocator tuning that the CPU speed figures in docs/BENCHMARKS.md rely on."""
import sys

import pytest

from condense.perf import tune_cpu_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_allocator_tuning_applies_on_glibc(monkeypatch):
    assert tune_cpu_allocator() is True
    monkeypatch.setenv("CONDENSE_NO_MALLOC_TUNING", "1")
    assert tune_cpu_allocator() is False
