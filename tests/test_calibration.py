"""Intervals that cover what they claim, and A/A comparisons that hold 1x (trainkit.analysis.calibration,
`python -m reports calibration`). Every simulation is seeded and vectorised: seconds, not minutes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trainkit.analysis import calibration as sim
from trainkit.analysis import paired
from trainkit.analysis.parity.stats import WELCH_MIN_SEEDS
from trainkit.bench.matrix import build_matrix
from trainkit.engine.measure import conditions
from trainkit.engine.spec.presets import preset
from trainkit.engine.train.hardware import Hardware
from trainkit.reports import calibration
from trainkit.reports.cli import main
from trainkit.reports.load import to_frame
from trainkit.reports.summary import summary

from .test_reports_flags import cell

MEDIAN_INTERVALS = ("step time", "speedup, rounds", "speedup, one run each")


@pytest.mark.parametrize("interval", MEDIAN_INTERVALS)
def test_the_median_based_intervals_cover_93_to_97_percent_or_are_not_given(interval):
    """A cell's step time and a speedup, at 3, 4, 5, 8 and 20 steps or rounds, for normal, skewed and
    slow-outlier step times: 93-97 % where an interval is given, none below 6 values (min to max
    of 5 covers 93.75 %, of 3 75 %: the bootstrap this replaced covered 74 % at 3 steps)."""
    rows = sim.coverage_table(intervals=(interval,))
    assert len(rows) == len(sim.SIZES) * len(sim.DISTRIBUTIONS) and all(r.draws >= 1000 for r in rows)
    for row in rows:
        if row.n < conditions.MIN_STEPS_FOR_INTERVAL:
            assert row.covered is None and "too few" in row.note
        else:
            assert row.passes, row


@pytest.mark.parametrize("interval", ("parity difference", "Welch"))
def test_the_t_intervals_cover_the_typical_seed_or_refuse(interval):
    """Parity's paired t and Welch's interval at every n and law: 93-97 % over the data sets given an
    interval, the rest refused because a seed stood apart (parity.stats.seeds_apart). Clean normal
    seeds are refused at most 1 % (Welch: 2 %, two sets); the slow-outlier law at 20 seeds almost always.
    Welch gives none below WELCH_MIN_SEEDS a set: there a far-off seed among 3 or 4 cannot be told from
    the spread, widens the interval, and it covered 97.5-97.7 % (test_welch_below_its_floor_over_covers)."""
    rows = sim.coverage_table(intervals=(interval,))
    for row in rows:
        if interval == "Welch" and row.n < WELCH_MIN_SEEDS:
            assert row.covered is None and "too few" in row.note, row
            continue
        assert row.refused is not None and (row.draws >= 1000 or row.refused > 0.99), row
        # Welch's two sets of 20 with a far seed in eight are refused 99.5 %: its coverage is over ~250
        # intervals, +-3 points (2 SE), and only held to that.
        assert row.covered >= sim.TOLERANCE[0] - (0.03 if row.draws < 1000 else 0), row
        assert row.covered <= sim.TOLERANCE[1], row
        if row.distribution == "normal":
            assert row.refused <= (0.01 if interval == "parity difference" else 0.02), row
    outliers = {r.n: r.refused for r in rows if r.distribution == "slow outlier"}
    assert outliers[20] > 0.9 and outliers[8] > 0.5


def test_welch_below_its_floor_over_covers(monkeypatch):
    """Why the floor: without it, Welch's interval of 3 seeds a set with one seed in eight twice as
    slow covers more than the 97 % the table allows (97.5 % when measured): wider than its claim."""
    monkeypatch.setattr(sim, "WELCH_MIN_SEEDS", 2)
    row = sim.coverage("Welch", "slow outlier", 3)
    assert row.covered is not None and row.covered > sim.TOLERANCE[1]


def test_without_the_refusal_a_far_seed_breaks_the_t_interval(monkeypatch):
    """Planted fault: no seed ever stands apart. Then the slow-outlier law's far seeds (2-3 in 20) pull
    the paired t interval off the typical seed's difference: it covers under 85 % at 20 seeds (77 %)."""
    monkeypatch.setattr(sim, "seeds_apart", lambda values: np.zeros(np.shape(values), dtype=bool))
    row = sim.coverage("parity difference", "slow outlier", 20, draws=2000)
    assert row.refused == 0 and row.covered < 0.85


def test_a_miscalibrated_interval_is_caught(monkeypatch):
    """Planted faults: MOVER unscaled covers ~98 %; the interpolation aimed at 95 % holds 1x in fewer
    than 95 % of A/A trials; min to max at every n covers 99 % and more."""
    monkeypatch.setattr(paired, "MOVER_SCALE", 1.0)
    assert sim.coverage("speedup, one run each", "normal", 8).passes is False
    monkeypatch.undo()
    monkeypatch.setattr(conditions, "INTERPOLATION_MARGIN", 0.0)
    assert sim.aa_rate(8).passes is False
    monkeypatch.undo()
    monkeypatch.setattr(sim, "median_order_weights", lambda n, confidence=0.95: (1, 0.0) if n >= 6 else None)
    printed = calibration.coverage_section(calibration.Options(draws=1000))
    assert printed.passed is False and "step time normal n=8 99." in printed.lines[-1]


def test_an_interleaved_aa_comparison_holds_1x_in_95_percent_of_trials_and_back_to_back_does_not():
    for rounds in (6, 8, 20):
        rate = sim.aa_rate(rounds)
        assert rate.trials >= 10_000 and rate.holds_one >= 0.95, rate
        # The same cells with their repeats back to back: the machine's drift between them is the "speedup".
        assert sim.aa_rate(rounds, "back to back", trials=1000).holds_one < 0.5
    assert sim.aa_rate(5).holds_one is None  # too few rounds: no interval, no claim


