"""The fixed sets of values a run's fields take (RunConfig validates against them; the command
lines, the matrix's axes and the option types offer them).

A leaf: it imports nothing of trainkit's, so the config, the option types and the axes registry
(trainkit.engine.axes, which RunConfig.cell_id reads) can all stand on it without a cycle.
"""

from __future__ import annotations

import re

MODELS = ("mlp", "cnn", "resnet18", "resnet50", "gpt")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "exponential", "lambda", "cosine")
DATASETS = ("synthetic", "mnist", "cifar10", "imagefolder", "workload")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes (an unknown one is a RuntimeError inside torch.compile, after the cell started)."""
ACTIVATION_CHECKPOINTING = ("none", "full")
ALLOC_CONF_PATTERN = re.compile(r"[A-Za-z_]+:[^,:\s]+(,[A-Za-z_]+:[^,:\s]+)*")
"""PYTORCH_CUDA_ALLOC_CONF's form: option:value pairs joined by commas (PyTorch checks the options)."""
