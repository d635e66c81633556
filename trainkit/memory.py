"""Memory: the PyTorch allocator's peaks on a GPU, the host's resident set, the allocator's settings."""

from __future__ import annotations

import os
import resource

import torch


def host_rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def torch_memory(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"torch_max_allocated_bytes": None, "torch_max_reserved_bytes": None}
    torch.cuda.synchronize(device)
    return {"torch_max_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "torch_max_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def alloc_conf() -> str | None:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
