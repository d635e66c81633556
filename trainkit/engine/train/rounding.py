"""How an update reaches a half-precision weight: rounded to nearest, stochastically, or compensated.

Pure bf16 training stagnates because an update below half a bf16 ulp of its weight rounds away
(Zamirai et al., "Revisiting BFloat16 Training", arXiv 2010.06192; torchao's optim README: with
nearest rounding an update below ~1e-3 of the weight leaves a bf16 weight unchanged). The two
known fixes, both here:

- stochastic rounding: the fp32 result of the update is rounded up or down at random, with the
  probabilities that make its expectation exact (the bit trick of torchao's `_fp32_to_bf16_sr`,
  pytorch/ao#1124: add 16 random bits below bf16's mantissa, then truncate);
- Kahan summation: a bf16 compensation buffer per weight keeps what the last rounding lost and
  adds it to the next update (torch-optimi's `kahan_sum`, docs/kahan_summation.md).

`RoundingOptimizer` is SGD (with momentum), Adam and AdamW computed in fp32 per parameter, with
their state stored in a chosen dtype and the new weight written back through one of the three
roundings. It is written here, not taken from torchao (`_AdamW(bf16_stochastic_round=True)`) and
torch-optimi (`kahan_sum=True`), for three reasons measured on this project's machines: the three
pure-bf16 modes then differ only in the rounding under test (torchao's and optimi's Adam differ in
their own details, which a parity verdict would mix in); torchao compiles its update per parameter
shape with torch.compile, ~40 s on a loaded 2-core CPU in every cell's fresh process; torchao has
no SGD and optimi is not among the suite's dependencies. torchao still runs the 8-bit and FP8
optimizer states (trainkit.engine.train.optimizers), where its quantized state is the point.

`accumulation_check` is the check that a claimed rounding happens: 1e-3 added to bf16 ones a
thousand times stays 1.0 under nearest rounding and ends near 2.0 under the other two, eager or
under torch.compile (a compiled kernel could keep the sum in fp32 registers and round once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .compiled import quiet_cpp_extension

ROUNDINGS = ("nearest", "stochastic", "kahan")
"""How an update is rounded into a weight (precision_facts.PrecisionFacts.weight_rounding)."""


def stochastic_round(value: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`value` (fp32) rounded to bf16 up or down at random: away from zero with probability equal to
    the dropped 16 bits' share of a bf16 ulp, so the rounding is exact in expectation. fp32's bits
    are sign-magnitude, so adding below the kept bits moves the magnitude: the same rule for both
    signs. Any other target dtype is rounded to nearest (only bf16 is fp32's upper half)."""
    if dtype is not torch.bfloat16:
        return value.to(dtype)
    bits = value.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def nearest_bf16_as_fp32(value: torch.Tensor) -> torch.Tensor:
    """`value` (fp32) rounded to the nearest bf16 (ties to even), kept in fp32, by integer arithmetic
    on its bits. Kahan needs the rounded weight to compute what the rounding lost; written as a cast
    down and back up, torch.compile's inductor drops the round trip (it keeps the fp32 value), the
    compensation is always zero and Kahan silently becomes nearest rounding (the rounding check,
    compiled, caught exactly this). Integer arithmetic cannot be simplified away."""
    bits = value.float().contiguous().view(torch.int32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).view(torch.float32)


@torch.no_grad()
def write_update(param: torch.Tensor, new_value: torch.Tensor, rounding: str,
                 compensation: torch.Tensor | None = None) -> None:
    """Write `new_value` (the fp32 weight after the update) into `param` with `rounding`. Kahan adds
    the compensation first and keeps in it what the write lost: (new + c) - stored, in the
    compensation's dtype."""
    if rounding == "stochastic":
        param.copy_(stochastic_round(new_value, param.dtype))
    elif rounding == "kahan":
        assert compensation is not None
        target = new_value + compensation.float()
        if param.dtype is torch.bfloat16:
            stored = nearest_bf16_as_fp32(target)
            param.copy_(stored)  # exact: `stored` is a bf16 value
            compensation.copy_(target - stored)
        else:
            param.copy_(target)
            compensation.copy_(target - param.float())
    else:
        param.copy_(new_value)


