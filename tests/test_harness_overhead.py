"""trainkit's own cost per step: measured in each cell on a null copy of its trainer, carried by every
record, and flagged where the step is so short that it is more than 1 % of it."""

from __future__ import annotations

import math
import time

import pytest
import torch

from trainkit.engine.cell.launch import run_cell
from trainkit.engine.cell.record import HARNESS_SHARE_LIMIT, RankReport, RankTiming, harness_flag, merge_ranks
from trainkit.engine.train.loop import Trainer
from trainkit.engine.train.overhead import METHOD, harness_overhead_us

from .conftest import CPU, flat_params, small_config

PLANTED_US = 200


def _busy(microseconds: float) -> None:
    """Spend this thread's CPU for `microseconds` (the measurement's clock counts this thread's CPU)."""
    end = time.thread_time_ns() + microseconds * 1e3
    while time.thread_time_ns() < end:
        pass


def test_the_flag_fires_on_a_short_step_and_stays_silent_on_a_long_one():
    share, flag = harness_flag(3.0, 150e-6)  # 3 µs of a 150 µs step: 2 %
    assert share == pytest.approx(0.02)
    assert flag is not None and "3.0 µs" in flag and "2.0%" in flag and "150 µs" in flag
    assert harness_flag(3.0, 0.75e-3) == (pytest.approx(0.004), None)  # the overhead bench's step: 0.4 %
    assert harness_flag(1.0, 1.0 / (1e6 * HARNESS_SHARE_LIMIT))[1] is None  # exactly at the limit: silent
    assert harness_flag(None, 1e-3) == (None, None)
    assert harness_flag(2.0, None) == (None, None)


def _rank(rank: int, overhead_us: float | None, step_s: float) -> RankReport:
    report = RankReport(rank=rank, pid=100 + rank, harness_overhead_us=overhead_us,
                        timing=RankTiming(step_times_s=[step_s] * 5, timed_samples=[16] * 5, first_timed_step=1))
    report.loss.curve = [1.0] * 6
    return report


def test_the_record_carries_the_slowest_ranks_overhead_and_flags_a_planted_short_step():
    config = small_config(steps=5, warmup_steps=1, world_size=2)
    short = merge_ranks(config, [_rank(0, 4.0, 100e-6), _rank(1, 6.0, 100e-6)])
    assert short["harness_overhead_per_step_us"] == 6.0
    assert short["harness_overhead_share"] == pytest.approx(0.06)
    assert short["harness_overhead_method"] == METHOD
    assert short["harness_overhead_flag"].startswith("short step: trainkit's own 6.0 µs per step is 6.0%")
    long = merge_ranks(config, [_rank(0, 4.0, 0.1), _rank(1, 6.0, 0.1)])
    assert long["harness_overhead_share"] == pytest.approx(6e-5) and long["harness_overhead_flag"] is None
    unmeasured = _rank(1, None, 0.1)
    unmeasured.harness_overhead_note = "the cell has no timed steps"
    missing = merge_ranks(config, [_rank(0, 4.0, 0.1), unmeasured])
    assert missing["harness_overhead_per_step_us"] is None and missing["harness_overhead_flag"] is None
    assert missing["harness_overhead_method"] == "not measured: the cell has no timed steps"


def test_the_report_flags_the_short_step_row_only():
    pytest.importorskip("pandas")
    pytest.importorskip("plotly")
    from .test_reports_flags import cell, rows

    short, long = cell(step_s=100e-6), cell(precision="amp-bf16", step_s=0.05)
    short["harness_overhead_flag"] = harness_flag(5.0, 100e-6)[1]
    long["harness_overhead_flag"] = harness_flag(5.0, 0.05)[1]
    table = rows([short, long])
    assert table["fp32-bs32-gpus1"]["flags"].startswith("short step: trainkit's own 5.0 µs per step is 5.0%")
    # The long row's own figure is not in doubt; its speedup over the short fp32 row is.
    assert table["amp-bf16-bs32-gpus1"]["flags"].count("short step") == 1
    assert "its fp32 reference: short step" in table["amp-bf16-bs32-gpus1"]["flags"]


def test_the_measurement_sees_a_cost_planted_in_the_step(monkeypatch):
    trainer = Trainer(small_config("mlp", steps=3, warmup_steps=1), CPU)
    trainer.run(1)
    plain = harness_overhead_us(trainer)
    assert -5 < plain < 100  # the step's own Python: microseconds, not a share of the model's work
    original = Trainer.end_step

    def slow_end_step(self, loss, samples):
        _busy(PLANTED_US)
        original(self, loss, samples)

    monkeypatch.setattr(Trainer, "end_step", slow_end_step)
    planted = harness_overhead_us(trainer)
    assert 0.75 * PLANTED_US < planted - plain < 2 * PLANTED_US


@pytest.mark.parametrize("changes", [{}, {"grad_accum": 2, "precision": "amp-bf16", "clip_grad_norm": 1.0,
                                          "schedule": "cosine", "checkpoint_every": 1}])
def test_the_measurement_leaves_the_trainer_as_it_was(changes, tmp_path):
    if "checkpoint_every" in changes:
        changes = {**changes, "checkpoint_dir": str(tmp_path)}
    config = small_config("mlp", steps=4, warmup_steps=1, **changes)
    trainer, reference = Trainer(config, CPU), Trainer(config, CPU)
    trainer.run(2)
    reference.run(2)
    saved = sorted(tmp_path.iterdir())
    assert math.isfinite(harness_overhead_us(trainer, rounds=3, steps=10))
    assert sorted(tmp_path.iterdir()) == saved  # the null copy wrote no checkpoint
    trainer.run(2)
    reference.run(2)
    assert trainer.step == reference.step == 4 and trainer.step_samples == reference.step_samples
    torch.testing.assert_close(trainer.loss_curve(), reference.loss_curve(), rtol=0, atol=0)
    torch.testing.assert_close(flat_params(trainer), flat_params(reference), rtol=0, atol=0)


def test_a_cells_record_carries_its_overhead():
    record = run_cell(small_config("mlp", steps=3, warmup_steps=1), timeout_s=120)
    assert record["status"] == "ok", record["status_detail"]
    overhead, median = record["harness_overhead_per_step_us"], record["step_time_s"]["median"]
    assert -5 < overhead < 100 and record["harness_overhead_method"] == METHOD
    assert record["harness_overhead_share"] == pytest.approx(overhead / (median * 1e6))
    assert (record["harness_overhead_flag"] is not None) == (record["harness_overhead_share"] > HARNESS_SHARE_LIMIT)
