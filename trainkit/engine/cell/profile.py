"""Where the time and memory of a cell go: phases, operator traces, allocator snapshots.

Everything here runs in a separate pass *after* the timed steps and after the cell's
measurements were read, so it never perturbs the figures it sits beside: the steps it adds are
not in the loss curve, the step times or the memory peaks.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ..measure.memory import quiet_profiler
from ..measure.timing import Marks
from ..spec.config import ProfileConfig
from ..spec.schema import DATA_BOUND_SHARE
from ..train.loop import Trainer

PHASES = ("data", "forward", "backward", "optimizer")
REDUCED_DTYPES = ("c10::Half", "c10::BFloat16")


def phase_breakdown(trainer: Trainer, steps: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Median seconds per phase of an optimizer step over `steps` extra steps, each followed by an
    unmarked step timed whole: adjacent in time, the two show whether the phases add up to the
    step (a shared machine's speed drifts too much for a comparison with steps seconds earlier).
    `clock`: what the marks read on a CPU."""
    per_step: list[dict[str, float]] = []
    whole = Marks(trainer.device, clock)
    for _ in range(steps):
        # On a GPU the marks are events on the GPU's own timeline, so time it spends waiting for
        # the host's data lands in `data`.
        marks = Marks(trainer.device, clock)
        marks.mark("start")
        trainer.train_step(marks)
        per_step.append(marks.totals_s(PHASES))
        whole.mark()
        trainer.train_step()
        whole.mark()
        whole.pause()
    phases = {p: statistics.median(s[p] for s in per_step) for p in PHASES}
    total = sum(phases.values())
    data_share = phases["data"] / total if total > 0 else None
    return {"phases_s": phases, "phase_total_s": total, "phase_steps": steps,
            "step_s": statistics.median(whole.read_s()),
            "phase_method": "cuda-events" if trainer.device.type == "cuda" else "synchronised clock",
            "data_share": data_share, "data_bound": data_share is not None and data_share > DATA_BOUND_SHARE}


def torch_trace(trainer: Trainer, steps: int, path: str, top: int = 15) -> dict[str, Any]:
    """A torch.profiler Chrome trace of `steps` optimizer steps (open it in Perfetto or
    chrome://tracing), the top operators by self time, and the share of operator time whose
    floating-point inputs were fp16/bf16: what autocast or half precision really changed."""
    on_gpu = trainer.device.type == "cuda"
    if not on_gpu:
        quiet_profiler()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            trainer.train_step()
        if on_gpu:
            torch.cuda.synchronize(trainer.device)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    prof.export_chrome_trace(path)

    def self_time(event: Any) -> float:  # microseconds
        return event.self_device_time_total if on_gpu else event.self_cpu_time_total

    averages = sorted(prof.key_averages(), key=self_time, reverse=True)
    top_ops = [{"name": e.key, "self_time_s": self_time(e) / 1e6 / steps, "calls": e.count // steps}
               for e in averages[:top] if self_time(e) > 0]
    reduced = total = 0.0
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        spent = self_time(event)
        total += spent
        if any(dtype in REDUCED_DTYPES for dtype in (event.input_dtypes or [])):
            reduced += spent
    return {"trace_file": path, "trace_steps": steps, "top_ops": top_ops,
            "time_basis": "device (kernel) time" if on_gpu else "CPU time",
            "reduced_precision_share": reduced / total if total > 0 else None}


def memory_snapshot(trainer: Trainer, steps: int, path: str, max_entries: int) -> dict[str, Any]:
    """The CUDA caching allocator's history over `steps` optimizer steps, with Python stacks
    (`stacks="all"` takes minutes to dump: pytorch/torchtitan#3628), for pytorch.org/memory_viz."""
    if trainer.device.type != "cuda":
        return {"memory_snapshot_file": None, "memory_snapshot_note": "allocator snapshots need a CUDA device"}
    torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")
    try:
        for _ in range(steps):
            trainer.train_step()
        torch.cuda.synchronize(trainer.device)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.cuda.memory._dump_snapshot(path)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return {"memory_snapshot_file": path, "memory_snapshot_steps": steps, "memory_snapshot_max_entries": max_entries}


def profile_cell(trainer: Trainer, config: ProfileConfig, rank: int) -> dict[str, Any]:
    """Every profiling pass the config asks for, one after the other (all ranks take part: DDP's
    collectives need them; each rank writes its own files)."""
    result: dict[str, Any] = {}
    stem = os.path.join(os.path.abspath(config.output_dir or "."), trainer.config.cell_id, f"rank{rank}")
    if config.phase_steps:
        result.update(phase_breakdown(trainer, config.phase_steps))
    if config.trace_steps:
        result.update(torch_trace(trainer, config.trace_steps, f"{stem}.trace.json"))
    if config.snapshot_steps:
        result.update(memory_snapshot(trainer, config.snapshot_steps, f"{stem}.memory.pickle",
                                      config.snapshot_max_entries))
    return result
