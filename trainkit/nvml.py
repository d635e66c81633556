"""NVML, optional: memory per process, energy, clocks, temperature, power and throttle reasons.

nvidia-ml-py provides the `pynvml` module; the deprecated "pynvml" distribution is never used. No
GPU, no NVML, MIG or "not supported" give None, never a crash. No torch at import: the launcher's
sampler and the nightly pre-flight read GPUs without it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any


class Nvml:
    """A guarded NVML session for one GPU. open() returns None when NVML cannot be used."""

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self.nv = pynvml
        self.handle = handle

    @classmethod
    def open(cls, device: Any = None, uuid: str | None = None, index: int | None = None) -> Nvml | None:
        """NVML for a torch CUDA device, a GPU UUID or an NVML index; None when NVML cannot be used."""
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            if uuid is None and device is not None and device.type == "cuda":
                import torch  # only for a torch device; the launcher and the pre-flight pass UUIDs

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
