"""Statistics over seeds for loss parity: means with t intervals, paired by seed, and the
equivalence verdict.

Every precision trains the seeds fp32 does, from the same initial weights on the same samples, so
a precision's eval loss and fp32's are a pair per seed: most of the seed-to-seed spread is shared
and cancels in the difference. The test is therefore on the per-seed differences (a paired t
interval), not on a precision's mean against fp32's spread of single seeds (which is 10-500x
wider than the differences' spread in the committed CPU example).

Why Student's t and not a bootstrap: parity runs have 2-10 seeds. A bootstrap of 5 values has 126
distinct resamples and its percentile interval is too narrow at that size (it treats the sample's
spread as known); the t interval accounts for estimating the spread from few seeds and is exact
for normally distributed differences. The quantiles are scipy.stats.t's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats

from .document import CONFIDENCE, Interval

MAX_SEEDS = 10_000
"""The seed count beyond which `seeds_to_decide` stops looking."""


def _t_quantile(confidence: float, dof: float) -> float:
    return float(stats.t.ppf((1 + confidence) / 2, dof))


def _none_interval(values: Sequence[float], confidence: float, method: str) -> Interval | None:
    if not values:
        return Interval(None, None, None, 0, confidence, method, note="no values")
    if len(values) == 1:
        return Interval(values[0], None, None, 1, confidence, method, note="one value: no interval")
    return None


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of `values` with Student's t interval on n - 1 degrees of freedom."""
    method = f"Student t on {max(len(values) - 1, 0)} degrees of freedom"
    empty = _none_interval(values, confidence, method)
    if empty is not None:
        return empty
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = _t_quantile(confidence, len(values) - 1) * sd / math.sqrt(len(values))
    note = "every value equal: an interval of zero width" if sd == 0 else None
    return Interval(mean, mean - half, mean + half, len(values), confidence, method, note)


def geometric_interval(ratios: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Geometric mean of positive ratios with the t interval of their logarithms, exponentiated: a
    speedup of 2x and one of 0.5x average to 1x."""
    logs = t_interval([math.log(r) for r in ratios], confidence)
    method = f"geometric mean; {logs.method}, on the logarithms"

    def exp(value: float | None) -> float | None:
        return math.exp(value) if value is not None else None

    return Interval(exp(logs.mean), exp(logs.low), exp(logs.high), logs.n, confidence, method, logs.note)


def welch_interval(candidate: Sequence[float], reference: Sequence[float],
                   confidence: float = CONFIDENCE) -> tuple[Interval, float | None, float | None]:
    """(mean(candidate) - mean(reference) with Welch's t interval, its t statistic, its two-sided p):
    two independent sets, each of at least 2 values."""
    na, nb = len(candidate), len(reference)
    va, vb = statistics.variance(candidate), statistics.variance(reference)
    diff = statistics.fmean(candidate) - statistics.fmean(reference)
    se2 = va / na + vb / nb
    if se2 == 0:
        return (Interval(diff, diff, diff, na + nb, confidence, "Welch t", "every value equal: zero width"),
                None, None)
    dof = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))  # Welch-Satterthwaite
    half = _t_quantile(confidence, dof) * math.sqrt(se2)
    t = diff / math.sqrt(se2)
    method = f"Welch t on {dof:.1f} degrees of freedom"
    return Interval(diff, diff - half, diff + half, na + nb, confidence, method), t, float(2 * stats.t.sf(abs(t), dof))


def paired_test(differences: Sequence[float]) -> tuple[float | None, float | None]:
    """(t statistic, two-sided p) of paired differences against no difference; null when every
    difference is equal (t is then infinite, or undefined)."""
    if len(differences) < 2 or statistics.stdev(differences) == 0:
        return None, None
    n = len(differences)
    t = statistics.fmean(differences) / (statistics.stdev(differences) / math.sqrt(n))
    return t, float(2 * stats.t.sf(abs(t), n - 1))


def verdict(interval: Interval, margin_loss: float) -> str:
    """`equivalent` inside +- margin, `worse`/`better` entirely beyond it, else `inconclusive`."""
    low, high = interval.low, interval.high
    if low is None or high is None:
        return "inconclusive"
    if low > margin_loss:
        return "worse"
    if high < -margin_loss:
        return "better"
    if -margin_loss <= low and high <= margin_loss:
        return "equivalent"
    return "inconclusive"


def seeds_to_decide(mean: float, sd: float, n: int, margin_loss: float,
                    confidence: float = CONFIDENCE) -> tuple[int | None, str | None]:
    """Seeds to add for a paired t interval around `mean` to clear the margin, if the differences
    keep this mean and sd: (count, None), or (None, why it cannot be said)."""
    room = abs(abs(mean) - margin_loss)  # the half-width the interval must shrink below
    if room == 0:
        return None, "the mean difference lies on the margin: no number of seeds decides it"
    if sd == 0:
        return None, "the differences have no spread: their interval is already a point"
    for total in range(n + 1, MAX_SEEDS + 1):
        if _t_quantile(confidence, total - 1) * sd / math.sqrt(total) < room:
            return total - n, None
    return None, f"more than {MAX_SEEDS:,} seeds"
