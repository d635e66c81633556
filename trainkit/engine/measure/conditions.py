"""The conditions a cell was measured under, and how far its step times spread.

A figure from a loaded machine is a figure of the load: a weak-scaling efficiency of 2445 % came
from 1-rank cells that shared two cores with other jobs (issue 17). So every record says what the
host did around its timed steps, what else ran on its GPUs, how many threads it ran, and how
precise its step time is:

    conditions   per rank, over its timed window (first timed step to last), read from /proc:
                 the 1-minute load average at both ends, the share of all cores' time that was
                 busy and that the hypervisor stole (/proc/stat deltas), the share of the window
                 in which some runnable task waited for a CPU (/proc/pressure/cpu, PSI); the
                 share of the cell's cores' time that processes other than the cell's own ran
                 (the cores' busy time, /proc/stat per core, less the CPU time of the cell's own
                 threads, /proc/<pid>/task/*/schedstat) and how long the cell's threads waited
                 for a CPU; the threads each rank ran and the cores it may run on; other
                 processes on its GPU (NVML). merge_conditions keeps the worst rank of each (a
                 peak is a max).
    noise        the step times' spread (IQR and coefficient of variation over the median and
                 mean) and the order-statistic interval of the median step time (median_interval).

`condition_flags` turns the conditions into readable warnings; bench's table, the summary and the
report print them. The load a cell makes itself is never contention: its ranks, their threads, the
launcher that started them and the fork server are "the cell's own" (the process tree under the
launcher, CELL_ROOT_ENV), and only the CPU time others took from its cores is flagged. The PSI share
and the load average count the cell's own runnable threads (two ranks on two cores wait for each
other's helper threads in a third of the window on a quiet host), so they are recorded, and the load
average is flagged only beyond what the cell's own threads could add. No torch and no scipy here
(reports and bench's table read it).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .cpus import affinity_core_ids, usable_cpus

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
"""A 1-minute load average above this many runnable tasks per core, plus the cell's own threads,
means tasks besides the cell's waited for a CPU: the host was loaded beyond its cores."""
STEAL_SHARE_LIMIT = 0.05
"""CPU time a hypervisor took from this VM above this share of the window slows every step."""
OTHERS_SHARE_LIMIT = 0.10
"""Processes other than the cell's own ran for more than this share of its cores' time in the timed
window: a tenth of the cores, well above the kernel's own threads on a quiet host (under 2 %)."""
OWN_WAIT_SHARE_LIMIT = 0.05
"""...and the cell's threads spent more than this share of their runnable time waiting for a CPU:
others' load on cores the cell left idle (one rank on two cores) takes nothing from it."""
CELL_ROOT_ENV = "TRAINKIT_CELL_ROOT_PID"
"""The launcher's PID, in every rank's environment: the process tree under it (the fork server, the
ranks, their threads, the launcher itself) is the cell's own load. Without it (torchrun) the rank's
parent is the root: the agent that started the node's ranks."""
BUSY_FIELDS = (0, 1, 2, 5, 6)  # user nice system irq softirq; guest is inside user, steal is not this VM's
HOST_METHOD = ("per rank over its timed window: /proc/loadavg (1-minute load average) at its start and end, "
               "/proc/stat deltas of all cores (busy and steal shares), /proc/pressure/cpu 'some' total delta "
               "(share of the window with a runnable task waiting for a CPU, the cell's own included); "
               "others' share: the busy time of the cores in the rank's affinity (/proc/stat cpuN user+nice+"
               "system+irq+softirq, clock ticks) less the on-CPU time of every thread of the cell's own "
               "processes (/proc/<pid>/task/<tid>/schedstat, ns; the process tree under the launcher), over "
               "the window times those cores (flagged only beyond its resolution, a clock tick per core); the "
               "cell's wait share: its threads' run-queue wait over their "
               "on-CPU plus wait time (schedstat); the worst rank")


