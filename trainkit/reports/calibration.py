"""`python -m reports calibration`: whether the suite's intervals and comparisons can be believed.

The command prints a list of sections, each a title, a plain-text table and a verdict line:

    coverage   every 95 % interval the suite prints, simulated (trainkit.analysis.calibration):
               the share of draws whose interval held the truth, per n and step-time law
    aa         the same configuration as two cells in interleaved rounds: how often the speedup
               interval holds 1x, against the same two cells measured back to back
    aa-file    with --results FILE: each cell of the user's own bench --repeats N run against
               itself in neighbouring rounds (their machine's A/A)

A part of the suite that makes a promise of its own adds a Section to SECTIONS (the nightly
gate's false-alarm rate, say); the command prints every section in order and exits 1 when one fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainkit.analysis import calibration as sim

from .records import all_records, read_runs


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


SECTIONS: list[Section] = [
    Section("coverage", "Coverage of the 95 % intervals", coverage_section),
    Section("aa", "A/A: one configuration as two cells", aa_section),
    Section("aa-file", "A/A on your machine (--results)", aa_file_section),
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
