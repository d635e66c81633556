"""A training step on fake tensors: the model as the precision policy converts it, and the bytes its
operations hold at their highest point (trainkit.engine.estimate.estimate's step peak).

FakeTensorMode gives every tensor its shape, dtype and device but no data and no memory, so a
step of a model of any size runs here in moments. Two things torch 2.14 does not do on fake
tensors are done here another way, each named where it is done: converting a module's parameters
(`nn.Module._apply` swaps a fake parameter, and `torch.utils.swap_tensors` refuses the weak
reference every fake tensor carries) and GradScaler's decision to step (it reads a value).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

STEP_KINDS = ("activations", "gradients", "temporaries")

_aten = torch.ops.aten
PROMOTING_OPS = frozenset(getattr(_aten, name).Tensor
                          for name in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"))
"""Binary arithmetic whose CPU kernel (TensorIterator) promotes an operand of another dtype by copying it."""
PROMOTING_FOREACH_OPS = frozenset(getattr(_aten, f"_foreach_{name}_").List for name in ("add", "sub", "mul", "div"))
"""Their foreach forms: on a CPU, one such operation per pair of tensors, one after another."""


def _promotion_bytes(out: torch.Tensor, other: Any, in_place: bool) -> int:
    """Bytes of the copies a CPU kernel makes to run `out OP other` in their common dtype: every
    tensor operand of another dtype is copied into it (TensorIterator's `promote_inputs_to_common_dtype`
    on a CPU; a GPU kernel casts as it reads), and an in-place result of another dtype is computed into
    a temporary and copied back."""
    if not isinstance(other, torch.Tensor) or out.device.type != "cpu" or other.dtype == out.dtype:
        return 0
    common = torch.result_type(out, other)
    size = sum(t.numel() * common.itemsize for t in (out, other) if t.dtype != common)
    if in_place and out.dtype != common:
        size += out.numel() * common.itemsize
    return size


def cpu_promotion_bytes(func: Any, args: tuple[Any, ...]) -> int:
    """The most bytes alive at once in copies a CPU kernel of `func` makes below the dispatcher, out
    of sight of a dispatch mode (fp32 main gradients: the fp32 copy of each half-precision gradient
    `_foreach_add_` adds in)."""
    if func in PROMOTING_FOREACH_OPS and len(args) >= 2:
        return max((_promotion_bytes(out, other, True) for out, other in zip(args[0], args[1])), default=0)
    if func in PROMOTING_OPS and len(args) >= 2 and isinstance(args[0], torch.Tensor):
        return _promotion_bytes(args[0], args[1], func._schema.is_mutable)
    return 0


def round_to_block(nbytes: int, block: int) -> int:
    """`nbytes` rounded up to a multiple of `block` (1: unchanged)."""
    return -(-nbytes // block) * block if block > 1 else nbytes


def converted_on_fake(build: Callable[[], nn.Module], convert: Callable[[nn.Module], nn.Module],
                      holders: list[object], mode: Any, device: torch.device) -> nn.Module:
    """The module `build` makes, passed through `convert` (a precision policy's convert_module:
    parameter dtypes, master copies, float8 layers), with every tensor on fake tensors on `device`.

    Built and converted on the meta device, where conversion works as on a real one; then each
    meta parameter and buffer of the module, and each tensor (or list of tensors) an object of
    `holders` keeps as an attribute (the policy's master copies and its own list of the
    parameters), is replaced by one fake tensor of its shape, dtype and strides, the same fake
    tensor wherever the same meta tensor was held (tied weights stay tied). A build that cannot run
    on the meta device (one that combines a tensor made outside it, a module-level constant) is
    built for real on the CPU instead, and its tensors replaced the same way."""
    try:
        with torch.device("meta"):
            module = convert(build())
        built_on = torch.device("meta")
    except Exception:  # noqa: BLE001 - any failure on the meta device: the real build says what is wrong
        module = convert(build())
        built_on = torch.device("cpu")
    fakes: dict[int, torch.Tensor] = {}

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in fakes:
            with mode:
                made = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=device)
            fakes[id(tensor)] = (nn.Parameter(made, requires_grad=tensor.requires_grad)
                                 if isinstance(tensor, nn.Parameter) else made)
        return fakes[id(tensor)]

    for owner in module.modules():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    table[name] = fake(tensor)
    for holder in holders:
        for name, value in vars(holder).items():
            if isinstance(value, torch.Tensor) and value.device == built_on:
                setattr(holder, name, fake(value))
            elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) and v.device == built_on
                                                           for v in value):
                setattr(holder, name, [fake(v) for v in value])
    return module


@contextlib.contextmanager
def scaler_steps(scaler: torch.amp.GradScaler | None) -> Iterator[None]:
    """GradScaler steps the optimizer unless a gradient overflowed, which it learns by reading a
    value (`found_inf.item()`); a fake tensor has none. A timed step that ran is the one whose
    memory counts (a skipped step allocates less), so within this block this scaler always steps."""
    if scaler is None:
        yield
        return

    def step(optimizer: torch.optim.Optimizer, optimizer_state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        del optimizer_state
        return optimizer.step(*args, **kwargs)

    scaler._maybe_opt_step = step  # type: ignore[method-assign]
    try:
        yield
    finally:
        del scaler._maybe_opt_step


class StepPeak(TorchDispatchMode):
    """Bytes of the storages operations create while it is active, alive at their highest point.

    A storage counts once, from the operation that creates it (an output that shares an input's
    storage is a view or an in-place result) until it is freed (a weak reference to the storage
    fires). Storages that existed before entering (the weights, the optimizer's state, the data)
    are not counted. `mark(tensor, kind)` files a counted storage under activations or gradients;
    the rest are temporaries. A CPU kernel's copies of mixed-dtype operands (cpu_promotion_bytes)
    count as temporaries while the operation runs. `phase` names the part of the step now running,
    for the record of where the peak was."""

    def __init__(self, block_bytes: int = 1) -> None:
        super().__init__()
        self.block_bytes = block_bytes
        self._live: dict[Any, tuple[int, str, Any]] = {}
        self.alive = dict.fromkeys(STEP_KINDS, 0)
        self.total = 0
        self.peak = 0
        self.at_peak = dict.fromkeys(STEP_KINDS, 0)
        self.phase = ""
        self.peak_phase = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(t.untyped_storage()) for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._add(tensor, inputs)
        # A CPU kernel's own copies live while it runs, beside its output: they count at the peak, freed after.
        copies = round_to_block(cpu_promotion_bytes(func, args), self.block_bytes)
        if copies and self.total + copies > self.peak:
            self.peak, self.peak_phase = self.total + copies, self.phase
            self.at_peak = {**self.alive, "temporaries": self.alive["temporaries"] + copies}
        return out

    def _add(self, tensor: torch.Tensor, inputs: set[Any]) -> None:
        storage = tensor.untyped_storage()
        key = StorageWeakRef(storage)
        if key in inputs or key in self._live or storage.nbytes() == 0:
            return
        size = round_to_block(storage.nbytes(), self.block_bytes)

        def freed(_: Any, key: Any = key) -> None:
            entry = self._live.pop(key, None)
            if entry is not None:
                self.alive[entry[1]] -= entry[0]
                self.total -= entry[0]

        self._live[key] = (size, "temporaries", weakref.ref(storage, freed))
        self.alive["temporaries"] += size
        self.total += size
        if self.total > self.peak:
            self.peak, self.at_peak, self.peak_phase = self.total, dict(self.alive), self.phase

    def mark(self, tensor: torch.Tensor | None, kind: str) -> None:
        if tensor is None:
            return
        key = StorageWeakRef(tensor.untyped_storage())
        entry = self._live.get(key)
        if entry is not None and entry[1] != kind:
            size, old, ref = entry
            self._live[key] = (size, kind, ref)
            self.alive[old] -= size
            self.alive[kind] += size
