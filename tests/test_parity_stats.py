"""The parity statistics alone (trainkit.analysis.parity.stats): the intervals against scipy's own,
the verdict's boundaries, the seeds that would decide, and a simulation of the case the old band missed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from trainkit.analysis.parity.document import Interval, Margin
from trainkit.analysis.parity.stats import (
    apart_reason,
    geometric_interval,
    seeds_apart,
    seeds_to_decide,
    t_interval,
    verdict,
    welch_interval,
)


def test_the_intervals_are_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(1.05, 0.2, 7)
    mine = t_interval(list(a), 0.9)
    theirs = stats.ttest_1samp(a, 0.0).confidence_interval(0.9)
    assert (mine.low, mine.high, mine.n) == (pytest.approx(theirs.low), pytest.approx(theirs.high), 5)
    welch, t, p = welch_interval(list(a), list(b))
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(0.95)
    assert (welch.low, welch.high, t, p) == (pytest.approx(ci.low), pytest.approx(ci.high),
                                             pytest.approx(result.statistic), pytest.approx(result.pvalue))
    speedup = geometric_interval([2.0, 0.5])
    assert speedup.mean == pytest.approx(1.0) and speedup.low < 1 < speedup.high
    assert t_interval([0.3]).low is None and t_interval([0.3]).note == "one value: no interval"


def test_the_verdict_is_the_interval_against_the_margin():
    def iv(low, high):
        return Interval((low + high) / 2, low, high, 5, 0.95, "test")

    assert verdict(iv(-0.004, 0.004), 0.005) == "equivalent"
    assert verdict(iv(0.006, 0.01), 0.005) == "worse" and verdict(iv(-0.01, -0.006), 0.005) == "better"
    assert verdict(iv(0.001, 0.009), 0.005) == "inconclusive" and verdict(iv(-0.02, 0.02), 0.005) == "inconclusive"


def test_the_seeds_to_decide_are_the_fewest_whose_interval_clears_the_margin():
    mean, sd, n, margin = 0.008, 0.006, 5, 0.0025
    more, why = seeds_to_decide(mean, sd, n, margin)
    assert why is None and more > 0

    def half(total):
        return stats.t.ppf(0.975, total - 1) * sd / math.sqrt(total)

    assert half(n + more) < mean - margin <= half(n + more - 1)
    assert seeds_to_decide(0.0025, 0.006, 5, 0.0025)[0] is None  # on the margin: nothing decides it


def test_a_paired_test_sees_a_one_sd_shift_the_seed_band_missed():
    """Simulated seeds as the parity run makes them: each seed's loss varies a lot between seeds
    (sd 0.01), a precision adds a shift and a small per-seed wobble (sd 0.0005). A shift of one seed
    sd: the old rule (seed mean outside fp32's mean +- 2 sd) flags it rarely, the paired interval
    against a 0.5% margin (of a loss of 1) always."""
    rng = np.random.default_rng(17)
    band_flags, paired_worse, covered = 0, 0, 0
    trials = 300
    for _ in range(trials):
        seeds = rng.normal(1.0, 0.01, 5)
        shifted = seeds + 0.01 + rng.normal(0, 0.0005, 5)
        mean, sd = seeds.mean(), seeds.std(ddof=1)
        band_flags += not (mean - 2 * sd <= shifted.mean() <= mean + 2 * sd)
        interval = t_interval(list(shifted - seeds))
        paired_worse += verdict(interval, Margin().loss(mean)) == "worse"
        same = t_interval(list(seeds + rng.normal(0, 0.0005, 5) - seeds))
        covered += same.low <= 0 <= same.high
    assert band_flags / trials < 0.3 and paired_worse == trials
    assert 0.9 <= covered / trials <= 0.99  # a 95% interval covers no difference about 95% of the time


def test_a_seed_standing_apart_is_named_and_clean_seeds_are_not():
    clean = {1: 0.0010, 2: 0.0012, 3: 0.0009, 4: 0.0013, 5: 0.0011}
    assert apart_reason(clean, "difference") is None
    planted = {**clean, 4: 0.011}
    reason = apart_reason(planted, "eval-loss difference from fp32")
    assert reason.startswith("seed 4 stands apart: eval-loss difference from fp32 +0.011") and "rerun it" in reason
    assert list(seeds_apart([1.0, 1.0, 1.0, 1.0])) == [False] * 4 and not seeds_apart([0.1, 5.0]).any()
    # Clean normal seeds are rarely refused: at 5 seeds (a clean workload's run) under 1 % of 20,000 sets.
    sets = np.random.default_rng(5).normal(0.001, 0.0005, (20_000, 5))
    assert seeds_apart(sets).any(axis=-1).mean() < 0.01
