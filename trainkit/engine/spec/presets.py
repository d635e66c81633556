"""The benchmark matrix's presets and the training recipe of each built-in model.

A preset is a list of blocks; a block is the cross product of its axes plus the model options
that size the models for the hardware (a GPT for a 2-core CPU is not a GPT for an H100). Options
given on the command line replace an axis in every block. The bench (trainkit.bench), the nightly
job (trainkit.nightly) and the GPU checks read them here, so no application imports another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import axes
from .precision_facts import facts_of, precision_names

# Model sizes per hardware. CPU rows are correctness and smoke rows, never speed claims.
CPU_GPT = {"gpt_layers": 2, "gpt_width": 64, "gpt_heads": 4, "seq_len": 32, "vocab_size": 128}
GPU_GPT = {"gpt_layers": 12, "gpt_width": 768, "gpt_heads": 12, "seq_len": 1024, "vocab_size": 50304}  # GPT-2 124M
GPU_GPT_SMALL = {"gpt_layers": 6, "gpt_width": 512, "gpt_heads": 8, "seq_len": 512, "vocab_size": 32768}
CPU_RESNET = {"image_size": 32}

# Training recipe per model: the seeds' SGD for the MLP and CNN, AdamW for the transformer; a
# workload (--model SPEC) trainkit has no recipe for gets AdamW at 1e-3 (--lr and the run options
# override it).
WORKLOAD_RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3}
RECIPES: dict[str, dict[str, Any]] = {
    "mlp": {"optimizer": "sgd", "lr": 0.01},
    "cnn": {"optimizer": "sgd", "lr": 0.01},
    "resnet18": {"optimizer": "sgd", "lr": 0.05},
    "resnet50": {"optimizer": "sgd", "lr": 0.05},
    "gpt": {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.1},
}


@dataclass(frozen=True)
class Block:
    """A cross product of axis values, with model options per model (make one with `block`)."""

    values: Mapping[str, Any]
    """Each axis's values by axis name (trainkit.engine.spec.axes.AXES); precision's may be None (every
    mode of trainkit's precision table) or a function that picks modes from the table, both read
    when the matrix is built."""
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    # The five axes every block spells, by the names blocks had before the registry.
    models = property(lambda self: self.values["model"])
    precisions = property(lambda self: self.values["precision"])
    batch_sizes = property(lambda self: self.values["batch_size"])
    grad_accums = property(lambda self: self.values["grad_accum"])
    gpus = property(lambda self: self.values["gpus"])

    def axis_values(self) -> dict[str, tuple[Any, ...]]:
        """Every axis's values in the registry's order: the block's own, or the axis's default."""
        values = {}
        for axis in axes.AXES:
            given = self.values.get(axis.name, (axis.default,))
            if axis.name == "precision":
                given = given() if callable(given) else given or precision_names()
            values[axis.name] = tuple(given)
        return values


def block(models: tuple[str, ...], precisions: tuple[str, ...] | Callable[[], tuple[str, ...]] | None,
          batch_sizes: tuple[int, ...], grad_accums: tuple[int, ...], gpus: tuple[int, ...],
          model_options: dict[str, dict[str, Any]] | None = None, **others: tuple[Any, ...]) -> Block:
    """A block of the five axes every block spells, and any other axis by name (compile=(False, True));
    an axis left out keeps its default."""
    for name in others:
        axes.named(name)  # a KeyError naming the axes, for a misspelt one
    return Block({"model": models, "precision": precisions, "batch_size": batch_sizes, "grad_accum": grad_accums,
                  "gpus": gpus, **others}, model_options or {})


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
    "tiny": Preset("tiny", (block(("mlp", "gpt"), ("fp32", "amp-bf16"), (16,), (1, 2), (1,),
                                  {"gpt": CPU_GPT}),), 4, 1,
                   "4 cells for CI and smoke tests (seconds)"),
    "quick": Preset("quick", (
        block(("mlp", "gpt"), ALL, (32,), (1, 4), (1, 2), {"gpt": CPU_GPT}),
        block(("cnn",), ("fp32", "amp-bf16", "half-bf16"), (32,), (1, 4), (1,)),
        # The frontier axes, once each: a compiled MLP, a checkpointed GPT (its eager and
        # unchecked twins are in the first block).
        block(("mlp",), ("fp32",), (32,), (1,), (1,), compile=(True,)),
        # Accumulation 1 only: the checkpointed amp-bf16 GPT at accumulation 4 alone took 112 s of a
        # 14.7-minute quick run on a 2-core machine at load 6-8.
        block(("gpt",), ("fp32", "amp-bf16"), (32,), (1,), (1,), {"gpt": CPU_GPT},
              activation_checkpointing=("full",)),
    ), 8, 2, "every CPU-capable precision x accumulation 1, 4 x ranks 1, 2 for mlp and gpt, plus cnn, "
             "a compiled mlp and a checkpointed gpt"),
    "full": Preset("full", (
        block(("mlp", "gpt"), ALL, (16, 64), (1, 2, 4), (1, 2), {"gpt": CPU_GPT}),
        block(("cnn", "resnet18"), ("fp32", "amp-bf16", "half-bf16"), (16, 32), (1, 4), (1, 2),
              {"resnet18": CPU_RESNET}),
    ), 20, 3, "more batch sizes, accumulation steps and models (minutes on a CPU)"),
}
PRESETS_GPU = {
    "tiny": PRESETS_CPU["tiny"],
    "quick": Preset("quick", (
        block(("mlp", "gpt", "resnet18"), ALL, (64,), (1, 4), (1,), {"gpt": GPU_GPT_SMALL}),
    ), 20, 5, "every precision x accumulation 1, 4 on one GPU"),
    "full": Preset("full", (
        block(("mlp",), NOT_FP8, (256, 4096), (1, 4), (1, 2)),
        block(("resnet50",), NOT_FP8, (64, 128, 256), (1, 4), (1, 2), compile=(False, True)),
        block(("gpt",), ALL, (4, 8, 16), (1, 4), (1, 2), {"gpt": GPU_GPT}, compile=(False, True)),
        # What activation checkpointing buys in memory and costs in speed, beside the cells above.
        block(("resnet50",), ("amp-bf16",), (128, 256), (1, 4), (1,), compile=(False, True),
              activation_checkpointing=("full",)),
        block(("gpt",), ("amp-bf16", *FP8), (8, 16), (1, 4), (1,), {"gpt": GPU_GPT}, compile=(False, True),
              activation_checkpointing=("full",)),
    ), 30, 10, "mlp, resnet50 and GPT-2 124M over batch sizes, accumulation and 1-2 GPUs, eager and compiled, "
               "FP8 for the GPT, activation checkpointing on one GPU"),
}
NIGHTLY = Preset("nightly", (
    block(("mlp",), NOT_FP8, (4096,), (1, 4), (1, 2, 4, 8)),
    block(("resnet50",), NOT_FP8, (64, 256), (1, 4), (1, 2, 4, 8)),
    block(("gpt",), ALL, (8, 16), (1, 4), (1, 2, 4, 8), {"gpt": GPU_GPT}),
    # Compiled twins of some cells above: compile-vs-eager per precision, FP8 where it can win.
    block(("resnet50",), ("amp-bf16", "amp-fp16"), (256,), (1,), (1, 8), compile=(True,)),
    block(("gpt",), ("amp-bf16", *FP8), (16,), (1, 4), (1, 8), {"gpt": GPU_GPT}, compile=(True,)),
), 50, 10, "the GPU matrix: mlp, resnet50, GPT-2 124M x every precision x 1-8 GPUs, with compiled "
           "resnet50 and GPT (FP8 for the GPT)")
PRESET_NAMES = ("tiny", "quick", "full", "nightly")


def preset(name: str, on_gpu: bool) -> Preset:
    if name == "nightly":
        return NIGHTLY
    return (PRESETS_GPU if on_gpu else PRESETS_CPU)[name]
