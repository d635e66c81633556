"""The CUDA caching allocator as a matrix axis: its setting, set in time, and what it left unused.

PyTorch reads PYTORCH_CUDA_ALLOC_CONF (PYTORCH_ALLOC_CONF, its newer name, first from torch 2.9)
once, when the allocator's configuration is first used, which in a training process is its first
CUDA allocation. So a cell's setting goes into its worker's environment before anything touches
CUDA: `serve()` restores the launcher's environment and calls `set_alloc_conf` first, before
choosing the device (RankWorker does the same for ranks started by torchrun). The workers come
from a fork server that imported torch but never CUDA, so nothing has read it yet. Where torch
exposes the parsed setting (`torch._C._accelerator_getAllocatorSettings`, read once too), the
record keeps it: proof the setting arrived in time, on any device.

One key is read earlier: `backend` (`backend:cudaMallocAsync`, CUDA's stream-ordered allocator)
is chosen when torch's CUDA library loads, at `import torch`, and never again. The fork server
imported torch before any cell existed, so such a cell's ranks start from a fresh interpreter
with the setting in their environment from the start (trainkit.engine.cell.launch); a process whose
torch chose another backend (a rank started by torchrun without the setting in its environment)
refuses the cell with a line saying so, instead of running it on the wrong allocator. The record
keeps the backend in effect (`torch.cuda.get_allocator_backend()`, which needs no GPU).

Fragmentation over the timed steps, from `torch.cuda.memory_stats()`: the reserved peak minus
the allocated peak (memory the allocator held but could not hand out when it mattered most), and
the allocation retries (cudaMalloc failed, the cache was flushed and the call retried: slow) and
out-of-memory errors counted over those steps. On a CPU these say nothing and are null.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..train.precision import Unsupported

ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
"""Both names get the setting: torch < 2.9 reads only the first; later ones read either."""
NOT_APPLICABLE = "not applicable: the CUDA caching allocator's figures; this cell ran on the CPU"
METHOD = ("torch.cuda.memory_stats() over the timed steps: fragmentation = reserved peak - allocated peak; "
          "num_alloc_retries and num_ooms counted over those steps")


def requested_backend(value: str | None) -> str | None:
    """The allocator backend a setting asks for (`backend:cudaMallocAsync` -> cudaMallocAsync), or None."""
    for pair in (value or "").split(","):
        key, _, chosen = pair.partition(":")
        if key.strip() == "backend":
            return chosen.strip()
    return None


def backend_in_effect() -> str | None:
    """The CUDA allocator backend torch chose when it was imported (native or cudaMallocAsync);
    None where this torch has no CUDA."""
    read = getattr(torch._C, "_cuda_getAllocatorBackend", None)
    return read() if read is not None else None


def set_alloc_conf(value: str | None) -> None:
    """Put the cell's allocator setting into this process's environment (None: leave it as it is).
    Must run before CUDA starts; once it has, a different setting cannot take effect and this raises.
    A backend other than the one torch chose at import cannot take effect either: Unsupported."""
    if value is None:
        return
    wanted, chosen = requested_backend(value), backend_in_effect()
    if wanted is not None and chosen is not None and wanted != chosen:
        raise Unsupported(f"alloc_conf={value!r}: backend {wanted} cannot take effect in this process: torch chose "
                          f"its CUDA allocator ({chosen}) when it was imported; start the process with "
                          f"PYTORCH_CUDA_ALLOC_CONF={value} in its environment (trainkit's launcher does)")
    current = os.environ.get(ENV_VARS[0])
    if torch.cuda.is_initialized() and current != value:
        raise RuntimeError(f"alloc_conf={value!r} comes too late: CUDA already started in this process "
                           f"with PYTORCH_CUDA_ALLOC_CONF={current!r}")
    for name in ENV_VARS:
        os.environ[name] = value


def settings_in_effect() -> str | None:
    """The allocator setting torch parsed (reading it makes torch parse it now, if nothing has yet);
    None where this torch does not expose it."""
    read = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    return read() if read is not None else None


def counters(device: torch.device) -> dict[str, int] | None:
    """The allocator's cumulative retry and OOM counts now (None on a CPU)."""
    if device.type != "cuda":
        return None
    stats = torch.cuda.memory_stats(device)
    return {"num_alloc_retries": int(stats.get("num_alloc_retries", 0)), "num_ooms": int(stats.get("num_ooms", 0))}


def figures(device: torch.device, alloc_conf: str | None, before: dict[str, int] | None,
            allocated_peak: int | None, reserved_peak: int | None) -> dict[str, Any]:
    """A rank's allocator record: the setting asked for and the one in effect, and fragmentation over
    the timed steps (peaks since the reset before them, counters since `before`)."""
    out: dict[str, Any] = {"alloc_conf": alloc_conf, "settings_in_effect": settings_in_effect(),
                           "backend_in_effect": backend_in_effect(),
                           "fragmentation_bytes": None, "num_alloc_retries": None, "num_ooms": None}
    if device.type != "cuda":
        return {**out, "method": NOT_APPLICABLE}
    if before is None or allocated_peak is None or reserved_peak is None:
        return {**out, "method": "not measured: the cell ended before its timed steps"}
    after = counters(device) or {}
    return {**out, "fragmentation_bytes": reserved_peak - allocated_peak,
            "num_alloc_retries": after["num_alloc_retries"] - before["num_alloc_retries"],
            "num_ooms": after["num_ooms"] - before["num_ooms"], "method": METHOD}
