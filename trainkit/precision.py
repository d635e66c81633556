"""Precision policies: one small class per mode, one factory from names.

A policy owns everything precision changes in a training step, as hooks the loop calls in order:
`configure_backends` (TF32 flags), `convert_module` (parameter dtype), `forward_context`
(autocast), `backward` (loss scaling), `unscale_` (before clipping) and `optimizer_step` (the
step, with GradScaler's skip-on-overflow). fp32 is the base class with no-op hooks.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from .config import PRECISIONS, RunConfig

NO_CONTEXT = contextlib.nullcontext()  # stateless, so one instance serves every step


class Precision:
    """fp32 weights and math, TF32 explicitly off: the reference every other mode is compared to."""

    name: ClassVar[str] = "fp32"
    param_dtype: ClassVar[torch.dtype] = torch.float32
    compute_dtype: ClassVar[torch.dtype] = torch.float32
    allow_tf32: ClassVar[bool] = False

    def __init__(self, device: torch.device, config: RunConfig) -> None:
        self.device = device
        self.config = config

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return None

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype of floating-point model inputs (the data source stores them in it)."""
        return self.param_dtype

    def unsupported_reason(self) -> str | None:
        """Why this device cannot run the mode, or None if it can."""
        return None

    def configure_backends(self) -> None:
        # cuDNN's TF32 default is on, so "fp32" must turn it off explicitly (pytorch/pytorch#67384).
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        torch.set_float32_matmul_precision("high" if self.allow_tf32 else "highest")

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return NO_CONTEXT

    def convert_output(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true size before clipping; once per optimizer step."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Step the optimizer. Returns a 0-d bool tensor on the device that is True when the step
        was skipped (only GradScaler skips), or None; never a host sync."""
        optimizer.step()
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def _needs_ampere(device: torch.device, what: str) -> str | None:
    """bf16 and TF32 need compute capability >= 8.0: older GPUs emulate bf16 slowly and report it
    as supported (pytorch/pytorch#124996), so the gate is the capability, not is_bf16_supported."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"{what} needs CUDA compute capability >= 8.0; this GPU has {major}.{minor}"
    return None


class TF32Precision(Precision):
    """fp32 weights; matmuls and convolutions on TF32 tensor cores (10-bit mantissa)."""

    name = "tf32"
    allow_tf32 = True

    def unsupported_reason(self) -> str | None:
        if self.device.type != "cuda":
            return "tf32 needs a CUDA GPU with compute capability >= 8.0; this run is on the CPU"
        return _needs_ampere(self.device, "tf32")


class MixedPrecision(Precision):
    """fp32 weights under torch.amp.autocast; fp16 adds a GradScaler, bf16 needs none.

    Autocast runs matmul/conv/linear in the low dtype and keeps softmax, norms and losses in fp32;
    inputs stay fp32 (casting them by hand inside autocast is a seed-tutorial defect).
    """

    name = "amp-fp16"
    autocast_dtype: ClassVar[torch.dtype] = torch.float16

    def __init__(self, device: torch.device, config: RunConfig) -> None:
        super().__init__(device, config)
        self._scaler: torch.amp.GradScaler | None = None
        if self.autocast_dtype == torch.float16:
            self._scaler = torch.amp.GradScaler(
                device.type, init_scale=config.init_scale, growth_interval=config.growth_interval)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self._scaler

    @property
    def compute_dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.autocast_dtype

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.amp.autocast(self.device.type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self._scaler is None:
            loss.backward()
        else:
            self._scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        if self._scaler is None:
            optimizer.step()
            return None
        # GradScaler halves the scale exactly when it found inf/NaN gradients and skipped the step
        # (pytorch/pytorch#44511: step() itself reports nothing), so compare scales on the device.
        scale_before = self._scaler._scale.clone()  # type: ignore[union-attr]
        self._scaler.step(optimizer)
        self._scaler.update()
        return self._scaler._scale < scale_before  # type: ignore[operator]

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self._scaler.state_dict()} if self._scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._scaler is not None and "scaler" in state:
            self._scaler.load_state_dict(state["scaler"])


class MixedBF16Precision(MixedPrecision):
    """bf16 autocast: fp32's exponent range, so no loss scaling (a scaler would only cost time)."""

    name = "amp-bf16"
    autocast_dtype = torch.bfloat16

    def unsupported_reason(self) -> str | None:
        return _needs_ampere(self.device, "amp-bf16")


class HalfPrecision(Precision):
    """`model.half()`: weights, gradients and optimizer state in fp16, no GradScaler.

    GradScaler refuses fp16 gradients (pytorch/pytorch#74739), so the only guard is an optional
    static loss scale, divided out of the gradients before clipping and the step. Outputs are cast
    to fp32 for the loss so that the loss itself does not overflow.
    """

    name = "half-fp16"
    param_dtype = torch.float16
    compute_dtype = torch.float16

    def convert_module(self, module: nn.Module) -> nn.Module:
        # Initialised in fp32 (seed 3's advice), converted once here.
        return module.to(self.param_dtype)

    def convert_output(self, output: torch.Tensor) -> torch.Tensor:
        return output.float()

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.config.static_loss_scale).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        if self.config.static_loss_scale == 1.0:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch._foreach_mul_(grads, 1.0 / self.config.static_loss_scale)


class HalfBF16Precision(HalfPrecision):
    """`model.to(torch.bfloat16)`: everything in bf16; small updates can round away (pytorch/ao#1124)."""

    name = "half-bf16"
    param_dtype = torch.bfloat16
    compute_dtype = torch.bfloat16

    def unsupported_reason(self) -> str | None:
        return _needs_ampere(self.device, "half-bf16")


POLICIES: dict[str, type[Precision]] = {
    cls.name: cls
    for cls in (Precision, TF32Precision, MixedPrecision, MixedBF16Precision, HalfPrecision, HalfBF16Precision)
}
assert tuple(POLICIES) == PRECISIONS, "every precision name needs exactly one policy class"


def build_precision(config: RunConfig, device: torch.device) -> Precision:
    """The policy for config.precision on this device."""
    try:
        policy_class = POLICIES[config.precision]
    except KeyError:
        raise ValueError(f"precision={config.precision!r} is not valid; choose from {', '.join(POLICIES)}") from None
    return policy_class(device, config)
