"""Summary statistics for repeated runs: mean, standard deviation, 95 % confidence interval."""
from __future__ import annotations

import math
from typing import Sequence


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, std and the half-width of a 95 % t-interval of ``values``.

    ``std`` is the population standard deviation (numpy's default, ddof=0), as the
    reference papers report it, so our "mean ± std" compares with theirs; ``ci95``
    uses the sample standard deviation (ddof=1) and Student's t with n-1 degrees of
    freedom, the honest interval for a handful of runs (nan for a single run).
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    var0 = sum((v - mean) ** 2 for v in values) / n
    if n == 1:
        return {"mean": mean, "std": 0.0, "ci95": float("nan")}
    from scipy.stats import t

    sample_std = math.sqrt(var0 * n / (n - 1))
    return {"mean": mean, "std": math.sqrt(var0), "ci95": float(t.ppf(0.975, n - 1)) * sample_std / math.sqrt(n)}
