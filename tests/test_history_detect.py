"""The change-point detector (trainkit.reports.history.detect, latest): its measured precision and recall on
generated series of known truth, the exact rule of deterministic metrics, the drift check, and
acknowledged changes."""

from __future__ import annotations

import numpy as np
import pytest

from trainkit.reports.cli import main
from trainkit.reports.history.detect import analyse, drift
from trainkit.reports.history.latest import INSUFFICIENT, REGRESSION, SAME, UNKNOWN, verdict
from trainkit.reports.history.params import DetectorParams
from trainkit.reports.history.quality import LEVELS, score
from trainkit.reports.history.series import EXACT, STATISTICAL, Point, Series
from trainkit.reports.history.store import Ack, RunInfo

RUNS = {i: RunInfo(i, f"commit{i:02d}", "main", f"2026-01-{i:02d}", None, None, None, None) for i in range(1, 41)}


def series(values, metric="throughput", method=STATISTICAL) -> Series:
    points = tuple(Point(i + 1, float(v), 1) for i, v in enumerate(values))
    return Series("cell", {"cpu": "x"}, metric, "m", method, points)


# (noise, step size): steps of at least three times the noise, at the night-to-night noise GPU nights show.
DETECTABLE = [(0.02, 0.10), (0.02, 0.25), (0.05, 0.15), (0.05, 0.25), (0.10, 0.30)]


def test_precision_and_recall_on_generated_series(capsys):
    """20 series per scenario (step, none, outlier, drift) at each level; printed for the record."""
    scores = [score(noise, size, repeats=20, seed=7) for noise, size in DETECTABLE]
    with capsys.disabled():
        for s in scores:
            print(f"\nnoise {s.noise:.0%} step {s.step:.0%}: precision {s.precision:.2f} recall {s.recall:.2f} "
                  f"(tp {s.true_positives}, fp {s.false_positives}, fn {s.false_negatives}); drift found "
                  f"{s.drifts_found}/{s.drifts}, false drifts {s.false_drifts}/{2 * s.drifts}")
    tp = sum(s.true_positives for s in scores)
    fp = sum(s.false_positives for s in scores)
    fn = sum(s.false_negatives for s in scores)
    assert tp / (tp + fp) >= 0.9 and tp / (tp + fn) >= 0.9
    assert all(s.recall >= 0.8 for s in scores)
    assert sum(s.false_drifts for s in scores) <= 1


def test_a_step_within_the_noise_is_not_reported():
    """5 % noise, no step: no change point in 20 series (a false alarm costs a bisect)."""
    found = score(0.05, 0.0, repeats=20, seed=3)
    assert found.true_positives + found.false_positives <= 1  # 80 series without a change


def test_the_change_point_gives_its_magnitude_p_value_and_commit_range():
    rng = np.random.default_rng(0)
    values = 100 * np.exp(rng.normal(0, 0.03, 40))
    values[25:] *= 0.85
    (point,) = analyse(series(values), RUNS).change_points
    assert (point.index, point.run_before, point.run_after) == (25, 25, 26)
    assert (point.commit_before, point.commit_after) == ("commit25", "commit26")
    assert point.kind == "regression" and -0.2 < point.magnitude < -0.1 and point.p_value < 1e-6


def test_memory_from_the_allocator_follows_the_exact_rule():
    values = [1000] * 10 + [1001] * 10  # one byte more, every night from night 11: a change
    values[4] = 1200  # a lone departing night: an outlier, not a change
    analysis = analyse(series(values, "memory", EXACT), RUNS)
    (point,) = analysis.change_points
    assert point.index == 10 and point.p_value is None and point.kind == "regression"
    assert analysis.outliers == (4,)


def test_a_deterministic_figure_that_was_zero_changes_without_a_relative_size():
    (point,) = analyse(series([0.0] * 6 + [4096.0] * 6, "memory", EXACT), RUNS).change_points
    assert point.index == 6 and point.magnitude is None and point.kind == "change"


def test_the_loss_is_near_exact_either_way():
    values = [2.0] * 8 + [2.0005] * 4 + [1.9] * 8  # within 1e-3 relative, then a 5 % drop
    (point,) = analyse(series(values, "loss", EXACT), RUNS).change_points
    assert point.index == 12 and point.kind == "change"


def test_a_slow_drift_shows_no_step_but_the_drift_check_catches_it():
    rng = np.random.default_rng(1)
    values = 100 * np.exp(rng.normal(0, 0.01, 40)) * np.linspace(1.0, 0.88, 40)  # -0.3 % a night
    s = series(values)
    assert analyse(s, RUNS, params=DetectorParams(min_magnitude=0.10)).change_points == ()
    found = drift(s, 1, RUNS)
    assert found.drifted and -0.13 < found.change < -0.09
    assert not drift(series(100 * np.exp(rng.normal(0, 0.01, 40))), 1, RUNS).drifted


def test_an_acknowledged_change_starts_a_new_segment():
    values = [100.0 + (i % 3) for i in range(20)] + [80.0 + (i % 3) for i in range(20)]
    ack = Ack("cell", {"cpu": "x"}, "throughput", 21, "ana", "bigger model", "2026-02-01")
    (point,) = analyse(series(values), RUNS, [ack]).change_points
    assert point.index == 20 and point.acknowledged == ack
    assert verdict(series(values[:22]), RUNS, start=20).verdict == INSUFFICIENT  # a fresh segment: too short to judge
    assert verdict(series(values[:22]), RUNS).verdict == REGRESSION


@pytest.mark.parametrize("tail, expected, bad", [
    ([], SAME, 0), ([85.0], UNKNOWN, 1), ([85.0, 84.0], REGRESSION, 2), ([85.0, 100.5], SAME, 0),
    ([115.0, 116.0], SAME, 0),  # faster is no regression
])
def test_latest_nights_two_bad_are_a_regression_one_is_unknown(tail, expected, bad):
    values = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 101.0, 99.0, 100.0, 100.5, *tail]
    found = verdict(series(values), RUNS)
    assert (found.verdict, found.bad_nights) == (expected, bad)
    if expected == REGRESSION:
        assert (found.commit_before, found.commit_after) == ("commit10", "commit11")
        assert found.change == pytest.approx(84.0 / 100.0 - 1)


def test_too_few_nights_are_insufficient_history():
    assert verdict(series([100.0, 100.0, 80.0]), RUNS).verdict == INSUFFICIENT


def test_the_quality_command_prints_a_row_per_level(capsys):
    assert main(["history", "quality", "--repeats", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 + len(LEVELS) and rows[2].startswith("| 2% | 5% | ")
