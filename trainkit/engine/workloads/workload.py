"""A workload: what the loop, the data, the planner and the reports need to know about a model.

The five built-in models are workloads (trainkit.engine.workloads.models registers them); so is a user's
model, reached through `--model SPEC` (trainkit.engine.workloads.resolve): a `module:function`
returning a Workload, a module with `build`, `loss` and `batch`, an installed plugin, or an
adapter (`hf:`, `timm:`). The minimal user workload:

    def my_workload() -> Workload:
        return Workload(name="mynet", build=MyNet, loss_fn=F.cross_entropy, make_batch=my_batch)

`make_batch(batch_size, generator, device)` returns (inputs, targets) on `device`, drawn from
`generator` only: the same generator state gives the same samples, which is what makes
accumulation, world-size equivalence and determinism testable. Inputs are one tensor (the loop
calls `model(inputs)`); floating inputs are cast to the precision mode's input dtype.
"""

from __future__ import annotations

import ast
import functools
import os
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn
from torch.utils.data import Dataset

from ..spec.choices import WORKLOAD_NAME

NAME_PATTERN = WORKLOAD_NAME
"""A workload's name: letters, digits, '_' and '.', joined by single '-' (it starts every cell id,
which must stay a pytest id and a file name)."""
PROBE_SAMPLES = 2
"""Samples of the probe batch that tells a workload's shapes and dtypes (any size would do)."""


CheckpointBlocks = tuple[type[nn.Module], ...] | Callable[[nn.Module], Iterable[str]]
"""The blocks activation checkpointing wraps: module classes (every instance that is not inside
another is wrapped), or a function of the built module returning the dotted names of its blocks."""


