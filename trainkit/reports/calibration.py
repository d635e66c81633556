"""`python -m reports calibration`: whether the suite's intervals and comparisons can be believed.

The command prints a list of sections, each a title, a plain-text table and a verdict line:

    coverage   every 95 % interval the suite prints, simulated (trainkit.analysis.calibration):
               the share of draws whose interval held the truth, per n and step-time law
    aa         the same configuration as two cells in interleaved rounds: how often the speedup
               interval holds 1x, against the same two cells measured back to back
    aa-file    with --results FILE: each cell of the user's own bench --repeats N run against
               itself in neighbouring rounds (their machine's A/A)
    gate       the nightly gate's own rule on simulated nights (below): its false-alarm and
               unknown rates on A/A nights and the share of planted regressions caught, said
               unknown or passed unseen, per cell spread

A part of the suite that makes a promise of its own adds a Section to SECTIONS (the nightly
gate's false-alarm rate, say); the command prints every section in order and exits 1 when one fails.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainkit.analysis import calibration as sim

from .records import all_records, read_runs
from .verdict import IMPROVED, REGRESSED, UNCHANGED, UNKNOWN, Samples, Thresholds, decide_metric


@dataclass(frozen=True)
class Options:
    """What the command was asked for."""

    draws: int = sim.DRAWS
    """Simulated data sets per coverage cell."""
    aa_trials: int = sim.AA_DRAWS
    """Simulated A/A trials per round count."""
    results: tuple[str, ...] = ()
    """The user's result files (bench --repeats N) for their machine's A/A."""
    records: tuple[dict[str, Any], ...] = ()
    """Their records, read before any simulation runs (a file that cannot be read is an error at once)."""

    @classmethod
    def reading(cls, results: tuple[str, ...], **values: Any) -> Options:
        """Options with the records of `results` read (records.InputError where one cannot be)."""
        return cls(results=results, records=tuple(all_records(read_runs(list(results)))) if results else (),
                   **values)


@dataclass(frozen=True)
class Printed:
    """A section's text and whether its promise held (None: nothing to judge, e.g. no file given)."""

    lines: tuple[str, ...]
    passed: bool | None


@dataclass(frozen=True)
class Section:
    """One section of the command's output."""

    key: str
    title: str
    run: Callable[[Options], Printed]


def _cell(value: float | None) -> str:
    return "  –  " if value is None else f"{value:5.1%}"


def coverage_section(options: Options) -> Printed:
    rows = sim.coverage_table(draws=options.draws)
    low, high = sim.TOLERANCE
    sizes = "".join(f"  n={n:<4d}" for n in sim.SIZES)
    lines = [f"{options.draws:,} simulated data sets per cell; a 95 % interval passes at {low:.0%}–{high:.0%}; "
             "– : no interval at that n (the figure is printed without one)", "",
             f"{'interval':<24}{'law':<14}{sizes}"]
    failed = []
    for (interval, law), group in itertools.groupby(rows, key=lambda r: (r.interval, r.distribution)):
        group = list(group)
        marks = "".join(f"  {_cell(r.covered)}{'!' if r.passes is False else ' '}" for r in group)
        lines.append(f"{interval:<24}{law:<14}{marks}")
        failed += [r for r in group if r.passes is False]
    refusing = [r for r in rows if r.refused is not None]
    if refusing:
        lines += ["", "refused: share of data sets given no interval because a seed stood apart (coverage above "
                  "is over the rest)", f"{'':<24}{'law':<14}{sizes}"]
        for (interval, law), group in itertools.groupby(refusing, key=lambda r: (r.interval, r.distribution)):
            lines.append(f"{interval:<24}{law:<14}" + "".join(f"  {_cell(r.refused)} " for r in group))
    lines += ["", *(f"  {key}: {what}" for key, (what, _) in sim.INTERVALS.items())]
    if failed:
        lines.append(f"{len(failed)} of {len(rows)} cover outside {low:.0%}–{high:.0%} (marked !): " + "; ".join(
            f"{r.interval} {r.distribution} n={r.n} {r.covered:.1%}" for r in failed))
    else:
        lines.append(f"every interval covers {low:.0%}–{high:.0%} wherever it is given")
    return Printed(tuple(lines), not failed)


AA_ROUNDS = (3, 5, 6, 8, 12, 20)


