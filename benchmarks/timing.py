"""What the benchmark scripts share: timing a method's iterations as the synthesis loop runs them."""
from __future__ import annotations

import time
from typing import Any


def time_iterations(method: Any, times: list[float]) -> None:
    """Wrap ``method.compute_grads`` so each call's wall time is appended to ``times`` (seconds)."""
    inner = method.compute_grads

    def timed(it: int):
        t0 = time.perf_counter()
        out = inner(it)
        times.append(time.perf_counter() - t0)
        return out

    method.compute_grads = timed
