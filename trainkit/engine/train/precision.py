"""Precision policies: one small class per mode, one factory from names.

A policy owns everything precision changes in a training step, as hooks the loop calls in order:
`configure_backends` (TF32 flags), `convert_module` (parameter dtype), `trained_parameters` (what
the optimizer updates: the parameters, or fp32 master copies of them), `forward_context`
(autocast), `backward` (loss scaling), `after_backward` (where a micro-batch's gradient is
accumulated), `unscale_` (before clipping) and `optimizer_step` (the step, with GradScaler's
skip-on-overflow); `details` tells the record what the mode did to the
model (FP8's converted layers). fp32 is the base class with no-op hooks; the loop builds its step
once per policy and leaves out a context or an output cast the policy does not override
(`Precision.overrides`), so a hook costs the step only where a mode has one. What a mode *is* (its
dtypes, where it runs, its loss scaling) is read from precision_facts.py, never restated.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..spec.config import RunConfig
from ..spec.precision_facts import PrecisionFacts, facts_of, precision_names, unsupported_reason
from . import float8, main_grads

if TYPE_CHECKING:
    from ..workloads.workload import Workload

NO_CONTEXT = contextlib.nullcontext()  # stateless, so one instance serves every step


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision_facts dtype name ("bfloat16" -> torch.bfloat16)."""
    return getattr(torch, name)


def device_capability(device: torch.device) -> tuple[int, int] | None:
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None  # type: ignore[return-value]



class Unsupported(Exception):
    """The device cannot run this cell (e.g. bf16 below compute capability 8.0)."""