def aa_section(options: Options) -> Printed:
    lines = [f"one configuration as two cells, {sim.STEPS_PER_ROUND} steps a round, the machine's speed varying "
             f"by round (log-normal sigma {sim.MACHINE_SPREAD}); {options.aa_trials:,} trials; share whose 95 % "
             "speedup interval holds 1x (at least 95 % passes)", "",
             f"{'rounds':>8}  {'interleaved rounds':>20}  {'back to back':>14}"]
    rates = [(sim.aa_rate(n, trials=options.aa_trials), sim.aa_rate(n, "back to back", trials=options.aa_trials))
             for n in AA_ROUNDS]
    for n, (paired, apart) in zip(AA_ROUNDS, rates):
        lines.append(f"{n:>8}  {_cell(paired.holds_one):>20}  {_cell(apart.holds_one):>14}")
    failed = [p for p, _ in rates if p.passes is False]
    lines.append("interleaved: " + ("holds 1x in at least 95 % of trials from 6 rounds (fewer: no interval)"
                                    if not failed else f"below 95 % at {', '.join(str(p.rounds) for p in failed)} "
                                                       "rounds"))
    return Printed(tuple(lines), not failed)


def aa_file_section(options: Options) -> Printed:
    if not options.results:
        return Printed(("give --results FILE (a bench run with --repeats 12 or more) for your machine's own A/A",),
                       None)
    cells = sim.aa_of_records(options.records)
    if not cells:
        return Printed(("no ok record carries a round: run the bench with --repeats N (N >= 12 gives 6 pairs)",), None)
    lines = ["each cell against itself: round 2k + 1 over round 2k (paired_ratio over the pairs)", "",
             f"{'cell':<44}{'pairs':>6}  {'ratio':>7}  {'95 % interval':>16}  holds 1x"]
    judged = []
    for cell in cells:
        interval = (f"{cell.low:.3f}–{cell.high:.3f}" if cell.low is not None and cell.high is not None
                    else "–")
        holds = {True: "yes", False: "NO", None: cell.reason or "–"}[cell.holds_one]
        ratio = "–" if cell.ratio is None else f"{cell.ratio:.3f}"
        lines.append(f"{cell.cell:<44}{cell.pairs:>6}  {ratio:>7}  {interval:>16}  {holds}")
        if cell.holds_one is not None:
            judged.append(cell.holds_one)
    if not judged:
        lines.append("no cell has 6 pairs of rounds: no interval to judge (run with --repeats 12 or more)")
        return Printed(tuple(lines), None)
    share = sum(judged) / len(judged)
    lines.append(f"{sum(judged)} of {len(judged)} cells ({share:.0%}) hold 1x; a calibrated interval holds it in "
                 "about 95 % of cells, so one miss in twenty is expected; many more say the machine drifts "
                 "within a pair of rounds")
    # One cell in twenty may miss by chance: fail only beyond what a binomial 95 % would make likely.
    return Printed(tuple(lines), None if len(judged) < 20 else share >= 0.9)


# --- the nightly gate's false-alarm rate and detection power -------------------------------------
#
# What the regression gate can see: its false-alarm rate and detection power, simulated.
#
# The gate's rule (trainkit.reports.verdict.decide_metric) is run as it is, on simulated nights: a
# cell whose repeats scatter with a relative spread `spread` (IQR / median, the figure the nightly
# summary prints per cell) is measured `repeats` times for the baseline and `repeats` times tonight,
# tonight's values worse by `regression`; each night ends regressed (caught), unknown (the gate says
# it cannot see: the run is inconclusive) or unchanged / improved (passed). A repeat's value is the
# median times exp(N(0, sigma)) with sigma = spread / 1.349, the normal whose IQR is `spread` (to
# first order in sigma), which is how step-time noise on a busy machine looks multiplicatively.
#
#     A/A (regression 0)   false alarm = the share of nights judged regressed; unknown the share
#                          that would have been inconclusive; what is left passed
#     planted regression   power = the share caught; missed = the share passed (the gate never
#                          saw it); the rest were unknown (said, not passed)
#
# `smallest_caught` is the smallest planted regression caught on at least `power` of the nights; the
# deterministic bound beside it is the threshold itself, max(relative, k x spread): a change beyond it
# is always judged. A run of many cells multiplies the per-cell false alarm: `run_false_alarm`.
#

GATE_THRESHOLDS = Thresholds(per_metric={"loss": 0.02}, two_sided=("loss",), max_spread=0.10, min_repeats=3)
"""The nightly gate's defaults (trainkit.nightly.baselines.NIGHTLY_THRESHOLDS, which the applications floor
owns; the same values, held equal by tests/test_gate_power.py)."""
IQR_OF_UNIT_NORMAL = 1.349
"""The interquartile range of N(0, 1): 2 x 0.6745."""
GATE_METHOD = ("the gate's own rule (verdict.decide_metric) on simulated nights: `repeats` baseline and `repeats` "
               "candidate values, each median x exp(N(0, spread / 1.349)), the candidate's median worse by the "
               "planted regression; seeded")


