"""The benchmark matrix's axes, one row each: everything trainkit knows about an axis is its row.

A row names the axis (bench's test parameter, the key of an override and of a preset block), the
RunConfig field it sets, its command-line option (a list of values, validated as it is parsed),
the value a block that leaves it out takes, its fragment of the cell id, its words in a report's
variant, the rule that skips a cell the hardware cannot run, and the rule that leaves out a cell
that does not apply to its model. Every reader goes through AXES at
the time it reads (bench's options, matrix, ids and test parameters; RunConfig.cell_id; the
reports' columns and grouping), so an axis added here, as one row, is everywhere at once.

The first five axes are the cell id's fixed part (gpt-amp-bf16-bs32-ga4-gpus2); the others appear in
the id, and in a report's variant, only where they differ from their defaults, so the ids of cells
without them (and baselines keyed by them) stay what they were.

No torch (the whole of spec is torch-free: bench reads it at collection), and nothing that
reads RunConfig: RunConfig.cell_id reads this module. Whether a device can run a precision mode is
its policy's answer (trainkit.engine.train.precision, which reads RunConfig), so a skip rule asks the
hardware it is given (trainkit.engine.train.hardware.Hardware asks the policy).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .choices import ACTIVATION_CHECKPOINTING, ALLOC_CONF_PATTERN, CHECKPOINTED_MODULES
from .options import GPUS_LIST, MODELS_LIST, PRECISIONS_LIST, Option, choice, comma_list, integer, optional
from .precision_facts import OPTIMIZER_STATES, SHORT_DTYPE, facts_of, library_missing_reason, optimizer_state_problem

CONV_MODELS = ("cnn", "resnet18", "resnet50")


class Hardware(Protocol):
    """What a skip rule may ask of the hardware the cells will run on (trainkit.engine.train.hardware.Hardware)."""

    device: str
    """"cpu" or "cuda"."""
    gpu_count: int
    cpu_count: int
    compile_unsupported: str | None
    """Why torch.compile cannot run here (no C++ compiler on a CPU), or None."""

    def precision_unsupported(self, precision: str) -> str | None:
        """Why this hardware cannot run the precision mode at all (its policy's answer), or None."""


Values = Mapping[str, Any]
"""A run's config values by RunConfig field name (RunConfig.to_dict(), or a record's config)."""
SkipRule = Callable[[Values, Hardware], "str | None"]


def _no_label(values: Values) -> str:
    return ""


@dataclass(frozen=True)
class Axis:
    """One axis of the benchmark matrix (see the module docstring)."""

    name: str
    """bench's test parameter (--benchmark-group-by param:NAME), the key of overrides and blocks."""
    field: str
    """The RunConfig field the axis sets (gpus sets world_size)."""
    option: Option
    """The command-line option: a list of values (its type parses and validates the list); its
    help says what is valid."""
    default: Any
    """The value of a preset block that leaves the axis out (RunConfig's default)."""
    tag: Callable[[Values], str]
    """The axis's fragment of the cell id, from the config's values ("-bs32"; "" at a default)."""
    label: Callable[[Values], str] = _no_label
    """Its words in a report's variant ("compiled"; "" at the default, and for the id's fixed part,
    which the report has as columns of its own)."""
    skip: SkipRule | None = None
    """Why the hardware cannot run a cell with this value (the cell's values, the hardware), or None."""
    left_out: Callable[[Values], str | None] | None = None
    """Why a cell with this value does not apply to its model at all (activation checkpointing of a
    model without blocks), or None: such a cell is left out of a matrix, never run or recorded."""
    column: str | None = None
    """The report's column for the axis (None: `name`)."""

    @property
    def report_column(self) -> str:
        return self.column or self.name

    def value(self, values: Values) -> Any:
        """The axis's value in a config's values; the default where they lack it (older records)."""
        value = values.get(self.field, self.default)
        return self.default if value is None or (isinstance(value, float) and value != value) else value


# --- the values of the axes, as the command line spells them -------------------------------------------
BATCH_MAX = "max"
"""A batch-size axis value: each cell's planned maximum micro-batch, read from a plan
(python -m trainkit plan; bench's --plan) when the matrix is built."""


def batch_size_value(text: str) -> int | str:
    """An integer >= 1, or max."""
    if text == BATCH_MAX:
        return text
    try:
        return integer(1)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or {BATCH_MAX}: each precision's planned maximum)") from None


def on_off(text: str) -> bool:
    """"on" or "off" (an axis of a switch)."""
    return choice(("off", "on"))(text) == "on"


def alloc_setting(text: str) -> str:
    """One PYTORCH_CUDA_ALLOC_CONF setting: option:value pairs joined by commas."""
    if not ALLOC_CONF_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid allocator setting: {text!r} (write option:value pairs joined by "
                                         "commas, e.g. expandable_segments:True, or none)")
    return text


# --- the skip rules -------------------------------------------------------------------------------------
def _precision_skip(values: Values, hw: Hardware) -> str | None:
    """Whether the device can run the mode at all is the policy's answer, never restated here; on a
    CPU, reduced-precision convolutions are not a meaningful row."""
    reason = hw.precision_unsupported(values["precision"])
    facts = facts_of(values["precision"])
    if reason is None and hw.device == "cpu" and values["model"] in CONV_MODELS and facts.slow_conv_on_cpu:
        reason = (f"{SHORT_DTYPE[facts.compute_dtype]} convolutions on the CPU are ~100x slower than fp32: "
                  "not a meaningful row")
    return reason


def _ranks_skip(values: Values, hw: Hardware) -> str | None:
    ranks = values["world_size"]
    if hw.device == "cuda":
        return f"needs {ranks} GPUs, {hw.gpu_count} visible" if ranks > hw.gpu_count else None
    return f"needs {ranks} CPU ranks, {hw.cpu_count} cores" if ranks > hw.cpu_count else None


def _compile_skip(values: Values, hw: Hardware) -> str | None:
    return hw.compile_unsupported if values["compile"] else None


def _checkpointing_left_out(values: Values) -> str | None:
    """A model that names no blocks has nothing to checkpoint: its cells with checkpointing are not
    a result of the hardware, they do not exist. A built-in is known by name; whether a workload
    names blocks is known once it is resolved, which spec cannot do (no torch here): the matrix
    resolves it and passes `names_blocks` with the cell's values."""
    if (values.get("activation_checkpointing") or "none") == "none":
        return None
    names = values.get("names_blocks")
    if names is None:
        names = values.get("workload") is None and values["model"] in CHECKPOINTED_MODULES
    return None if names else f"{values['model']} names no blocks to checkpoint (Workload.checkpoint_blocks)"


def _optimizer_state_skip(values: Values, hw: Hardware) -> str | None:
    """A state the mode and optimizer cannot keep; torchao's low-bit states compile their step, so
    they need what torch.compile needs here."""
    state = values.get("optimizer_state")
    if state is None:
        return None
    problem = optimizer_state_problem(values["precision"], state, values.get("optimizer", "sgd"))
    if problem is None and OPTIMIZER_STATES[state].library == "torchao":
        problem = library_missing_reason(state)
        if problem is None and hw.compile_unsupported:
            problem = f"optimizer_state={state}: torchao compiles its optimizer step; {hw.compile_unsupported}"
    return problem


# --- the axes' words in ids and reports -------------------------------------------------------------------
def _compile_tag(values: Values) -> str:
    mode = values.get("compile_mode")
    return ("-compiled" + (f"-{mode}" if mode else "")) if values.get("compile") else ""


def _compile_label(values: Values) -> str:
    mode = values.get("compile_mode")
    return ("compiled" + (f"({mode})" if mode else "")) if values.get("compile") else ""


def _checkpointing_tag(values: Values) -> str:
    mode = values.get("activation_checkpointing") or "none"
    return "" if mode == "none" else "-ac" if mode == "full" else f"-ac-{mode}"


def _checkpointing_label(values: Values) -> str:
    mode = values.get("activation_checkpointing") or "none"
    return "" if mode == "none" else "ac" if mode == "full" else f"ac={mode}"


def _alloc_tag(values: Values) -> str:
    setting = values.get("alloc_conf")
    # Letters, digits and underscores: ids stay pytest-friendly.
    return "" if setting is None else "-alloc-" + re.sub(r"[^A-Za-z0-9_.]+", "_", setting).strip("_")


def _alloc_label(values: Values) -> str:
    setting = values.get("alloc_conf")
    return f"alloc={setting}" if isinstance(setting, str) and setting else ""


def _state_tag(values: Values) -> str:
    state = values.get("optimizer_state")
    return f"-os{state}" if state else ""


def _state_label(values: Values) -> str:
    state = values.get("optimizer_state")
    return f"state={state}" if state else ""


AXES: tuple[Axis, ...] = (
    Axis("model", "model", MODELS_LIST, "mlp", lambda v: f"{v['model']}"),
    Axis("precision", "precision", PRECISIONS_LIST, "fp32", lambda v: f"-{v['precision']}", skip=_precision_skip),
    Axis("batch_size", "batch_size",
         Option("--batch-size", comma_list(batch_size_value), "A,B",
                "integers >= 1, or max: each precision's planned maximum, from --plan"),
         64, lambda v: f"-bs{v['batch_size']}"),
    Axis("grad_accum", "grad_accum", Option("--grad-accum", comma_list(integer(1)), "A,B", "integers >= 1"),
         1, lambda v: f"-ga{v['grad_accum']}"),
    Axis("gpus", "world_size", GPUS_LIST, 1, lambda v: f"-gpus{v['world_size']}", skip=_ranks_skip),
    Axis("compile", "compile", Option("--compile", comma_list(on_off), "A,B", "off, on: torch.compile of the model"),
         False, _compile_tag, _compile_label, _compile_skip, column="compiled"),
    Axis("activation_checkpointing", "activation_checkpointing",
         Option("--activation-checkpointing", comma_list(choice(ACTIVATION_CHECKPOINTING)), "A,B",
                ", ".join(ACTIVATION_CHECKPOINTING)),
         "none", _checkpointing_tag, _checkpointing_label, left_out=_checkpointing_left_out),
    Axis("alloc_conf", "alloc_conf",
         Option("--alloc-conf", comma_list(optional(alloc_setting), separator=";"), "A;B",
                "PYTORCH_CUDA_ALLOC_CONF settings separated by ';' (each may hold commas), none for the "
                "environment's own"),
         None, _alloc_tag, _alloc_label),
    Axis("optimizer_state", "optimizer_state",
         Option("--optimizer-state", comma_list(optional(choice(tuple(OPTIMIZER_STATES)))), "A,B",
                f"{', '.join(OPTIMIZER_STATES)} (8bit, fp8: torchao's Adam states), none for the precision's own"),
         None, _state_tag, _state_label, _optimizer_state_skip),
)
"""The matrix's axes in the order of the cell id, of the test's parameters and of the cross product."""
FIXED_PART = 5
"""The first five axes are the cell id's fixed part: in every id, and columns of every report."""


def optional_axes() -> tuple[Axis, ...]:
    """The axes after the id's fixed part: in an id and a report's variant only off their defaults."""
    return AXES[FIXED_PART:]


def named(name: str) -> Axis:
    """The axis called `name` (a KeyError naming the axes for another)."""
    for axis in AXES:
        if axis.name == name:
            return axis
    raise KeyError(f"no axis {name!r}; the axes are {', '.join(a.name for a in AXES)}")


def cell_id(values: Values) -> str:
    """The readable id of a cell, e.g. resnet50-amp-fp16-bs256-ga4-gpus2 or
    gpt-fp8-rowwise-bs16-ga4-gpus1-compiled-ac: every axis's fragment, in order."""
    return "".join(axis.tag(values) for axis in AXES)


def left_out_reason(values: Values) -> str | None:
    """Why the cell does not apply to its model (it is left out of a matrix), or None: the first
    axis, in order, whose rule says so."""
    for axis in AXES:
        reason = axis.left_out(values) if axis.left_out else None
        if reason:
            return reason
    return None


def skip_reason(values: Values, hw: Hardware) -> str | None:
    """Why this hardware cannot run the cell meaningfully, or None: the first axis, in order, whose
    rule says so."""
    for axis in AXES:
        reason = axis.skip(values, hw) if axis.skip else None
        if reason:
            return reason
    return None
