"""The allocator tuning that the CPU speed figures in docs/BENCHMARKS.md rely on."""
import sys

import pytest

from condense.runtime.perf import tune_cpu_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_allocator_tuning_applies_on_glibc(monkeypatch):
    assert tune_cpu_allocator() is True
    monkeypatch.setenv("CONDENSE_NO_MALLOC_TUNING", "1")
    assert tune_cpu_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux's")
def test_peak_memory_is_the_blocks_own_peak():
    import numpy as np

    from condense.runtime.perf import PeakMemory

    with PeakMemory() as big:
        a = np.ones(200 * 2 ** 20 // 8)  # 200 MiB, touched
        a += 1
    del a
    with PeakMemory() as small:
        np.ones(10)
    assert big.scope == small.scope == "block"
    assert big.rss_mib - small.rss_mib > 150  # the reset forgot the first block's peak
