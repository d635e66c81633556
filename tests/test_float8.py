"""FP8 modes (torchao float8 training): where they run, what they convert, and their loss on a CPU.

A CPU has no float8 GEMMs worth timing, so the bench never runs FP8 there; the numerics are checked
here through torchao's emulation (Float8LinearConfig(emulate=True)), which the policy takes as a
constructor argument."""

from __future__ import annotations

import sys

import pytest
import torch

from trainkit.bench.matrix import skip_reason
from trainkit.engine.cell.record import RankReport, RankTiming, merge_ranks
from trainkit.engine.measure import flops
from trainkit.engine.train import float8
from trainkit.engine.train.hardware import Hardware
from trainkit.engine.train.loop import Trainer, Unsupported
from trainkit.engine.train.precision import POLICIES, Float8Precision

from .conftest import CPU, small_config

FP8_MODES = ("fp8-tensorwise", "fp8-rowwise")
LOSS_TOLERANCE = 0.02
"""Largest |loss difference| from amp-bf16 allowed at any of the 6 steps below (losses 4.5 -> 4.2).
Measured on this machine: 0.0015 (tensorwise) and 0.0022 (rowwise); fp32 is 0.0004 from amp-bf16.
On a larger GPT over 20 steps the gap stays below 0.006 for both recipes."""
H100 = Hardware("cuda", 1, (9, 0), "NVIDIA H100 80GB HBM3")
# Every linear layer but the head is a multiple of 16 wide: qkv 32->96, proj 32->32, fc 32->128,
# fc_out 128->32; the head 32->72 is not (72 = 4.5 x 16) and stays in bf16.
GPT = dict(vocab_size=72, seq_len=16, gpt_layers=1, gpt_heads=2, gpt_width=32)


def needs_torchao(mode: str = "fp8-rowwise") -> None:
    reason = float8.missing_reason(mode)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize(("hw", "expected"), [
    (Hardware("cpu", cpu_count=2), "fp8-rowwise needs a CUDA GPU with compute capability >= 8.9"),
    (Hardware("cuda", 1, (8, 0), "NVIDIA A100-SXM4-80GB"),
     "fp8-rowwise needs compute capability >= 8.9 (NVIDIA A100-SXM4-80GB is 8.0)"),
    (Hardware("cuda", 1, (8, 9), "NVIDIA L4"), None),
    (H100, None),
])
def test_fp8_runs_from_compute_capability_8_9(hw, expected):
    if expected is None:
        needs_torchao()
    assert skip_reason("gpt", "fp8-rowwise", 1, hw) == expected
    assert POLICIES["fp8-rowwise"].unsupported_on(hw.device, hw.capability, hw.gpu_name) == expected


HINT = "pip install 'trainkit[fp8]' (torchao>=0.17,<0.19)"


@pytest.mark.parametrize(("installed", "torch_version", "expected"), [
    (None, "2.14.1", f"fp8-tensorwise needs torchao, an optional extra: {HINT}"),
    ("0.16.0", "2.14.1", f"fp8-tensorwise needs torchao>=0.17,<0.19 (installed: torchao 0.16.0): {HINT}"),
    ("0.19.0", "2.14.1", f"fp8-tensorwise needs torchao>=0.17,<0.19 (installed: torchao 0.19.0): {HINT}"),
    ("0.18.0", "2.10.0", "fp8-tensorwise needs torch >= 2.11 for torchao's float8 training (installed: torch 2.10.0)"),
    ("0.17.0+cu130", "2.14.1", None),
])
def test_without_a_fitting_torchao_the_cells_are_unsupported_with_an_install_hint(
        monkeypatch, installed, torch_version, expected):
    monkeypatch.setattr(float8, "torchao_version", lambda: installed)
    monkeypatch.setattr(torch, "__version__", torch_version)
    assert skip_reason("gpt", "fp8-tensorwise", 1, H100) == expected
    # The worker asks the same question before it imports anything: a record, never an ImportError.
    config = small_config("gpt", precision="fp8-tensorwise", **GPT)
    policy = Float8Precision(CPU, config, emulate=True)
    assert policy.unsupported_reason() == expected
    if expected is not None:
        with pytest.raises(Unsupported) as refused:
            Trainer(config, CPU, policy=policy)
        assert str(refused.value) == expected


