"""The conditions a cell was measured under, and how far its step times spread.

A figure from a loaded machine is a figure of the load: a weak-scaling efficiency of 2445 % came
from 1-rank cells that shared two cores with other jobs (issue 17). So every record says what the
host did around its timed steps, what else ran on its GPUs, how many threads it ran, and how
precise its step time is:

    conditions   per rank, over its timed window (first timed step to last), read from /proc:
                 the 1-minute load average at both ends, the share of all cores' time that was
                 busy and that the hypervisor stole (/proc/stat deltas), the share of the window
                 in which some runnable task waited for a CPU (/proc/pressure/cpu, PSI); the
                 threads each rank ran and the cores it may run on; other processes on its GPU
                 (NVML). merge_conditions keeps the worst rank of each (a peak is a max).
    noise        the step times' spread (IQR and coefficient of variation over the median and
                 mean) and the order-statistic interval of the median step time (median_interval).

`condition_flags` turns the conditions into readable warnings; bench's table, the summary and the
report print them. No torch and no scipy here (reports and bench's table read it).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .cpus import usable_cpus

CONFIDENCE = 0.95
MIN_STEPS_FOR_INTERVAL = 6
"""Fewer values than this give no 95 % interval of their median: the widest distribution-free one,
min to max, covers 93.75 % at 5 values, 87.5 % at 4 and 75 % at 3, short of what it would be printed as."""
INTERPOLATION_MARGIN = 0.01
"""The interpolated interval aims this far above its confidence: Hettmansperger-Sheather's interpolation
covers up to half a point below its aim for normal and skewed step times at 7-10 values (simulated,
trainkit.analysis.calibration), and a 95 % interval must hold at least 95 % (an A/A comparison holds
1x in 95 % of trials); aimed at 96 % it covers 95.5-96.2 % from 6 values up."""
INTERVAL_METHOD = (f"order-statistic interval of the median step time, {CONFIDENCE:.0%} (Hettmansperger-Sheather "
                   "interpolation between the two order statistics whose binomial coverage brackets "
                   f"{CONFIDENCE + INTERPOLATION_MARGIN:.0%}; none below {MIN_STEPS_FOR_INTERVAL} steps); "
                   "step-to-step noise within the cell's process, not run-to-run")
LOAD_PER_CORE_LIMIT = 1.0
"""A 1-minute load average above this many runnable tasks per core means tasks waited for a CPU
while the cell ran: the host was loaded beyond its cores."""
STEAL_SHARE_LIMIT = 0.05
"""CPU time a hypervisor took from this VM above this share of the window slows every step."""
PRESSURE_SHARE_LIMIT = 0.25
"""A runnable task waited for a CPU during more than this share of the timed window (PSI): the
cores were contended while the steps ran, whatever the 1-minute load average says."""
HOST_METHOD = ("per rank over its timed window: /proc/loadavg (1-minute load average) at its start and end, "
               "/proc/stat deltas of all cores (busy and steal shares), /proc/pressure/cpu 'some' total delta "
               "(share of the window with a runnable task waiting for a CPU); the worst rank")


@dataclass(frozen=True)
class HostSnapshot:
    """What /proc says of the host at one instant; None where a file is missing (not Linux, no PSI)."""

    monotonic_s: float
    load_avg_1m: float | None
    cpu_jiffies: tuple[int, ...] | None
    """The fields of /proc/stat's aggregate `cpu` line: user nice system idle iowait irq softirq steal ..."""
    cpu_pressure_some_us: int | None
    """/proc/pressure/cpu `some total=`: microseconds in which some runnable task waited for a CPU."""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def host_snapshot() -> HostSnapshot:
    """The host's load, CPU time counters and CPU pressure now."""
    loadavg, stat, pressure = _read("/proc/loadavg"), _read("/proc/stat"), _read("/proc/pressure/cpu")
    jiffies = None
    if stat and stat.startswith("cpu "):
        jiffies = tuple(int(v) for v in stat.split("\n", 1)[0].split()[1:])
    some_us = None
    for line in (pressure or "").splitlines():
        if line.startswith("some "):
            some_us = int(dict(part.split("=") for part in line.split()[1:])["total"])
    return HostSnapshot(monotonic_s=time.monotonic(), load_avg_1m=float(loadavg.split()[0]) if loadavg else None,
                        cpu_jiffies=jiffies, cpu_pressure_some_us=some_us)


IDLE_FIELDS = (3, 4)  # idle, iowait
STEAL_FIELD = 7
GUEST_FIELDS = (8, 9)  # guest and guest_nice are already counted in user and nice


