"""Diagnostics: why a loss moved, read from one extra step that changes none of the record's figures."""

import json

import pytest
import torch

from trainkit.engine.cell.diagnostics import diagnose, finite_only
from trainkit.engine.cell.record import merge_ranks
from trainkit.engine.cell.worker import RankWorker
from trainkit.engine.spec.config import ProfileConfig
from trainkit.engine.train.loop import Trainer

from .conftest import CPU, small_config

ADAMW_GPT = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "batch_size": 16}


def record_of(config, diagnostics=True):
    worker = RankWorker(config, profile=ProfileConfig(phase_steps=0, diagnostics=diagnostics))
    worker.warmup()
    worker.run_timed()
    return merge_ranks(config, [worker.collect()])


def test_the_extra_step_changes_no_figure_of_the_record():
    config = small_config("gpt", steps=6, warmup_steps=1, **ADAMW_GPT)
    with_pass, without = record_of(config), record_of(config, diagnostics=False)
    assert without["diagnostics"] is None and with_pass["diagnostics"]["step"] == 7  # after 1 + 6 steps
    assert with_pass["loss"] == without["loss"]
    assert with_pass["config"] == without["config"] and with_pass["step_time_s"]["n"] == 6
    assert with_pass["diagnostics"]["method"].startswith("one extra optimizer step after the timed steps")


@pytest.fixture(scope="module")
def adamw_gpt():
    """Diagnostics after 8 AdamW steps of the GPT per precision: fp32, pure fp16, fp16 with masters
    ((1 - beta2) * g**2 underflows fp16 from the first step on)."""
    out = {}
    for precision in ("fp32", "half-fp16", "half-fp16-master"):
        trainer = Trainer(small_config("gpt", precision=precision, steps=8, **ADAMW_GPT), CPU)
        trainer.run(8)
        out[precision] = diagnose(trainer)
    return out


def test_pure_fp16_adamw_shows_its_second_moment_underflow_and_oversized_updates(adamw_gpt):
    fp32, half, master = adamw_gpt["fp32"], adamw_gpt["half-fp16"], adamw_gpt["half-fp16-master"]
    assert fp32["second_moment_zero_share"] == 0.0 and master["second_moment_zero_share"] == 0.0
    assert half["second_moment_zero_share"] > 0.3 and half["second_moment_dtype"] == "torch.float16"
    assert half["update_over_lr_p90"] > 2 * fp32["update_over_lr_p90"]  # lr * m / eps, not lr * m / sqrt(v)
    assert master["update_over_lr_p90"] == pytest.approx(fp32["update_over_lr_p90"], rel=0.2)
    # Unscaled fp16 gradients: many are subnormal; the master mode's loss scale keeps them normal.
    assert half["grad_dtype"] == master["grad_dtype"] == "torch.float16"
    assert half["grad_subnormal_share"] > 0.01 and fp32["grad_subnormal_share"] == 0.0
    assert master["grad_subnormal_share"] < 0.1 * half["grad_subnormal_share"] and master["loss_scale"] == 2.0**16
    assert master["trained_dtype"] == "torch.float32" and half["trained_dtype"] == "torch.float16"


def test_update_sizes_are_in_units_of_lr_and_of_the_weight():
    """Plain SGD moves each weight by lr * |g|: ten times the lr, the same update in units of lr
    and ten times the update relative to the weight (first step, same weights and data)."""
    small, large = (diagnose(Trainer(small_config(lr=lr, momentum=0.0), CPU)) for lr in (0.01, 0.1))
    assert small["update_over_lr_median"] == pytest.approx(large["update_over_lr_median"], rel=1e-4)
    assert large["update_to_weight_median"] == pytest.approx(10 * small["update_to_weight_median"], rel=1e-3)
    assert small["second_moment_zero_share"] is None and "no second moment" in small["second_moment_note"]


def test_updates_that_round_away_leave_weights_unchanged():
    """AdamW at lr 1e-5 moves every fp32 weight that has a gradient (the embeddings of tokens absent
    from the batch have none), few bf16 weights (their spacing is 2**-8 relative)."""
    fp32, bf16 = (diagnose(Trainer(small_config("gpt", precision=p, optimizer="adamw", lr=1e-5), CPU))
                  for p in ("fp32", "half-bf16"))
    assert fp32["unchanged_share"] < 0.05 and bf16["unchanged_share"] > 0.5


def test_overflowing_gradients_are_counted_and_the_skipped_step_said():
    trainer = Trainer(small_config(precision="amp-fp16", init_scale=2.0**40), CPU)
    result = diagnose(trainer)
    assert result["step_skipped"] is True and result["grad_nonfinite_count"] > 0
    assert result["loss_scale"] == 2.0**39 and "skipped this step" in result["update_note"]
    assert "update_over_lr_median" not in result


def test_a_step_that_makes_weights_nan_is_counted_not_a_crash():
    """A NaN weight makes the loss, every gradient and so every SGD update NaN: the record must stay
    strict JSON (it is written with allow_nan=False; a NaN ended the whole parity run there)."""
    trainer = Trainer(small_config(lr=0.01, momentum=0.0), CPU)
    with torch.no_grad():
        trainer.params[0].view(-1)[0] = float("nan")
    result = diagnose(trainer)
    json.dumps(result, allow_nan=False)  # raised ValueError before
    total = sum(p.numel() for p in trainer.params)
    assert result["grad_nonfinite_count"] > 0 and result["update_nonfinite_count"] == total
    assert result["update_over_lr_median"] is None and result["update_to_weight_p90"] is None
    assert "inf/NaN" in result["update_note"]


def test_non_finite_figures_are_null_and_named():
    assert finite_only({"a": float("inf"), "b": 1.0, "c": float("nan"), "d": None}) == {
        "a": None, "b": 1.0, "c": None, "d": None, "nonfinite_figures": ["a", "c"]}
    assert finite_only({"b": 1.0}) == {"b": 1.0}
