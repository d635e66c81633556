"""Whether the suite's intervals cover what they claim, measured by simulation, and A/A comparisons.

A "95 %" interval is a promise about repeated measurement: drawn again and again, it holds the
true value 95 % of the time. This module keeps that promise checkable. For each interval the suite
prints it draws thousands of data sets of known truth (seeded, vectorised numpy), makes the
interval exactly as the suite does, and counts how often it holds the truth:

    step time     a cell's median step time: the order-statistic interval
                  (trainkit.engine.measure.conditions.median_interval), over n timed steps
    speedup       paired over n rounds: the median of per-round ratios and its interval
                  (trainkit.analysis.paired.paired_ratio), each round's cells slowed alike by the
                  machine of that round; unpaired: the ratio of two cells' medians of n steps each
                  (paired.unpaired_ratio)
    parity        the paired t interval of the mean per-seed eval-loss difference over n seeds
                  (trainkit.analysis.parity.stats.t_interval), none where a seed stands apart
                  (parity.stats.seeds_apart)
    Welch         the Welch t interval of two independent sets of n seeds each (welch_interval),
                  none where a seed of either set stands apart

at n = 3, 4, 5, 8 and 20, for step times (or differences) that are normal, skewed (log-normal) and
normal with one slow value in eight (twice the typical). A "95 %" interval passes at 93-97 %; where
the suite gives no interval (a median of fewer than 6 values), the share of draws without one is
reported instead, and nothing is claimed. Where the suite refuses an interval for a data set (parity:
a seed standing apart), coverage is over the data sets given one, drawn until DRAWS are, and the
share refused is reported beside it.

The A/A check measures one configuration as two cells in interleaved rounds: the interval of
their speedup must hold 1x in at least 95 % of trials, whatever the machine did between rounds.
`aa_of_records` runs the same check on a user's own results file: the rounds of a cell measured
with bench --repeats N, split into neighbouring pairs (round 2k against round 2k + 1), are the
same configuration measured close in time on the user's machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from trainkit.engine.measure.conditions import CONFIDENCE, median_order_weights

from .paired import paired_ratio, unpaired_ratio
from .parity.stats import WELCH_MIN_SEEDS, seeds_apart

SIZES = (3, 4, 5, 8, 20)
"""Steps, rounds or seeds per simulated data set."""
DRAWS = 4000
"""Data sets per cell of the coverage table: a coverage of 95 % is then measured to +-0.7 points (2 SE)."""
AA_DRAWS = 20_000
"""A/A trials per round count: 95 % then to +-0.3 points, so >= 95 % is told from 94.5 %."""
SEED = 0
TOLERANCE = (0.93, 0.97)
"""A 95 % interval passes when it covers within these."""
TRUE_SPEEDUP = 1.25
STEPS_PER_ROUND = 8
"""Timed steps of each cell in each simulated round (a cell's figure in a round is their median)."""
MACHINE_SPREAD = 0.3
"""Log-normal sigma of the machine's speed from round to round (a shared host: 0.6-1.7x over seven
process-level pairs, issue 24); both cells of a round share it."""
DISTRIBUTIONS = ("normal", "skewed", "slow outlier")
SLOW_SHARE = 1 / 8
SLOW_FACTOR = 2.0


def _draw(distribution: str, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Positive values of typical size 1: normal (sd 5 %), skewed (log-normal, sigma 0.3) or normal
    (sd 2 %) with one value in eight SLOW_FACTOR slower."""
    if distribution == "normal":
        return 1.0 + 0.05 * rng.standard_normal(shape)
    if distribution == "skewed":
        return np.exp(0.3 * rng.standard_normal(shape))
    if distribution == "slow outlier":
        values = 1.0 + 0.02 * rng.standard_normal(shape)
        return np.where(rng.random(shape) < SLOW_SHARE, SLOW_FACTOR * values, values)
    raise ValueError(f"distribution {distribution!r}: choose from {', '.join(DISTRIBUTIONS)}")


def _true_median(distribution: str) -> float:
    if distribution in ("normal", "skewed"):
        return 1.0
    def below(m: float) -> float:
        return float((1 - SLOW_SHARE) * stats.norm.cdf(m, 1.0, 0.02)
                     + SLOW_SHARE * stats.norm.cdf(m, SLOW_FACTOR, 0.02 * SLOW_FACTOR) - 0.5)
    return float(optimize.brentq(below, 0.5, 1.5))


def _typical_mean(distribution: str) -> float:
    """The mean of the seeds that do not stand apart: parity's estimand (trainkit.analysis.parity.stats).
    For the normal and skewed laws no seed is far off and this is the law's mean (the t interval's
    target; the skewed law's median would not do: at 20 seeds the interval of the mean covers it 93 %
    and falling). For the slow-outlier law it is the mean of its typical part, the normal around 1: a
    far-off seed is the one-in-eight slow value, and a set holding one gets no interval. (The mixture's
    median, 1.0036, sits 0.18 of that part's sd higher: pulled by the far-off values it leaves out.)"""
    return math.exp(0.3**2 / 2) if distribution == "skewed" else 1.0


MAX_BATCHES = 12
"""Batches of `draws` data sets a refusing interval may draw to give `draws` intervals (the slow-outlier
law at 20 seeds refuses 93 % of paired sets: 12 batches give 3,300 intervals; Welch's two sets of 20
refuse 99.5 %, and the 250 batches 4,000 intervals would take cost a minute: its coverage is on ~250)."""


def median_bounds(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray] | None:
    """median_interval of each row of `values` at once (the same order statistics and weights), or
    None where rows this long get no interval."""
    n = values.shape[-1]
    weights = median_order_weights(n, confidence)
    if weights is None:
        return None
    d, share = weights
    x = np.sort(values, axis=-1)
    return ((1 - share) * x[..., d - 1] + share * x[..., d], (1 - share) * x[..., n - d] + share * x[..., n - d - 1])


def _t_bounds(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    n = values.shape[-1]
    mean, sd = values.mean(axis=-1), values.std(axis=-1, ddof=1)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def _welch_bounds(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    n = a.shape[-1]
    va, vb = a.var(axis=-1, ddof=1) / n, b.var(axis=-1, ddof=1) / n
    dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
    half = stats.t.ppf((1 + confidence) / 2, dof) * np.sqrt(va + vb)
    diff = a.mean(axis=-1) - b.mean(axis=-1)
    return diff - half, diff + half


def _step_time(distribution: str, n: int, rng: np.random.Generator, draws: int):
    return median_bounds(_draw(distribution, rng, (draws, n))), _true_median(distribution)


def _speedup_paired(distribution: str, n: int, rng: np.random.Generator, draws: int):
    machine = np.exp(MACHINE_SPREAD * rng.standard_normal((draws, n, 1)))  # shared by both cells of a round
    reference = np.median(_draw(distribution, rng, (draws, n, STEPS_PER_ROUND)) * machine, axis=-1)
    candidate = np.median(_draw(distribution, rng, (draws, n, STEPS_PER_ROUND)) * machine, axis=-1) / TRUE_SPEEDUP
    # Throughput goes as 1 / step time: the per-round speedup is the reference's time over the candidate's.
    return median_bounds(reference / candidate), TRUE_SPEEDUP


def _speedup_unpaired(distribution: str, n: int, rng: np.random.Generator, draws: int):
    reference, candidate = _draw(distribution, rng, (draws, n)), _draw(distribution, rng, (draws, n)) / TRUE_SPEEDUP
    ref_bounds, cand_bounds = median_bounds(reference), median_bounds(candidate)
    if ref_bounds is None or cand_bounds is None:
        return None, TRUE_SPEEDUP
    # Throughputs: 1 / step time, so a step time's high bound is a throughput's low one.
    _, low, high = unpaired_ratio(1 / np.median(reference, axis=-1), 1 / ref_bounds[1], 1 / ref_bounds[0],
                                  1 / np.median(candidate, axis=-1), 1 / cand_bounds[1], 1 / cand_bounds[0])
    return (low, high), TRUE_SPEEDUP


def _parity(distribution: str, n: int, rng: np.random.Generator, draws: int):
    # Per-seed eval-loss differences of size 0.01: the law's shape scaled, its typical seeds' mean at 0.002.
    values = 0.01 * (_draw(distribution, rng, (draws, n)) - _typical_mean(distribution)) + 0.002
    given = ~seeds_apart(values).any(axis=-1)
    low, high = _t_bounds(values[given], CONFIDENCE)
    return (low, high), 0.002, given


def _welch(distribution: str, n: int, rng: np.random.Generator, draws: int):
    a, b = _draw(distribution, rng, (draws, n)), 2.0 * _draw(distribution, rng, (draws, n))
    if n < WELCH_MIN_SEEDS:
        return None, -_typical_mean(distribution)
    given = ~(seeds_apart(a).any(axis=-1) | seeds_apart(b).any(axis=-1))
    low, high = _welch_bounds(a[given], b[given], CONFIDENCE)
    return (low, high), -_typical_mean(distribution), given


INTERVALS: dict[str, tuple[str, Callable[..., Any]]] = {
    "step time": ("a cell's median step time, order-statistic interval over n steps", _step_time),
    "speedup, rounds": ("median of per-round ratios over n rounds, the machine's speed varying by round",
                        _speedup_paired),
    "speedup, one run each": ("ratio of two cells' medians of n steps, their intervals combined (MOVER)",
                              _speedup_unpaired),
    "parity difference": ("paired t interval of the mean eval-loss difference over n seeds; none where a seed "
                          "stands apart", _parity),
    "Welch": ("Welch t interval of two independent sets of n seeds; none where a seed stands apart, or "
              f"below {WELCH_MIN_SEEDS} seeds a set",
              _welch),
}
"""Each interval the suite prints: what it is of, and its simulation (bounds or None, and the truth)."""


@dataclass(frozen=True)
class Coverage:
    """How often one interval held the truth over `draws` simulated data sets."""

    interval: str
    """A key of INTERVALS."""
    distribution: str
    n: int
    draws: int
    covered: float | None
    """Share of draws whose interval held the true value, over the draws given one; None where the suite
    gives no interval at this n."""
    note: str | None = None
    refused: float | None = None
    """Share of data sets the suite gave no interval because a seed stood apart (parity's intervals);
    None for the intervals that never refuse."""

    @property
    def passes(self) -> bool | None:
        """Within TOLERANCE; None where there is no interval (nothing is claimed)."""
        return None if self.covered is None else TOLERANCE[0] <= self.covered <= TOLERANCE[1]


def coverage(interval: str, distribution: str, n: int, draws: int = DRAWS, seed: int = SEED) -> Coverage:
    """The coverage of one interval (INTERVALS) at one n and distribution (DISTRIBUTIONS)."""
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r}: choose from {', '.join(INTERVALS)}")
    rng = np.random.default_rng([seed, n, DISTRIBUTIONS.index(distribution), list(INTERVALS).index(interval)])
    simulate = INTERVALS[interval][1]
    bounds, truth, *refusing = simulate(distribution, n, rng, draws)
    if bounds is None:
        return Coverage(interval, distribution, n, draws, None, f"no interval at n = {n} (too few values)")
    if not refusing:
        low, high = bounds
        return Coverage(interval, distribution, n, draws, float(np.mean((low <= truth) & (truth <= high))))
    # An interval that refuses some data sets: draw batches until `draws` intervals are given.
    held, given, drawn = [], 0, 0
    while True:
        (low, high), truth, mask = bounds, truth, refusing[0]
        held.append((low <= truth) & (truth <= high))
        given, drawn = given + int(mask.sum()), drawn + mask.size
        if given >= draws or drawn >= MAX_BATCHES * draws:
            break
        bounds, truth, *refusing = simulate(distribution, n, rng, draws)
    refused = 1 - given / drawn
    if not given:
        return Coverage(interval, distribution, n, 0, None, "every data set refused", refused)
    note = f"{given:,} intervals of {drawn:,} data sets" if given < draws else None
    return Coverage(interval, distribution, n, given, float(np.concatenate(held).mean()), note, refused)


def coverage_table(intervals: Sequence[str] = tuple(INTERVALS), sizes: Sequence[int] = SIZES,
                   distributions: Sequence[str] = DISTRIBUTIONS, draws: int = DRAWS) -> list[Coverage]:
    return [coverage(i, d, n, draws) for i in intervals for d in distributions for n in sizes]


@dataclass(frozen=True)
class AARate:
    """How often an A/A speedup interval held 1x: one configuration as two cells."""

    design: str
    """`interleaved rounds` (both cells in every round) or `back to back` (every repeat of A, then of B)."""
    rounds: int
    trials: int
    holds_one: float | None
    """Share of trials whose interval held 1x; None where n rounds give no interval."""

    @property
    def passes(self) -> bool | None:
        return None if self.holds_one is None else self.holds_one >= CONFIDENCE


def aa_rate(rounds: int, design: str = "interleaved rounds", trials: int = AA_DRAWS, seed: int = SEED,
            distribution: str = "slow outlier") -> AARate:
    """A/A by simulation: the same cell twice, STEPS_PER_ROUND steps a round, the machine's speed
    drawn per round (MACHINE_SPREAD). Interleaved, both cells of a round share it; back to back, A's
    repeats run in one stretch of the machine and B's in the next (the machine drawn per half)."""
    rng = np.random.default_rng([seed, rounds, 1 if design == "back to back" else 0])
    shape = (trials, rounds, STEPS_PER_ROUND)
    if design == "interleaved rounds":
        machine_a = machine_b = np.exp(MACHINE_SPREAD * rng.standard_normal((trials, rounds, 1)))
    elif design == "back to back":
        machine_a = np.exp(MACHINE_SPREAD * rng.standard_normal((trials, 1, 1)))
        machine_b = np.exp(MACHINE_SPREAD * rng.standard_normal((trials, 1, 1)))
    else:
        raise ValueError(f"design {design!r}: choose from interleaved rounds, back to back")
    a = np.median(_draw(distribution, rng, shape) * machine_a, axis=-1)
    b = np.median(_draw(distribution, rng, shape) * machine_b, axis=-1)
    bounds = median_bounds(a / b)
    if bounds is None:
        return AARate(design, rounds, trials, None)
    return AARate(design, rounds, trials, float(np.mean((bounds[0] <= 1.0) & (1.0 <= bounds[1]))))


@dataclass(frozen=True)
class CellAA:
    """One cell of a user's results file against itself in neighbouring rounds."""

    cell: str
    rounds: int
    pairs: int
    ratio: float | None
    low: float | None
    high: float | None
    holds_one: bool | None
    reason: str | None


def aa_of_records(records: Sequence[dict[str, Any]]) -> list[CellAA]:
    """The A/A of each cell an ok record of which carries a round (bench --repeats N): its
    throughput at the median step time in round 2k + 1 over round 2k, paired_ratio over the pairs.
    Interleaved, the rounds of one cell are as close in time as the cells of a comparison are."""
    figures: dict[str, dict[int, float]] = {}
    names: dict[str, str] = {}
    for record in records:
        config = record.get("config") or {}
        steps, batch = record.get("step_time_s") or {}, config.get("effective_batch")
        median, round_ = steps.get("median"), record.get("round")
        if record.get("status") != "ok" or round_ is None or not median or not batch:
            continue
        # One cell is one configuration: two with one id (a learning-rate variant, say) stay apart.
        key = json.dumps(config, sort_keys=True, default=str)
        names.setdefault(key, str(record.get("cell_id")))
        figures.setdefault(key, {})[int(round_)] = batch / median
    out = []
    for key, by_round in figures.items():
        cell = names[key]
        pairs = [(by_round[r], by_round[r + 1]) for r in range(0, max(by_round) + 1, 2)
                 if r in by_round and r + 1 in by_round]
        if not pairs:
            out.append(CellAA(cell, len(by_round), 0, None, None, None, None, "no two neighbouring rounds"))
            continue
        result = paired_ratio([p[0] for p in pairs], [p[1] for p in pairs])
        out.append(CellAA(cell, len(by_round), len(pairs), result.ratio, result.low, result.high,
                          result.holds(1.0), result.reason))
    return out
