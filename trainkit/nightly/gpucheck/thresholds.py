"""Every bound a gpu-check check decides by, with the reason it has that value."""

from __future__ import annotations

import math

TIME_TOLERANCE = 0.03
"""A cell's summed step times within 3 % of the worker's clock around the same steps: that clock
adds only the window's two syncs and counter reads, a few ms, to a window of seconds."""
ENERGY_TOLERANCE = 0.10
"""Energy from NVML's counter within 10 % of NVML's mean power x the window."""
MFU_EXPECTED = {
    "compiled": (0.33, "GPT-2 124M bf16 under torch.compile on one H100: about 33 % of the dense 989 TFLOP/s "
                       "(nanoGPT#464)"),
    "eager": (0.18, "GPT-2 124M bf16 eager on one H100: about 18 %, nanoGPT's compiled 33 % (nanoGPT#464) over the "
                    "1.85x torch.compile gives it (nanoGPT README: 250 -> 135 ms/iter)"),
}
"""The MFU a healthy GPU shows for the checked cell, by how it runs, with
the source. gpu-check's GPT cell runs eager."""
MFU_BAND_FACTORS = (0.5, 1.6)
"""The plausible band around the expected MFU: below half of it the GPU starves (input, launch
overhead, a slow kernel); above 1.6x the FLOPs are over-counted or the peak is wrong: a doubled FLOP
count reads 2x, an A100's 312 TFLOP/s used on an H100 3.2x (nanoGPT#464's "104 % MFU")."""


def mfu_band(compiled: bool) -> tuple[float, float, str]:
    """The plausible MFU band of the checked cell, eager or compiled, and its source."""
    expected, source = MFU_EXPECTED["compiled" if compiled else "eager"]
    low, high = MFU_BAND_FACTORS
    return expected * low, expected * high, source


HALF_SHARE_MIN = 1 / 3
"""Least share of operator time with fp16/bf16 inputs in an autocast step. Autocast keeps norms,
softmax, the loss and the fp32 optimizer step in fp32, so even a working mode stays well below 1;
a mode that silently computes in fp32 shows 0 (the fp32 cell does)."""
FP32_UNIT_ROUNDOFF = 2.0**-24
TF32_UNIT_ROUNDOFF = 2.0**-11
"""TF32 keeps 10 of fp32's 23 mantissa bits (as fp16 does); bf16 keeps 7 (unit roundoff 2^-8)."""
TF32_BAND_FACTOR = math.sqrt(8)
"""TF32's level: within a factor sqrt(8) (1.5 bits) of its unit roundoff either way. Rounding the
inputs to nearest gives a relative error of about 0.6 x 2^-11, truncating them about 1.6 x 2^-11;
bf16 (8x coarser) lands above the band, fp32 (2^13 x finer) far below it."""
LOSS_INPUT_BYTES = 4
"""Bytes per element of the loss's input and its gradient: fp32 in every mode. Autocast runs
cross_entropy in fp32 (its fp32 op list) and the half modes' convert_output casts the logits to fp32
before the loss, so the logits' gradient is fp32 even where the model computes in bf16 or fp16."""
LOSS_INPUT_GRADIENTS = 2
"""Logits-sized fp32 gradients alive at once in a step's backward: F.cross_entropy is log_softmax
then nll_loss, and while log_softmax's backward writes the gradient of the logits it reads
nll_loss's gradient of the log-probabilities (dense, the logits' shape) and its own saved output
(counted among the saved activations)."""
DLE_RESNET50 = (
    {"gpu": "A100 80GB", "from": "TF32", "from_img_per_s": 938, "amp_img_per_s": 2470, "speedup": 2.63},
    {"gpu": "V100 16GB", "from": "FP32", "from_img_per_s": 367, "amp_img_per_s": 1200, "speedup": 3.26},
)
"""NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Training
performance", one GPU (pytorch-21.03 NGC container, ImageNet through DALI, AMP in channels-last,
none of which trainkit's synthetic NCHW cells use: so they are printed beside the figures, not
gated on)."""
