"""FP8 training through torchao's float8 linear layers: whether it can run, the conversion, its record.

torchao is an optional extra (`pip install 'trainkit[fp8]'`). Its wheels declare no torch
requirement, and 0.17+ need torch >= 2.11, so pip cannot keep the two in step: the gate below
checks both at run time and names the fix, and a cell that cannot run ends `unsupported` with that
reason, never with an ImportError. 0.15 and 0.16 raise DeprecationWarnings on import, fatal under
warnings-as-errors; 0.12 does not import on torch 2.14.

Which layers are converted: every `nn.Linear` whose in and out features are divisible by 16.
torchao itself neither checks nor skips the others, and on a CUDA GPU their float8 GEMM fails in
`torch._scaled_mm` (its trailing dimensions must be multiples of 16); on a CPU they would train
happily, so a CPU test could never catch it. The record lists the converted and skipped layers and
the converted share of the linear layers' FLOPs, counted per module by torch's FlopCounterMode
(forward and backward: a first layer computes no input gradient, so 6·in·out would overcount it).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..measure.flops import flop_counts

if TYPE_CHECKING:
    from ..workloads.workload import Workload

TORCHAO_REQUIREMENT = "torchao>=0.17,<0.19"
TORCHAO_RANGE = ((0, 17), (0, 19))
"""[lowest, above highest) torchao (major, minor) that trainkit's float8 path is tested with."""
MIN_TORCH = (2, 11)
"""torchao 0.17 and later need torch >= 2.11."""
INSTALL_HINT = f"pip install 'trainkit[fp8]' ({TORCHAO_REQUIREMENT})"
DIVISOR = 16
"""Dimensions of a float8 GEMM must be multiples of 16 (torch._scaled_mm on CUDA)."""
# Log records torchao's import emits on torch 2.14 (log records, not Python warnings): 0.17/0.18's
# "KernelPreference is an Enum subclass ... register_constant" from torch's pytree, and the
# "Skipping import of cpp extensions" of a torchao built for another torch.
IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def torchao_version() -> str | None:
    """The installed torchao's version, or None (without importing it: the import costs seconds)."""
    if importlib.util.find_spec("torchao") is None:
        return None
    try:
        return importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_reason(mode: str) -> str | None:
    """Why this environment cannot run torchao's float8 training for `mode`, or None. Cheap: no
    torchao import, so bench asks it at collection."""
    have_torch = _major_minor(torch.__version__)
    if have_torch is not None and have_torch < MIN_TORCH:
        return (f"{mode} needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} for torchao's float8 training "
                f"(installed: torch {torch.__version__})")
    version = torchao_version()
    if version is None:
        return f"{mode} needs torchao, an optional extra: {INSTALL_HINT}"
    have = _major_minor(version)
    low, high = TORCHAO_RANGE
    if have is None or not low <= have < high:
        return f"{mode} needs {TORCHAO_REQUIREMENT} (installed: torchao {version}): {INSTALL_HINT}"
    return None


@functools.cache
def _float8() -> Any:
    """torchao.float8, imported once with its import-time log records held back (the loggers get
    their levels back afterwards, so later records still show)."""
    loggers = [logging.getLogger(name) for name in IMPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # torchao: optional, only for the FP8 precisions (tests hide it to check that)
        import torchao.float8
        import torchao.float8.float8_linear  # noqa: F401 - Float8Linear, below
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return torchao.float8


def float8_linear_class() -> type[nn.Module]:
    return _float8().float8_linear.Float8Linear


@dataclass
class Conversion:
    """What convert() did to a model."""

    recipe: str
    emulate: bool
    converted: list[str] = field(default_factory=list)
    """Module names (FQNs) of the linear layers now running in float8."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Module name -> why it stays in bf16."""


def convertible(module: nn.Linear) -> str | None:
    """Why a linear layer cannot run its GEMMs in float8, or None."""
    if module.in_features % DIVISOR or module.out_features % DIVISOR:
        return f"{module.in_features}->{module.out_features} features, not multiples of {DIVISOR}"
    return None


def convert(model: nn.Module, recipe: str, emulate: bool = False) -> tuple[nn.Module, Conversion]:
    """Convert the model's convertible linear layers in place to torchao's Float8Linear with the
    named recipe ("tensorwise", "rowwise"). emulate=True runs the float8 casts with fp32 GEMMs,
    on any device: numerics, not speed (the CPU tests use it)."""
    float8 = _float8()
    config = dataclasses.replace(float8.Float8LinearConfig.from_recipe_name(recipe), emulate=emulate)
    conversion = Conversion(recipe, emulate)

    def keep(module: nn.Module, fqn: str) -> bool:  # torchao calls it once per nn.Linear, children first
        reason = convertible(module)  # type: ignore[arg-type]
        if reason is None:
            conversion.converted.append(fqn)
        else:
            conversion.skipped[fqn] = reason
        return reason is None

    model = float8.convert_to_float8_training(model, config=config, module_filter_fn=keep)
    return model, conversion


LINEAR_FLOPS_BATCH = 2
"""Samples linear_flops counts for (any size works: the count is linear in the batch)."""


def linear_flops(workload: Workload) -> dict[str, int]:
    """Training FLOPs (forward and backward) of each nn.Linear of the model for a batch of
    LINEAR_FLOPS_BATCH, keyed by module name, counted by FlopCounterMode (flops.flop_counts: on the
    meta device where the model runs there, else a real CPU batch scaled to LINEAR_FLOPS_BATCH), as
    flops.training_flops_per_sample counts the whole model."""
    counter, model, batch = flop_counts(workload)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    return {name: int(sum(counts.get(f"{root}.{name}", {}).values())) * LINEAR_FLOPS_BATCH // batch
            for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def details(conversion: Conversion, workload: Workload) -> dict[str, Any]:
    """The record's account of an FP8 cell: recipe, torchao, converted and skipped layers, the
    converted layers' share of all linear layers' training FLOPs, and their training FLOPs per
    sample (the part of flops_per_sample that runs in float8: MFU divides it by the fp8 peak)."""
    flops = linear_flops(workload)
    total = sum(flops.values())
    converted = sum(flops.get(name, 0) for name in conversion.converted)
    return {
        "kind": "torchao float8 training",
        "recipe": conversion.recipe,
        "emulate": conversion.emulate,
        "torchao": torchao_version(),
        "converted_layers": list(conversion.converted),
        "skipped_layers": [{"layer": name, "reason": why} for name, why in conversion.skipped.items()],
        "converted_linear_flop_share": converted / total if total else None,
        "float8_flops_per_sample": converted / LINEAR_FLOPS_BATCH,
        "linear_flops_method": "per-module FlopCounterMode counts of forward and backward on the meta device",
    }
