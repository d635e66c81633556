"""fp32 main gradients of the master-weight modes: where their micro-batches' gradients add up.

Megatron-LM (accumulate_allreduce_grads_in_fp32, which its bf16 runs force on) and DeepSpeed's bf16
optimizer accumulate and all-reduce gradients in fp32 buffers beside the fp32 master weights: a
half-precision sum rounds at every addition (8 mantissa bits in bf16, 11 in fp16).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def add_into(params: list[torch.Tensor], masters: list[torch.Tensor], dtype: torch.dtype) -> None:
    """Add the parameters' half-precision gradients into their masters' `dtype` ones (the first
    micro-batch's are copied) and drop them: backward makes new ones, as after
    zero_grad(set_to_none=True). inf and NaN survive the cast, so GradScaler still finds an overflow."""
    pairs = [(param, master) for param, master in zip(params, masters) if param.grad is not None]
    added = [(param.grad, master.grad) for param, master in pairs if master.grad is not None]
    for param, master in pairs:
        if master.grad is None:
            master.grad = param.grad.to(dtype)  # type: ignore[union-attr]
    if added:  # one foreach kernel, fp32 += half
        torch._foreach_add_([m for _, m in added], [g for g, _ in added])
    for param, _ in pairs:
        param.grad = None


def average_over_ranks(masters: list[torch.Tensor], world_size: int) -> None:
    """The mean of the ranks' main gradients (DDP's average, which the loop's loss weights assume),
    in one all-reduce of a flat fp32 buffer."""
    grads = [m.grad for m in masters if m.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)  # a sum: gloo has no average
    flat.div_(world_size)
    torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])
