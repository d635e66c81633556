"""A plan file, read back and held against a cell: what bench's `--batch-size max` and the reports
read of `python -m trainkit plan`'s output. Torch-free: bench reads plans at collection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...engine.spec.config import RunConfig
from ...engine.spec.schema import MEMORY_NAMES, read_json

SCHEMA = "trainkit.plan/1"
PLAN_AXES = ("precision", "batch_size", "grad_accum", "world_size", "device")
"""RunConfig fields the planner sets itself (its own options stand for them)."""
NOT_PLANNED = ("epochs", "data", "data_root", "shuffle", "num_workers", "pin_memory", "prefetch_factor",
               "persistent_workers", "drop_last", "checkpoint_dir", "checkpoint_every", "resume_from")
"""RunConfig fields of what the planner does not plan: real data, epochs and checkpoints."""
MEMORY_FIELDS = ("model", "optimizer", "momentum", "data", "dataset_size", "image_size", "seq_len", "vocab_size",
                 "gpt_layers", "gpt_heads", "gpt_width", "activation_checkpointing", "compile", "compile_mode",
                 "alloc_conf")
"""RunConfig fields that change a step's memory: a plan holds for a cell only where these agree."""
ADDRESS_SPACE = "host_vm_growth_bytes"
PEAK_NAMES = {**MEMORY_NAMES, ADDRESS_SPACE: "address-space growth"}
"""Short names of the peaks a plan reports."""


class PlanError(ValueError):
    """A plan that cannot answer the question asked of it; the message is one line naming the fix."""


def read_plan(path: str) -> dict[str, Any]:
    """The plan at `path` as its JSON object, with `path` added; PlanError (one line) for a file that
    is not one."""
    plan = read_json(path, "plan", PlanError)
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        raise PlanError(f"{path}: not a plan (schema {plan.get('schema') if isinstance(plan, dict) else None!r}, "
                        f"expected {SCHEMA!r}; write one with python -m trainkit plan)")
    plan["path"] = path
    return plan


def _option(name: str, value: Any) -> str:
    """The plan command's option for a RunConfig field's value (booleans are --flag/--no-flag)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag} " if value else f"--no-{flag} "
    return f"--{flag} {value} "


def planned_max_batch(plans: Sequence[dict[str, Any]], config: RunConfig, device: str,
                      memory_limit_bytes: int | None = None, gpu_name: str | None = None) -> int:
    """The planned maximum micro-batch for a cell's config (its batch size ignored) from the plan
    made for its model, precision and hardware; PlanError naming what to plan when none fits."""
    defaults = RunConfig()
    shaping = "".join(_option(name, getattr(config, name)) for name in MEMORY_FIELDS[1:]
                      if name not in NOT_PLANNED and getattr(config, name) != getattr(defaults, name))
    fix = (f"python -m trainkit plan --model {config.model} {shaping}--precision {config.precision} "
           f"--gpus {config.world_size} "
           + (f"--memory-limit-gb {memory_limit_bytes / 2**30:g} " if memory_limit_bytes else "")
           + "--output plan.json, then pass --plan plan.json")
    reasons = []
    for plan in plans:
        where = plan.get("path", "a plan")
        planned = plan.get("config") or {}
        differ = [f"{name} {planned.get(name)!r} (the cell's {getattr(config, name)!r})" for name in MEMORY_FIELDS
                  if planned.get(name) != getattr(config, name)]
        if planned.get("model") != config.model:
            reasons.append(f"{where} plans {planned.get('model')}")
            continue
        if config.precision not in (plan.get("precisions") or {}):
            reasons.append(f"{where} has no {config.precision}")
            continue
        if differ:
            reasons.append(f"{where} was made with {', '.join(differ)}")
            continue
        if plan.get("device") != device or (device == "cuda" and plan.get("gpu_name") != gpu_name):
            reasons.append(f"{where} was made on {plan.get('gpu_name') or plan.get('device')}, "
                           f"not {gpu_name or device}")
            continue
        if device == "cpu" and plan.get("memory_limit_bytes") != memory_limit_bytes:
            ours = f"{memory_limit_bytes / 2**30:g} GiB" if memory_limit_bytes else "none"
            reasons.append(f"{where} is for a {plan.get('memory_limit_bytes', 0) / 2**30:g} GiB memory cap, "
                           f"this run's is {ours}")
            continue
        ranks = (plan.get("probe") or {}).get("world_size", 1)
        if config.world_size > 1 and ranks == 1:
            reasons.append(f"{where} probed 1 rank; {config.world_size} ranks hold DDP's gradient buckets too")
            continue
        found = plan["precisions"][config.precision].get("max_batch")
        if not found:
            raise PlanError(f"{where}: no batch of {config.model} {config.precision} fits "
                            f"({plan['precisions'][config.precision].get('bounded_by')})")
        return int(found)
    raise PlanError(f"--batch-size max: no plan for {config.model} {config.precision} on {gpu_name or device}"
                    + (f" ({'; '.join(reasons)})" if reasons else " (no --plan given)") + f"; run {fix}")