def host_window(before: HostSnapshot, after: HostSnapshot) -> dict[str, Any]:
    """The host over the window between two snapshots (one rank's timed window)."""
    window_s = after.monotonic_s - before.monotonic_s
    busy = steal = None
    if before.cpu_jiffies and after.cpu_jiffies:
        delta = [b - a for a, b in zip(before.cpu_jiffies, after.cpu_jiffies)]
        total = sum(v for i, v in enumerate(delta) if i not in GUEST_FIELDS)
        if total > 0:
            busy = 1.0 - sum(delta[i] for i in IDLE_FIELDS if i < len(delta)) / total
            steal = delta[STEAL_FIELD] / total if len(delta) > STEAL_FIELD else None
    pressure = None
    if before.cpu_pressure_some_us is not None and after.cpu_pressure_some_us is not None and window_s > 0:
        pressure = min(1.0, (after.cpu_pressure_some_us - before.cpu_pressure_some_us) / 1e6 / window_s)
    return {"window_s": window_s, "load_avg_1m_start": before.load_avg_1m, "load_avg_1m_end": after.load_avg_1m,
            "cpu_busy_share": busy, "cpu_steal_share": steal, "cpu_pressure_share": pressure}


def rank_conditions(before: HostSnapshot | None, torch_threads: int, interop_threads: int) -> dict[str, Any]:
    """One rank's conditions: the host from `before` (its first timed step) to now, the threads it
    runs its math on and the CPUs it may keep busy (its affinity and cgroup quota, trainkit.engine.measure.cpus)."""
    budget = usable_cpus()
    window = host_window(before, host_snapshot()) if before is not None else {}
    return {**window, "torch_threads": torch_threads, "interop_threads": interop_threads,
            "usable_cores": budget.cpus, "usable_cores_method": budget.method, "host_cores": os.cpu_count(),
            "hostname": platform.node()}


def other_gpu_pids(nvml: Any, pid: int, seen: list[int] | None) -> list[int] | None:
    """`seen` with the processes other than `pid` that NVML now sees on the GPU of `nvml`
    (trainkit.engine.measure.nvml.Nvml); unchanged where there is no NVML or `pid` is not among its PIDs (a
    container's PID namespace: it cannot tell others from itself)."""
    if nvml is None or nvml.process_used_bytes({pid}) is None:
        return seen
    return sorted(set(seen or []) | set(nvml.foreign_processes({pid})))