class Precision:
    """fp32 weights and math, TF32 explicitly off: the reference every other mode is compared to."""

    name: ClassVar[str] = "fp32"

    def __init__(self, device: torch.device, config: RunConfig) -> None:
        self.device = device
        self.config = config
        self.facts: PrecisionFacts = facts_of(self.name)
        self.param_dtype = torch_dtype(self.facts.param_dtype)
        self.compute_dtype = torch_dtype(self.facts.compute_dtype)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return None

    @classmethod
    def overrides(cls, hook: str) -> bool:
        """Whether this mode replaces fp32's `hook` (a method name): the loop leaves fp32's identity
        forward_context and convert_output out of the step instead of calling them every micro-batch."""
        return getattr(cls, hook) is not getattr(Precision, hook)

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype of floating-point model inputs (the data source stores them in it)."""
        return self.param_dtype

    @classmethod
    def unsupported_on(cls, device_type: str, capability: tuple[int, int] | None,
                       gpu_name: str | None = None) -> str | None:
        """Why a device of this type and capability cannot run the mode, or None. Bench asks this
        at collection (from the probe's answers, without touching CUDA); a policy whose mode needs
        more than the table says (a library, a model shape) overrides it."""
        return unsupported_reason(cls.name, device_type, capability, gpu_name)

    def unsupported_reason(self) -> str | None:
        """Why this device cannot run the mode, or None if it can."""
        gpu_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return self.unsupported_on(self.device.type, device_capability(self.device), gpu_name)

    def configure_backends(self) -> None:
        # TF32 math is on exactly for the mode whose matmuls run on TF32 tensor cores. cuDNN's TF32
        # default is on, so every other mode must turn it off explicitly (pytorch/pytorch#67384).
        allow_tf32 = self.facts.peak_kind == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def trained_parameters(self, module: nn.Module) -> list[torch.Tensor]:
        """The tensors the optimizer updates and clipping reads, after convert_module: the
        module's own parameters, unless the policy keeps master copies of them."""
        return [p for p in module.parameters() if p.requires_grad]

    @property
    def master_bytes(self) -> int:
        """Bytes of the master copy of the weights the policy keeps beside the parameters (0: none)."""
        return 0

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return NO_CONTEXT

    def convert_output(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def after_backward(self) -> None:
        """After each micro-batch's backward (and DDP's all-reduce, on the last one): take the
        gradients it left where the policy accumulates them. Here: they stay in the parameters."""

    @property
    def reduces_gradients(self) -> bool:
        """The policy averages gradients over ranks itself (in unscale_), so DDP must not: the loop
        runs every micro-batch under no_sync."""
        return False

    @property
    def grad_accum_dtype(self) -> torch.dtype:
        """The dtype micro-batch gradients are accumulated and averaged over ranks in."""
        return self.param_dtype

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true size, on the tensors the optimizer updates, before
        clipping; once per optimizer step."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Step the optimizer. Returns a 0-d bool tensor on the device that is True when the step
        was skipped (only GradScaler skips), or None. Only GradScaler's step waits on the host: it
        reads whether any gradient overflowed, which decides the update."""
        optimizer.step()
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def details(self, workload: Workload) -> dict[str, Any] | None:
        """What the mode did to this model that its config does not say (the record's
        `precision_details`), or None."""
        del workload
        return None


def scaled_backward(scaler: torch.amp.GradScaler | None, loss: torch.Tensor) -> None:
    """Backward of the loss, multiplied by the scaler's scale when there is one."""
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()


def scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """GradScaler's step and update; a 0-d bool tensor on the device, True when it skipped the step.
    GradScaler halves the scale exactly when it found inf/NaN gradients and skipped the step
    (pytorch/pytorch#44511: step() itself reports nothing), so the scales are compared on the device."""
    scale_before = scaler._scale.clone()  # type: ignore[union-attr]
    scaler.step(optimizer)
    scaler.update()
    return scaler._scale < scale_before  # type: ignore[operator]


class TF32Precision(Precision):
    """fp32 weights; matmuls and convolutions on TF32 tensor cores (10-bit mantissa)."""

    name = "tf32"


class MixedPrecision(Precision):
    """fp32 weights under torch.amp.autocast; fp16 adds a GradScaler, bf16 needs none.

    Autocast runs matmul/conv/linear in the low dtype and keeps softmax, norms and losses in fp32;
    inputs stay fp32 (casting them by hand inside autocast is a seed-tutorial defect).
    """

    name = "amp-fp16"

    def __init__(self, device: torch.device, config: RunConfig) -> None:
        super().__init__(device, config)
        self._scaler: torch.amp.GradScaler | None = None
        if self.facts.loss_scaling == "dynamic":
            self._scaler = torch.amp.GradScaler(
                device.type, init_scale=config.init_scale, growth_interval=config.growth_interval)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self._scaler

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.amp.autocast(self.device.type, dtype=self.compute_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        scaled_backward(self._scaler, loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        if self._scaler is None:
            optimizer.step()
            return None
        return scaled_step(self._scaler, optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self._scaler.state_dict()} if self._scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._scaler is not None and "scaler" in state:
            self._scaler.load_state_dict(state["scaler"])


class MixedBF16Precision(MixedPrecision):
    """bf16 autocast: fp32's exponent range, so no loss scaling (a scaler would only cost time)."""

    name = "amp-bf16"


class HalfPrecision(Precision):
    """`model.half()`: weights, gradients and optimizer state in fp16, no GradScaler.

    GradScaler refuses fp16 gradients (pytorch/pytorch#74739), so the only guard is an optional
    static loss scale, divided out of the gradients before clipping and the step. Outputs are cast
    to fp32 for the loss so that the loss itself does not overflow.
    """

    name = "half-fp16"

    def convert_module(self, module: nn.Module) -> nn.Module:
        # Initialised in fp32 (seed 3's advice), converted once here.
        return module.to(self.param_dtype)

    def convert_output(self, output: torch.Tensor) -> torch.Tensor:
        return output.float()

    @property
    def static_scale(self) -> float:
        """The fixed loss scale; 1 for a mode without static scaling (bf16 has fp32's range)."""
        return self.config.static_loss_scale if self.facts.loss_scaling == "static" else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.static_scale if self.static_scale != 1.0 else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.static_scale == 1.0:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch._foreach_mul_(grads, 1.0 / self.static_scale)


class HalfBF16Precision(HalfPrecision):
    """`model.to(torch.bfloat16)`: everything in bf16; small updates can round away (pytorch/ao#1124)."""

    name = "half-bf16"


class StochasticRoundingBF16Precision(HalfBF16Precision):
    """Pure bf16 whose optimizer rounds each update into the weights stochastically, so an update
    below half a bf16 ulp moves its weight in expectation instead of rounding away (torchao's
    `_AdamW(bf16_stochastic_round=True)`, pytorch/ao#1124). The optimizer is trainkit.engine.train.rounding's
    (trainkit.engine.train.optimizers reads `weight_rounding` from the facts); the step is half-bf16's."""

    name = "half-bf16-sr"


class KahanBF16Precision(HalfBF16Precision):
    """Pure bf16 with a bf16 Kahan compensation buffer per weight: what each update's rounding lost
    is added to the next (torch-optimi's kahan_sum). 2 bytes per parameter more than half-bf16, 8
    less than a master copy with its fp32 gradients."""

    name = "half-bf16-kahan"


class MasterWeightPrecision(HalfPrecision):
    """fp16 parameters run forward and backward; an fp32 master copy of them takes the update.

    The recipe of large-scale mixed-precision training (Micikevicius et al. 2018; Megatron-LM's
    Float16OptimizerWithFloat16Params, DeepSpeed's fp16 optimizer): the masters are copied from the
    fp32 initial weights before the cast, the optimizer is built over them (so its state is fp32),
    each micro-batch's half-precision gradients are added into the masters' fp32 gradients (the
    "main gradients" of Megatron-LM and DeepSpeed; config.fp32_main_grads, the default), which are
    averaged over ranks in fp32 before unscaling and clipping, and after the step the masters are
    rounded back into the parameters. With fp32_main_grads off, the micro-batches accumulate in the
    parameters' half-precision gradients, DDP all-reduces them in half precision, and the step's
    total is copied into the masters.
    Updates below the half-precision spacing of a weight accumulate in the master instead of
    rounding away, and Adam's second moment (g**2, ~1e-8 and below) no longer underflows fp16.
    fp16 keeps dynamic loss scaling: GradScaler works here, since the gradients it unscales are the
    masters' fp32 ones (it refuses fp16 gradients, pytorch/pytorch#74739), and skips a step whose
    gradients overflowed. The price is memory: 4 bytes per parameter for the masters, and 4 more for
    their gradients from the first micro-batch's backward (unscale_ without fp32_main_grads) to zero_grad.
    """

    name = "half-fp16-master"

    def __init__(self, device: torch.device, config: RunConfig) -> None:
        super().__init__(device, config)
        self.master_dtype = torch_dtype(self.facts.master_dtype or "float32")
        self._scaler: torch.amp.GradScaler | None = None
        if self.facts.loss_scaling == "dynamic":
            self._scaler = torch.amp.GradScaler(
                device.type, init_scale=config.init_scale, growth_interval=config.growth_interval)
        self.params: list[torch.Tensor] = []
        """The module's half-precision parameters (forward and backward)."""
        self.masters: list[torch.Tensor] = []
        """Their master copies, one per parameter, in the same order (the optimizer's parameters)."""
        self.fp32_main_grads = config.fp32_main_grads

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self._scaler

    def convert_module(self, module: nn.Module) -> nn.Module:
        self.masters = [nn.Parameter(p.detach().clone().to(self.master_dtype), requires_grad=p.requires_grad)
                        for p in module.parameters()]
        module = super().convert_module(module)
        self.params = list(module.parameters())
        return module

    def trained_parameters(self, module: nn.Module) -> list[torch.Tensor]:
        return [m for m in self.masters if m.requires_grad]

    @property
    def master_bytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.masters)

    def backward(self, loss: torch.Tensor) -> None:
        scaled_backward(self._scaler, loss)

    @property
    def reduces_gradients(self) -> bool:
        return self.fp32_main_grads and self.config.world_size > 1

    @property
    def grad_accum_dtype(self) -> torch.dtype:
        return self.master_dtype if self.fp32_main_grads else self.param_dtype

    def after_backward(self) -> None:
        if self.fp32_main_grads:
            main_grads.add_into(self.params, self.masters, self.master_dtype)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.fp32_main_grads:
            if self.reduces_gradients:
                main_grads.average_over_ranks(self.masters, self.config.world_size)
        else:  # the step's half-precision total, all-reduced by DDP
            main_grads.add_into(self.params, self.masters, self.master_dtype)
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        skipped = None
        if self._scaler is None:
            optimizer.step()
        else:
            skipped = scaled_step(self._scaler, optimizer)
        # Round the masters into the parameters (a skipped step left the masters as they were).
        # One foreach kernel instead of a copy per parameter.
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)
        return skipped

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"masters": [m.detach() for m in self.masters]}
        if self._scaler is not None:
            state["scaler"] = self._scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Copied into the masters in place: the optimizer holds these very tensors.
        with torch.no_grad():
            for master, saved in zip(self.masters, state["masters"], strict=True):
                master.copy_(saved)
            torch._foreach_copy_(self.params, self.masters)
        if self._scaler is not None and "scaler" in state:
            self._scaler.load_state_dict(state["scaler"])


class MasterBF16Precision(MasterWeightPrecision):
    """bf16 parameters with fp32 master weights: bf16 has fp32's range, so no loss scaling; the
    masters keep the updates bf16's 8-bit mantissa would round away (pytorch/ao#1124)."""

    name = "half-bf16-master"
class Float8Precision(MixedBF16Precision):
    """torchao's float8 training with per-tensor scales, over bf16 autocast (trainkit/float8.py).

    The linear layers whose dimensions are multiples of 16 run their three GEMMs (output, input
    gradient, weight gradient) in float8 with dynamic scales; the rest of the model runs under bf16
    autocast as in amp-bf16, weights and optimizer stay fp32, no loss scaling. torch.compile fuses
    the casts and scales: eager FP8 is slower than bf16 (torchtitan docs/float8.md).
    """

    name = "fp8-tensorwise"
    recipe: ClassVar[str] = "tensorwise"

    def __init__(self, device: torch.device, config: RunConfig, emulate: bool = False) -> None:
        """emulate=True runs the float8 casts with fp32 GEMMs on any device (torchao's emulation):
        the CPU tests check the numerics with it; speed means nothing then, so the bench never uses it."""
        super().__init__(device, config)
        self.emulate = emulate
        self.conversion: float8.Conversion | None = None

    @classmethod
    def unsupported_on(cls, device_type: str, capability: tuple[int, int] | None,
                       gpu_name: str | None = None) -> str | None:
        return super().unsupported_on(device_type, capability, gpu_name) or float8.missing_reason(cls.name)

    def unsupported_reason(self) -> str | None:
        if self.emulate:  # emulation runs anywhere; it still needs torchao
            return float8.missing_reason(self.name)
        return super().unsupported_reason()

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.amp.autocast(self.device.type, dtype=torch.bfloat16)

    def convert_module(self, module: nn.Module) -> nn.Module:
        rows = self.config.batch_size * (self.config.tokens_per_sample or 1)
        if not self.emulate and rows % float8.DIVISOR:
            # The weight gradient's GEMM runs over the micro-batch's rows.
            raise Unsupported(f"{self.name}: float8 GEMMs need the rows of a micro-batch to be a multiple of "
                              f"{float8.DIVISOR} (batch_size x tokens = {rows})")
        module, self.conversion = float8.convert(module, self.recipe, self.emulate)
        if not self.conversion.converted:
            skipped = "; ".join(f"{name} {why}" for name, why in self.conversion.skipped.items()) or "none"
            raise Unsupported(f"{self.name}: no linear layer of {self.config.model} can run in float8 "
                              f"(skipped: {skipped})")
        return module

    def details(self, workload: Workload) -> dict[str, Any] | None:
        return float8.details(self.conversion, workload) if self.conversion is not None else None


class Float8RowwisePrecision(Float8Precision):
    """torchao's float8 training with per-row scales (e4m3 for the output gradient too): more
    accurate than per-tensor scales, slower (pytorch/ao torchao/float8/README.md)."""

    name = "fp8-rowwise"
    recipe = "rowwise"


POLICIES: dict[str, type[Precision]] = {
    cls.name: cls
    for cls in (Precision, TF32Precision, MixedPrecision, MixedBF16Precision, HalfPrecision, HalfBF16Precision,
                StochasticRoundingBF16Precision, KahanBF16Precision, MasterWeightPrecision, MasterBF16Precision,
                Float8Precision, Float8RowwisePrecision)
}
"""The policy class of every mode in precision_facts.PRECISION_FACTS (a test holds them equal)."""


def policy_class(name: str) -> type[Precision]:
    """The policy class of a mode; ValueError naming the valid modes for an unknown one."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"precision={name!r} has no policy; choose from {', '.join(precision_names())}") from None


def build_precision(config: RunConfig, device: torch.device) -> Precision:
    """The policy for config.precision on this device."""
    return policy_class(config.precision)(device, config)