class WorkloadError(ValueError):
    """A workload that cannot be used; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Workload:
    """A model as trainkit trains it: how to build it, its loss, and its synthetic data."""

    name: str
    """Starts cell ids and names report groups; must not be a built-in model's name."""
    build: Callable[[], nn.Module]
    """A fresh module with its initial weights (called after torch.manual_seed(config.seed))."""
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """loss_fn(model(inputs), targets): the mean loss of a micro-batch, a scalar tensor."""
    make_batch: Callable[[int, torch.Generator, torch.device], tuple[torch.Tensor, torch.Tensor]]
    """make_batch(batch_size, generator, device) -> (inputs, targets) on device, from generator only."""
    dataset: Callable[[], Dataset] | None = None
    """A real data set of (input, target) pairs (`--data workload`); None: synthetic data only."""
    has_batchnorm: bool | None = None
    """The model normalises over the batch, so accumulation is not exact (statistics are per
    micro-batch); None: found by looking for BatchNorm layers in the built module."""
    flops_per_sample: float | None = None
    """Training FLOPs (forward and backward) per sample; None: counted by torch's FlopCounterMode."""
    num_classes: int | None = None
    """Classes of a classifier, or the vocabulary of a language model; None where it is neither."""
    tokens_per_sample: int | None = None
    """Tokens in one sample of a sequence model (tokens_per_s and MFU per token in the record);
    None otherwise."""
    checkpoint_blocks: CheckpointBlocks | None = None
    """What activation checkpointing wraps (e.g. `(nn.TransformerEncoderLayer,)`); None: the model
    has no blocks, and cells with activation checkpointing are left out of a matrix."""
    source: str = "module"
    """Where it came from: built-in, module, plugin, hf or timm (`trainkit workloads` says)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise WorkloadError(f"workload name {self.name!r} is not valid: use letters, digits, '_' and '.', "
                                "joined by single '-'")
        for field in ("build", "loss_fn", "make_batch"):
            if not callable(getattr(self, field)):
                raise WorkloadError(f"workload {self.name!r}: {field} must be callable, got {getattr(self, field)!r}")
        blocks = self.checkpoint_blocks
        if blocks is not None and not callable(blocks) and not (
                isinstance(blocks, tuple) and blocks and all(isinstance(c, type) and issubclass(c, nn.Module)
                                                             for c in blocks)):
            raise WorkloadError(f"workload {self.name!r}: checkpoint_blocks must be a tuple of nn.Module classes or "
                                f"a function of the module returning its blocks' names, got {blocks!r}")

    # --- what a probe batch tells (built once, on the CPU) -----------------------------------------
    @functools.cached_property
    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of PROBE_SAMPLES made on the CPU from a fixed generator: its shapes and dtypes
        stand for every batch (make_batch's contract: fixed shapes)."""
        inputs, targets = self.make_batch(PROBE_SAMPLES, torch.Generator().manual_seed(0), torch.device("cpu"))
        for what, tensor in (("inputs", inputs), ("targets", targets)):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0 or tensor.shape[0] != PROBE_SAMPLES:
                raise WorkloadError(f"workload {self.name!r}: make_batch({PROBE_SAMPLES}, ...) must return two tensors "
                                    f"of {PROBE_SAMPLES} rows; its {what} are {_describe(tensor)}")
        return inputs, targets

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample's input: (C, H, W) for images, (T,) for token ids."""
        return tuple(self.probe[0].shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one sample's target: () for a class, (T,) for next tokens."""
        return tuple(self.probe[1].shape[1:])

    @property
    def tokens(self) -> bool:
        """Inputs are integer ids (embedded by the model), not values a precision mode casts."""
        return not self.probe[0].is_floating_point()

    def sample_bytes(self) -> int:
        """Bytes of one sample's input as make_batch makes it."""
        inputs = self.probe[0]
        return inputs.element_size() * inputs[0].numel()

    def example_batch(self, batch_size: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros shaped and typed like a batch of batch_size (on the meta device: no memory)."""
        inputs, targets = self.probe
        return (torch.zeros((batch_size, *inputs.shape[1:]), dtype=inputs.dtype, device=device),
                torch.zeros((batch_size, *targets.shape[1:]), dtype=targets.dtype, device=device))

    def batchnorm_in(self, module: nn.Module) -> bool:
        """has_batchnorm as declared, or whether `module` (this workload's) has a BatchNorm layer."""
        if self.has_batchnorm is not None:
            return self.has_batchnorm
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def non_scalar_loss(name: str, loss: torch.Tensor) -> str:
    """The one line that says a loss is not a scalar, with its shape."""
    return (f"workload {name!r}: loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar: it must "
            "return the mean loss of the micro-batch (e.g. F.cross_entropy's default reduction='mean', or .mean())")


def block_names(workload: Workload, module: nn.Module) -> list[str]:
    """The dotted names of the blocks `workload.checkpoint_blocks` picks in `module` (outermost
    first; a block inside a picked one is not picked again); WorkloadError when it picks none."""
    blocks = workload.checkpoint_blocks
    if blocks is None:
        return []
    if isinstance(blocks, tuple):
        names: list[str] = []
        for name, sub in module.named_modules():
            if name and isinstance(sub, blocks) and not any(name.startswith(f"{outer}.") for outer in names):
                names.append(name)
    else:
        names = [str(name) for name in blocks(module)]
    for name in names:
        try:
            module.get_submodule(name)
        except AttributeError:
            raise WorkloadError(f"workload {workload.name!r}: checkpoint_blocks names {name!r}, which is not a "
                                "submodule of the built model") from None
    if not names:
        raise WorkloadError(f"workload {workload.name!r}: checkpoint_blocks {blocks!r} picks no module of the built "
                            "model")
    return names


def _package_root() -> str:
    root = os.path.abspath(__file__)
    for _ in range(__name__.count(".")):  # trainkit.engine.workloads.workload: three folders up is trainkit's
        root = os.path.dirname(root)
    return root


_LIBRARY_ROOTS = tuple(os.path.realpath(p) + os.sep for p in {
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
    _package_root()})
"""Frames under these are the standard library's, an installed library's or trainkit's own; the
others are the user's code."""


def user_frame(exc: BaseException) -> str | None:
    """`file.py:LINE` of the innermost frame of `exc`'s traceback in the user's own code (not the
    standard library, an installed package or trainkit), or None when none is."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.realpath(frame.filename)
        if not frame.filename.startswith("<") and not path.startswith(_LIBRARY_ROOTS):
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return None


def describe_error(exc: BaseException) -> str:
    """One line for an exception raised by a user's code: its type, its message's first line and,
    where the user's code raised it or called what did, that file and line."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, SystemExit):
        text = f"exit status {exc.code}"
    where = user_frame(exc)
    return f"{type(exc).__name__}: {text[:200]}" + (f" (at {where})" if where else "")


def split_query(spec: str) -> tuple[str, dict[str, Any]]:
    """`target?k=v&k2=v2` -> (target, {k: literal v, ...}); values that are not Python literals stay strings."""
    target, _, query = spec.partition("?")
    params: dict[str, Any] = {}
    for key, text in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        try:
            params[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[key] = text
    return target, params


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
