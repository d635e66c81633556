"""Speedups from interleaved rounds: the median of per-round ratios, with an interval over rounds.

A speedup compares two cells. Measured minutes apart on a shared machine, the drift between them
swamps the difference (a loop-against-itself ratio ranged 0.60-1.69 over seven pairs, issue 24).
Measured in rounds (every cell once, then every cell again: ABAB, as Chromium's Pinpoint
interleaves A and B), round r holds the reference and the candidate close in time, so a slowdown
of the machine during round r slows both and cancels in their ratio. The rounds are the pairs, as
seeds are for parity's loss (trainkit.analysis.parity.stats).

The statistic is the median of the per-round ratios, and its interval is the order-statistic
interval of that same median (trainkit.engine.measure.conditions.median_interval: distribution-free, so
a round the machine upset in only one of the two cells moves the interval by one order statistic,
not by its size). Where the reference and the candidate spread alike, a per-round ratio is the
true ratio times a symmetric factor (a ratio of two draws of one law), whose median is 1: the
median of the ratios then estimates the true ratio itself. Below MIN_ROUNDS_FOR_INTERVAL rounds no
distribution-free interval of a median reaches 95 % (min to max of 5 covers 93.75 %): the ratio is
given, its interval is null with the reason.

`unpaired_ratio` is the fallback for two cells measured once each (no rounds): the ratio of their
medians with the two medians' intervals combined on the log scale (MOVER, Zou and Donner 2008,
Computational Statistics & Data Analysis 52:4089), shrunk by MOVER_SCALE. Adding the worst cases
of both would cover about 99.5 %; MOVER as is covers 98 %, because an order-statistic interval's
width is itself random and the root of the sum of squares of two random widths overshoots.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainkit.engine.measure.conditions import MIN_STEPS_FOR_INTERVAL, median_interval

CONFIDENCE = 0.95
MIN_ROUNDS_FOR_INTERVAL = MIN_STEPS_FOR_INTERVAL
"""Rounds below which a paired ratio has no 95 % interval (the median's order-statistic interval needs 6)."""
PAIRED_METHOD = ("median of per-round ratios (candidate over reference, measured in the same round), with the "
                 "order-statistic interval of that median over rounds (Hettmansperger-Sheather), {confidence:.0%}")
MOVER_SCALE = 0.83
"""The share of MOVER's distances the unpaired interval keeps: simulated (trainkit.analysis.calibration),
1.0 covers 97.6-98.1 % at 6-20 steps a cell, 0.83 covers 94.4-96.7 % for normal, skewed and
slow-outlier step times alike."""
UNPAIRED_METHOD = ("ratio of the two cells' median step times, with their medians' order-statistic intervals "
                   "combined on the log scale (MOVER, scaled by simulation), {confidence:.0%}; no rounds: drift "
                   "between the cells is not cancelled")


@dataclass(frozen=True)
class PairedRatio:
    """A ratio of two cells measured in the same rounds: the median of per-round ratios and its
    interval over rounds. `low`/`high` are None, with `reason`, where there are too few rounds."""

    ratio: float | None
    """Median over rounds of candidate[r] / reference[r]; None when no round has both figures."""
    low: float | None
    high: float | None
    """The `confidence` interval of that median over rounds (None with `reason` below
    MIN_ROUNDS_FOR_INTERVAL rounds)."""
    n_rounds: int
    """Rounds with a figure of both cells (a round where either cell has none is left out)."""
    method: str
    """How the ratio and its interval were made, in words."""
    reason: str | None = None
    """Why `low`/`high` (or `ratio`) are None; None when they are not."""
    confidence: float = CONFIDENCE
    per_round: tuple[float, ...] = ()
    """candidate[r] / reference[r] of each round kept, in round order."""

    def holds(self, value: float) -> bool | None:
        """Whether the interval holds `value` (1.0: no difference told apart); None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high


def _figure(value: float | None, side: str, index: int) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{side}[{index}] = {value!r}: a round's figure must be positive and finite "
                         "(a throughput or a step time)")
    return float(value)


def paired_ratio(reference: Sequence[float | None], candidate: Sequence[float | None], *,
                 confidence: float = CONFIDENCE) -> PairedRatio:
    """The median of candidate[r] / reference[r] over rounds r, with its interval over rounds.

    `reference` and `candidate` are per-round figures of two cells paired by index (round r of
    each), of one kind and direction: throughputs give a speedup above 1 when the candidate is
    faster; pass step times the other way round (candidate = the reference's time) for the same.
    A round where either figure is None or NaN (the cell failed in that round) is left out.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference rounds and {len(candidate)} candidate rounds: a paired "
                         "ratio needs one figure of each cell per round")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence!r}: must lie strictly between 0 and 1")
    method = PAIRED_METHOD.format(confidence=confidence)
    ratios = []
    for r, (ref, cand) in enumerate(zip(reference, candidate)):
        a, b = _figure(ref, "reference", r), _figure(cand, "candidate", r)
        if a is not None and b is not None:
            ratios.append(b / a)
    n = len(ratios)
    if n == 0:
        return PairedRatio(None, None, None, 0, method, "no round has a figure of both cells", confidence)
    low, high, note = median_interval(ratios, confidence)
    reason = None if note is None else note.replace("values", "rounds").replace("value", "round")
    return PairedRatio(statistics.median(ratios), low, high, n, method, reason, confidence, tuple(ratios))


def unpaired_ratio(reference: np.ndarray | float, reference_low: np.ndarray | float,
                   reference_high: np.ndarray | float, candidate: np.ndarray | float,
                   candidate_low: np.ndarray | float, candidate_high: np.ndarray | float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ratio, low, high) of candidate / reference for two cells measured independently, each a
    median with its own interval (all positive; NaN where a cell has no interval gives NaN bounds).
    MOVER on the logs: each side of log(ratio) moves by the root of the sum of squares of the two
    medians' distances to the bounds that push it that way, times MOVER_SCALE. Works on scalars and
    arrays alike."""
    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = np.log(np.asarray(reference, dtype=float)), np.log(np.asarray(candidate, dtype=float))
        a_low, a_high = np.log(np.asarray(reference_low, dtype=float)), np.log(np.asarray(reference_high, dtype=float))
        b_low, b_high = np.log(np.asarray(candidate_low, dtype=float)), np.log(np.asarray(candidate_high, dtype=float))
        centre = b - a
        down = MOVER_SCALE * np.sqrt((b - b_low) ** 2 + (a_high - a) ** 2)
        up = MOVER_SCALE * np.sqrt((b_high - b) ** 2 + (a - a_low) ** 2)
        return np.exp(centre), np.exp(centre - down), np.exp(centre + up)
