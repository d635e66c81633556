"""Statistics over seeds for loss parity: means with t intervals, paired by seed, and the
equivalence verdict.

Every precision trains the seeds fp32 does, from the same initial weights on the same samples, so
a precision's eval loss and fp32's are a pair per seed: most of the seed-to-seed spread is shared
and cancels in the difference. The test is therefore on the per-seed differences (a paired t
interval), not on a precision's mean against fp32's spread of single seeds: in the committed CPU
example (reports/examples/cpu-parity) fp32's seed-to-seed spread is 4-416x the differences' in
9 of 10 modes, and 0.65x in one (gpt half-fp16, whose seeds part ways with fp32's): pairing
is usually far tighter, never assumed to be (tests/test_docs.py holds these figures).

Why Student's t and not a bootstrap: parity runs have 2-10 seeds. A bootstrap of 5 values has 126
distinct resamples and its percentile interval is too narrow at that size (it treats the sample's
spread as known); the t interval accounts for estimating the spread from few seeds and is exact
for normally distributed differences. The quantiles are scipy.stats.t's.

**The estimand is the typical seed's difference**: the mean difference of the seeds that do not
stand apart from the others. A t interval assumes no seed stands apart; one far-off seed in five
moves the mean by a fifth of its distance while widening the interval by less, so the interval
misses what the other seeds agree on (a one-in-eight far seed: 32-49 % coverage at 3-5 seeds).
`seeds_apart` finds such seeds (the generalized ESD test, Rosner 1983: the studentized distance of
the farthest seed from the others' mean, removed and repeated, against critical values from
Student's t); where one stands apart the comparison gets no interval and no verdict, with a reason
that names the seed. Its false-alarm rate is set low (ESD_ALPHA) so clean seeds are rarely refused:
measured on normal differences, 0.1 % at 3 seeds, 0.3 % at 5, 0.5 % at 8, 0.8 % at 20
(`python -m reports calibration` prints these rates).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np
from scipy import stats

from .document import CONFIDENCE, Interval

MAX_SEEDS = 10_000
"""The seed count beyond which `seeds_to_decide` stops looking."""
ESD_ALPHA = 0.001
"""False-alarm rate of each step of the generalized ESD test. Per step, not per comparison: with up to
n - 2 steps the rate that a clean normal set is refused grows with n (0.1 % at 3 seeds, 0.8 % at 20,
measured in trainkit.analysis.calibration); 0.001 keeps it under 1 % at every size the suite simulates,
while a seed twice the typical loss difference away is still found."""


def _esd_critical(size: int, alpha: float) -> float:
    """Rosner's critical value for the farthest of `size` values (size >= 3)."""
    t = float(stats.t.ppf(1 - alpha / (2 * size), size - 2))
    return (size - 1) * t / math.sqrt((size - 2 + t * t) * size)


def seeds_apart(values: np.ndarray | Sequence[float], alpha: float = ESD_ALPHA) -> np.ndarray:
    """Which values stand apart from the others (the generalized ESD test, up to n - 2 of n, so at least
    two remain to say what is typical): a boolean mask of the last axis, vectorised over any leading axes
    (the calibration runs thousands of sets at once). Fewer than 3 values: none can stand apart."""
    x = np.asarray(values, dtype=float)
    n = x.shape[-1]
    apart = np.zeros(x.shape, dtype=bool)
    if n < 3:
        return apart
    work = x.copy()
    found = np.zeros(x.shape[:-1], dtype=int)
    order = []
    for step in range(1, n - 1):  # the set shrinks from n to 3 values
        size = n - step + 1
        mean = np.nanmean(work, axis=-1, keepdims=True)
        sd = np.nanstd(work, axis=-1, ddof=1, keepdims=True)
        distance = np.where(np.isnan(work), -1.0, np.abs(work - mean))
        farthest = np.argmax(distance, axis=-1)[..., None]
        # Equal values have no spread: nothing stands apart from them (the ratio is then 0).
        ratio = np.take_along_axis(distance, farthest, -1)[..., 0] / np.where(sd[..., 0] > 0, sd[..., 0], np.inf)
        found = np.where(ratio > _esd_critical(size, alpha), step, found)  # the last step beyond its critical value
        order.append(farthest)
        np.put_along_axis(work, farthest, np.nan, -1)
    for step, farthest in enumerate(order, start=1):
        np.put_along_axis(apart, farthest, np.take_along_axis(apart, farthest, -1) | (step <= found)[..., None], -1)
    return apart


def apart_reason(values: dict[int, float], what: str) -> str | None:
    """Why a comparison gets no interval when seeds stand apart (`values` by seed; `what` names the
    values, e.g. "eval-loss difference from fp32"), or None when none does."""
    seeds = list(values)
    mask = seeds_apart([values[s] for s in seeds])
    if not mask.any():
        return None
    apart = [s for s, m in zip(seeds, mask) if m]
    rest = [values[s] for s, m in zip(seeds, mask) if not m]
    centre = statistics.fmean(rest)
    spread = statistics.stdev(rest) if len(rest) > 1 else 0.0
    shown = ", ".join(f"{values[s]:+.4g}" for s in apart)
    who = f"seed {apart[0]} stands" if len(apart) == 1 else f"seeds {', '.join(map(str, apart))} stand"
    # Short: `python -m trainkit parity` prints it on the precision's line.
    return (f"{who} apart: {what} {shown} against {centre:+.4g} +- {spread:.2g} (mean +- sd) of the other "
            f"{len(rest)} (generalized ESD test); rerun it or add seeds")


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


WELCH_MIN_SEEDS = 5
"""Seeds each independent set needs for Welch's interval. Below it the test for a seed apart cannot
see a far-off seed in so few, and one in either set widens the interval past its claim: with one
seed in eight twice as slow, 3 and 4 seeds a set covered 97.5 and 97.7 % for a claimed 95 %, 5 seeds
96.3 % (`python -m reports calibration`, the Welch row). Paired seeds have no such floor."""


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
