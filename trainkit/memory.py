"""Memory: the PyTorch allocator's peaks on a GPU, the host's resident set, the allocator's settings."""

from __future__ import annotations

import os
import resource

import torch


def host_rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def host_rss_now_bytes() -> int:
    """Resident set size of this process now (/proc/self/statm counts pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peaks(device: torch.device) -> None:
    """Start the allocator's peaks afresh (what is allocated now becomes the peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def torch_memory(device: torch.device) -> tuple[int | None, int | None]:
    """The allocator's peaks since the last reset_peaks: (allocated, reserved) bytes; None on a CPU."""
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def alloc_conf() -> str | None:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
