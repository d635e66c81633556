"""Memory: the PyTorch allocator's peaks on a GPU, the host's resident set, the allocator's settings."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef


def host_rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def host_rss_now_bytes() -> int:
    """Resident set size of this process now (/proc/self/statm counts pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def host_vm_now_bytes() -> int:
    """Address space of this process now (/proc/self/statm's first field, in pages): what a CPU
    worker's memory cap (RLIMIT_AS) limits."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def host_vm_peak_bytes() -> int | None:
    """Peak address space of this process (VmPeak), or None where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


class SavedTensors:
    """Counts the bytes autograd saves for backward (a step's activation memory) while its forward
    runs under `hooks()`: each storage once (q, k and v are views of one qkv output); never the
    model's parameters and buffers (weights, counted apart) nor the storages of `exclude` (the
    batch, a view of the data pool that is counted as data). It sees what really is saved:
    autocast's low-precision weight copies, and only what activation checkpointing keeps. Works on
    real and fake tensors alike (storages are compared by identity, not address: fake ones have none).
    `on_count(tensor)`, if given, is called with each tensor whose storage is counted (the planner's
    peak tracker files those bytes under activations).
    """

    def __init__(self, model: torch.nn.Module, exclude: tuple[torch.Tensor, ...] = (),
                 on_count: Callable[[torch.Tensor], None] | None = None) -> None:
        self._ref = StorageWeakRef
        self.weights = {StorageWeakRef(t.untyped_storage()) for t in (*model.parameters(), *model.buffers(), *exclude)}
        self.seen: set[Any] = set()
        self.bytes = 0
        self.on_count = on_count

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ref = self._ref(storage)
        if ref not in self.weights and ref not in self.seen:
            self.seen.add(ref)
            self.bytes += storage.nbytes()
            if self.on_count is not None:
                self.on_count(tensor)
        return tensor  # kept alive, so that its storage cannot be reused and counted again

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)


def quiet_profiler() -> None:
    """Keep Kineto (torch.profiler's engine) off stderr on a CPU: it logs its stages, its USDT probes
    and, in a CUDA build of torch on a machine without a GPU, a spurious "gpuGetDeviceCount failed
    with code 35" error. Level 6 is above all of them (5 still prints the probes); Kineto reads it
    when a profile starts."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
