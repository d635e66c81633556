"""FLOPs and MFU: what a model's training step costs, and what fraction of a GPU's peak it reaches.

Model FLOPs are counted by torch's FlopCounterMode on the meta device; peaks come from a sourced
table per GPU and dtype. MFU is null wherever the peak is unknown, never a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..spec.precision_facts import facts_of

if TYPE_CHECKING:
    from ..spec.config import RunConfig
    from ..workloads.workload import Workload


# Dense peak TFLOP/s (no 2:4 sparsity) per GPU and peak kind (precision_facts.PeakKind), keyed by
# the device name *exactly* as torch.cuda.get_device_name() and NVML report it: a substring match
# gives "NVIDIA L40S" the L4's peaks (MFU 3x too high) and "NVIDIA H200 NVL" the H200 SXM's, and a
# MIG slice ("NVIDIA A100-SXM4-40GB MIG 1g.5gb") the whole GPU's. A name not here, or a kind a GPU
# has no tensor path for, has no peak: MFU is then null, never a near miss.
# fp8 (Ada, Hopper, Blackwell) is e4m3 with fp32 accumulation, as torch._scaled_mm runs it.
# fp16 and bf16 are tensor-core rates with fp32 accumulation (what cuBLAS uses under PyTorch; half
# the fp16-accumulate figure on GeForce cards). Where a datasheet prints only sparse figures they
# are halved, as NVIDIA's footnotes say ("1/2 lower without sparsity").
# Names: NVIDIA's driver product-name table (NVIDIA/open-gpu-kernel-modules README, "Compatible
# GPUs"); Volta's from nvidia-smi output.
_H100_SXM = {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}
_H100_NVL = {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5, "fp8": 1670.5}
_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}
_V100_SXM2 = {"fp32": 15.7, "fp16": 125.0}
_V100_PCIE = {"fp32": 14.0, "fp16": 112.0}
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # H100 datasheet, https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
    # (sparse figures, halved); SXM at the whitepaper's exact dense values (1830 MHz boost):
    # https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5, "fp8": 1513.0},
    "NVIDIA H100 NVL": _H100_NVL,  # per GPU, not the 2-card pair of 2023's material
    # H200: https://www.nvidia.com/en-us/data-center/h200/ (SXM and NVL columns, sparse, halved).
    "NVIDIA H200": _H100_SXM,
    "NVIDIA H200 NVL": _H100_NVL,
    # B200: https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200 per GPU, sparse, halved); NVIDIA's
    # pages disagree on fp32 (75 vs 80 TFLOP/s) and tf32 (1100 vs 1125), so those stay unknown.
    "NVIDIA B200": {"bf16": 2250.0, "fp16": 2250.0, "fp8": 4500.0},
    # A100 datasheet (all four SKUs alike, dense printed):
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    # L4 datasheet (sparse only, halved): https://resources.nvidia.com/en-us-gpu-resources/l4-tensor-datasheet
    "NVIDIA L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.5},
    # L40S and L40 datasheets (dense printed): https://resources.nvidia.com/en-us-l40s/l40s-datasheet-28413,
    # https://www.nvidia.com/en-us/data-center/l40/
    "NVIDIA L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05, "fp8": 733.0},
    "NVIDIA L40": {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05, "fp8": 362.0},
    # A10 datasheet (dense printed): https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
    # The A10G (AWS) is another chip (PCI ID 2237, the A10's is 2236) with no NVIDIA datasheet: unknown.
    "NVIDIA A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
    # A40 datasheet: https://images.nvidia.com/content/Solutions/data-center/a40/nvidia-a40-datasheet.pdf
    "NVIDIA A40": {"fp32": 37.4, "tf32": 74.8, "bf16": 149.7, "fp16": 149.7},
    # V100 datasheet (Volta: no bf16, no tf32):
    # https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
    "Tesla V100-SXM2-16GB": _V100_SXM2,
    "Tesla V100-SXM2-32GB": _V100_SXM2,
    "Tesla V100-PCIE-16GB": _V100_PCIE,
    "Tesla V100-PCIE-32GB": _V100_PCIE,
    # T4 datasheet ("Mixed-Precision (FP16/FP32) 65 TFLOPS"; Turing: no bf16, no tf32):
    # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
    "Tesla T4": {"fp32": 8.1, "fp16": 65.0},
    # Ada whitepaper, appendix A (fp32 accumulation):
    # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
    "NVIDIA GeForce RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2, "fp8": 330.3},
    # GA102 whitepaper v2, appendix A (fp32 accumulation):
    # https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf
    "NVIDIA GeForce RTX 3090": {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0},
    "NVIDIA RTX A6000": {"fp32": 38.7, "tf32": 77.4, "bf16": 154.8, "fp16": 154.8},
}


def peak_flops_per_s(gpu_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU for a precision mode, or None when unknown (never a guess)."""
    tflops = PEAK_TFLOPS.get(gpu_name or "", {}).get(facts_of(precision).peak_kind)
    return None if tflops is None else tflops * 1e12