@dataclass(frozen=True, kw_only=True)
class GateSimulation:
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
    method: str = GATE_METHOD


def _night(rng: random.Random, sigma: float, repeats: int, factor: float) -> Samples:
    return Samples(tuple(factor * math.exp(rng.gauss(0.0, sigma)) for _ in range(repeats)))


def simulate(spread: float, repeats: int = 3, regression: float = 0.0, nights: int = 1000, seed: int = 0,
             thresholds: Thresholds = GATE_THRESHOLDS, metric: str = "throughput") -> GateSimulation:
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
    return GateSimulation(spread=spread, repeats=repeats, regression=regression, nights=nights, seed=seed,
                      caught=counts[REGRESSED] / nights, unknown=counts[UNKNOWN] / nights,
                      passed=counts["passed"] / nights, threshold_median=thresholds_seen[nights // 2])


def smallest_caught(spread: float, repeats: int = 3, power: float = 0.8, nights: int = 400, seed: int = 0,
                    thresholds: Thresholds = GATE_THRESHOLDS, step: float = 0.01, most: float = 0.95) -> float | None:
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
class GateRow:
    """One cell shape of the calibration table."""

    spread: float
    repeats: int
    aa: GateSimulation
    """The A/A nights."""
    planted: tuple[GateSimulation, ...]
    """The nights with each planted regression."""
    smallest_caught_80: float | None
    """The smallest regression caught on 80 % of nights."""


def gate_calibration(spreads: tuple[float, ...] = (0.01, 0.03, 0.05, 0.075, 0.10), repeats: int = 3,
                planted: tuple[float, ...] = (0.10, 0.20, 0.25, 0.50), nights: int = 1000,
                seed: int = 0, thresholds: Thresholds = GATE_THRESHOLDS) -> list[GateRow]:
    """The gate's false-alarm rate, unknown rate and power across cell spreads, for a report."""
    return [GateRow(spread=s, repeats=repeats, aa=simulate(s, repeats, 0.0, nights, seed, thresholds),
                           planted=tuple(simulate(s, repeats, r, nights, seed + 1, thresholds) for r in planted),
                           smallest_caught_80=smallest_caught(s, repeats, 0.8, nights // 4, seed + 2, thresholds))
            for s in spreads]


RUN_CELLS = 24
"""Cells of a night the run-level false-alarm rate is stated for (the CPU quick preset's order)."""
MAX_RUN_FALSE_ALARM = 0.05
"""A quiet night's run may raise a false alarm at most this often."""
MAX_MISSED = 0.02
"""A 20 % regression at a 6.7-10 % spread may pass unseen on at most this share of nights."""


def gate_lines(nights: int = 1000, seed: int = 0) -> tuple[list[str], bool]:
    """The gate's calibration as text lines (a table per spread) and whether its promises hold: a
    quiet cell's (spread <= 3 %) A/A run of RUN_CELLS cells raises a false alarm at most 5 % of
    nights, and a 20 % regression at 6.7-10 % spread passes unseen at most 2 % of nights."""
    rows = gate_calibration(spreads=(0.01, 0.03, 0.05, 0.067, 0.10), planted=(0.10, 0.20, 0.25), nights=nights,
                            seed=seed)
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


GATE_NIGHTS = 1000
"""Simulated nights per row of the gate's section (fewer with --draws below it)."""


def gate_section(options: Options) -> Printed:
    lines, held = gate_lines(nights=min(options.draws, GATE_NIGHTS))
    return Printed(tuple(lines), held)


SECTIONS: list[Section] = [
    Section("coverage", "Coverage of the 95 % intervals", coverage_section),
    Section("aa", "A/A: one configuration as two cells", aa_section),
    Section("aa-file", "A/A on your machine (--results)", aa_file_section),
    Section("gate", "The nightly gate: false alarms and detection power", gate_section),
]
"""The command's sections, in order; add one to print it (module docstring)."""


def report(options: Options) -> tuple[list[str], bool]:
    """Every section's lines under its title, and whether none failed."""
    lines, ok = [], True
    for section in SECTIONS:
        printed = section.run(options)
        verdict = {True: "pass", False: "FAIL", None: "not judged"}[printed.passed]
        lines += [f"== {section.title} [{verdict}]", *printed.lines, ""]
        ok = ok and printed.passed is not False
    return lines, ok
