"""The gate's false-alarm rate and detection power (trainkit.reports.calibration's gate section), simulated on the
gate's own rule: quiet A/A nights pass, a planted regression is caught or said unseen, and a
miscalibrated rule is caught by the same simulation."""

from __future__ import annotations

import pytest

from trainkit.nightly.baselines import NIGHTLY_THRESHOLDS
from trainkit.reports import calibration as gate_power  # the gate section of the calibration command
from trainkit.reports.verdict import Thresholds

CELLS = 24  # the quick preset's cells on a CPU: a night's worth of chances for a false alarm


def test_the_simulation_runs_the_nightlys_own_thresholds():
    assert gate_power.GATE_THRESHOLDS == NIGHTLY_THRESHOLDS


@pytest.mark.parametrize("spread", [0.01, 0.02, 0.03])
def test_quiet_aa_nights_false_alarm_at_most_five_percent_per_run(spread):
    aa = gate_power.simulate(spread, repeats=3, regression=0.0, nights=2000, seed=1)
    assert gate_power.run_false_alarm(aa.caught, CELLS) <= 0.05
    assert gate_power.run_false_alarm(aa.unknown, CELLS) <= 0.05  # and a quiet night is seldom inconclusive
    assert aa.caught + aa.unknown + aa.passed == pytest.approx(1.0)


@pytest.mark.parametrize("spread", [0.067, 0.08, 0.10])
def test_a_twenty_percent_regression_at_seven_to_ten_percent_spread_is_almost_never_passed(spread):
    planted = gate_power.simulate(spread, repeats=3, regression=0.20, nights=2000, seed=2)
    assert planted.passed <= 0.02  # caught or said unseen (inconclusive) on 98 % of nights or more
    assert planted.caught >= 0.3


def test_power_falls_with_the_spread_and_a_quarter_slowdown_of_a_quiet_cell_is_always_caught():
    assert gate_power.simulate(0.02, regression=0.25, nights=500).caught == 1.0
    smallest = [gate_power.smallest_caught(s, nights=200) for s in (0.01, 0.05, 0.10)]
    assert smallest[0] is not None and smallest[0] <= 0.08  # the 7 % floor, plus a little
    assert smallest == sorted(smallest)


def test_a_miscalibrated_rule_is_caught_by_the_simulation():
    # A planted fault: the noise term switched off (k = 0) gates a 10 %-spread cell on the 7 % floor
    # alone, and the A/A nights show it raising false alarms far above 5 %.
    no_noise = Thresholds(**{**vars(gate_power.GATE_THRESHOLDS), "k": 0.0, "max_spread": None})
    assert gate_power.simulate(0.10, nights=1000, thresholds=no_noise).caught > 0.1  # 16 %
    assert gate_power.simulate(0.10, nights=1000).caught <= 0.01


def test_the_calibration_table_and_bad_input():
    rows = gate_power.gate_calibration(spreads=(0.02, 0.10), planted=(0.25,), nights=200)
    assert [r.spread for r in rows] == [0.02, 0.10] and rows[0].planted[0].caught == 1.0
    assert rows[0].aa.threshold_median == pytest.approx(0.07)  # quiet: the 7 % floor sets the threshold
    with pytest.raises(ValueError, match="spread=-1"):
        gate_power.simulate(-1)


def test_the_calibration_section_states_the_promises_and_holds_them():
    lines, ok = gate_power.gate_lines(nights=300)
    assert ok and lines[-1].endswith(": holds")
    assert any(line.lstrip().startswith("1.0%") for line in lines) and any("10.0%" in line for line in lines)


def test_python_m_reports_calibration_prints_the_gates_section(monkeypatch, capsys):
    from trainkit.reports.cli import main

    gate = [section for section in gate_power.SECTIONS if section.key == "gate"]
    assert len(gate) == 1
    monkeypatch.setattr(gate_power, "SECTIONS", gate)  # the other sections' draws are theirs to test
    assert main(["calibration", "--draws", "200"]) == 0
    out = capsys.readouterr().out
    assert "== The nightly gate: false alarms and detection power [pass]" in out
    assert "a 20 % regression at 6.7-10 % spread passes unseen at most 2% of nights: holds" in out
