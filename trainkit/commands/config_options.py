"""What the commands share: one option per RunConfig field, the config the options give, and the
checks of paths and limits every command makes before a process starts. Torch-free, so that bad
input is refused in a fraction of a second."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..engine.spec import config as cfg
from ..engine.spec.config import ConfigError, RunConfig, field_help
from ..engine.spec.options import UsageError, choice, integer, number, optional
from ..engine.spec.precision_facts import OPTIMIZER_STATES, precision_names

CHOICES = {"precision": precision_names, "optimizer": cfg.OPTIMIZERS,
           "schedule": cfg.SCHEDULES, "data": cfg.DATASETS, "device": cfg.DEVICES,
           "compile_mode": cfg.COMPILE_MODES, "activation_checkpointing": cfg.ACTIVATION_CHECKPOINTING,
           "optimizer_state": tuple(OPTIMIZER_STATES)}
"""Fields with a fixed set of values (precision's is the table's, read when parsing)."""


def choices_of(field: str) -> tuple[str, ...]:
    valid = CHOICES[field]
    return tuple(valid() if callable(valid) else valid)


MODEL_HELP = ("the model: a built-in (mlp, cnn, resnet18, resnet50, gpt), MODULE:FUNCTION (a function returning a "
              "trainkit Workload), MODULE (build, loss, batch), an installed plugin's name (python -m trainkit "
              "workloads), hf:TYPE_OR_CONFIG?key=value&... or timm:NAME?key=value&... (default: mlp)")


def add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One option per RunConfig field (but those in `exclude`, which the command sets itself), typed
    from its annotation, documented by its docstring. `--model SPEC` sets model and workload
    (model_fields), so workload has no option of its own."""
    group = parser.add_argument_group("run configuration (RunConfig fields)")
    for field in dataclasses.fields(RunConfig):
        if field.name in exclude or field.name == "workload":
            continue
        if field.name == "model":
            group.add_argument("--model", dest="model", default=None, metavar="SPEC", help=MODEL_HELP)
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = str(field.type)
        default = field.default
        help_text = f"{field_help(field.name)} (default: {default})"
        if kind == "bool":
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif field.name in CHOICES:
            group.add_argument(flag, dest=field.name, type=choice(CHOICES[field.name]), default=None,
                               metavar="{" + ",".join(choices_of(field.name)) + "}", help=help_text)
        elif kind.startswith(("int", "float")):
            # Bounds are RunConfig's to check (it names the field); here only the number's form.
            parse = integer(None) if kind.startswith("int") else number(None)
            group.add_argument(flag, dest=field.name, type=optional(parse) if "None" in kind else parse,
                               default=None, metavar="N" if kind.startswith("int") else "X", help=help_text)
        else:
            group.add_argument(flag, dest=field.name, default=None, metavar="TEXT", help=help_text)


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from parsed options: given options replace the base's (or the defaults)."""
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
               if getattr(args, f.name, None) is not None}
    if "model" in changes:
        changes.update(model_fields(changes["model"]))
    try:
        return dataclasses.replace(base, **changes) if base is not None else RunConfig(**changes)
    except ConfigError as exc:
        raise UsageError(f"invalid configuration: {exc}") from None


def model_fields(spec: str) -> dict[str, str | None]:
    """The config fields `--model SPEC` sets: the workload's name and its spec (None for a built-in).
    A spec that is not built in is resolved here, so a bad one is one line before any process starts."""
    if spec in cfg.MODELS:
        return {"model": spec, "workload": None}
    from ..engine.workloads.resolve import model_choice
    from ..engine.workloads.workload import WorkloadError  # torch, only for a spec that is not built in

    try:
        chosen = model_choice(spec)
    except WorkloadError as exc:
        raise UsageError(str(exc)) from None
    return {"model": chosen.model, "workload": chosen.workload}


def check_paths(config: RunConfig, output: str | None, option: str = "--output") -> None:
    """Input files and the output directory (of the file `option` names), checked before any
    process starts."""
    if config.data in cfg.LOCAL_DATA and not os.path.isdir(config.data_root or ""):
        raise UsageError(f"--data-root {config.data_root!r} is not a directory")
    if config.resume_from and not os.path.isfile(config.resume_from):
        raise UsageError(f"--resume-from {config.resume_from!r} is not a file")
    if output:
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise UsageError(f"{option} {output!r}: directory {parent!r} does not exist")
