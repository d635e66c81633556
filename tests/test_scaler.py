"""GradScaler's skipped steps are counted, on the device, exactly."""

import math

import pytest
import torch

from trainkit.engine.cell.launch import run_cell
from trainkit.engine.train.loop import Trainer

from .conftest import CPU, small_config


def test_an_injected_inf_gradient_is_one_skipped_step_and_halves_the_scale():
    trainer = Trainer(small_config(precision="amp-fp16", steps=6, init_scale=1024.0, growth_interval=1000), CPU)
    weight = trainer.raw_model.fc1.weight
    trainer.run(2)
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    handle = weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
    trainer.run(1)  # step 2: an inf gradient
    handle.remove()
    after_bad_step = trainer.raw_model.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after_bad_step[name]), f"{name} changed in a skipped step"
    trainer.run(3)
    assert trainer.skipped() == [False, False, True, False, False, False]
    assert trainer.policy.scaler.get_scale() == 512.0
    assert torch.isfinite(trainer.loss_curve()).all()


def test_skipped_steps_reach_the_record_and_the_effective_throughput():
    """init_scale 2**40 overflows fp16 gradients: the first steps are skipped until the scale has
    halved enough; the record counts them and excludes them from the effective throughput."""
    record = run_cell(small_config(precision="amp-fp16", steps=12, warmup_steps=0, init_scale=2.0**40), timeout_s=120)
    assert record["status"] == "ok", record["status_detail"]
    scaler = record["scaler"]
    assert scaler["enabled"] and scaler["skipped_steps"] >= 1
    assert scaler["final_scale"] == 2.0**40 / 2 ** scaler["skipped_steps_total"]
    assert record["effective_throughput_samples_per_s"] < record["throughput_samples_per_s"]


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16", "half-fp16", "half-bf16"])
def test_no_scaler_no_skips(precision):
    record = run_cell(small_config(precision=precision, steps=2), timeout_s=120)
    assert record["scaler"] == {"enabled": False, "init_scale": None, "final_scale": None,
                                "skipped_steps": 0, "skipped_steps_total": 0, "scale_curve": None}


def test_the_scale_curve_replays_gradscalers_rule():
    from trainkit.engine.cell.record import scale_curve

    assert scale_curve([True, False, False, False, True, False], 8.0, growth_interval=2) == [
        4.0, 4.0, 8.0, 8.0, 4.0, 4.0]


def test_the_recorded_scale_curve_ends_at_the_scalers_final_scale():
    record = run_cell(small_config(precision="amp-fp16", steps=10, warmup_steps=0, init_scale=2.0**30,
                                   growth_interval=3), timeout_s=120)
    curve = record["scaler"]["scale_curve"]
    assert len(curve) == 10 and curve[-1] == record["scaler"]["final_scale"]
    assert min(curve) < 2.0**30 and max(curve) > min(curve)  # it fell on overflow, grew after clean steps