@dataclass(frozen=True)
class CellSnapshot:
    """The CPU time of the cell's own threads at one instant (/proc/<pid>/task/<tid>/schedstat)."""

    pids: tuple[int, ...]
    """The cell's own processes: the tree under its root (CELL_ROOT_ENV)."""
    threads: tuple[tuple[int, int, int | None], ...]
    """(thread id, nanoseconds on a CPU, nanoseconds runnable but waiting for one) of each thread of
    `pids`; the wait is None where the kernel has no schedstat (on-CPU time then from the thread's
    utime + stime, in clock ticks)."""


@dataclass(frozen=True)
class HostSnapshot:
    """What /proc says of the host at one instant; None where a file is missing (not Linux, no PSI)."""

    monotonic_s: float
    load_avg_1m: float | None
    cpu_jiffies: tuple[int, ...] | None
    """The fields of /proc/stat's aggregate `cpu` line: user nice system idle iowait irq softirq steal ..."""
    cpu_pressure_some_us: int | None
    """/proc/pressure/cpu `some total=`: microseconds in which some runnable task waited for a CPU."""
    core_busy_ticks: int | None = None
    """Busy clock ticks (BUSY_FIELDS) of the cores this process may run on, summed (/proc/stat cpuN)."""
    cores: int | None = None
    """How many cores `core_busy_ticks` adds up."""
    cell: CellSnapshot | None = None
    """The cell's own threads' CPU time; None where it could not be read."""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(text: str) -> list[str]:
    """The fields of a /proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    [0] is the state, [1] the parent's PID, [11] and [12] utime and stime in clock ticks."""
    return text[text.rindex(")") + 2:].split()


def cell_processes(root_pid: int, proc: str = "/proc") -> tuple[int, ...]:
    """`root_pid` and every process below it, from each thread's `children` file, or where the kernel
    has none (CONFIG_PROC_CHILDREN) from every process's parent in its stat."""
    found, queue = [root_pid], [root_pid]
    if not os.path.exists(os.path.join(proc, str(root_pid), "task", str(root_pid), "children")):
        parents: dict[int, list[int]] = {}
        for name in os.listdir(proc):
            text = _read(os.path.join(proc, name, "stat")) if name.isdigit() else None
            if text:
                parents.setdefault(int(_stat_fields(text)[1]), []).append(int(name))
        while queue:
            children = parents.get(queue.pop(), [])
            found += children
            queue += children
        return tuple(found)
    while queue:
        pid = queue.pop()
        try:
            tids = os.listdir(os.path.join(proc, str(pid), "task"))
        except OSError:
            continue  # ended meanwhile
        for tid in tids:
            children = [int(c) for c in (_read(os.path.join(proc, str(pid), "task", tid, "children")) or "").split()]
            found += children
            queue += children
    return tuple(found)


def _clock_ticks_per_s() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cell_snapshot(pids: tuple[int, ...], proc: str = "/proc") -> CellSnapshot:
    """The on-CPU and run-queue wait time of every thread of `pids` now (threads that ended are gone:
    their time in the window is counted as others', a rare and small overstatement)."""
    threads = []
    tick_ns = 1e9 / _clock_ticks_per_s()
    for pid in pids:
        task = os.path.join(proc, str(pid), "task")
        try:
            tids = os.listdir(task)
        except OSError:
            continue
        for tid in tids:
            schedstat = _read(os.path.join(task, tid, "schedstat"))
            if schedstat:
                on_cpu, wait = schedstat.split()[:2]
                threads.append((int(tid), int(on_cpu), int(wait)))
                continue
            stat = _read(os.path.join(task, tid, "stat"))
            if stat:
                fields = _stat_fields(stat)
                threads.append((int(tid), int((int(fields[11]) + int(fields[12])) * tick_ns), None))
    return CellSnapshot(pids=pids, threads=tuple(threads))


def _core_busy_ticks(stat: str | None, cores: frozenset[int] | None) -> tuple[int | None, int | None]:
    """Busy ticks summed over `cores` (all of /proc/stat's cpuN lines where None), and how many."""
    busy = counted = 0
    for line in (stat or "").splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cores is None or int(name[3:]) in cores:
            values = [int(v) for v in rest.split()]
            busy += sum(values[i] for i in BUSY_FIELDS if i < len(values))
            counted += 1
    return (busy, counted) if counted else (None, None)