def peak_unknown_reason(gpu_name: str | None, precision: str) -> str | None:
    """Why peak_flops_per_s is None for this GPU and mode, or None when it is known."""
    if not gpu_name:
        return "no GPU: MFU is a GPU measure"
    if gpu_name not in PEAK_TFLOPS:
        return (f"no sourced dense peak for {gpu_name!r} "
                "(trainkit.engine.measure.flops.PEAK_TFLOPS matches names exactly)")
    for kind in peak_kinds(precision):
        if kind not in PEAK_TFLOPS[gpu_name]:
            return f"no sourced dense {kind} peak for {gpu_name!r}"
    return None


FP8_REST_KIND = "bf16"
"""What an FP8 mode's FLOPs outside its float8 layers run in: attention and the unconverted layers
under bf16 autocast (precision.Float8Precision)."""
MFU_METHOD = "flops_per_sample x throughput / ({kind} dense peak x GPUs)"
FP8_MFU_METHOD = (
    "FLOPs per dtype: the float8 layers' training FLOPs (precision_details.float8_flops_per_sample) over "
    "the fp8 dense peak plus the rest of flops_per_sample over the bf16 dense peak, each x throughput / GPUs; "
    "peak_flops_per_s is the peak that gives the same MFU for all FLOPs (flops / sum of FLOPs over peak)")


def peak_kinds(precision: str) -> tuple[str, ...]:
    """The dense peaks a mode's FLOPs run at: its own, and bf16 besides for FP8 modes."""
    kind = facts_of(precision).peak_kind
    return (kind, FP8_REST_KIND) if kind == "fp8" else (kind,)


def mfu_peak(gpu_name: str | None, precision: str, flops_per_sample: float | None,
             details: dict[str, Any] | None) -> tuple[float | None, str]:
    """(The peak FLOP/s that MFU divides by, how it was formed: the `mfu_method` of the record).
    An FP8 mode runs only its converted linear layers in float8 and the rest in bf16, so each dtype's
    FLOPs are divided by their own peak; dividing all of them by the fp8 peak would halve MFU for the
    part that cannot reach it, and no FP8 MFU would compare with amp-bf16's. None where a peak or
    the float8 FLOPs are unknown."""
    kind = facts_of(precision).peak_kind
    if kind != "fp8":
        return peak_flops_per_s(gpu_name, precision), MFU_METHOD.format(kind=kind)
    peaks = PEAK_TFLOPS.get(gpu_name or "", {})
    float8_flops = (details or {}).get("float8_flops_per_sample")
    if not flops_per_sample or float8_flops is None or any(k not in peaks for k in peak_kinds(precision)):
        return None, FP8_MFU_METHOD
    rest = max(0.0, flops_per_sample - float8_flops)
    seconds_at_peak = float8_flops / (peaks["fp8"] * 1e12) + rest / (peaks[FP8_REST_KIND] * 1e12)
    return flops_per_sample / seconds_at_peak, FP8_MFU_METHOD


def mfu(flops_per_sample: float | None, throughput_samples_per_s: float | None, peak_per_gpu: float | None,
        gpus: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all GPUs used."""
    if not flops_per_sample or not throughput_samples_per_s or not peak_per_gpu:
        return None
    return flops_per_sample * throughput_samples_per_s / (peak_per_gpu * gpus)


def flop_counts(workload: Workload) -> tuple[Any, Any, int]:
    """(A FlopCounterMode that counted one forward + backward of the workload's model, that model,
    the batch it ran.) On the meta device (no memory, no compute) where the model's forward runs
    there, else on a real CPU batch of two (data-dependent code, as in transformers' masks, or a
    module-level constant; two, since BatchNorm refuses one sample in training mode)."""
    # torch: this module is torch-free at import (the reports' flags and nightly's gpu-check read its peak table)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2  # any size works: the count is linear in the batch
    try:
        with torch.device("meta"):
            model = workload.build()
        x, target = workload.example_batch(batch, "meta")
        with FlopCounterMode(display=False) as counter:
            workload.loss_fn(model(x), target).backward()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        model = workload.build()
        x, target = workload.make_batch(batch, torch.Generator().manual_seed(0), torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            workload.loss_fn(model(x), target).backward()
    return counter, model, batch


def training_flops_per_sample(workload: Workload) -> float:
    """FLOPs of one forward + backward pass per sample: the workload's own figure if it gives one,
    else counted by torch's FlopCounterMode (flop_counts). Counts matmuls, convolutions and
    attention; elementwise ops are ignored, as in every MFU convention (PaLM appendix B)."""
    if workload.flops_per_sample is not None:
        return float(workload.flops_per_sample)
    counter, _, batch = flop_counts(workload)
    return counter.get_total_flops() / batch


def gpt_flops_per_token(config: RunConfig) -> float:
    """PaLM's formula (appendix B) for the training FLOPs of one token: 6 per weight of every
    linear layer (2 forward, 4 backward; embeddings are lookups, not matmuls), plus 12*L*T*d for
    attention's QK^T and AV over the full T x T square (SDPA's math does not skip the masked half)."""
    width, layers, seq_len = config.gpt_width, config.gpt_layers, config.seq_len
    linear_weights = layers * 12 * width * width + width * config.vocab_size
    return 6 * linear_weights + 12 * layers * width * seq_len
