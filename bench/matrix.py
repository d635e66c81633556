"""The benchmark matrix: presets, per-axis overrides, and which cells the hardware can run.

A preset is a list of blocks; a block is the cross product of its axes plus the model options
that size the models for the hardware (a GPT for a 2-core CPU is not a GPT for an H100). Options
given on the command line replace an axis in every block.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainkit.engine.config import ACTIVATION_CHECKPOINTING, ALLOC_CONF_PATTERN, MODELS, RunConfig
from trainkit.engine.options import choice, comma_list, integer, optional
from trainkit.engine.precision_facts import SHORT_DTYPE, facts_of, precision_names

AXES = ("model", "precision", "batch_size", "grad_accum", "gpus", "compile", "activation_checkpointing", "alloc_conf")
CONV_MODELS = ("cnn", "resnet18", "resnet50")

# Model sizes per hardware. CPU rows are correctness and smoke rows, never speed claims.
CPU_GPT = {"gpt_layers": 2, "gpt_width": 64, "gpt_heads": 4, "seq_len": 32, "vocab_size": 128}
GPU_GPT = {"gpt_layers": 12, "gpt_width": 768, "gpt_heads": 12, "seq_len": 1024, "vocab_size": 50304}  # GPT-2 124M
GPU_GPT_SMALL = {"gpt_layers": 6, "gpt_width": 512, "gpt_heads": 8, "seq_len": 512, "vocab_size": 32768}
CPU_RESNET = {"image_size": 32}

# Training recipe per model: the seeds' SGD for the MLP and CNN, AdamW for the transformer.
RECIPES: dict[str, dict[str, Any]] = {
    "mlp": {"optimizer": "sgd", "lr": 0.01},
    "cnn": {"optimizer": "sgd", "lr": 0.01},
    "resnet18": {"optimizer": "sgd", "lr": 0.05},
    "resnet50": {"optimizer": "sgd", "lr": 0.05},
    "gpt": {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.1},
}


@dataclass(frozen=True)
class Block:
    """A cross product of axis values, with model options per model."""

    models: tuple[str, ...]
    precisions: tuple[str, ...] | Callable[[], tuple[str, ...]] | None
    """None: every mode of trainkit's precision table; a function: the modes it picks from the
    table; both read when the matrix is built."""
    batch_sizes: tuple[int, ...]
    grad_accums: tuple[int, ...]
    gpus: tuple[int, ...]
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    compiles: tuple[bool, ...] = (False,)
    """torch.compile off and/or on."""
    checkpointing: tuple[str, ...] = ("none",)
    """Activation checkpointing modes."""
    alloc_confs: tuple[str | None, ...] = (None,)
    """PYTORCH_CUDA_ALLOC_CONF settings (None: the environment's own)."""


@dataclass(frozen=True)
class Preset:
    """A named matrix with its run lengths."""

    name: str
    blocks: tuple[Block, ...]
    steps: int
    warmup_steps: int
    description: str


ALL = None  # every precision mode


def NOT_FP8() -> tuple[str, ...]:  # noqa: N802 - a preset constant, read when the matrix is built
    """Every mode but FP8's: torchao converts linear layers only, so the MLP's are too small to
    gain and resnet50's one (2048 -> 1000 classes, not a multiple of 16) cannot run in float8."""
    return tuple(name for name in precision_names() if facts_of(name).peak_kind != "fp8")


FP8 = ("fp8-tensorwise", "fp8-rowwise")
PRESETS_CPU = {
    "tiny": Preset("tiny", (Block(("mlp", "gpt"), ("fp32", "amp-bf16"), (16,), (1, 2), (1,),
                                  {"gpt": CPU_GPT}),), 4, 1,
                   "4 cells for CI and smoke tests (seconds)"),
    "quick": Preset("quick", (
        Block(("mlp", "gpt"), ALL, (32,), (1, 4), (1, 2), {"gpt": CPU_GPT}),
        Block(("cnn",), ("fp32", "amp-bf16", "half-bf16"), (32,), (1, 4), (1,)),
        # The frontier axes, once each: a compiled MLP, a checkpointed GPT (its eager and
        # unchecked twins are in the first block).
        Block(("mlp",), ("fp32",), (32,), (1,), (1,), compiles=(True,)),
        # Accumulation 1 only: the checkpointed amp-bf16 GPT at accumulation 4 alone took 112 s of a
        # 14.7-minute quick run on a 2-core machine at load 6-8.
        Block(("gpt",), ("fp32", "amp-bf16"), (32,), (1,), (1,), {"gpt": CPU_GPT}, checkpointing=("full",)),
    ), 8, 2, "every CPU-capable precision x accumulation 1, 4 x ranks 1, 2 for mlp and gpt, plus cnn, "
             "a compiled mlp and a checkpointed gpt"),
    "full": Preset("full", (
        Block(("mlp", "gpt"), ALL, (16, 64), (1, 2, 4), (1, 2), {"gpt": CPU_GPT}),
        Block(("cnn", "resnet18"), ("fp32", "amp-bf16", "half-bf16"), (16, 32), (1, 4), (1, 2),
              {"resnet18": CPU_RESNET}),
    ), 20, 3, "more batch sizes, accumulation steps and models (minutes on a CPU)"),
}
PRESETS_GPU = {
    "tiny": PRESETS_CPU["tiny"],
    "quick": Preset("quick", (
        Block(("mlp", "gpt", "resnet18"), ALL, (64,), (1, 4), (1,), {"gpt": GPU_GPT_SMALL}),
    ), 20, 5, "every precision x accumulation 1, 4 on one GPU"),
    "full": Preset("full", (
        Block(("mlp",), NOT_FP8, (256, 4096), (1, 4), (1, 2)),
        Block(("resnet50",), NOT_FP8, (64, 128, 256), (1, 4), (1, 2), compiles=(False, True)),
        Block(("gpt",), ALL, (4, 8, 16), (1, 4), (1, 2), {"gpt": GPU_GPT}, compiles=(False, True)),
        # What activation checkpointing buys in memory and costs in speed, beside the cells above.
        Block(("resnet50",), ("amp-bf16",), (128, 256), (1, 4), (1,), compiles=(False, True), checkpointing=("full",)),
        Block(("gpt",), ("amp-bf16", *FP8), (8, 16), (1, 4), (1,), {"gpt": GPU_GPT}, compiles=(False, True),
              checkpointing=("full",)),
    ), 30, 10, "mlp, resnet50 and GPT-2 124M over batch sizes, accumulation and 1-2 GPUs, eager and compiled, "
               "FP8 for the GPT, activation checkpointing on one GPU"),
}
NIGHTLY = Preset("nightly", (
    Block(("mlp",), NOT_FP8, (4096,), (1, 4), (1, 2, 4, 8)),
    Block(("resnet50",), NOT_FP8, (64, 256), (1, 4), (1, 2, 4, 8)),
    Block(("gpt",), ALL, (8, 16), (1, 4), (1, 2, 4, 8), {"gpt": GPU_GPT}),
    # Compiled twins of some cells above: compile-vs-eager per precision, FP8 where it can win.
    Block(("resnet50",), ("amp-bf16", "amp-fp16"), (256,), (1,), (1, 8), compiles=(True,)),
    Block(("gpt",), ("amp-bf16", *FP8), (16,), (1, 4), (1, 8), {"gpt": GPU_GPT}, compiles=(True,)),
), 50, 10, "the GPU matrix: mlp, resnet50, GPT-2 124M x every precision x 1-8 GPUs, with compiled "
           "resnet50 and GPT (FP8 for the GPT)")
PRESET_NAMES = ("tiny", "quick", "full", "nightly")


def preset(name: str, on_gpu: bool) -> Preset:
    if name == "nightly":
        return NIGHTLY
    return (PRESETS_GPU if on_gpu else PRESETS_CPU)[name]


@dataclass(frozen=True)
class Hardware:
    """What the cells will run on, as a probe worker saw it."""

    device: str  # "cpu" or "cuda"
    gpu_count: int = 0
    capability: tuple[int, int] | None = None
    gpu_name: str | None = None
    cpu_count: int = 1
    compile_unsupported: str | None = None
    """Why torch.compile cannot run here (no C++ compiler on a CPU), or None."""


@dataclass(frozen=True)
class CellSpec:
    """One cell of the matrix: its axis values, its config, and why it is skipped (if it is)."""

    model: str
    precision: str
    batch_size: int
    grad_accum: int
    gpus: int
    repeat: int
    config: RunConfig
    skip_reason: str | None
    compile: bool = False
    activation_checkpointing: str = "none"
    alloc_conf: str | None = None

    @property
    def id(self) -> str:
        base = self.config.cell_id
        return base if self.repeat == 0 else f"{base}-rep{self.repeat}"

    PARAMS = ("model", "precision", "batch_size", "grad_accum", "gpus", "compile", "activation_checkpointing",
              "alloc_conf", "repeat")
    """The test's parameters (pytest-benchmark's --benchmark-group-by param:NAME), in order."""

    @property
    def params(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "batch_size": self.batch_size,
                "grad_accum": self.grad_accum, "gpus": self.gpus, "compile": self.compile,
                "activation_checkpointing": self.activation_checkpointing, "alloc_conf": self.alloc_conf,
                "repeat": self.repeat}


def skip_reason(model: str, precision: str, gpus: int, hw: Hardware, compile: bool = False,
                activation_checkpointing: str = "none") -> str | None:
    """Why this hardware cannot run the cell meaningfully, or None. Whether the device can run the
    mode at all is the policy's answer, never restated here."""
    from trainkit.engine import recompute  # torch, only once cells are built
    from trainkit.engine.precision import policy_class

    if hw.device == "cuda" and gpus > hw.gpu_count:
        return f"needs {gpus} GPUs, {hw.gpu_count} visible"
    reason = (policy_class(precision).unsupported_on(hw.device, hw.capability, hw.gpu_name)
              or recompute.unsupported_reason(model, activation_checkpointing)
              or (hw.compile_unsupported if compile else None))
    if reason or hw.device == "cuda":
        return reason
    facts = facts_of(precision)
    if model in CONV_MODELS and facts.slow_conv_on_cpu:
        dtype = SHORT_DTYPE[facts.compute_dtype]
        return f"{dtype} convolutions on the CPU are ~100x slower than fp32: not a meaningful row"
    if gpus > hw.cpu_count:
        return f"needs {gpus} CPU ranks, {hw.cpu_count} cores"
    return None


BATCH_MAX = "max"
"""A batch-size axis value: each cell's planned maximum micro-batch, read from a plan
(trainkit.commands.plan; bench's --plan) when the matrix is built."""
MaxBatch = Callable[[RunConfig], int]
"""The planned maximum micro-batch of a cell's config (its batch size ignored); raises
trainkit.analysis.plan_file.PlanError (a ValueError) naming the plan to make when there is none."""


def batch_size_value(text: str) -> int | str:
    """An integer >= 1, or max."""
    if text == BATCH_MAX:
        return text
    try:
        return integer(1)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or {BATCH_MAX}: each precision's planned maximum)") from None


def build_matrix(chosen: Preset, hw: Hardware, overrides: dict[str, tuple[Any, ...]], steps: int, warmup_steps: int,
                 repeats: int = 1, run_options: dict[str, Any] | None = None,
                 max_batch: MaxBatch | None = None) -> list[CellSpec]:
    """The cells of a preset with axis overrides applied, in a stable order, without duplicates. A
    batch size of max is resolved per cell by `max_batch` (a ValueError without one); a cell the
    hardware cannot run and no plan covers is left out (it has no batch to name it by)."""
    cells: dict[str, CellSpec] = {}
    run_options = dict(run_options or {})
    compile_mode = run_options.pop("compile_mode", None)  # for the compiled cells only
    for block in chosen.blocks:
        precisions = block.precisions() if callable(block.precisions) else block.precisions
        axes = {"model": block.models, "precision": precisions or precision_names(),
                "batch_size": block.batch_sizes,
                "grad_accum": block.grad_accums, "gpus": block.gpus, "compile": block.compiles,
                "activation_checkpointing": block.checkpointing, "alloc_conf": block.alloc_confs}
        axes.update(overrides)
        for model, precision, batch_size, grad_accum, gpus, compiled, checkpointing, alloc_conf in itertools.product(
                *(axes[a] for a in AXES)):
            options = {**RECIPES[model], **block.model_options.get(model, {}), **run_options}
            if model in ("resnet18", "resnet50") and hw.device == "cpu":
                options = {**CPU_RESNET, **options}
            if model == "gpt" and hw.device == "cpu":
                options = {**CPU_GPT, **options}
            planned = batch_size == BATCH_MAX
            config = RunConfig(model=model, precision=precision, batch_size=1 if planned else batch_size,
                               grad_accum=grad_accum, world_size=gpus, steps=steps, warmup_steps=warmup_steps,
                               device=hw.device, compile=compiled, compile_mode=compile_mode if compiled else None,
                               activation_checkpointing=checkpointing, alloc_conf=alloc_conf, **options)
            reason = skip_reason(model, precision, gpus, hw, compiled, checkpointing)
            if chosen is NIGHTLY and hw.device != "cuda":
                reason = "the nightly preset is the GPU matrix; on a CPU use --preset tiny, quick or full"
            if planned:
                if max_batch is None:
                    raise ValueError("--batch-size max needs --plan PLAN.json (each precision's planned maximum): "
                                     "write one with python -m trainkit plan --model MODEL --precision P,P ... "
                                     "--output PLAN.json")
                try:
                    batch_size = max_batch(config)
                except ValueError:
                    if reason:
                        continue
                    raise
                config = config.replace(batch_size=batch_size)
            for repeat in range(repeats):
                spec = CellSpec(model, precision, batch_size, grad_accum, gpus, repeat, config, reason,
                                compiled, checkpointing, alloc_conf)
                cells.setdefault(spec.id, spec)
    return list(cells.values())


def on_off(text: str) -> bool:
    """"on" or "off" (an axis of a switch)."""
    return choice(("off", "on"))(text) == "on"


def alloc_setting(text: str) -> str:
    """One PYTORCH_CUDA_ALLOC_CONF setting: option:value pairs joined by commas."""
    if not ALLOC_CONF_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid allocator setting: {text!r} (write option:value pairs joined by "
                                         "commas, e.g. expandable_segments:True, or none)")
    return text


AXIS_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "model": ("--model", comma_list(choice(MODELS)), ", ".join(MODELS)),
    "precision": ("--precision", comma_list(choice(precision_names)), "the modes of trainkit's precision table"),
    "batch_size": ("--batch-size", comma_list(batch_size_value),
                   "integers >= 1, or max: each precision's planned maximum, from --plan"),
    "grad_accum": ("--grad-accum", comma_list(integer(1)), "integers >= 1"),
    "gpus": ("--gpus", comma_list(integer(1)), "integers >= 1"),
    "compile": ("--compile", comma_list(on_off), "off, on: torch.compile of the model"),
    "activation_checkpointing": ("--activation-checkpointing", comma_list(choice(ACTIVATION_CHECKPOINTING)),
                                 ", ".join(ACTIVATION_CHECKPOINTING)),
    "alloc_conf": ("--alloc-conf", comma_list(optional(alloc_setting), separator=";"),
                   "PYTORCH_CUDA_ALLOC_CONF settings separated by ';' (each may hold commas), none for the "
                   "environment's own"),
}
"""Each axis's command-line option, its argparse type (a comma list, validated as it is parsed)
and the valid values in words."""
