"""Why a loss moved: the numerics of one extra optimizer step, taken after a cell's figures were read.

A precision can change the loss by changing what the optimizer computes, not only by rounding.
Pure fp16 AdamW is the standing example: (1 - beta2) * g**2 underflows fp16 for |g| below a few
1e-3, the second moment `exp_avg_sq` sits at exactly 0, and the update becomes lr * m / eps, many
times fp32's. Its loss then falls faster, and is a different optimizer's loss. This pass reads the
figures that tell such cases apart:

- the share of gradient elements that are exactly zero or subnormal in the parameters' dtype, as
  backward left them (before unscaling and before any copy to master weights), and the count of
  inf/NaN gradient elements;
- the share of the optimizer's second-moment entries (`exp_avg_sq`) that are exactly zero;
- the size of the update: per element, |delta theta| / lr and |delta theta| / |theta| (median and
  90th percentile), and the share of weights the step left exactly unchanged (an update below
  the weight's spacing in its dtype rounds away), all on the tensors the optimizer updates (the
  fp32 masters where a mode keeps them);
- the loss scale at that step (the run's trajectory is the record's `scaler.scale_curve`).

A step that makes weights inf/NaN is data: those weights are counted (`update_nonfinite_count`) and
left out of the update sizes, and any figure that is still not finite is null, named in
`nonfinite_figures` (the record is strict JSON: a NaN there would end the whole run writing it).

It runs like the profiling passes (trainkit.engine.cell.profile): after the timed steps and the eval, so the
step it adds is in no step time, memory peak, loss curve or eval loss of the record. The figures
mean most beside the same model's in fp32 (`trainkit parity` puts them side by side).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..measure.timing import Marks
from ..train.loop import Trainer

QUANTILE_SAMPLE = 2**22
"""Elements the medians and 90th percentiles are taken over, at most: an evenly strided sample
beyond that (torch.quantile refuses inputs above 2**24 elements). Shares and counts are exact."""
METHOD = ("one extra optimizer step after the timed steps and the eval (in no figure of the record): "
          "gradients read as backward left them, in the parameters' dtype, before unscaling; optimizer "
          "state after the step; updates from the trained tensors (fp32 masters where kept) before and after it")


class GradientReader(Marks):
    """Phase marks (Trainer.train_step's `marks`) that also read the gradients each time a backward
    ends: the last read is the step's accumulated (and, under DDP, all-reduced) gradient, as the
    policy's unscale_ is about to see it."""

    def __init__(self, device: torch.device, params: list[torch.Tensor]) -> None:
        super().__init__(device)
        self.params = params
        self.stats: dict[str, Any] = {}

    def mark(self, label: str = "") -> None:
        super().mark(label)
        if label == "backward":
            self.stats = gradient_stats(self.params)


def gradient_stats(params: list[torch.Tensor]) -> dict[str, Any]:
    """Zero, subnormal and non-finite gradient elements, in each gradient's own dtype."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return {"grad_elements": 0}
    zero = subnormal = nonfinite = 0
    for grad in grads:
        tiny = torch.finfo(grad.dtype).tiny  # the smallest normal number: below it, subnormal
        magnitude = grad.detach().abs()
        zero += int((magnitude == 0).sum())
        subnormal += int(((magnitude > 0) & (magnitude < tiny)).sum())
        nonfinite += int((~torch.isfinite(grad)).sum())
    total = sum(g.numel() for g in grads)
    return {"grad_dtype": ",".join(sorted({str(g.dtype) for g in grads})), "grad_elements": total,
            "grad_zero_share": zero / total, "grad_subnormal_share": subnormal / total,
            "grad_underflow_share": (zero + subnormal) / total, "grad_nonfinite_count": nonfinite}


def second_moment_stats(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The share of Adam's second-moment entries that are exactly zero."""
    moments = [s["exp_avg_sq"] for s in optimizer.state.values() if isinstance(s.get("exp_avg_sq"), torch.Tensor)]
    if not moments:
        return {"second_moment_zero_share": None,
                "second_moment_note": f"{type(optimizer).__name__} keeps no second moment"}
    total = sum(m.numel() for m in moments)
    return {"second_moment_zero_share": sum(int((m == 0).sum()) for m in moments) / total,
            "second_moment_dtype": ",".join(sorted({str(m.dtype) for m in moments}))}


def _quantiles(values: torch.Tensor) -> tuple[float | None, float | None]:
    """Median and 90th percentile of the finite elements of a flat tensor (an evenly strided sample
    of a large one); None without any (the non-finite ones are counted by the caller)."""
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None, None
    if values.numel() > QUANTILE_SAMPLE:
        values = values[::math.ceil(values.numel() / QUANTILE_SAMPLE)]
    median, p90 = torch.quantile(values.float(), torch.tensor([0.5, 0.9], device=values.device)).tolist()
    return median, p90


def update_stats(before: list[torch.Tensor], after: list[torch.Tensor], lr: float) -> dict[str, Any]:
    """How far the step moved each weight, absolutely (in units of lr) and relative to the weight.
    A weight that is or became inf/NaN has no update size: it is counted (`update_nonfinite_count`)
    and left out of the quantiles, which are None when no update is finite."""
    deltas, ratios, unchanged, nonfinite, total = [], [], 0, 0, 0
    for old, new in zip(before, after):
        old32, delta = old.detach().float().flatten(), (new.detach().float() - old.detach().float()).flatten()
        unchanged += int((delta == 0).sum())
        nonfinite += int((~torch.isfinite(delta)).sum())
        total += delta.numel()
        deltas.append(delta.abs())
        nonzero = old32 != 0
        ratios.append(delta[nonzero].abs() / old32[nonzero].abs())
    over_lr = _quantiles(torch.cat(deltas) / lr) if lr > 0 and deltas else (None, None)
    to_weight = _quantiles(torch.cat(ratios)) if ratios else (None, None)
    result = {"unchanged_share": unchanged / total if total else None, "update_nonfinite_count": nonfinite,
              "update_over_lr_median": over_lr[0], "update_over_lr_p90": over_lr[1],
              "update_to_weight_median": to_weight[0], "update_to_weight_p90": to_weight[1]}
    if nonfinite:
        result["update_note"] = (f"{nonfinite} of {total} weights are inf/NaN before or after the step: left out "
                                 "of the update sizes" + ("" if nonfinite < total else ", which are null"))
    return result


def finite_only(result: dict[str, Any]) -> dict[str, Any]:
    """`result` with every inf/NaN number made null and named under `nonfinite_figures`: a record is
    written as strict JSON (no NaN), and a non-finite diagnostic is data, never the end of a run."""
    bad = sorted(k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v))
    if not bad:
        return result
    return {**{k: None if k in bad else v for k, v in result.items()}, "nonfinite_figures": bad}


def diagnose(trainer: Trainer) -> dict[str, Any]:
    """One more optimizer step of `trainer`, with its numerics read (module docstring)."""
    model_params = [p for p in trainer.raw_model.parameters() if p.requires_grad]
    lr = float(trainer.optimizer.param_groups[0]["lr"])
    before = [p.detach().clone() for p in trainer.params]
    reader = GradientReader(trainer.device, model_params)
    step = trainer.step
    trainer.train_step(reader)
    skipped = bool(trainer.step_skips[step]) if step in trainer.step_skips else False
    result: dict[str, Any] = {"step": step, "method": METHOD, "lr": lr, "step_skipped": skipped,
                              "trained_dtype": str(trainer.params[0].dtype) if trainer.params else None,
                              **reader.stats, **second_moment_stats(trainer.optimizer)}
    scaler = trainer.policy.scaler
    result["loss_scale"] = scaler.get_scale() if scaler is not None else None
    if skipped:
        result["update_note"] = "GradScaler skipped this step (inf/NaN gradients): no update to measure"
    else:
        result.update(update_stats(before, trainer.params, lr))
        if lr <= 0:
            result["update_note"] = "the schedule's learning rate is 0 at this step: no update in units of lr"
    return finite_only(result)
