"""What ran: the dtypes one training step really used, held against what its precision declares.

A benchmark must measure what it claims to: a published 2.9x speedup was withdrawn because the
model was cast to bf16 before the optimizer was built, so the "fp32" baseline's Adam state was
silently bf16 (TensorAuto/OpenTau#177). One diagnostic step observes, on every rank:

- parameters: the dtypes of the model's floating-point parameters;
- gradients: their gradients as backward left them (before any copy into fp32 main gradients);
- optimizer's gradients: what the optimizer reads at its step (the fp32 main gradients of a master
  mode, else the parameters' own);
- master copy: the tensors the optimizer updates, where they are not the parameters;
- optimizer state: each state tensor's dtype, or torchao's quantized kind (8bit, fp8);
- compensation: Kahan's buffer;
- weight rounding: how the optimizer writes an update into a weight;
- reduction: what the ranks' gradients are averaged in (the c10d all-reduce ops the step runs);
- matmul outputs: the dtype of every matmul and convolution output of forward and backward,
  counted by a TorchDispatchMode.

Each is compared with what the cell declares: the precision's row of precision_facts (its dtypes,
rounding and compensation) with the cell's optimizer-state precision and fp32_main_grads. A row
that differs makes the cell's status `precision-mismatch`, with one line naming the tensor, the
declared dtype and the observed one. The step runs after the timed steps and the eval, like the
diagnostics pass, so it is in no figure of the record. Under torch.compile the dispatch mode is
left out (it would make the compiled model recompile): the matmul and reduction rows then say so,
and the rounding check (trainkit.engine.train.rounding.accumulation_check) covers what compile does to
the roundings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..spec.config import RunConfig
from ..spec.precision_facts import facts_of, optimizer_state_of
from .timing import Marks

METHOD = ("one extra optimizer step after the timed steps and the eval (in no figure of the record): parameters "
          "and optimizer state after it, gradients as backward left them, the optimizer's gradients at its step, "
          "matmul/convolution outputs and c10d all-reduces counted by a TorchDispatchMode (eager cells)")
MATMULS = frozenset({"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward",
                     "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
                     "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"})
"""aten ops whose outputs are matmul results (the overload packet's name)."""
REDUCTIONS = frozenset({"allreduce_", "reduce_scatter_", "_reduce_scatter_base_"})
"""c10d ops that average gradients over ranks."""
NONE = "none"
NOT_OBSERVED = "not observed"


@dataclass(frozen=True)
class Row:
    """One tensor kind of the step: declared, observed, and whether they agree."""

    tensor: str
    declared: str
    observed: str
    detail: str = ""
    """How many tensors or calls, or why the row could not be observed."""
    matches: bool | None = True
    """None: not observed (no verdict either way)."""


def dtype_name(value: Any) -> str:
    """"bfloat16" for torch.bfloat16; torchao's quantized optimizer states by their kind."""
    kind = type(value).__name__
    if kind == "OptimState8bit":
        return "8bit"
    if kind == "OptimStateFp8":
        return "fp8"
    return str(value.dtype).removeprefix("torch.")


def stored_bytes(value: torch.Tensor) -> int:
    """Bytes a tensor holds: a tensor subclass's inner tensors (torchao's quantized optimizer states:
    codes, scales, code table), whose element_size() would be the apparent dtype's."""
    if hasattr(value, "__tensor_flatten__") and type(value) is not torch.Tensor:
        names, _ = value.__tensor_flatten__()
        return sum(stored_bytes(getattr(value, name)) for name in names)
    return value.numel() * value.element_size()


def _joined(names: Iterable[str]) -> str:
    return ",".join(sorted(set(names))) or NONE


class OpCounter(TorchDispatchMode):
    """Counts the output dtypes of matmuls and the dtypes of gradient all-reduces."""

    def __init__(self) -> None:
        super().__init__()
        self.matmuls: Counter[str] = Counter()
        self.reductions: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in MATMULS:
            outputs = out if isinstance(out, (tuple, list)) else (out,)
            if name.startswith("_scaled_dot_product"):
                outputs = outputs[:1]  # the attention output; the logsumexp beside it is always fp32
            for tensor in outputs:
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    self.matmuls[dtype_name(tensor)] += 1
        elif name in REDUCTIONS:
            tensors = args[0] if args and isinstance(args[0], (list, tuple)) else args[:1]
            for tensor in tensors:
                if isinstance(tensor, torch.Tensor):
                    self.reductions[dtype_name(tensor)] += 1
        return out


class GradientDtypes(Marks):
    """Phase marks that read the gradients' dtypes each time a backward ends (before the policy
    moves them into main gradients)."""

    def __init__(self, device: torch.device, params: list[torch.Tensor]) -> None:
        super().__init__(device)
        self.params = params
        self.seen: set[str] = set()
        self.on_data: Any = None
        """Called when the step has its data (its first mark): the op counter starts there."""

    def mark(self, label: str = "") -> None:
        super().mark(label)
        if label == "data" and self.on_data is not None:
            self.on_data()
        if label == "backward":
            self.seen |= {dtype_name(p.grad) for p in self.params if p.grad is not None}


def declared_reduction(config: RunConfig) -> str:
    """What the ranks average gradients in: the fp32 main gradients where a master mode keeps them,
    else the parameters' dtype (DDP's buckets take it)."""
    facts = facts_of(config.precision)
    if config.world_size == 1:
        return NONE
    return facts.master_dtype if facts.master_dtype and config.fp32_main_grads else facts.param_dtype


def _compare(tensor: str, declared: str, observed: set[str], detail: str = "") -> Row:
    seen = _joined(observed)
    return Row(tensor, declared, seen, detail, seen == declared)


def state_rows(config: RunConfig, optimizer: torch.optim.Optimizer) -> list[Row]:
    """The optimizer state's dtypes against the declared state precision (per tensor: torchao keeps a
    small tensor in its parameter's dtype), and Kahan's compensation."""
    facts = facts_of(config.precision)
    trained = facts.master_dtype or facts.param_dtype
    state = optimizer_state_of(config.precision, config.optimizer_state)
    declared_kind = facts.optimizer_state_dtype if state is None else (
        state.name if state.library else state.storage_dtype)
    expected: set[str] = set()
    observed: set[str] = set()
    wrong: list[str] = []
    compensation: set[str] = set()
    tensors = 0
    for param_state in optimizer.state.values():
        for key, value in param_state.items():
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                continue  # Adam's step counter
            if key == "compensation":
                compensation.add(dtype_name(value))
                continue
            tensors += 1
            want = declared_kind if state is None or state.stored_here(value.numel()) else trained
            seen = dtype_name(value)
            expected.add(want)
            observed.add(seen)
            if seen != want and len(wrong) < 3:
                wrong.append(f"{key} of {value.numel()} elements is {seen}, declared {want}")
    note = (f"torchao keeps tensors under {state.min_numel} elements in the parameters' dtype"
            if state is not None and state.library else "")
    rows = [Row("optimizer state", _joined(expected) if tensors else NONE, _joined(observed),
                "; ".join(wrong) or f"{tensors} tensors" + (f" ({note})" if note else ""), not wrong)]
    rows.append(_compare("compensation", facts.compensation_dtype or NONE, compensation))
    return rows


def weight_rounding_of(optimizer: torch.optim.Optimizer) -> str:
    """How the optimizer writes updates into the weights: trainkit's rounding optimizer says; torchao's
    low-bit ones round stochastically when asked and the weights are bf16; torch.optim's to nearest."""
    if hasattr(optimizer, "rounding"):
        return str(optimizer.rounding)
    if getattr(optimizer, "bf16_stochastic_round", False):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return "stochastic" if any(p.dtype is torch.bfloat16 for p in params) else "nearest"
    return "nearest"


def observe(trainer: Any) -> dict[str, Any]:
    """One more optimizer step of `trainer` (a trainkit.engine.train.loop.Trainer), observed (module
    docstring): the table's rows, and the first mismatch as one line (None when all agree)."""
    config: RunConfig = trainer.config
    facts = facts_of(config.precision)
    module_params = [p for p in trainer.raw_model.parameters() if p.requires_grad]
    reader = GradientDtypes(trainer.device, module_params)
    optimizer_grads: set[str] = set()

    counter = None if config.compile else OpCounter()
    # Counting from the step's first mark to the optimizer's step: torchao's low-bit optimizers
    # compile their step, and torch.compile refuses to run under a dispatch mode.
    counting = False

    def count(on: bool) -> None:
        nonlocal counting
        if counter is None or on == counting:
            return
        if on:
            counter.__enter__()
        else:
            counter.__exit__(None, None, None)
        counting = on

    reader.on_data = lambda: count(True)

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        count(False)
        optimizer_grads.update(dtype_name(p.grad) for group in optimizer.param_groups
                               for p in group["params"] if p.grad is not None)

    hook = trainer.optimizer.register_step_pre_hook(before_step)
    try:
        trainer.train_step(reader)
    finally:
        count(False)
        hook.remove()
    module_ids = {id(p) for p in trainer.raw_model.parameters()}
    masters = [p for p in trainer.params if id(p) not in module_ids]
    floating = [p for p in trainer.raw_model.parameters() if p.is_floating_point()]
    trained = facts.master_dtype or facts.param_dtype
    rows = [
        _compare("parameters", facts.param_dtype, {dtype_name(p) for p in floating}, f"{len(floating)} tensors"),
        _compare("gradients", facts.param_dtype, reader.seen, "as backward left them"),
        # A step the loss scaler skipped (an overflow) never calls the optimizer: nothing to observe.
        _compare("optimizer's gradients", trained, optimizer_grads,
                 "fp32 main gradients" if facts.master_dtype else "the parameters' own") if optimizer_grads
        else Row("optimizer's gradients", trained, NOT_OBSERVED,
                 "the loss scaler skipped this step (an overflow): the optimizer never ran", None),
        _compare("master copy", facts.master_dtype or NONE, {dtype_name(p) for p in masters}),
        *state_rows(config, trainer.optimizer),
        Row("weight rounding", facts.weight_rounding, weight_rounding_of(trainer.optimizer),
            type(trainer.optimizer).__name__, weight_rounding_of(trainer.optimizer) == facts.weight_rounding),
    ]
    if counter is None:
        why = "torch.compile: a dispatch mode would recompile the model"
        rows.append(Row("reduction", declared_reduction(config), NOT_OBSERVED, why, None))
        rows.append(Row("matmul outputs", facts.compute_dtype, NOT_OBSERVED, why, None))
    else:
        rows.append(_compare("reduction", declared_reduction(config), set(counter.reductions),
                             ", ".join(f"{n} x {d}" for d, n in sorted(counter.reductions.items()))))
        rows.append(_matmul_row(config, counter.matmuls))
    mismatch = next((r for r in rows if r.matches is False), None)
    return {"method": METHOD, "step": trainer.step - 1, "rows": [asdict(r) for r in rows],
            "mismatch": None if mismatch is None else mismatch_line(mismatch)}


def _matmul_row(config: RunConfig, counts: Counter[str]) -> Row:
    facts = facts_of(config.precision)
    detail = ", ".join(f"{n} x {d}" for d, n in sorted(counts.items()))
    if facts.compute_dtype.startswith("float8"):
        # float8 GEMMs (torch._scaled_mm) write bf16 or fp32 outputs from float8 inputs: their
        # output dtype says nothing of the float8 claim (float8.details records the converted layers).
        return Row("matmul outputs", facts.compute_dtype, _joined(counts), detail + "; float8 GEMMs output bf16/fp32: "
                   "not judged by output dtype", None)
    return Row("matmul outputs", facts.compute_dtype, _joined(counts), detail, _joined(counts) == facts.compute_dtype)


def mismatch_line(row: Row) -> str:
    """The cell's status detail: the tensor, what was declared, what ran."""
    return (f"{row.tensor}: declared {row.declared}, observed {row.observed}"
            + (f" ({row.detail})" if row.detail else ""))


def table_lines(what_ran: dict[str, Any]) -> list[str]:
    """The observed table as aligned text lines (check-workload and `trainkit run` print it)."""
    rows = what_ran.get("rows") or []
    width = max((len(r["tensor"]) for r in rows), default=0)
    lines = []
    for r in rows:
        verdict = {True: "ok", False: "MISMATCH", None: "-"}[r["matches"]]
        lines.append(f"{r['tensor']:<{width}}  declared {r['declared']:<12} observed {r['observed']:<16} {verdict:<8} "
                     f"{r['detail']}".rstrip())
    return lines


def compact(what_ran: dict[str, Any]) -> str:
    """The observed dtypes in one line: tensor=observed, a mismatch marked with its declared dtype."""
    parts = []
    for r in what_ran.get("rows") or []:
        mark = f" (declared {r['declared']})" if r["matches"] is False else ""
        parts.append(f"{r['tensor']} {r['observed']}{mark}")
    return "; ".join(parts)

