"""The optimizer a run steps: torch.optim's, trainkit's rounding one, or torchao's low-bit AdamW.

Which one follows from two facts, never restated: the precision mode's `weight_rounding`
(trainkit.engine.spec.precision_facts: a stochastic or Kahan write needs trainkit.engine.train.rounding's
optimizer) and the cell's optimizer-state precision (the optimizer_state axis: its own dtype where
it differs from the parameters', torchao's quantized states for 8bit and fp8). Everything else is
torch.optim's SGD, Adam and AdamW, as before.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..spec.config import RunConfig
from ..spec.precision_facts import OPTIMIZER_STATES, facts_of, optimizer_state_problem
from . import compiled
from .rounding import RoundingOptimizer

TORCHAO_HINT = "pip install 'trainkit[fp8]' (torchao)"


def param_groups(config: RunConfig, params: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Weight decay only on matrices and kernels, never on norms and biases (a parameter group each;
    one group when there is no decay at all, which keeps the optimizer's fused update to one call)."""
    if not config.weight_decay:
        return [{"params": params}]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def lowbit_missing_reason(state: str) -> str | None:
    """Why torchao's `state` optimizer cannot be built here (torchao absent), or None."""
    try:
        import torchao.optim  # noqa: F401 - an optional dependency: only 8-bit and FP8 states need it
    except ImportError as exc:
        return f"optimizer_state={state} needs torchao's low-bit optimizers ({TORCHAO_HINT}): {exc}"
    return None


def unsupported_reason(config: RunConfig, device_type: str) -> str | None:
    """Why this cell's optimizer state cannot run on this device type, or None (the axis's skip
    rule asks the same before a cell starts)."""
    state = config.optimizer_state
    problem = optimizer_state_problem(config.precision, state, config.optimizer)
    if problem is None and state is not None and OPTIMIZER_STATES[state].library == "torchao":
        problem = lowbit_missing_reason(state)
        if problem is None and (why := compiled.unsupported_reason(device_type)):
            problem = f"optimizer_state={state}: torchao compiles its optimizer step; {why}"
    return problem


def _lowbit(config: RunConfig, groups: list[dict[str, Any]], state: str) -> torch.optim.Optimizer:
    """torchao's AdamW8bit / AdamWFp8 (or their Adam), with bf16 stochastic rounding where the mode
    asks for it. torchao compiles its per-parameter step with torch.compile; its tensor subclasses
    warn that they lack an AOT-autograd cache hash, which says nothing about the run."""
    import torchao.optim as ao  # optional: checked by lowbit_missing_reason before a cell is built

    classes = {("8bit", "adamw"): ao.AdamW8bit, ("8bit", "adam"): ao.Adam8bit,
               ("fp8", "adamw"): ao.AdamWFp8, ("fp8", "adam"): ao.AdamFp8}
    base = classes[(state, config.optimizer)]

    class Quiet(base):  # type: ignore[misc, valid-type]
        def step(self, closure: Any = None) -> Any:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*does not implement _stable_hash_for_caching")
                return super().step(closure)

    Quiet.__name__ = base.__name__
    stochastic = facts_of(config.precision).weight_rounding == "stochastic"
    return Quiet(groups, lr=config.lr, eps=config.resolved_adam_eps, weight_decay=0.0,
                 bf16_stochastic_round=stochastic)


def build_optimizer(config: RunConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW over `params` (module docstring for which implementation)."""
    groups = param_groups(config, params)
    facts = facts_of(config.precision)
    state = OPTIMIZER_STATES.get(config.optimizer_state) if config.optimizer_state else None
    if state is not None and state.library == "torchao":
        return _lowbit(config, groups, state.name)
    trained_dtype = facts.master_dtype or facts.param_dtype
    state_dtype = state.storage_dtype if state is not None else facts.optimizer_state_dtype
    if facts.weight_rounding != "nearest" or state_dtype != trained_dtype:
        return RoundingOptimizer(groups, kind=config.optimizer, lr=config.lr, rounding=facts.weight_rounding,
                                 state_dtype=getattr(torch, state_dtype), momentum=config.momentum,
                                 eps=config.resolved_adam_eps)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(groups, lr=config.lr, eps=config.resolved_adam_eps, weight_decay=0.0)
