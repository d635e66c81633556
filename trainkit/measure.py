"""Measurement: step timers, memory, NVML (optional), MFU and summary statistics.

Rules this module keeps (each one a bug someone shipped, see the design notes):
- GPU time comes from CUDA events read after one synchronisation, never from a host clock around
  asynchronous launches; on the CPU, work is synchronous and perf_counter is exact.
- Step boundaries are contiguous (one marker between two steps), so the steps add up to the window.
- NVML is optional: no GPU, no NVML, MIG or "not supported" give None, never a crash.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Any

import torch

from .precision_facts import facts_of


class StepTimer:
    """Times consecutive optimizer steps: mark() at every boundary, read_s() once at the end.

    pause() ends a run of contiguous steps, so work between two steps (a checkpoint) is not
    counted in the next one.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def pause(self) -> None:
        self.marks.append(None)

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def read_s(self) -> list[float]:
        """Durations between consecutive marks, in seconds; synchronises once, then resets."""
        marks, self.marks = self.marks, []
        pairs = [(a, b) for a, b in zip(marks, marks[1:]) if a is not None and b is not None]
        if not pairs:
            return []
        if self.cuda:
            pairs[-1][1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in pairs]
        return [b - a for a, b in pairs]


def summarize_s(values: list[float]) -> dict[str, float | int | list[float] | None]:
    """median, IQR, min, max, mean and count of step times (seconds), plus the values."""
    if not values:
        return {"median": None, "iqr": None, "min": None, "max": None, "mean": None, "n": 0, "values": []}
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "iqr": q3 - q1, "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "n": len(values), "values": list(values)}