class MachineClock:
    """An injected clock: a step of `work` seconds takes work x the machine's slowdown at that moment.
    A busy loop planted during some rounds (of two cells each, in the order the cells ran) makes the
    machine `slowdown` times slower for the cells that ran then."""

    def __init__(self, busy_rounds: set[int], slowdown: float):
        self.busy_rounds, self.slowdown = busy_rounds, slowdown

    def step_times(self, slot: int, work_s: float, steps: int = 8) -> list[float]:
        factor = self.slowdown if slot // 2 in self.busy_rounds else 1.0
        return [work_s * factor * (1 + 0.01 * ((i % 3) - 1)) for i in range(steps)]


def _session(order: list[tuple[str, int]], clock: MachineClock, rounds: bool = True) -> pd.DataFrame:
    """The summary of two cells of one configuration (fp32 and amp-bf16 both doing 0.1 s of work a
    step: an A/A) run in `order` under `clock`; `rounds`: the records carry their round."""
    records = []
    for slot, (precision, repeat) in enumerate(order):
        record = cell(precision, step_s=0.1)
        times = clock.step_times(slot, 0.1)
        record["step_time_s"] = {**record["step_time_s"], "values": times, "median": sorted(times)[4]}
        record.update(repeat=repeat, round=repeat if rounds else None)
        records.append(record)
    table = summary(to_frame(records))
    return table[table["precision"] == "amp-bf16"].iloc[0]


def test_a_planted_slowdown_in_one_round_does_not_move_an_interleaved_aa_comparison():
    """bench's own order (build_matrix, --repeats 8) runs A and B in rounds; a busy loop tripling the
    machine's step time during round 3 slows A and B alike and the paired speedup stays at 1x, as
    does a slowdown over the whole second half of the session. Run back to back (AABB: A's eight
    repeats, then B's), that half-session slowdown falls on B alone and reads as a 3x slowdown."""
    cells = build_matrix(preset("tiny", on_gpu=False), Hardware("cpu", cpu_count=2),
                         {"model": ("mlp",), "precision": ("fp32", "amp-bf16"), "grad_accum": (1,), "gpus": (1,),
                          "batch_size": (32,)}, 2, 1, repeats=8)
    interleaved = [(c.precision, c.repeat) for c in cells]
    assert interleaved[:4] == [("fp32", 0), ("amp-bf16", 0), ("fp32", 1), ("amp-bf16", 1)]
    quiet = _session(interleaved, MachineClock(set(), 1.0))
    for busy in ({3}, {4, 5, 6, 7}):
        slowed = _session(interleaved, MachineClock(busy, 3.0))
        assert slowed["speedup_vs_fp32_rounds"] == 8 and slowed["speedup_vs_fp32"] == pytest.approx(1.0)
        assert slowed["speedup_vs_fp32_low"] <= 1.0 <= slowed["speedup_vs_fp32_high"]
        assert slowed["speedup_vs_fp32"] == pytest.approx(quiet["speedup_vs_fp32"])
    back_to_back = sorted(interleaved, key=lambda c: c[0] == "amp-bf16")
    moved = _session(back_to_back, MachineClock({4, 5, 6, 7}, 3.0), rounds=False)
    assert moved["speedup_vs_fp32_rounds"] == 0 and moved["speedup_vs_fp32"] == pytest.approx(1 / 3, rel=0.05)
    assert moved["flags"] == ""  # and nothing on the page says it is wrong: what the rounds are for


def test_the_aa_of_a_users_results_file_pairs_neighbouring_rounds(tmp_path):
    records, noise = [], np.random.default_rng(0).lognormal(0.0, 0.02, 12)
    for r in range(12):
        record = cell("fp32", step_s=0.1 * (2.0 if r in (4, 5) else 1.0) * noise[r])
        record.update(round=r, repeat=r)
        records.append(record)
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (aa,) = sim.aa_of_records(records)
    assert aa.pairs == 6 and aa.low <= 1.0 <= aa.high and aa.holds_one  # rounds 4-5 slowed together
    drifting = [{**r, "step_time_s": {**r["step_time_s"], "median": 0.1 * (1.2 if r["round"] % 2 else 1.0)}}
                for r in records]
    assert sim.aa_of_records(drifting)[0].holds_one is False  # the later round of each pair always slower
    printed = calibration.aa_file_section(calibration.Options.reading((str(path),)))
    assert printed.passed is None and "1 of 1 cells (100%) hold 1x" in printed.lines[-1]  # 20 cells to judge


def test_the_command_prints_every_section_and_a_new_one_is_one_entry(monkeypatch, capsys):
    monkeypatch.setattr(calibration, "SECTIONS", [
        *calibration.SECTIONS[2:],
        calibration.Section("gate", "Gate false alarms", lambda options: calibration.Printed(("3.1 %",), True))])
    assert main(["calibration", "--draws", "200"]) == 0
    out = capsys.readouterr().out
    assert "== A/A on your machine (--results) [not judged]\ngive --results FILE" in out
    assert "== Gate false alarms [pass]\n3.1 %" in out
    monkeypatch.setattr(calibration, "SECTIONS", [
        calibration.Section("x", "A failing promise", lambda options: calibration.Printed(("no",), False))])
    assert main(["calibration"]) == 1 and "[FAIL]" in capsys.readouterr().out


def test_a_results_file_that_cannot_be_read_is_a_usage_error(tmp_path, capsys):
    assert main(["calibration", "--results", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "none.jsonl" in err and "Traceback" not in err