def cell_root_pid() -> int:
    """The root of the cell's own process tree (CELL_ROOT_ENV), else this process's parent."""
    value = os.environ.get(CELL_ROOT_ENV, "")
    return int(value) if value.isdigit() else os.getppid()


def host_snapshot(cell_pids: tuple[int, ...] | None = None, proc: str = "/proc") -> HostSnapshot:
    """The host's load, CPU time counters and CPU pressure now, and the CPU time of the cell's own
    threads: of `cell_pids` (an earlier snapshot's, so both ends count the same processes), else of
    the tree under cell_root_pid(). `proc` stands in for /proc (tests give a tree of stand-in files)."""
    loadavg, stat = _read(os.path.join(proc, "loadavg")), _read(os.path.join(proc, "stat"))
    pressure = _read(os.path.join(proc, "pressure", "cpu"))
    jiffies = None
    if stat and stat.startswith("cpu "):
        jiffies = tuple(int(v) for v in stat.split("\n", 1)[0].split()[1:])
    some_us = None
    for line in (pressure or "").splitlines():
        if line.startswith("some "):
            some_us = int(dict(part.split("=") for part in line.split()[1:])["total"])
    cell = None
    try:
        if cell_pids is None:
            cell_pids = cell_processes(cell_root_pid(), proc)
            if proc == "/proc" and os.getpid() not in cell_pids:  # a stale root: this rank is its own still
                cell_pids = (*cell_pids, os.getpid())
        cell = cell_snapshot(cell_pids, proc)
    except (OSError, ValueError, IndexError):
        pass  # no /proc of the processes (not Linux): others' share is not measured
    busy, cores = _core_busy_ticks(stat, affinity_core_ids())
    return HostSnapshot(monotonic_s=time.monotonic(), load_avg_1m=float(loadavg.split()[0]) if loadavg else None,
                        cpu_jiffies=jiffies, cpu_pressure_some_us=some_us, core_busy_ticks=busy, cores=cores,
                        cell=cell)


def _own_time_s(before: CellSnapshot, after: CellSnapshot) -> tuple[float, float | None]:
    """The cell's threads' on-CPU and run-queue wait seconds between two snapshots; a thread born in
    between counts from zero. The wait is None where any thread had no schedstat."""
    earlier = {tid: (on_cpu, wait) for tid, on_cpu, wait in before.threads}
    on_cpu_ns, wait_ns, waits_known = 0, 0, True
    for tid, on_cpu, wait in after.threads:
        on_cpu_then, wait_then = earlier.get(tid, (0, 0))
        on_cpu_ns += max(0, on_cpu - on_cpu_then)
        if wait is None or wait_then is None:
            waits_known = False
        else:
            wait_ns += max(0, wait - wait_then)
    return on_cpu_ns / 1e9, wait_ns / 1e9 if waits_known else None


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
    others = resolution = own_cores = own_wait = None
    if before.cell is not None and after.cell is not None and window_s > 0:
        own_on_cpu_s, own_wait_s = _own_time_s(before.cell, after.cell)
        own_cores = own_on_cpu_s / window_s
        if own_wait_s is not None and own_on_cpu_s + own_wait_s > 0:
            own_wait = own_wait_s / (own_on_cpu_s + own_wait_s)
        if before.core_busy_ticks is not None and after.core_busy_ticks is not None and after.cores:
            busy_s = (after.core_busy_ticks - before.core_busy_ticks) / _clock_ticks_per_s()
            # Ticks are sampled, schedstat is exact: a quiet window can read a little below zero.
            others = min(1.0, max(0.0, busy_s - own_on_cpu_s) / (window_s * after.cores))
            # Each core's count is sampled at each tick: a window reads up to a tick per core off.
            resolution = 1.0 / (_clock_ticks_per_s() * window_s)
    return {"window_s": window_s, "load_avg_1m_start": before.load_avg_1m, "load_avg_1m_end": after.load_avg_1m,
            "cpu_busy_share": busy, "cpu_steal_share": steal, "cpu_pressure_share": pressure,
            "others_cpu_share": others, "others_cpu_share_resolution": resolution, "cell_cores": after.cores,
            "cell_cpu_cores": own_cores,
            "cell_wait_share": own_wait, "cell_processes": len(after.cell.pids) if after.cell else None}


