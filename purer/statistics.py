"""Small-sample statistics for the result tables: Student t intervals and paired differences.

Pure Python (no scipy): the two-sided 95% Student t quantile comes from a table for 1–30 degrees
of freedom (standard values, 3 decimals) and, above 30, from the Cornish–Fisher expansion of the t
quantile around the normal one (error below 1e-4 for df > 30).

- :func:`t_interval`: mean and half-width ``t_{0.975, n-1} * s / sqrt(n)``, ``s`` the sample
  standard deviation (ddof 1). Used across seeds (few values) and for paired differences.
- :func:`paired_difference`: per-episode differences ``a_i − b_i`` of two methods scored on the
  *same* episodes, and their t interval. Pairing removes the between-episode variance (easy and
  hard episodes), which dominates the per-method intervals.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

Z_975 = 1.959963984540054  # the normal 0.975 quantile

# t_{0.975, df} for df = 1..30
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95%).

    Args:
        df: degrees of freedom, at least 1.

    Returns:
        e.g. 4.303 for df 2, 2.776 for df 4, 1.984 for df 99, → 1.960 as df → ∞.
    """
    if df < 1:
        raise ValueError(f"t quantile: degrees of freedom must be at least 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    )


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% Student t half-width ``t_{0.975, n-1} * s / sqrt(n)`` (``s`` with ddof 1).

    Args:
        values: at least two numbers.

    Returns:
        (mean, half-width).
    """
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ValueError(f"a t interval needs at least two values, got {len(values)}")
    n = len(values)
    return statistics.fmean(values), t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of the per-episode differences ``a_i − b_i`` and its 95% t half-width.

    Args:
        a, b: per-episode accuracies of two methods on the same episodes, in the same order.

    Returns:
        (mean difference, half-width); with one episode the half-width is NaN.
    """
    if len(a) != len(b):
        raise ValueError(f"paired difference: {len(a)} episodes against {len(b)}")
    differences = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    if len(differences) == 1:
        return differences[0], math.nan
    return t_interval(differences)
