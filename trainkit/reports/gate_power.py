"""What the regression gate can see: its false-alarm rate and detection power, simulated.

The gate's rule (trainkit.reports.verdict.decide_metric) is run as it is, on simulated nights: a
cell whose repeats scatter with a relative spread `spread` (IQR / median, the figure the nightly
summary prints per cell) is measured `repeats` times for the baseline and `repeats` times tonight,
tonight's values worse by `regression`; each night ends regressed (caught), unknown (the gate says
it cannot see: the run is inconclusive) or unchanged / improved (passed). A repeat's value is the
median times exp(N(0, sigma)) with sigma = spread / 1.349, the normal whose IQR is `spread` (to
first order in sigma), which is how step-time noise on a busy machine looks multiplicatively.

    A/A (regression 0)   false alarm = the share of nights judged regressed; unknown the share
                         that would have been inconclusive; what is left passed
    planted regression   power = the share caught; missed = the share passed (the gate never
                         saw it); the rest were unknown (said, not passed)

`smallest_caught` is the smallest planted regression caught on at least `power` of the nights; the
deterministic bound beside it is the threshold itself, max(relative, k x spread): a change beyond it
is always judged. A run of many cells multiplies the per-cell false alarm: `run_false_alarm`.

Pure Python and seeded, so a test (tests/test_gate_power.py) and `python -m reports calibration`
show the same numbers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .verdict import IMPROVED, REGRESSED, UNCHANGED, UNKNOWN, Samples, Thresholds, decide_metric

NIGHTLY = Thresholds(per_metric={"loss": 0.02}, two_sided=("loss",), max_spread=0.10, min_repeats=3)
"""The nightly gate's defaults (nightly.baselines.NIGHTLY_THRESHOLDS, which the applications floor
owns; the same values, held equal by tests/test_gate_power.py)."""
IQR_OF_UNIT_NORMAL = 1.349
"""The interquartile range of N(0, 1): 2 x 0.6745."""
METHOD = ("the gate's own rule (verdict.decide_metric) on simulated nights: `repeats` baseline and `repeats` "
          "candidate values, each median x exp(N(0, spread / 1.349)), the candidate's median worse by the planted "
          "regression; seeded")


@dataclass(frozen=True, kw_only=True)
class Simulation:
    """The outcomes of simulated nights for one cell shape and one planted regression."""

    spread: float
    """Relative spread of a repeat (IQR / median)."""
    repeats: int
    """Repeats a side."""
    regression: float
    """Planted relative regression (0: an A/A night)."""
    nights: int
    seed: int
    caught: float
    """Share of nights judged regressed (for regression 0: the false-alarm rate)."""
    unknown: float
    """Share of nights the gate said it could not see (inconclusive, never a pass)."""
    passed: float
    """Share of nights that passed (unchanged or improved): for a planted regression, missed."""
    threshold_median: float
    """Median over the nights of the threshold a change had to exceed: the regression it would
    always judge."""
    method: str = METHOD


def _night(rng: random.Random, sigma: float, repeats: int, factor: float) -> Samples:
    return Samples(tuple(factor * math.exp(rng.gauss(0.0, sigma)) for _ in range(repeats)))


def simulate(spread: float, repeats: int = 3, regression: float = 0.0, nights: int = 1000, seed: int = 0,
             thresholds: Thresholds = NIGHTLY, metric: str = "throughput") -> Simulation:
    """Run the gate on `nights` simulated nights of one cell (see the module docstring)."""
    if not spread >= 0 or repeats < 1 or nights < 1:
        raise ValueError(f"spread={spread} must be >= 0, repeats={repeats} and nights={nights} >= 1")
    rng = random.Random(seed)
    sigma = spread / IQR_OF_UNIT_NORMAL
    # Worse: lower throughput, higher memory or loss.
    factor = 1 - regression if metric == "throughput" else 1 + regression
    counts = {REGRESSED: 0, UNKNOWN: 0, "passed": 0}
    thresholds_seen = []
    for _ in range(nights):
        verdict = decide_metric(metric, _night(rng, sigma, repeats, 1.0), _night(rng, sigma, repeats, factor),
                                thresholds)
        thresholds_seen.append(verdict.threshold or 0.0)
        name = verdict.verdict
        counts["passed" if name in (UNCHANGED, IMPROVED) else REGRESSED if name in (REGRESSED, "drifted")
               else UNKNOWN] += 1
    thresholds_seen.sort()
    return Simulation(spread=spread, repeats=repeats, regression=regression, nights=nights, seed=seed,
                      caught=counts[REGRESSED] / nights, unknown=counts[UNKNOWN] / nights,
                      passed=counts["passed"] / nights, threshold_median=thresholds_seen[nights // 2])


def smallest_caught(spread: float, repeats: int = 3, power: float = 0.8, nights: int = 400, seed: int = 0,
                    thresholds: Thresholds = NIGHTLY, step: float = 0.01, most: float = 0.95) -> float | None:
    """The smallest planted regression (in steps of `step`) caught on at least `power` of the
    simulated nights; None when not even `most` is."""
    for i in range(1, int(round(most / step)) + 1):
        if simulate(spread, repeats, i * step, nights, seed, thresholds).caught >= power:
            return i * step
    return None


def run_false_alarm(per_cell: float, cells: int) -> float:
    """The chance that a run of `cells` independent quiet cells has at least one false alarm."""
    return 1 - (1 - per_cell) ** cells


@dataclass(frozen=True, kw_only=True)
class CalibrationRow:
    """One cell shape of the calibration table."""

    spread: float
    repeats: int
    aa: Simulation
    """The A/A nights."""
    planted: tuple[Simulation, ...]
    """The nights with each planted regression."""
    smallest_caught_80: float | None
    """The smallest regression caught on 80 % of nights."""


def calibration(spreads: tuple[float, ...] = (0.01, 0.03, 0.05, 0.075, 0.10), repeats: int = 3,
                planted: tuple[float, ...] = (0.10, 0.20, 0.25, 0.50), nights: int = 1000,
                seed: int = 0, thresholds: Thresholds = NIGHTLY) -> list[CalibrationRow]:
    """The gate's false-alarm rate, unknown rate and power across cell spreads, for a report."""
    return [CalibrationRow(spread=s, repeats=repeats, aa=simulate(s, repeats, 0.0, nights, seed, thresholds),
                           planted=tuple(simulate(s, repeats, r, nights, seed + 1, thresholds) for r in planted),
                           smallest_caught_80=smallest_caught(s, repeats, 0.8, nights // 4, seed + 2, thresholds))
            for s in spreads]


RUN_CELLS = 24
"""Cells of a night the run-level false-alarm rate is stated for (the CPU quick preset's order)."""
MAX_RUN_FALSE_ALARM = 0.05
"""A quiet night's run may raise a false alarm at most this often."""
MAX_MISSED = 0.02
"""A 20 % regression at a 6.7-10 % spread may pass unseen on at most this share of nights."""


def calibration_lines(nights: int = 1000, seed: int = 0) -> tuple[list[str], bool]:
    """The gate's calibration as text lines (a table per spread) and whether its promises hold: a
    quiet cell's (spread <= 3 %) A/A run of RUN_CELLS cells raises a false alarm at most 5 % of
    nights, and a 20 % regression at 6.7-10 % spread passes unseen at most 2 % of nights."""
    rows = calibration(spreads=(0.01, 0.03, 0.05, 0.067, 0.10), planted=(0.10, 0.20, 0.25), nights=nights, seed=seed)
    lines = [f"the nightly gate's own rule on {nights:,} simulated nights per row, 3 repeats a side; A/A: false alarm "
             f"(regressed) and unknown per cell, and false alarm per run of {RUN_CELLS} cells; planted: caught / "
             "unknown / passed unseen", "",
             f"{'spread':>7}  {'A/A false':>9}  {'unknown':>8}  {'run false':>9}  "
             + "  ".join(f"{f'{r:.0%} planted':>20}" for r in (0.10, 0.20, 0.25)) + f"  {'80 % caught at':>14}"]
    ok = True
    for row in rows:
        run = run_false_alarm(row.aa.caught, RUN_CELLS)
        planted = "  ".join(f"{p.caught:6.1%}/{p.unknown:6.1%}/{p.passed:5.1%}" for p in row.planted)
        smallest = "–" if row.smallest_caught_80 is None else f"{row.smallest_caught_80:.0%}"
        lines.append(f"{row.spread:>7.1%}  {row.aa.caught:>9.1%}  {row.aa.unknown:>8.1%}  {run:>9.1%}  {planted}  "
                     f"{smallest:>14}")
        if row.spread <= 0.03 and run > MAX_RUN_FALSE_ALARM:
            ok = False
        if 0.067 <= row.spread <= 0.10 and row.planted[1].passed > MAX_MISSED:
            ok = False
    lines.append(f"quiet cells (spread <= 3 %): a run's false alarm at most {MAX_RUN_FALSE_ALARM:.0%}; a 20 % "
                 f"regression at 6.7-10 % spread passes unseen at most {MAX_MISSED:.0%} of nights: "
                 + ("holds" if ok else "DOES NOT HOLD"))
    return lines, ok