def _max(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merge_conditions(per_rank: list[dict[str, Any] | None], gpu_processes: list[list[int] | None] | None,
                     gpu_note: str, cell_pids: list[int]) -> dict[str, Any] | None:
    """The cell's conditions from its ranks' (None when no rank measured any): the worst rank of each
    host figure (a load peak is a max), the threads of all ranks added up per host against that
    host's cores, and the processes other than the cell's own seen on any of its GPUs."""
    ranks = [c for c in per_rank if c]
    if not ranks:
        return None
    hosts: dict[str, int] = {}
    for c in ranks:
        hosts[c.get("hostname") or ""] = hosts.get(c.get("hostname") or "", 0) + (c.get("torch_threads") or 0)
    busiest = max(hosts, key=hosts.get)  # type: ignore[arg-type]
    on_busiest = [c for c in ranks if (c.get("hostname") or "") == busiest]
    merged: dict[str, Any] = {key: _max([c.get(key) for c in ranks]) for key in (
        "window_s", "load_avg_1m_start", "load_avg_1m_end", "cpu_busy_share", "cpu_steal_share", "cpu_pressure_share")}
    merged.update(host_cores=_max([c.get("host_cores") for c in on_busiest]),
                  usable_cores=_max([c.get("usable_cores") for c in on_busiest]),
                  usable_cores_method=on_busiest[0].get("usable_cores_method"),
                  torch_threads_per_rank=sorted({c.get("torch_threads") for c in ranks if c.get("torch_threads")}),
                  threads_on_busiest_host=hosts[busiest], host_method=HOST_METHOD)
    if gpu_processes is None:
        merged.update(gpu_other_processes=None, gpu_other_processes_note=gpu_note)
    else:
        seen = [p for pids in gpu_processes if pids is not None for p in pids if p not in cell_pids]
        known = any(pids is not None for pids in gpu_processes)
        merged.update(gpu_other_processes=sorted(set(seen)) if known else None,
                      gpu_other_processes_note=gpu_note)
    return merged


def noise_of(step_times_s: list[float]) -> dict[str, Any]:
    """How far a cell's step times spread, and the interval of their median (INTERVAL_METHOD); the
    interval is null with the reason when there are too few steps for one."""
    n = len(step_times_s)
    noise: dict[str, Any] = {"n": n, "iqr_over_median": None, "cv": None, "median_ci_low_s": None,
                             "median_ci_high_s": None, "confidence": CONFIDENCE, "method": INTERVAL_METHOD,
                             "note": None}
    if n >= 2:
        q1, median, q3 = statistics.quantiles(step_times_s, n=4, method="inclusive")
        mean = statistics.fmean(step_times_s)
        noise.update(iqr_over_median=(q3 - q1) / median if median > 0 else None,
                     cv=statistics.stdev(step_times_s) / mean if mean > 0 else None)
    low, high, note = median_interval(step_times_s)
    noise.update(median_ci_low_s=low, median_ci_high_s=high, note=note and note.replace("values", "timed steps"))
    return noise


def _binomial_coverage(n: int, d: int) -> float:
    """Coverage of [X(d), X(n-d+1)] (1-based order statistics of n values) for the median of any
    continuous distribution: each value falls below the median with probability 1/2, so the interval
    misses it when d - 1 or fewer fall below, or d - 1 or fewer above."""
    return 1.0 - 2.0 * sum(math.comb(n, j) for j in range(d)) / 2.0**n


def median_order_weights(n: int, confidence: float = CONFIDENCE) -> tuple[int, float] | None:
    """(d, lambda) of the median's interval over n sorted values: low = (1 - lambda) X(d) + lambda X(d+1),
    high = (1 - lambda) X(n-d+1) + lambda X(n-d) (1-based). d is the innermost pair whose binomial
    coverage is at least the aim (confidence + INTERPOLATION_MARGIN); lambda interpolates towards the
    next pair inward, whose coverage falls short of it (Hettmansperger and Sheather 1986, Statistics &
    Probability Letters 4:75-79). None where even min to max covers less than `confidence`."""
    aim = confidence + INTERPOLATION_MARGIN
    widest = _binomial_coverage(n, 1) if n >= 1 else 0.0
    if widest < confidence:
        return None
    if widest <= aim:
        return 1, 0.0
    d = 1
    while _binomial_coverage(n, d + 1) >= aim:  # d + 1 <= n / 2 here: the middle pair covers less than 1/2
        d += 1
    outer, inner = _binomial_coverage(n, d), _binomial_coverage(n, d + 1)
    share = (outer - aim) / (outer - inner)
    return d, (n - d) * share / (d + (n - 2 * d) * share)


def fewest_values(confidence: float = CONFIDENCE) -> int:
    """The fewest values whose median has a `confidence` interval (min to max covers 1 - 2 / 2^n)."""
    return next(n for n in range(1, 64) if _binomial_coverage(n, 1) >= confidence)


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float | None, float | None,
                                                                                     str | None]:
    """(low, high, None): the `confidence` interval of the median of `values` (median_order_weights),
    or (None, None, why) for fewer than MIN_STEPS_FOR_INTERVAL values (at 95 %). Pure Python: no scipy."""
    n = len(values)
    weights = median_order_weights(n, confidence)
    if weights is None:
        return None, None, (f"no interval: {n} value{'' if n == 1 else 's'}; a median's {confidence:.0%} interval "
                            f"needs at least {fewest_values(confidence)} (min to max of {n} covers only "
                            f"{_binomial_coverage(n, 1):.1%})" if n >= 2 else
                            f"no interval: {n} value{'' if n == 1 else 's'}")
    d, share = weights
    x = sorted(values)
    low = (1 - share) * x[d - 1] + share * x[d]
    high = (1 - share) * x[n - d] + share * x[n - d - 1]
    return low, high, None


def median_intervals(samples: list[list[float]]) -> list[tuple[float | None, float | None]]:
    """The interval of the median of each sample (median_interval); (None, None) for a sample of fewer
    than MIN_STEPS_FOR_INTERVAL values."""
    return [median_interval(sample)[:2] for sample in samples]


def condition_flags(conditions: dict[str, Any] | None) -> list[str]:
    """Readable warnings of a record's conditions (empty when they were fine or not recorded): the host
    loaded beyond its cores, CPU steal, more threads than cores, other processes on its GPUs."""
    if not conditions:
        return []
    flags = []
    cores = conditions.get("host_cores")
    load = _max([conditions.get("load_avg_1m_start"), conditions.get("load_avg_1m_end")])
    if load is not None and cores and load > LOAD_PER_CORE_LIMIT * cores:
        flags.append(f"host loaded: load average {load:.1f} on {int(cores)} cores")
    pressure = conditions.get("cpu_pressure_share")
    if pressure is not None and pressure > PRESSURE_SHARE_LIMIT:
        flags.append(f"CPU contention: a task waited for a CPU in {pressure:.0%} of the timed window")
    steal = conditions.get("cpu_steal_share")
    if steal is not None and steal > STEAL_SHARE_LIMIT:
        flags.append(f"CPU steal {steal:.0%} of the timed window")
    threads, usable = conditions.get("threads_on_busiest_host"), conditions.get("usable_cores")
    if threads and usable and threads > usable:
        flags.append(f"oversubscribed: {int(threads)} threads on {int(usable)} usable cores")
    others = conditions.get("gpu_other_processes")
    if others:
        flags.append(f"{len(others)} other process{'es' if len(others) > 1 else ''} on its GPUs "
                     f"(PID {', '.join(str(int(p)) for p in others[:4])}{', ...' if len(others) > 4 else ''})")
    return flags
