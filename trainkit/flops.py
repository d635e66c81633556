"""FLOPs and MFU: what a model's training step costs, and what fraction of a GPU's peak it reaches.

Model FLOPs are counted by torch's FlopCounterMode on the meta device; peaks come from a sourced
table per GPU and dtype. MFU is null wherever the peak is unknown, never a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .precision_facts import facts_of

if TYPE_CHECKING:
    from .config import RunConfig
    from .models import ModelSpec


# # MFU: dense peak FLOP/s per GPU and dtype, from NVIDIA's datasheets (no sparsity).
# A100: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
# H100/H200: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#            https://nvdam.widen.net/s/nb5zzzsjdf/hpc-datasheet-sc23-h200-datasheet-3002446
# L4: https://www.nvidia.com/en-us/data-center/l4/   A10: https://www.nvidia.com/en-us/data-center/products/a10-gpu/
# V100: https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
# T4: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
# Keys are matched as substrings of the GPU name, first match wins (so "H100 PCIe" precedes "H100").
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    ("V100", {"fp32": 15.7, "fp16": 125.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0}),
]


def peak_flops_per_s(gpu_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU for a precision mode, or None when unknown (never a guess)."""
    if not gpu_name:
        return None
    for key, table in PEAK_TFLOPS:
        if key in gpu_name:
            tflops = table.get(facts_of(precision).peak_kind)
            return None if tflops is None else tflops * 1e12
    return None


def mfu(flops_per_sample: float | None, throughput_samples_per_s: float | None, peak_per_gpu: float | None,
        gpus: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all GPUs used."""
    if not flops_per_sample or not throughput_samples_per_s or not peak_per_gpu:
        return None
    return flops_per_sample * throughput_samples_per_s / (peak_per_gpu * gpus)


def training_flops_per_sample(spec: ModelSpec) -> float:
    """FLOPs of one forward + backward pass per sample, counted by torch's FlopCounterMode on the
    meta device (no memory, no compute). Counts matmuls, convolutions and attention; elementwise
    ops are ignored, as in every MFU convention (PaLM appendix B)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2  # any size works: the count is linear in the batch
    with torch.device("meta"):
        model = spec.build()
        if spec.tokens:
            x = torch.zeros((batch, *spec.input_shape), dtype=torch.long)
        else:
            x = torch.zeros((batch, *spec.input_shape))
        target_shape = (batch, *spec.input_shape) if spec.tokens else (batch,)
        target = torch.zeros(target_shape, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        spec.loss_fn(model(x), target).backward()
    return counter.get_total_flops() / batch


def gpt_flops_per_token(config: RunConfig) -> float:
    """PaLM's formula (appendix B) for the training FLOPs of one token: 6 per weight of every
    linear layer (2 forward, 4 backward; embeddings are lookups, not matmuls), plus 12*L*T*d for
    attention's QK^T and AV over the full T x T square (SDPA's math does not skip the masked half)."""
    width, layers, seq_len = config.gpt_width, config.gpt_layers, config.seq_len
    linear_weights = layers * 12 * width * width + width * config.vocab_size
    return 6 * linear_weights + 12 * layers * width * seq_len
