"""The fixed sets of values a run's fields take (RunConfig validates against them; the command
lines, the matrix's axes and the option types offer them).

A leaf: it imports nothing of trainkit's, so the config, the option types and the axes registry
(trainkit.engine.spec.axes, which RunConfig.cell_id reads) can all stand on it without a cycle.
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
CHECKPOINTED_MODULES = {
    "gpt": "every transformer block",
    "resnet18": "the four stages layer1..layer4",
    "resnet50": "the four stages layer1..layer4",
    "cnn": "the two conv stages",
}
"""What `activation_checkpointing=full` wraps in each built-in model that has blocks or stages
(their workloads' checkpoint_blocks, trainkit.engine.workloads.models), known by name without
building one: the matrix's left-out rule reads it at collection, without torch."""
ALLOC_CONF_PATTERN = re.compile(r"[A-Za-z_]+:[^,:\s]+(,[A-Za-z_]+:[^,:\s]+)*")
"""PYTORCH_CUDA_ALLOC_CONF's form: option:value pairs joined by commas (PyTorch checks the options)."""
WORKLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*(-[A-Za-z0-9_.]+)*")
"""The form of a workload's name (trainkit.engine.workloads.workload.NAME_PATTERN): it starts every cell id."""


def workload_problem(model: object, workload: object, data: object) -> str | None:
    """What is wrong with a run's workload (its spec `workload`, its name `model`), in one line, or
    None. Never a built-in's name, which would make two models' cells share ids and report groups."""
    if not isinstance(workload, str) or not workload.strip():
        return f"workload={workload!r} must be a model spec (MODULE:FUNCTION, hf:..., timm:...)"
    if model in MODELS:
        return f"model={model!r} is a built-in model's name; the workload {workload!r} needs a name of its own"
    if not isinstance(model, str) or not WORKLOAD_NAME.fullmatch(model):
        return f"model={model!r} is not a workload name: use letters, digits, '_' and '.', joined by single '-'"
    if data not in ("synthetic", "workload"):
        return (f"data={data!r} is for the built-in models; workload {model!r} reads synthetic data (its make_batch) "
                "or its own data set (data=workload)")
    return None