class RoundingOptimizer(torch.optim.Optimizer):
    """SGD with momentum, Adam or AdamW in fp32 arithmetic, one parameter at a time: the state is
    read from `state_dtype` into fp32, updated, and stored back rounded to nearest; the weight is
    written through `rounding` (module docstring). The fp32 temporaries live for one parameter's
    update, so the persistent memory is the parameters, the state in `state_dtype` and, for
    Kahan, one compensation buffer in the parameter's dtype.

    The arithmetic is torch.optim's: SGD with dampening 0 (the first step's buffer is the
    gradient), Adam's L2 weight decay added to the gradient, AdamW's decoupled decay lr * wd * w,
    Adam's bias corrections and eps outside the square root."""

    def __init__(self, params: Iterable[Any], *, kind: str, lr: float, rounding: str, state_dtype: torch.dtype | None,
                 momentum: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"kind={kind!r}; choose from sgd, adam, adamw")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding={rounding!r}; choose from {', '.join(ROUNDINGS)}")
        defaults = {"lr": lr, "momentum": momentum, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.kind, self.rounding, self.state_dtype = kind, rounding, state_dtype

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loading a checkpoint keeps each state tensor's own dtype: torch.optim casts floating state to
        its parameter's dtype, which would turn a bf16 state of fp32 weights into fp32 on resume (the
        round trip bf16 -> fp32 -> bf16 is exact)."""
        dtypes = {index: {key: value.dtype for key, value in state.items() if isinstance(value, torch.Tensor)}
                  for index, state in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]  # the ids' order
        for index, kept in dtypes.items():
            state = self.state[params[index]]
            for key, dtype in kept.items():
                state[key] = state[key].to(dtype)

    def _buffer(self, param: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(param, dtype=self.state_dtype or param.dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay = float(group["lr"]), float(group["weight_decay"])
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    self._init_state(state, param)
                weight = param.float()
                grad = param.grad.float()
                if self.kind == "adamw":
                    weight = weight * (1 - lr * decay)
                elif decay:
                    grad = grad + decay * param.float()
                if self.kind == "sgd":
                    update = self._sgd(state, grad, group["momentum"])
                else:
                    update = self._adam(state, grad, group["betas"], group["eps"])
                write_update(param, weight - lr * update, self.rounding, state.get("compensation"))
        return loss

    def _init_state(self, state: dict[str, Any], param: torch.Tensor) -> None:
        if self.kind == "sgd":
            if self.defaults["momentum"]:
                state["momentum_buffer"] = None  # the first step's gradient, as torch.optim.SGD
        else:
            state["step"] = 0  # on the host: the bias corrections need it there, and it costs no device memory
            state["exp_avg"] = self._buffer(param)
            state["exp_avg_sq"] = self._buffer(param)
        if self.rounding == "kahan":
            state["compensation"] = torch.zeros_like(param)

    def _sgd(self, state: dict[str, Any], grad: torch.Tensor, momentum: float) -> torch.Tensor:
        if not momentum:
            return grad
        buffer = state["momentum_buffer"]
        value = grad if buffer is None else buffer.float() * momentum + grad
        if buffer is None:
            state["momentum_buffer"] = value.to(self.state_dtype or grad.dtype)
        else:
            buffer.copy_(value)
        return value

    def _adam(self, state: dict[str, Any], grad: torch.Tensor, betas: tuple[float, float], eps: float) -> torch.Tensor:
        beta1, beta2 = betas
        state["step"] += 1
        step = state["step"]
        exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].copy_(exp_avg)
        state["exp_avg_sq"].copy_(exp_avg_sq)
        # Out of place: with fp32 state, .float() returned the state itself.
        denom = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step) + eps
        return exp_avg / (1 - beta1**step) / denom


# --- the check that the rounding happens -------------------------------------------------------------
ACCUMULATE_STEPS = 1000
ACCUMULATE_INCREMENT = 1e-3
ACCUMULATE_ELEMENTS = 4096
"""Weights summed side by side: their mean's spread under stochastic rounding is small enough to tell
2.0 from 1.0 by many standard deviations."""


@dataclass(frozen=True)
class RoundingCheck:
    """1e-3 added to bf16 ones ACCUMULATE_STEPS times through `write_update`, and what came out."""

    rounding: str
    compiled: bool
    mean: float
    """Mean of the weights at the end (exact arithmetic: 2.0)."""
    expected: float
    """What the rounding should give: 1.0 to nearest (every addition rounds away), else 2.0."""
    tolerance: float
    """How far the mean may be from `expected`: for stochastic rounding five standard deviations of
    the mean (each rounding's variance is at most ulp**2/4, ulp = 2**-7 in [1, 2)); for Kahan and
    nearest half an ulp of 2.0."""

    @property
    def holds(self) -> bool:
        return abs(self.mean - self.expected) <= self.tolerance

    @property
    def line(self) -> str:
        how = "compiled" if self.compiled else "eager"
        verdict = "as claimed" if self.holds else "NOT as claimed"
        return (f"{ACCUMULATE_STEPS} x {ACCUMULATE_INCREMENT:g} added to bf16 1.0 ({how}, {self.rounding} rounding): "
                f"mean {self.mean:.4f}, expected {self.expected:g} +- {self.tolerance:.4f}: {verdict}")


def _accumulate_step(weights: torch.Tensor, increment: torch.Tensor, rounding: str,
                     compensation: torch.Tensor | None) -> None:
    write_update(weights, weights.float() + increment, rounding, compensation)


def accumulation_check(rounding: str, compiled: bool = False, device: torch.device | str = "cpu",
                       step: Callable[..., None] | None = None) -> RoundingCheck:
    """Add ACCUMULATE_INCREMENT to ACCUMULATE_ELEMENTS bf16 ones ACCUMULATE_STEPS times with `rounding`,
    through the optimizer's own write (eager, or compiled with torch.compile's default backend).
    `step` replaces the write (the tests plant a faulty one)."""
    step = step or _accumulate_step
    if compiled:
        quiet_cpp_extension()
        step = torch.compile(step, fullgraph=True, dynamic=False)
    weights = torch.ones(ACCUMULATE_ELEMENTS, dtype=torch.bfloat16, device=device)
    compensation = torch.zeros_like(weights) if rounding == "kahan" else None
    increment = torch.full_like(weights, ACCUMULATE_INCREMENT, dtype=torch.float32)
    for _ in range(ACCUMULATE_STEPS):
        step(weights, increment, rounding, compensation)
    ulp = 2.0**-7  # bf16's spacing in [1, 2)
    if rounding == "stochastic":
        tolerance = 5 * math.sqrt(ACCUMULATE_STEPS * ulp**2 / 4 / ACCUMULATE_ELEMENTS)
    else:
        tolerance = ulp  # half the spacing at 2.0 (2**-6)
    expected = 1.0 if rounding == "nearest" else 1.0 + ACCUMULATE_STEPS * ACCUMULATE_INCREMENT
    return RoundingCheck(rounding, compiled, float(weights.float().mean()), expected, tolerance)
