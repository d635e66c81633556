"""A speed ratio from interleaved, paired rounds: the reference and the candidate measured close in
time, round after round, so a shared machine's drift moves both figures of a round alike and
cancels in their ratio.

`paired_ratio(reference, candidate)` pairs the two lists by index (round i of the reference with
round i of the candidate) and returns the median of the per-round ratios candidate / reference
with a Student t interval of the mean of the log ratios, taken back with exp. Give it figures where
larger is better for the candidate (throughputs: the ratio is the candidate's speedup) or smaller
(step times: the ratio is the candidate's time over the reference's).

scipy (the `analysis` extra, as parity's statistics) gives the t quantile; it is imported when an
interval is made, so the answer's types and rule import without it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIN_ROUNDS_FOR_INTERVAL = 3
"""Fewest rounds with an interval: two log ratios give a t interval on 1 degree of freedom, whose
quantile (12.7 at 95 %) makes it too wide to say anything."""
METHOD = ("median of the per-round ratios candidate / reference (rounds paired by index); interval: Student t "
          "on the mean of the per-round log ratios, exponentiated")


@dataclass(frozen=True)
class PairedRatio:
    """The candidate's figure over the reference's, round by round."""

    ratio: float | None
    """Median of the per-round ratios; None without a single round both measured."""
    low: float | None
    """Lower end of the interval; None with `reason` when there are too few rounds."""
    high: float | None
    n_rounds: int
    """Rounds where both figures are there and positive."""
    method: str
    reason: str | None = None
    """Why `low`/`high` (or `ratio`) is None."""
    confidence: float = 0.95


def paired_ratio(reference: Sequence[float | None], candidate: Sequence[float | None], *,
                 confidence: float = 0.95) -> PairedRatio:
    """The candidate's figure over the reference's, paired round by round (module docstring)."""
    ratios = [c / r for r, c in zip(reference, candidate)
              if r is not None and c is not None and r > 0 and c > 0 and math.isfinite(r) and math.isfinite(c)]
    n = len(ratios)
    if not ratios:
        return PairedRatio(None, None, None, 0, METHOD, "no round measured both", confidence)
    ratio = statistics.median(ratios)
    if n < MIN_ROUNDS_FOR_INTERVAL:
        why = f"{n} paired round(s); an interval needs {MIN_ROUNDS_FOR_INTERVAL}"
        return PairedRatio(ratio, None, None, n, METHOD, why, confidence)
    logs = [math.log(r) for r in ratios]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    from scipy import stats  # the analysis extra: see the module docstring

    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedRatio(ratio, math.exp(mean - half), math.exp(mean + half), n, METHOD, None, confidence)