def test_a_hidden_torchao_makes_the_cells_unsupported_never_an_import_error(monkeypatch):
    """torchao not importable at all, as without the extra: the gate answers before anything imports
    it, in bench's collection and in the worker."""
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` raises ImportError; find_spec: None
    float8._float8.cache_clear()  # no float8 module left over from an earlier test
    with pytest.raises(ImportError):
        float8.float8_linear_class()
    expected = f"fp8-rowwise needs torchao, an optional extra: {HINT}"
    assert float8.torchao_version() is None and float8.missing_reason("fp8-rowwise") == expected
    assert skip_reason("gpt", "fp8-rowwise", 1, H100) == expected
    config = small_config("gpt", precision="fp8-rowwise", **GPT)
    with pytest.raises(Unsupported) as refused:
        Trainer(config, CPU, policy=POLICIES["fp8-rowwise"](CPU, config, emulate=True))
    assert str(refused.value) == expected


def train(precision: str, steps: int, emulate: bool) -> Trainer:
    config = small_config("gpt", precision=precision, steps=steps, optimizer="adamw", lr=3e-3, **GPT)
    policy = POLICIES[precision](CPU, config, emulate=True) if emulate else None
    trainer = Trainer(config, CPU, policy=policy)
    trainer.run(trainer.total_steps)
    return trainer


@pytest.fixture(scope="module")
def amp_bf16_curve():
    return train("amp-bf16", 6, emulate=False).loss_curve()


@pytest.mark.parametrize("mode", FP8_MODES)
def test_emulated_fp8_converts_the_gpt_and_trains_within_tolerance_of_amp_bf16(mode, amp_bf16_curve):
    needs_torchao(mode)
    trainer = train(mode, 6, emulate=True)
    converted = ["blocks.0.qkv", "blocks.0.proj", "blocks.0.fc", "blocks.0.fc_out"]
    float8_linear = float8.float8_linear_class()
    assert [n for n, m in trainer.raw_model.named_modules() if isinstance(m, float8_linear)] == converted
    assert type(trainer.raw_model.head) is torch.nn.Linear

    details = trainer.policy.details(trainer.workload)
    assert details["recipe"] == mode.removeprefix("fp8-") and details["emulate"] is True
    assert details["converted_layers"] == converted
    assert details["skipped_layers"] == [{"layer": "head", "reason": "32->72 features, not multiples of 16"}]
    # Every linear layer here computes its input gradient (6 FLOPs per weight and token), so the
    # share is that of the weights: (32*96 + 32*32 + 32*128 + 128*32) / (that + 32*72).
    assert details["converted_linear_flop_share"] == pytest.approx(12288 / (12288 + 2304))
    assert details["float8_flops_per_sample"] == 6 * 12288 * GPT["seq_len"]  # 6 per weight and token

    curve = trainer.loss_curve()
    assert torch.isfinite(curve).all()
    gap = (curve - amp_bf16_curve).abs()
    assert float(gap.max()) <= LOSS_TOLERANCE, (curve, amp_bf16_curve)
    assert float(gap.max()) > 0  # the float8 casts ran: bf16's curve is not reproduced bit for bit
    assert curve[-1] < curve[0]  # and it learns


def test_the_flop_share_counts_a_first_layer_without_its_input_gradient():
    """The MLP's fc1 reads the data, which needs no gradient: 4 FLOPs per weight and sample, not 6."""
    from trainkit.engine.workloads.models import build_builtin

    flops = float8.linear_flops(build_builtin(small_config("mlp")))  # for a batch of 2
    assert flops == {"fc1": 2 * 4 * 784 * 128, "fc2": 2 * 6 * 128 * 64, "fc3": 2 * 6 * 64 * 10}


def test_a_model_without_a_convertible_layer_is_unsupported_at_build_time():
    needs_torchao()
    config = small_config("gpt", precision="fp8-rowwise", **{**GPT, "gpt_width": 40, "vocab_size": 64})
    with pytest.raises(Unsupported, match=r"fp8-rowwise: no linear layer of gpt can run in float8 \(skipped: "
                                          r"blocks\.0\.qkv 40->120 features, not multiples of 16;"):
        Trainer(config, CPU, policy=POLICIES["fp8-rowwise"](CPU, config, emulate=True))


def test_fp8_over_epochs_drops_the_short_micro_batch_and_says_so():
    """A short last micro-batch of 8 rows would fail float8's weight-gradient GEMM on a GPU (its rows
    must be a multiple of 16); emulation would run it, so the data is checked, not the GEMM."""
    needs_torchao()
    config = small_config("gpt", precision="fp8-rowwise", batch_size=16, epochs=1, dataset_size=40, **GPT)
    trainer = Trainer(config, CPU, policy=POLICIES["fp8-rowwise"](CPU, config, emulate=True))
    trainer.run(trainer.total_steps)
    assert trainer.step_samples == [16, 16]
    assert trainer.data.drop_reason == "float8 GEMMs need the rows of every micro-batch to be a multiple of 16"
    assert trainer.data.dropped_samples_per_epoch == 8
    amp = Trainer(config.replace(precision="amp-bf16"), CPU)  # the same data in bf16 keeps all 40
    amp.run(amp.total_steps)
    assert amp.step_samples == [16, 16, 8] and amp.data.drop_reason is None


def test_micro_batch_rows_must_be_a_multiple_of_16_on_a_gpu():
    """The weight gradient's GEMM runs over the micro-batch's rows; emulation has no such limit."""
    config = small_config("mlp", precision="fp8-rowwise", batch_size=24)
    with pytest.raises(Unsupported, match=r"rows of a micro-batch to be a multiple of 16 \(batch_size x tokens = 24\)"):
        POLICIES["fp8-rowwise"](CPU, config).convert_module(torch.nn.Linear(32, 32))


H100_TFLOPS = flops.PEAK_TFLOPS[H100.gpu_name]


def test_fp8_mfu_divides_each_dtypes_flops_by_its_own_peak():
    """A quarter of the FLOPs in float8, the rest in bf16: MFU is the float8 FLOP/s over the fp8
    peak plus the bf16 FLOP/s over the bf16 peak. All divided by the fp8 peak, it would be 4/7 of
    that on an H100 (whose fp8 peak is twice its bf16 one, to 1e-4), and would not compare with amp-bf16's."""
    flops_per_sample, throughput = 4e9, 1e5
    details = {"float8_flops_per_sample": 1e9}
    peak, method = flops.mfu_peak(H100.gpu_name, "fp8-rowwise", flops_per_sample, details)
    utilisation = flops.mfu(flops_per_sample, throughput, peak, 1)
    by_dtype = 1e9 * throughput / (H100_TFLOPS["fp8"] * 1e12) + 3e9 * throughput / (H100_TFLOPS["bf16"] * 1e12)
    assert utilisation == pytest.approx(by_dtype, rel=1e-12)
    all_at_fp8 = flops.mfu(flops_per_sample, throughput, H100_TFLOPS["fp8"] * 1e12, 1)
    assert all_at_fp8 == pytest.approx(4 / 7 * utilisation, rel=1e-4)
    assert method.startswith("FLOPs per dtype") and "bf16" in method
    # All FLOPs in float8 reach the fp8 peak; none, the bf16 peak (amp-bf16's).
    assert flops.mfu_peak(H100.gpu_name, "fp8-tensorwise", 4e9, {"float8_flops_per_sample": 4e9})[0] \
        == pytest.approx(H100_TFLOPS["fp8"] * 1e12)
    assert flops.mfu_peak(H100.gpu_name, "fp8-tensorwise", 4e9, {"float8_flops_per_sample": 0.0})[0] \
        == pytest.approx(flops.peak_flops_per_s(H100.gpu_name, "amp-bf16"))
    assert flops.mfu_peak(H100.gpu_name, "amp-bf16", 4e9, None) == (
        flops.peak_flops_per_s(H100.gpu_name, "amp-bf16"), "flops_per_sample x throughput / (bf16 dense peak x GPUs)")


def test_fp8_mfu_is_null_without_both_peaks_or_the_float8_flops():
    assert flops.mfu_peak("NVIDIA A100-SXM4-80GB", "fp8-rowwise", 4e9, {"float8_flops_per_sample": 1e9})[0] is None
    assert flops.mfu_peak(H100.gpu_name, "fp8-rowwise", 4e9, None)[0] is None
    assert flops.mfu_peak(None, "fp8-rowwise", 4e9, {"float8_flops_per_sample": 1e9})[0] is None
    assert flops.peak_unknown_reason("NVIDIA B200", "fp8-rowwise") is None  # bf16 and fp8 both sourced
    assert flops.peak_unknown_reason("NVIDIA A100-SXM4-80GB", "fp8-rowwise") == \
        "no sourced dense fp8 peak for 'NVIDIA A100-SXM4-80GB'"


def test_an_fp8_record_carries_its_mfu_method():
    """The record's mfu, peak_flops_per_s and mfu_method from a GPU-shaped rank report."""
    config = small_config("gpt", precision="fp8-rowwise", batch_size=16, **GPT)
    report = RankReport(rank=0, pid=1, flops_per_sample=4e9, env={"gpu_name": H100.gpu_name},
                        derived={"resolved_device": "cuda:0"}, precision_details={"float8_flops_per_sample": 1e9},
                        timing=RankTiming(step_times_s=[0.01] * 4, timed_samples=[16] * 4, first_timed_step=0))
    record = merge_ranks(config, [report])
    peak, method = flops.mfu_peak(H100.gpu_name, "fp8-rowwise", 4e9, {"float8_flops_per_sample": 1e9})
    assert record["peak_flops_per_s"] == peak and record["mfu_method"] == method
    assert record["mfu"] == pytest.approx(4e9 * record["throughput_samples_per_s"] / peak)
