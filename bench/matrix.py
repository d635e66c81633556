"""The benchmark matrix: presets, per-axis overrides, and which cells the hardware can run.

A preset is a list of blocks; a block is the cross product of its axes plus the model options
that size the models for the hardware (a GPT for a 2-core CPU is not a GPT for an H100). Options
given on the command line replace an axis in every block.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainkit.engine.spec import axes
from trainkit.engine.spec.axes import BATCH_MAX, Axis
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import facts_of, precision_names

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


@dataclass(frozen=True)
class Hardware:
    """What the cells will run on, as a probe worker saw it (trainkit.engine.spec.axes.Hardware: what the
    axes' skip rules ask of it)."""

    device: str  # "cpu" or "cuda"
    gpu_count: int = 0
    capability: tuple[int, int] | None = None
    gpu_name: str | None = None
    cpu_count: int = 1
    compile_unsupported: str | None = None
    """Why torch.compile cannot run here (no C++ compiler on a CPU), or None."""

    def precision_unsupported(self, precision: str) -> str | None:
        """The policy's answer, never restated here."""
        from trainkit.engine.train.precision import policy_class  # torch, only once cells are built

        return policy_class(precision).unsupported_on(self.device, self.capability, self.gpu_name)


@dataclass(frozen=True)
class CellSpec:
    """One cell of the matrix: its axis values, its config, and why it is skipped (if it is). Each
    axis's value reads as an attribute (cell.precision, cell.gpus)."""

    values: Mapping[str, Any]
    """Each axis's value by axis name, in the registry's order."""
    repeat: int
    config: RunConfig
    skip_reason: str | None

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def id(self) -> str:
        base = self.config.cell_id
        return base if self.repeat == 0 else f"{base}-rep{self.repeat}"

    @property
    def params(self) -> dict[str, Any]:
        """The test's parameters (pytest-benchmark's --benchmark-group-by param:NAME), in order."""
        return {**self.values, "repeat": self.repeat}


def param_names() -> tuple[str, ...]:
    """The names of CellSpec.params: the axes, then the repeat."""
    return (*(axis.name for axis in axes.AXES), "repeat")


def _defaults() -> dict[str, Any]:
    return {axis.field: axis.default for axis in axes.AXES}


def skip_reason(model: str, precision: str, gpus: int, hw: Hardware, compile: bool = False,
                activation_checkpointing: str = "none") -> str | None:
    """Why this hardware cannot run the cell meaningfully, or None (trainkit.engine.spec.axes.skip_reason,
    for a cell given by these axes, the others at their defaults)."""
    values = {**_defaults(), "model": model, "precision": precision, "world_size": gpus, "compile": compile,
              "activation_checkpointing": activation_checkpointing}
    return axes.skip_reason(values, hw)


MaxBatch = Callable[[RunConfig], int]
"""The planned maximum micro-batch of a cell's config (its batch size ignored); raises
trainkit.analysis.plan.file.PlanError (a ValueError) naming the plan to make when there is none."""
NO_PLAN = ("--batch-size max needs --plan PLAN.json (each precision's planned maximum): write one with python -m "
           "trainkit plan --model MODEL --precision P,P ... --output PLAN.json")


def _options(model: str, chosen_block: Block, hw: Hardware, run_options: dict[str, Any]) -> dict[str, Any]:
    """The model's recipe, sized for the hardware, with the block's and the command line's options."""
    options = {**RECIPES.get(model, WORKLOAD_RECIPE), **chosen_block.model_options.get(model, {}), **run_options}
    if model in ("resnet18", "resnet50") and hw.device == "cpu":
        options = {**CPU_RESNET, **options}
    if model == "gpt" and hw.device == "cpu":
        options = {**CPU_GPT, **options}
    return options


def _block_cells(chosen: Preset, chosen_block: Block, hw: Hardware, overrides: dict[str, tuple[Any, ...]],
                 lengths: dict[str, int], run_options: dict[str, Any],
                 max_batch: MaxBatch | None) -> Iterator[tuple[dict[str, Any], RunConfig, str | None]]:
    """(axis values, config, skip reason) of each cell of a block, in the cross product's order."""
    compile_mode = run_options.pop("compile_mode", None)  # for the compiled cells only
    values = {**chosen_block.axis_values(), **overrides}
    order: tuple[Axis, ...] = axes.AXES
    for combo in itertools.product(*(values[axis.name] for axis in order)):
        cell = dict(zip((axis.name for axis in order), combo))
        fields = {axis.field: value for axis, value in zip(order, combo)}
        if cell["model"] not in RECIPES:  # a workload's spec: its name is the model, the spec goes along
            from trainkit.engine.workloads.resolve import model_choice  # torch, only once cells are built

            chosen_model = model_choice(cell["model"])
            fields.update(model=chosen_model.model, workload=chosen_model.workload)
            cell["model"] = chosen_model.model
        planned = cell["batch_size"] == BATCH_MAX
        if planned:
            fields["batch_size"] = 1
        config = RunConfig(**fields, **lengths, device=hw.device,
                           compile_mode=compile_mode if cell["compile"] else None,
                           **_options(cell["model"], chosen_block, hw, run_options))
        reason = axes.skip_reason(config.to_dict(), hw)
        if chosen is NIGHTLY and hw.device != "cuda":
            reason = "the nightly preset is the GPU matrix; on a CPU use --preset tiny, quick or full"
        if planned:
            if max_batch is None:
                raise ValueError(NO_PLAN)
            try:
                cell["batch_size"] = max_batch(config)
            except ValueError:
                if reason:
                    continue  # a cell the hardware cannot run and no plan covers: no batch to name it by
                raise
            config = config.replace(batch_size=cell["batch_size"])
        yield cell, config, reason


def build_matrix(chosen: Preset, hw: Hardware, overrides: dict[str, tuple[Any, ...]], steps: int, warmup_steps: int,
                 repeats: int = 1, run_options: dict[str, Any] | None = None,
                 max_batch: MaxBatch | None = None) -> list[CellSpec]:
    """The cells of a preset with axis overrides applied, in a stable order, without duplicates. A
    batch size of max is resolved per cell by `max_batch` (a ValueError without one); a cell the
    hardware cannot run and no plan covers is left out (it has no batch to name it by).

    With `repeats` N >= 2 the matrix runs in rounds: every cell once (repeat 0), then every cell
    again (repeat 1), and so on (ABAB, as Chromium's Pinpoint interleaves A and B), so round r holds
    each comparison's reference and candidate close in time and a speedup is paired by round
    (trainkit.analysis.paired). Back to back (AABB), a machine that slowed between two cells would
    slow every repeat of one and none of the other."""
    cells: dict[str, CellSpec] = {}
    lengths = {"steps": steps, "warmup_steps": warmup_steps}
    once = [(values, config, reason) for chosen_block in chosen.blocks
            for values, config, reason in _block_cells(chosen, chosen_block, hw, overrides, lengths,
                                                       dict(run_options or {}), max_batch)]
    for repeat in range(repeats):
        for values, config, reason in once:
            spec = CellSpec(values, repeat, config, reason)
            cells.setdefault(spec.id, spec)
    return list(cells.values())


class _AxisOptions(Mapping[str, tuple[str, Any, str]]):
    """Each axis's command-line option, its argparse type (a list, validated as it is parsed) and
    the valid values in words, read from the registry when asked."""

    def __getitem__(self, name: str) -> tuple[str, Any, str]:
        try:
            option = axes.named(name).option
        except KeyError:
            raise KeyError(name) from None
        return option.flag, option.type, option.help

    def __iter__(self) -> Iterator[str]:
        return iter([axis.name for axis in axes.AXES])

    def __len__(self) -> int:
        return len(axes.AXES)


AXIS_OPTIONS: Mapping[str, tuple[str, Any, str]] = _AxisOptions()
