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
            import pynvml  # optional (nvidia-ml-py, the bench extra): None without it; tests stand in for it
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
    """Samples a cell's GPUs through NVML from the launcher process while its ranks run their timed
    steps: SM clock, temperature, power and clock-event reasons of every GPU, and the memory NVML
    attributes to each rank's process, every interval_s. Sampling from another process costs the
    ranks nothing (no thread beside their loop).

    The timed steps come as windows (a bench round, or the remaining steps as one window):
    open_window() and close_window() bracket each, and close_window() takes one more sample, so the
    memory peaks include the state at the end of every window (PyTorch's cache only grows)."""

    def __init__(self, nvmls: list[Nvml], interval_s: float = 0.1,
                 processes: list[tuple[Nvml, int]] | None = None) -> None:
        self.nvmls, self.interval_s = nvmls, interval_s
        self.processes = processes or []
        """(NVML of its GPU, PID) of each rank, in rank order."""
        self.samples: list[dict[str, Any]] = []
        self.process_peaks: list[int | None] = [None] * len(self.processes)
        self.process_samples = 0
        self.windows: list[tuple[float, float]] = []
        self.window_start: float | None = None
        self.next_due = 0.0

    def due_in_s(self) -> float | None:
        """Seconds until the next sample is due (None when there is nothing to sample)."""
        return max(0.0, self.next_due - time.monotonic()) if self.nvmls else None

    def open_window(self) -> None:
        self.window_start = time.monotonic()
        self.next_due = 0.0  # sample at once

    def close_window(self) -> None:
        self.sample()
        if self.window_start is not None:
            self.windows.append((self.window_start, time.monotonic()))
        self.window_start = None

    def maybe_sample(self) -> None:
        if self.nvmls and time.monotonic() >= self.next_due:
            self.sample()

    def sample(self) -> None:
        if not self.nvmls:
            return
        now = time.monotonic()
        self.next_due = now + self.interval_s
        for gpu, nvml in enumerate(self.nvmls):
            self.samples.append({"gpu": gpu, "t_s": now, **nvml.sample()})
        for rank, (nvml, pid) in enumerate(self.processes):
            used = nvml.process_used_bytes({pid})
            if used is not None:
                self.process_samples += 1
                self.process_peaks[rank] = max(used, self.process_peaks[rank] or 0)

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

    def process_note(self) -> str:
        """How nvml_process_peak_bytes was taken, or why it is null."""
        if not self.process_samples:
            return ("unavailable: NVML lists none of the cell's processes (in a container, run with the host's "
                    "PID namespace: docker --pid=host)")
        return (f"per-process (nvmlDeviceGetComputeRunningProcesses): the largest of {self.process_samples} "
                "samples over the timed steps and at the end of each window")

    def energy_j(self, min_window_s: float = 1.0) -> tuple[float | None, float]:
        """Energy from power readings over the windows at least min_window_s long (each GPU's mean
        power in the window times its length, summed over GPUs), and the seconds those windows
        cover: the fallback where the energy counter is unsupported. (None, 0) when no window
        qualifies or one has fewer than two readings of a GPU."""
        total, covered = 0.0, 0.0
        for start, end in self.windows:
            if end - start < min_window_s:
                continue
            for gpu in range(len(self.nvmls)):
                powers = [s["power_w"] for s in self.samples
                          if s["gpu"] == gpu and s["power_w"] is not None and start <= s["t_s"] <= end]
                if len(powers) < 2:
                    return None, 0.0
                total += statistics.fmean(powers) * (end - start)
            covered += end - start
        return (total, covered) if covered else (None, 0.0)
