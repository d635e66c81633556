"""Every precision policy honours one contract; the scaler-specific behaviour is tested apart."""

from unittest import mock

import pytest
import torch

from trainkit.engine.spec.precision_facts import facts_of, precision_names
from trainkit.engine.train.loop import Trainer, Unsupported
from trainkit.engine.train.precision import MixedPrecision, build_precision

from .conftest import CPU, flat_params, small_config, train

CPU_PRECISIONS = [p for p in precision_names() if not facts_of(p).cuda_only]  # FP8 on a CPU: test_float8.py
EXPECTED_PARAM_DTYPE = {"fp32": torch.float32, "amp-fp16": torch.float32, "amp-bf16": torch.float32,
                        "half-fp16": torch.float16, "half-bf16": torch.bfloat16, "half-bf16-sr": torch.bfloat16,
                        "half-bf16-kahan": torch.bfloat16, "half-fp16-master": torch.float16,
                        "half-bf16-master": torch.bfloat16}
EXPECTED_STATE_DTYPE = {**EXPECTED_PARAM_DTYPE, "half-fp16-master": torch.float32, "half-bf16-master": torch.float32}
MASTER_MODES = ("half-fp16-master", "half-bf16-master")


@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_policy_contract(precision, model):
    """Finite loss after a few steps, parameter dtypes as the mode says, default dtype untouched,
    a scaler exactly in the modes with dynamic loss scaling."""
    default_dtype = torch.get_default_dtype()
    trainer = train(small_config(model, precision=precision, steps=4, optimizer="adam", lr=1e-3))
    curve = trainer.loss_curve()
    assert torch.isfinite(curve).all(), curve
    assert {p.dtype for p in trainer.raw_model.parameters()} == {EXPECTED_PARAM_DTYPE[precision]}
    assert torch.get_default_dtype() == default_dtype
    assert (trainer.policy.scaler is not None) == (precision in ("amp-fp16", "half-fp16-master"))
    # Optimizer state follows what the optimizer updates: the parameters (pure half keeps its Adam
    # moments in half too), or the fp32 master weights of the master modes.
    state_dtypes = {v.dtype for s in trainer.optimizer.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor) and v.ndim > 0}  # a step counter may be a host int
    assert state_dtypes == {EXPECTED_STATE_DTYPE[precision]}
    updated = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert updated == {id(p) for p in trainer.params}
    if precision in MASTER_MODES:  # the masters are fp32, apart from the parameters, and rounded into them
        assert {p.dtype for p in trainer.params} == {torch.float32}
        assert not updated & {id(p) for p in trainer.raw_model.parameters()}
        for param, master in zip(trainer.raw_model.parameters(), trainer.params):
            assert torch.equal(param, master.to(param.dtype))


def test_tf32_is_unsupported_on_cpu_with_a_reason():
    with pytest.raises(Unsupported, match="tf32 needs a CUDA GPU"):
        Trainer(small_config(precision="tf32"), CPU)


def test_fp32_turns_tf32_off_explicitly():
    """Every flag starts on (cuDNN's default is on; a user's script may have turned matmul's on), so
    only an explicit off passes."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        build_precision(small_config(precision="fp32"), CPU).configure_backends()
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_amp_fp16_calls_unscale_step_and_update_once_per_optimizer_step():
    policy = MixedPrecision(CPU, small_config(precision="amp-fp16"))
    policy._scaler = mock.Mock()
    policy._scaler._scale = torch.tensor(8.0)
    optimizer = mock.Mock()
    policy.unscale_(optimizer)
    policy.optimizer_step(optimizer)
    policy._scaler.unscale_.assert_called_once_with(optimizer)
    policy._scaler.step.assert_called_once_with(optimizer)
    policy._scaler.update.assert_called_once_with()


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_scaler_updates_once_per_optimizer_step_in_the_loop(grad_accum):
    trainer = Trainer(small_config(precision="amp-fp16", grad_accum=grad_accum, steps=4), CPU)
    scaler = trainer.policy.scaler
    with mock.patch.object(scaler, "update", wraps=scaler.update) as update, \
            mock.patch.object(scaler, "unscale_", wraps=scaler.unscale_) as unscale:
        trainer.run(4)
    assert update.call_count == 4
    assert unscale.call_count == 4


def test_half_fp16_static_loss_scale_is_divided_out():
    """With a static loss scale the update must equal the unscaled one (SGD, exact powers of 2)."""
    plain = train(small_config(precision="half-fp16", steps=2))
    scaled = train(small_config(precision="half-fp16", steps=2, static_loss_scale=1024.0))
    for a, b in zip(plain.raw_model.parameters(), scaled.raw_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_clipping_sees_unscaled_gradients_under_amp_fp16():
    """Clipping after unscale_: the clipped update under AMP matches fp32's closely; clipping
    scaled gradients (2**16 times too large) would shrink the update to almost nothing."""
    start = flat_params(Trainer(small_config(), CPU))
    unclipped = flat_params(train(small_config(steps=1, lr=0.1, momentum=0.0)))
    fp32 = flat_params(train(small_config(steps=1, clip_grad_norm=0.01, lr=0.1, momentum=0.0)))
    amp = flat_params(train(small_config(steps=1, clip_grad_norm=0.01, lr=0.1, momentum=0.0, precision="amp-fp16")))
    assert (fp32 - start).norm() < 0.5 * (unclipped - start).norm()  # the clip is active
    assert float((fp32 - start).norm()) == pytest.approx(0.1 * 0.01, rel=1e-3)  # lr * max_norm
    assert float((amp - start).norm()) == pytest.approx(float((fp32 - start).norm()), rel=0.02)