def host_rss_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def torch_memory(device: torch.device) -> dict[str, int | None]:
    if device.type != "cuda":
        return {"torch_max_allocated_bytes": None, "torch_max_reserved_bytes": None}
    torch.cuda.synchronize(device)
    return {"torch_max_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "torch_max_reserved_bytes": torch.cuda.max_memory_reserved(device)}


# ---------------------------------------------------------------------------------------------
# NVML (nvidia-ml-py provides the pynvml module; the deprecated "pynvml" distribution is not used)


class Nvml:
    """A guarded NVML session for one GPU. open() returns None when NVML cannot be used."""

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self.nv = pynvml
        self.handle = handle

    @classmethod
    def open(cls, device: torch.device | None = None, uuid: str | None = None, index: int | None = None) -> Nvml | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            if uuid is None and device is not None and device.type == "cuda":
                # UUIDs survive CUDA_VISIBLE_DEVICES and CUDA's own device ordering; indices do not.
                uuid = str(torch.cuda.get_device_properties(device).uuid)
            if uuid is not None:
                uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            elif index is not None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            else:
                return None
            return cls(pynvml, handle)
        except Exception:  # NVMLError of any kind: no driver, no device, MIG, old driver
            return None

    def _try(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.nv, fn)(self.handle, *args)
        except Exception:  # NVMLError_NotSupported and friends: this metric is unavailable here
            return None

    def process_used_bytes(self, pids: set[int]) -> int | None:
        """GPU memory NVML attributes to these processes (context, caches, NCCL buffers included).
        None when the PIDs are not visible (e.g. a container without --pid=host)."""
        procs = self._try("nvmlDeviceGetComputeRunningProcesses")
        if procs is None:
            return None
        used = [p.usedGpuMemory for p in procs if p.pid in pids and p.usedGpuMemory is not None]
        return sum(used) if used else None

    def foreign_processes(self, pids: set[int]) -> list[int]:
        procs = self._try("nvmlDeviceGetComputeRunningProcesses") or []
        return sorted(p.pid for p in procs if p.pid not in pids)

    def energy_mj(self) -> int | None:
        """Total energy since the driver loaded, in millijoules (Volta and newer)."""
        return self._try("nvmlDeviceGetTotalEnergyConsumption")

    def sample(self) -> dict[str, Any]:
        """SM clock (MHz), temperature (C), power (W) and the active clock-event reasons."""
        nv = self.nv
        power_mw = self._try("nvmlDeviceGetPowerUsage")
        reasons = self._try("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = self._try("nvmlDeviceGetCurrentClocksThrottleReasons")
        return {"sm_clock_mhz": self._try("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
                "temperature_c": self._try("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
                "power_w": None if power_mw is None else power_mw / 1e3,
                "throttle_reasons": None if reasons is None else throttle_names(nv, reasons)}

    def info(self) -> dict[str, Any]:
        """Facts that change benchmark results: driver, power limit, clocks, ECC, MIG."""
        nv = self.nv
        power_limit = self._try("nvmlDeviceGetEnforcedPowerLimit")
        ecc = self._try("nvmlDeviceGetEccMode")
        mig = self._try("nvmlDeviceGetMigMode")
        memory = self._try("nvmlDeviceGetMemoryInfo")
        name = self._try("nvmlDeviceGetName")
        try:
            driver = nv.nvmlSystemGetDriverVersion()
        except Exception:
            driver = None
        return {"driver": _text(driver), "name": _text(name),
                "power_limit_w": None if power_limit is None else power_limit / 1e3,
                "max_sm_clock_mhz": self._try("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM),
                "ecc": None if ecc is None else bool(ecc[0]),
                "mig": None if mig is None else bool(mig[0]),
                "memory_total_bytes": None if memory is None else memory.total,
                "memory_free_bytes": None if memory is None else memory.free}


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


# Reasons that mean the GPU ran slower than it could: a result under them is marked throttled.
SLOWDOWN_REASONS = ("SwPowerCap", "HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown")


def throttle_names(nv: Any, bits: int) -> list[str]:
    names = []
    for attr in dir(nv):
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            if attr.startswith(prefix):
                name = attr[len(prefix):]
                value = getattr(nv, attr)
                if name not in ("All", "None") and isinstance(value, int) and value and bits & value == value:
                    names.append(name)
    return sorted(set(names))


# ---------------------------------------------------------------------------------------------
# MFU: dense peak FLOP/s per GPU and dtype, from NVIDIA's datasheets (no sparsity).
# A100: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
# H100/H200: https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#            https://nvdam.widen.net/s/nb5zzzsjdf/hpc-datasheet-sc23-h200-datasheet-3002446
# L4: https://www.nvidia.com/en-us/data-center/l4/   A10: https://www.nvidia.com/en-us/data-center/products/a10-gpu/
# V100: https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
# T4: https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
# Keys are matched as substrings of the GPU name, first match wins (so "H100 PCIe" precedes "H100").
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0, "fp16": 835.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    ("V100", {"fp32": 15.7, "fp16": 125.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0}),
]


def peak_flops_per_s(gpu_name: str | None, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU for a precision mode, or None when unknown (never a guess)."""
    if not gpu_name:
        return None
    for key, table in PEAK_TFLOPS:
        if key in gpu_name:
            tflops = table.get(facts_of(precision).peak_kind)
            return None if tflops is None else tflops * 1e12
    return None


def mfu(flops_per_sample: float | None, throughput_samples_per_s: float | None, peak_per_gpu: float | None,
        gpus: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all GPUs used."""
    if not flops_per_sample or not throughput_samples_per_s or not peak_per_gpu:
        return None
    return flops_per_sample * throughput_samples_per_s / (peak_per_gpu * gpus)


def alloc_conf() -> str | None:
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")


class GpuSampler:
    """Samples the cell's GPUs through NVML from the launcher process while the workers run
    their timed steps: SM clock, temperature, power and clock-event reasons, every interval_s.
    Sampling from another process costs the workers nothing (no thread beside their loop)."""

    def __init__(self, nvmls: list[Nvml], interval_s: float = 0.1) -> None:
        self.nvmls, self.interval_s = nvmls, interval_s
        self.samples: list[dict[str, Any]] = []
        self.next_due = 0.0

    def due_in_s(self) -> float | None:
        """Seconds until the next sample is due (None when there is nothing to sample)."""
        return max(0.0, self.next_due - time.monotonic()) if self.nvmls else None

    def maybe_sample(self) -> None:
        now = time.monotonic()
        if not self.nvmls or now < self.next_due:
            return
        self.next_due = now + self.interval_s
        for gpu, nvml in enumerate(self.nvmls):
            self.samples.append({"gpu": gpu, "t_s": now, **nvml.sample()})

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        clocks = [s["sm_clock_mhz"] for s in self.samples if s["sm_clock_mhz"] is not None]
        temps = [s["temperature_c"] for s in self.samples if s["temperature_c"] is not None]
        powers = [s["power_w"] for s in self.samples if s["power_w"] is not None]
        reasons = sorted({r for s in self.samples for r in (s["throttle_reasons"] or [])})
        return {
            "samples": len(self.samples), "interval_s": self.interval_s,
            "sm_clock_mhz": {"min": min(clocks), "median": statistics.median(clocks), "max": max(clocks)}
            if clocks else None,
            "temperature_c_max": max(temps) if temps else None,
            "power_w_mean": statistics.fmean(powers) if powers else None,
            "throttle_reasons": reasons,
            "throttled": any(r in SLOWDOWN_REASONS for r in reasons),
        }

    def energy_j(self) -> float | None:
        """Energy over the sampled span from power readings (trapezoids, summed over GPUs): the
        fallback where the energy counter is unsupported; None for spans under a second."""
        total = 0.0
        for gpu in range(len(self.nvmls)):
            points = [(s["t_s"], s["power_w"]) for s in self.samples if s["gpu"] == gpu and s["power_w"] is not None]
            if len(points) < 2 or points[-1][0] - points[0][0] < 1.0:
                return None
            total += sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))
        return total if self.nvmls else None
