"""Process-level performance settings that make the CPU paths fast.

glibc's malloc serves every allocation of 128 KiB or more with a fresh ``mmap`` and
hands it back with ``munmap``. A training step on a 100-image batch allocates a few
dozen such activation buffers, so every step pays for page faults on fresh memory;
measured here, one ConvNet W32 forward+backward on 100 Fashion-MNIST images takes
≈ 62 ms that way and ≈ 38 ms once freed blocks are kept for reuse (docs/BENCHMARKS.md).
:func:`tune_cpu_allocator` raises the mmap threshold to 32 MiB (glibc's maximum) and
the trim threshold to 1 GiB, so freed buffers are reused instead. It is a setting of the
whole process, so only processes condense owns apply it: the ``condense`` command
(:func:`condense.cli.main.main`), its job workers and Ray tasks, and the benchmark scripts.
``import condense`` leaves the host's allocator alone (a notebook calls this itself for the
same speed); set ``CONDENSE_NO_MALLOC_TUNING=1`` to opt out.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


def tune_cpu_allocator() -> bool:
    """Keep freed allocations for reuse (glibc only). Returns whether the settings took."""
    if not sys.platform.startswith("linux") or os.environ.get("CONDENSE_NO_MALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt: nothing to tune
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


class PeakMemory:
    """The peak resident memory of this process while a block runs (and the GPU's peak when
    torch uses one), for "what does this step cost" tables.

    Linux keeps the peak RSS (VmHWM) and resets it when "5" is written to
    /proc/self/clear_refs; elsewhere, or where that is refused, the process's lifetime peak
    (getrusage) is reported and ``scope`` says so. Use as ``with PeakMemory() as m: ...``,
    then read ``m.rss_mib``, ``m.cuda_mib`` (None without CUDA) and ``m.scope``.
    """

    def __init__(self) -> None:
        self.rss_mib: float | None = None
        self.cuda_mib: float | None = None
        self.scope = "block"

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.scope = "process"
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        self.rss_mib = _peak_rss_mib(self.scope)
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda_mib = torch.cuda.max_memory_allocated() / 2 ** 20


def _peak_rss_mib(scope: str) -> float:
    if scope == "block":
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
