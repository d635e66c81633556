"""The NVML checks: the driver's view of a cell's memory (memory.nvml) and its energy counter
(anchor.energy), each against a figure NVML or PyTorch measured some other way."""

from __future__ import annotations

from typing import Any

from .results import FAIL, OK, SKIP, Check, failed_cell, finite, size_text
from .thresholds import ENERGY_TOLERANCE

COUNTER_METHOD = "NVML energy counter"
"""How trainkit.engine.cell.record.merge_energy names energy read from the counter (the only method this check
can hold against power samples: its fallback integrates the same samples)."""


def check_nvml(record: dict[str, Any]) -> Check:
    """NVML's per-process peak (sampled by the launcher) is at least what PyTorch reserved at its
    peak plus the CUDA context measured before anything was allocated: the driver sees everything
    the allocator holds, and more."""
    name = "memory.nvml"
    expected = "NVML peak >= reserved + context"
    if failed := failed_cell(name, expected, [record]):
        return failed
    memory = record["memory"]
    nvml, reserved = memory.get("nvml_process_peak_bytes"), memory.get("torch_max_reserved_bytes")
    context = memory.get("nvml_context_baseline_bytes")
    if not finite(nvml) or not finite(context):
        return Check(name=name, status=SKIP, expected=expected,
                     reason=f"NVML did not see the worker's process: {memory.get('nvml_method') or 'no reason given'}")
    if not finite(reserved):
        return Check(name=name, status=FAIL, expected=expected, reason="the GPU cell has no reserved peak")
    floor = reserved + context
    figures = {"nvml_process_peak_bytes": nvml, "torch_max_reserved_bytes": reserved,
               "nvml_context_baseline_bytes": context}
    passed = nvml >= floor
    reason = ("the driver's view holds the allocator's reserved peak and the context" if passed else
              f"NVML saw {size_text(floor - nvml)} less than reserved + context: a peak the sampler missed, or a "
              "reserved figure that counts memory the process never held")
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f">= {size_text(floor)} ({size_text(reserved)} reserved + {size_text(context)} context)",
                 measured=f"{size_text(nvml)}", reason=reason, figures=figures)


def _energy_unreadable(record: dict[str, Any], expected: str) -> Check | None:
    """A skip or a fail when the record's energy cannot be held against its power samples, else None."""
    name, method = "anchor.energy", record.get("energy_method") or ""
    if not finite((record.get("gpu_samples") or {}).get("power_w_mean")):
        return Check(name=name, status=SKIP, expected=expected,
                     reason=f"NVML gave no power readings: {method or 'no energy method recorded'}")
    if not finite(record.get("energy_j_per_sample")) or not finite(record.get("energy_window_s")):
        return Check(name=name, status=FAIL, expected=expected, measured="null",
                     reason=f"no energy per sample: {method or 'no reason recorded'}")
    if not method.startswith(COUNTER_METHOD):
        return Check(name=name, status=SKIP, expected=expected,
                     reason=f"the energy counter is unsupported here; the record's energy ({method}) integrates "
                            "the same power samples, so the comparison would be circular")
    return None


def check_energy(record: dict[str, Any]) -> Check:
    """Energy per sample (NVML's energy counter over the timed window) x the samples, against NVML's
    mean power sampled by the launcher over the same window x its length, within 10 %."""
    name = "anchor.energy"
    expected = f"mean power x window, within {ENERGY_TOLERANCE:.0%}"
    if failed := failed_cell(name, expected, [record]) or _energy_unreadable(record, expected):
        return failed
    power_w, per_sample = record["gpu_samples"]["power_w_mean"], record["energy_j_per_sample"]
    window_s, samples = record["energy_window_s"], record["timed_samples"]
    counter_j, power_j = per_sample * samples, power_w * window_s
    difference = (counter_j - power_j) / power_j
    passed = abs(difference) <= ENERGY_TOLERANCE
    figures = {"counter_j": counter_j, "power_w_mean": power_w, "window_s": window_s, "samples": samples,
               "relative_difference": difference, "energy_j_per_sample": per_sample}
    reason = (f"{per_sample:.3g} J/sample x {samples:,} samples from the counter, against "
              f"{record['gpu_samples'].get('samples')} power samples")
    if not passed:
        reason += f": {difference:+.0%} apart, beyond {ENERGY_TOLERANCE:.0%}"
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f"{power_w:.0f} W x {window_s:.2f} s = {power_j:,.0f} J ±{ENERGY_TOLERANCE:.0%}",
                 measured=f"{counter_j:,.0f} J ({difference:+.1%})", reason=reason, figures=figures)
