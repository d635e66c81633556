"""Activation checkpointing: chosen blocks keep only their inputs and recompute the rest in backward.

`activation_checkpointing=full` wraps the blocks a workload names (`Workload.checkpoint_blocks`:
every GPT block, every ResNet stage layer1..layer4, the seed CNN's two conv stages, or a user's
module classes) in `Checkpointed`, which runs its module under
`torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` (the variant PyTorch recommends: it
works with autocast, DDP, torch.compile and inputs that need no gradient). The parameters' names
do not change: the wrapper's state-dict hooks leave its own name out, so checkpoints and
state dicts are interchangeable with and without it, and its module's attributes read through it
(nn.TransformerEncoder reads its first layer's `self_attn`). A workload that names no blocks cannot
be checkpointed: a matrix leaves such cells out.

Cost and caveat: each wrapped block runs its forward twice, about a third more compute for a
transformer. The recomputed forward of a ResNet stage updates BatchNorm's running statistics a
second time; training uses batch statistics and is unchanged, but the eval loss, which reads the
running statistics, can differ slightly from the same run without checkpointing.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from ..workloads.workload import Workload, block_names

WRAPPED = "module"


def unsupported_reason(workload: Workload, mode: str) -> str | None:
    """Why a workload cannot run with this activation checkpointing, or None."""
    if mode == "none" or workload.checkpoint_blocks is not None:
        return None
    return (f"activation checkpointing wraps the blocks a workload names (Workload.checkpoint_blocks); "
            f"{workload.name} names none")


def _strip_wrapper_name(module: nn.Module, state_dict: dict[str, Any], prefix: str, metadata: Any) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    saved = getattr(state_dict, "_metadata", None)
    if saved is not None:
        for key in [k for k in saved if k == inner[:-1] or k.startswith(inner)]:
            saved[prefix + key[len(inner):] if key != inner[:-1] else prefix[:-1]] = saved.pop(key)


def _add_wrapper_name(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    inner = f"{prefix}{WRAPPED}."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
    saved = getattr(state_dict, "_metadata", None)  # per-module versions (BatchNorm reads its own)
    if saved is not None:
        for key in [k for k in saved if (k.startswith(prefix) or k == prefix[:-1]) and not k.startswith(inner[:-1])]:
            saved[inner[:-1] + key[len(prefix) - 1:] if key != prefix[:-1] else inner[:-1]] = saved[key]


class Checkpointed(nn.Module):
    """Runs `module` under non-reentrant activation checkpointing; state dicts read as if it were
    `module` itself."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.register_state_dict_post_hook(_strip_wrapper_name)
        self.register_load_state_dict_pre_hook(_add_wrapper_name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self.module, *args, use_reentrant=False, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == WRAPPED:
                raise
            return getattr(self._modules[WRAPPED], name)


def apply(model: nn.Module, workload: Workload, mode: str) -> list[str]:
    """Wrap the blocks `workload` names for `mode` in place; the wrapped modules' names."""
    if mode == "none":
        return []
    reason = unsupported_reason(workload, mode)
    if reason:
        raise ValueError(reason)
    names = block_names(workload, model)
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, Checkpointed(owner.get_submodule(attr)))
    return names