def rank_conditions(before: HostSnapshot | None, torch_threads: int, interop_threads: int) -> dict[str, Any]:
    """One rank's conditions: the host from `before` (its first timed step) to now, the threads it
    runs its math on and the CPUs it may keep busy (its affinity and cgroup quota, trainkit.engine.measure.cpus)."""
    budget = usable_cpus()
    window = host_window(before, host_snapshot(before.cell.pids if before.cell else None)) if before else {}
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
        "window_s", "load_avg_1m_start", "load_avg_1m_end", "cpu_busy_share", "cpu_steal_share", "cpu_pressure_share",
        "others_cpu_share", "others_cpu_share_resolution", "cell_cores", "cell_cpu_cores", "cell_wait_share",
        "cell_processes")}
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
    return _coverage(n, sum(math.comb(n, j) for j in range(d)))


def _coverage(n: int, outside: int) -> float:
    """1 - 2 * outside / 2^n, for `outside` of the 2^n equally likely below/above patterns of n values
    leaving the median out on one side: integers divided once, correctly rounded (2.0**n is past a
    float's range from n = 1024, a cell of 1,024 timed steps)."""
    return 1.0 - 2 * outside / (1 << n)


def median_order_weights(n: int, confidence: float = CONFIDENCE) -> tuple[int, float] | None:
    """(d, lambda) of the median's interval over n sorted values: low = (1 - lambda) X(d) + lambda X(d+1),
    high = (1 - lambda) X(n-d+1) + lambda X(n-d) (1-based). d is the innermost pair whose binomial
    coverage is at least the aim (confidence + INTERPOLATION_MARGIN); lambda interpolates towards the
    next pair inward, whose coverage falls short of it (Hettmansperger and Sheather 1986, Statistics &
    Probability Letters 4:75-79). None where even min to max covers less than `confidence`.
    The binomial tail is summed once, term by term, in exact integers (thousands of timed steps are
    a few milliseconds; sums of math.comb per candidate pair would be quadratic in n)."""
    aim = confidence + INTERPOLATION_MARGIN
    widest = _binomial_coverage(n, 1) if n >= 1 else 0.0
    if widest < confidence:
        return None
    if widest <= aim:
        return 1, 0.0
    d, outside, term = 1, 1, n  # outside = sum of C(n, j) for j < d; term = C(n, d)
    while _coverage(n, outside + term) >= aim:  # d + 1 <= n / 2 here: the middle pair covers less than 1/2
        outside += term
        d += 1
        term = term * (n - d + 1) // d
    outer, inner = _coverage(n, outside), _coverage(n, outside + term)
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
    loaded beyond its cores and the cell's own threads, others' processes taking CPU time from the
    cell's cores while its threads waited, CPU steal, more threads than cores, other processes on its
    GPUs. Nothing the cell's own processes did is contention (module docstring)."""
    if not conditions:
        return []
    flags = []
    cores, own_threads = conditions.get("host_cores"), conditions.get("threads_on_busiest_host") or 0
    load = _max([conditions.get("load_avg_1m_start"), conditions.get("load_avg_1m_end")])
    if load is not None and cores and load > LOAD_PER_CORE_LIMIT * cores + own_threads:
        flags.append(f"host loaded: load average {load:.1f} on {int(cores)} cores")
    others, wait = conditions.get("others_cpu_share"), conditions.get("cell_wait_share")
    resolution = conditions.get("others_cpu_share_resolution") or 0.0
    if (others is not None and others - resolution > OTHERS_SHARE_LIMIT
            and (wait is None or wait > OWN_WAIT_SHARE_LIMIT)):
        cell_cores = conditions.get("cell_cores")
        flags.append(f"CPU contention: other processes ran {others:.0%} of its "
                     f"{f'{int(cell_cores)} ' if cell_cores else ''}cores' time in the timed window"
                     + (f", its threads waited for a CPU {wait:.0%} of their runnable time" if wait is not None
                        else ""))
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
