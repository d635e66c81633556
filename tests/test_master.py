"""Master-weight modes: half-precision parameters for forward and backward, fp32 master weights and
fp32 optimizer state for the update; fp16 with dynamic loss scaling."""

import math

import pytest
import torch

from trainkit.engine.cell.launch import run_cell
from trainkit.engine.train.loop import Trainer

from .conftest import CPU, small_config, train
from .test_equivalence import assert_same_training

MASTER_MODES = ("half-fp16-master", "half-bf16-master")
EPS = {"half-fp16-master": torch.finfo(torch.float16).eps, "half-bf16-master": torch.finfo(torch.bfloat16).eps}


def masters(trainer: Trainer) -> torch.Tensor:
    return torch.cat([m.detach().flatten() for m in trainer.params])


@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("precision", MASTER_MODES)
def test_accumulation_equivalence(model, precision):
    """batch 8 x accum 4 == batch 32 x accum 1 up to the half dtype's rounding: the micro-batches'
    gradients add up in the masters' fp32 main gradients. A step that kept only the last
    micro-batch's gradient would be 4x off."""
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


def micro_and_main_grads(precision: str, fp32_main_grads: bool, grad_accum: int = 8):
    """One step's micro-batch gradients as backward left them (before after_backward) and the
    masters' gradients unscale_ left, scaled back by the loss scale."""
    trainer = Trainer(small_config("gpt", precision=precision, batch_size=2, grad_accum=grad_accum,
                                   fp32_main_grads=fp32_main_grads), CPU)
    policy, micro, main = trainer.policy, [], []
    after_backward, unscale_ = policy.after_backward, policy.unscale_

    def spy_after_backward():
        micro.append([p.grad.clone() for p in policy.params])
        after_backward()

    def spy_unscale_(optimizer):
        unscale_(optimizer)
        scale = policy.scaler.get_scale() if policy.scaler is not None else 1.0  # a power of 2: exact
        main.extend(m.grad * scale for m in policy.masters)

    policy.after_backward, policy.unscale_ = spy_after_backward, spy_unscale_
    trainer.run(1)
    return micro, main


def relative_error(grads: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    diff = torch.cat([(g.double() - e).flatten() for g, e in zip(grads, exact)])
    return float(diff.norm() / torch.cat([e.flatten() for e in exact]).norm())


@pytest.mark.parametrize("precision", MASTER_MODES)
def test_fp32_main_grads_add_the_micro_batches_in_fp32(precision):
    """With fp32 main gradients (the default) the masters' gradient is the fp32 sum of the
    micro-batches' half-precision gradients, exactly; accumulated in the half dtype instead (the
    old way, fp32_main_grads=False) each addition rounds, and the total is off by far more."""
    micro, main = micro_and_main_grads(precision, True)
    assert len(micro) == 8 and all(g.dtype == torch.float32 for g in main)
    fp32_sum = [sum((m[i].float() for m in micro[1:]), micro[0][i].float()) for i in range(len(main))]
    assert all(torch.equal(g, s) for g, s in zip(main, fp32_sum))
    exact = [sum(m[i].double() for m in micro) for i in range(len(main))]
    half_micro, half_main = micro_and_main_grads(precision, False)
    assert all(g.dtype == torch.float32 for g in half_main)  # copied into the masters at the end
    # The same weights and samples: the running half-precision total at the last micro-batch.
    assert relative_error(main, exact) < 1e-6
    assert relative_error(half_main, exact) > 50 * relative_error(main, exact)
    assert relative_error(half_main, exact) < 4 * EPS[precision]  # rounding, not a wrong sum


def test_fp32_main_grads_are_averaged_over_ranks_in_fp32():
    """2 ranks x 2 micro-batches == 1 rank x 4 micro-batches: the policy all-reduces the fp32 main
    gradients itself (DDP syncs none of the micro-batches), and the replicas stay identical."""
    common = {"precision": "half-bf16-master", "steps": 4, "warmup_steps": 0, "lr": 0.1}
    two = run_cell(small_config("mlp", world_size=2, grad_accum=2, **common), timeout_s=300)
    assert two["status"] == "ok", two["status_detail"]  # a rank apart would end it "crashed"
    assert two["config"]["grad_accum_dtype"] == "torch.float32" and two["config"]["grad_dtype"] == "torch.bfloat16"
    one = train(small_config("mlp", grad_accum=4, **common))
    torch.testing.assert_close(torch.tensor(two["loss"]["curve"], dtype=torch.float64), one.loss_curve(),
                               rtol=EPS["half-bf16-master"], atol=0)
