"""Every bound a gpu-check check decides by, with the reason it has that value."""

from __future__ import annotations

import math

TIME_TOLERANCE = 0.03
"""A cell's summed step times within 3 % of the wall clock around the same steps: the launcher's
clock adds only a few ms of pipe and wake-up to a window of seconds."""
ENERGY_TOLERANCE = 0.10
"""Energy from NVML's counter within 10 % of NVML's mean power x the window."""
MFU_BAND = (0.15, 0.80)
"""Plausible MFU of GPT-2 124M in amp-bf16: nanoGPT reaches about 33 % on one H100 and llm.c about
60 % on A100s. Below 15 % the GPU starves; above 80 % the FLOPs are
over-counted or the peak is wrong."""
MFU_REFERENCE = "GPT-2 124M bf16 on one H100: about 33% (nanoGPT#464)"
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
