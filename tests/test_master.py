"""Master-weight modes: half-precision parameters for forward and backward, fp32 master weights and
fp32 optimizer state for the update; fp16 with dynamic loss scaling."""

import math

import pytest
import torch

from trainkit.engine.launch import run_cell
from trainkit.engine.loop import Trainer

from .conftest import CPU, small_config, train
from .test_equivalence import assert_same_training

MASTER_MODES = ("half-fp16-master", "half-bf16-master")
EPS = {"half-fp16-master": torch.finfo(torch.float16).eps, "half-bf16-master": torch.finfo(torch.bfloat16).eps}


def masters(trainer: Trainer) -> torch.Tensor:
    return torch.cat([m.detach().flatten() for m in trainer.params])


@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("precision", MASTER_MODES)
def test_accumulation_equivalence(model, precision):
    """batch 8 x accum 4 == batch 32 x accum 1 up to the half dtype's rounding: the gradients
    accumulate in the parameters' dtype (where DDP all-reduces them) and reach the fp32 masters
    once per step. A step that copied only the last micro-batch's gradient would be 4x off."""
    common = {"steps": 5, "lr": 0.1, "precision": precision}
    accumulated = train(small_config(model, batch_size=8, grad_accum=4, **common))
    whole = train(small_config(model, batch_size=32, grad_accum=1, **common))
    eps = EPS[precision]
    torch.testing.assert_close(accumulated.loss_curve(), whole.loss_curve(), rtol=eps, atol=0)
    a, b = masters(accumulated), masters(whole)
    assert float((a - b).abs().max()) <= eps * float(b.abs().max())
    assert accumulated.loss_curve()[-1] < accumulated.loss_curve()[0]


@pytest.mark.parametrize("precision", MASTER_MODES)
def test_resume_is_bit_identical(tmp_path, precision):
    """The checkpoint holds the masters: a resumed run continues the uninterrupted one exactly (the
    fp16 parameters alone would lose every update below their spacing)."""
    run_config = small_config("gpt", precision=precision, steps=6, optimizer="adamw", lr=3e-3, weight_decay=0.1,
                              checkpoint_dir=str(tmp_path / "a"), checkpoint_every=3)
    uninterrupted = train(run_config)
    checkpoint = tmp_path / "a" / "step00000003.pt"
    state = torch.load(checkpoint, weights_only=False)
    assert [m.dtype for m in state["precision"]["masters"]] == [torch.float32] * len(uninterrupted.params)
    resumed = train(run_config.replace(checkpoint_dir=str(tmp_path / "b"), resume_from=str(checkpoint)))
    assert resumed.resumed_from_step == 3
    assert_same_training(uninterrupted, resumed, rtol=0)
    assert torch.equal(masters(uninterrupted), masters(resumed))
    if precision == "half-fp16-master":
        assert resumed.policy.scaler.get_scale() == uninterrupted.policy.scaler.get_scale()


def test_an_inf_gradient_is_one_skipped_step_masters_and_parameters_unchanged():
    trainer = Trainer(small_config(precision="half-fp16-master", steps=6, init_scale=1024.0, growth_interval=1000),
                      CPU)
    trainer.run(2)
    before_masters = masters(trainer).clone()
    before_params = [p.detach().clone() for p in trainer.raw_model.parameters()]
    handle = trainer.raw_model.fc1.weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
    trainer.run(1)  # step 2: an inf gradient in fp16, copied into the fp32 master gradient
    handle.remove()
    assert torch.equal(masters(trainer), before_masters)
    assert all(torch.equal(a, b) for a, b in zip(trainer.raw_model.parameters(), before_params))
    trainer.run(3)
    assert trainer.skipped() == [False, False, True, False, False, False]
    assert trainer.policy.scaler.get_scale() == 512.0
    assert not torch.equal(masters(trainer), before_masters)  # the clean steps after it did update


def test_skipped_steps_and_the_price_of_the_masters_reach_the_record():
    """init_scale 2**26 overflows the fp16 gradients until the scale has halved enough: the record
    counts the skips; its config shows the fp32 copy the mode pays for."""
    record = run_cell(small_config(precision="half-fp16-master", steps=12, warmup_steps=0, init_scale=2.0**26),
                      timeout_s=120)
    assert record["status"] == "ok", record["status_detail"]
    scaler = record["scaler"]
    assert scaler["enabled"] and scaler["skipped_steps"] >= 1
    assert scaler["final_scale"] == 2.0**26 / 2 ** scaler["skipped_steps_total"]
    assert scaler["skipped_steps_total"] < 12  # then it trained
    config = record["config"]
    params = config["params"]
    assert config["param_dtype"] == "torch.float16" and config["param_bytes"] == 2 * params
    assert config["master_dtype"] == "torch.float32" and config["master_bytes"] == 4 * params
    assert config["optimizer_state_dtype"] == "torch.float32"
    fp32 = run_cell(small_config(steps=2), timeout_s=120)["config"]
    assert fp32["master_bytes"] == 0 and fp32["master_dtype"] is None and fp32["param_bytes"] == 4 * params


def test_clipping_reads_the_masters_unscaled_fp32_gradients():
    """Clipped to max_norm 0.01, one plain SGD step moves the masters by lr * 0.01, as in fp32.
    Clipping the fp16 parameters (whose gradients moved to the masters) would clip nothing, and
    clipping before unscaling would shrink the step 2**16 times."""
    start = masters(Trainer(small_config(precision="half-fp16-master"), CPU))
    clipped = masters(train(small_config(precision="half-fp16-master", steps=1, clip_grad_norm=0.01, lr=0.1,
                                         momentum=0.0)))
    assert float((clipped - start).norm()) == pytest.approx(0.1 * 0.01, rel=1e-3)


@pytest.mark.parametrize("precision", MASTER_MODES)
def test_masters_keep_updates_the_half_weights_round_away(precision):
    """Tiny AdamW steps (lr 1e-5): most bf16 weights of pure half never move, the masters do, and
    the parameters follow them once the masters have moved a whole spacing."""
    config = small_config("gpt", steps=5, optimizer="adamw", lr=1e-5)
    pure = train(config.replace(precision="half-bf16" if "bf16" in precision else "half-fp16"))
    kept = train(config.replace(precision=precision))
    start = Trainer(config.replace(precision=precision), CPU)
    moved_masters = float((masters(kept) != masters(start)).float().mean())
    moved_pure = float((torch.cat([p.detach().flatten() for p in pure.raw_model.parameters()])
                        != torch.cat([p.detach().flatten() for p in start.raw_model.parameters()])).float().mean())
    assert moved_masters > 0.99
    assert moved_pure < moved_masters - 0.05
