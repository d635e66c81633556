"""The benchmark matrix: a preset's cells with per-axis overrides, and which of them the hardware can run.

The presets and recipes are the library's (trainkit.engine.spec.presets), the hardware type the
engine's (trainkit.engine.train.hardware).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec import axes
from trainkit.engine.spec.axes import BATCH_MAX, Axis
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.presets import CPU_GPT, CPU_RESNET, NIGHTLY, RECIPES, WORKLOAD_RECIPE, Block, Preset
from trainkit.engine.train.hardware import Hardware


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


@functools.lru_cache(maxsize=64)
def _names_blocks(workload: str | None) -> bool | None:
    """Whether a workload's spec names blocks to checkpoint (None for a built-in: spec knows them by
    name). Resolved here, once per spec: spec itself never imports torch or a user's module."""
    if workload is None:
        return None
    from trainkit.engine.workloads.resolve import resolve  # torch, only once cells are built

    return resolve(workload).checkpoint_blocks is not None


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
                 lengths: dict[str, int], run_options: dict[str, Any], max_batch: MaxBatch | None,
                 left_out: dict[str, str]) -> Iterator[tuple[dict[str, Any], RunConfig, str | None]]:
    """(axis values, config, skip reason) of each cell of a block, in the cross product's order;
    the cells that do not apply to their model go into `left_out` (cell id: why) instead."""
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
        if why := axes.left_out_reason({**config.to_dict(), "names_blocks": _names_blocks(config.workload)}):
            left_out[config.cell_id] = why
            continue
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
                 max_batch: MaxBatch | None = None, left_out: dict[str, str] | None = None) -> list[CellSpec]:
    """The cells of a preset with axis overrides applied, in a stable order, without duplicates. A
    batch size of max is resolved per cell by `max_batch` (a ValueError without one); a cell the
    hardware cannot run and no plan covers is left out (it has no batch to name it by), and so is a
    cell that does not apply to its model (activation checkpointing of a model without blocks:
    `left_out` gets its id and why).

    With `repeats` N >= 2 the matrix runs in rounds: every cell once (repeat 0), then every cell
    again (repeat 1), and so on (ABAB, as Chromium's Pinpoint interleaves A and B), so round r holds
    each comparison's reference and candidate close in time and a speedup is paired by round
    (trainkit.analysis.paired). Back to back (AABB), a machine that slowed between two cells would
    slow every repeat of one and none of the other."""
    cells: dict[str, CellSpec] = {}
    lengths = {"steps": steps, "warmup_steps": warmup_steps}
    left_out = left_out if left_out is not None else {}
    once = [(values, config, reason) for chosen_block in chosen.blocks
            for values, config, reason in _block_cells(chosen, chosen_block, hw, overrides, lengths,
                                                       dict(run_options or {}), max_batch, left_out)]
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
