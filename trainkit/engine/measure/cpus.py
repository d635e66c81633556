"""The CPUs this process may use: its affinity and its cgroup's CPU quota, not the node's count.

`os.cpu_count()` counts the node: under SLURM (which binds a job's tasks to its cores through a
cpuset, the process's affinity) or a container's CPU quota (cgroup v2 `cpu.max`, v1
`cpu.cfs_quota_us`), a 1-rank cell on a 128-core node that asked for 4 cores would start 128
threads on 4 cores, and time their contention. This module reads both limits, as the process
sees them:

    affinity    os.sched_getaffinity(0): the cores the scheduler may run this process on
    quota       the process's own cgroup (from /proc/self/cgroup and /proc/self/mountinfo, so a
                job's nested cgroup counts, not only a container's root) and each ancestor's:
                the smallest quota / period, in CPUs, rounded down (at least 1): a thread
                beyond the quota waits for the next period, as Go's automaxprocs reasons

No torch: `python -m trainkit plan` and the probes read it before a worker exists.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuBudget:
    """How many CPUs this process may keep busy, and why."""

    cpus: int
    """The usable CPUs: min(affinity, the cgroup quota rounded down), at least 1."""
    affinity_cpus: int
    """CPUs in this process's affinity mask (os.cpu_count() where the platform has no affinity)."""
    quota_cpus: float | None
    """The tightest cgroup CPU quota of this process and its ancestors, in CPUs; None without one."""
    method: str
    """One line: where `cpus` came from."""


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _cgroup_dirs(root: str) -> list[tuple[str, str, str]]:
    """(version, directory, mount point) of this process's cgroup for the CPU controller, v2 first:
    the mount point of its hierarchy (/proc/self/mountinfo) joined with the path in /proc/self/cgroup."""
    paths = {}
    for line in _lines(os.path.join(root, "proc/self/cgroup")):
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    found = []
    for line in _lines(os.path.join(root, "proc/self/mountinfo")):
        fields, _, tail = line.partition(" - ")
        fields_list, tail_list = fields.split(), tail.split()
        if len(fields_list) < 5 or len(tail_list) < 3:
            continue
        mount_root, mount_point, fstype, options = fields_list[3], fields_list[4], tail_list[0], tail_list[2]
        version = "v2" if fstype == "cgroup2" else "v1" if fstype == "cgroup" and "cpu" in options.split(",") else None
        if version is None or version not in paths:
            continue
        # Inside a container the mount's root is the container's cgroup: the path is relative to it.
        relative = os.path.relpath(paths[version], mount_root) if mount_root != "/" else paths[version].lstrip("/")
        if relative.startswith(".."):
            relative = ""
        found.append((version, os.path.normpath(os.path.join(root, mount_point.lstrip("/"), relative)),
                      os.path.normpath(os.path.join(root, mount_point.lstrip("/")))))
    return sorted(found, key=lambda f: f[0] != "v2")


def _quota_at(version: str, directory: str) -> float | None:
    """The CPU quota set on one cgroup directory, in CPUs; None when unlimited or unreadable."""
    if version == "v2":
        text = _lines(os.path.join(directory, "cpu.max"))
        parts = text[0].split() if text else []
        if len(parts) != 2 or parts[0] == "max":
            return None
        quota, period = parts
    else:
        quota_lines = _lines(os.path.join(directory, "cpu.cfs_quota_us"))
        period_lines = _lines(os.path.join(directory, "cpu.cfs_period_us"))
        if not quota_lines or not period_lines:
            return None
        quota, period = quota_lines[0].strip(), period_lines[0].strip()
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for no quota


def cgroup_quota_cpus(root: str = "/") -> float | None:
    """The tightest CPU quota of this process's cgroup and its ancestors up to the hierarchy's mount
    point (a parent's quota bounds its children), in CPUs; None when none is set."""
    quotas = []
    for version, directory, top in _cgroup_dirs(root):
        while True:
            quota = _quota_at(version, directory)
            if quota is not None:
                quotas.append(quota)
            if directory == top or len(directory) <= len(top):
                break
            directory = os.path.dirname(directory)
        if quotas:
            break  # a v2 answer wins over a v1 mount left beside it (hybrid hosts)
    return min(quotas) if quotas else None


def affinity_cpus() -> int:
    """CPUs this process may run on (os.cpu_count() where the platform has no affinity, as macOS)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return len(getaffinity(0)) if getaffinity is not None else (os.cpu_count() or 1)


def affinity_core_ids() -> frozenset[int] | None:
    """The ids of the cores this process may run on (the `cpuN` of /proc/stat); None where the
    platform has no affinity: the cores whose time another process can take from this one."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return frozenset(getaffinity(0)) if getaffinity is not None else None


def usable_cpus(root: str = "/") -> CpuBudget:
    """This process's CPU budget; `root` stands in for / (tests give a tree of stand-in files)."""
    affinity = affinity_cpus()
    quota = cgroup_quota_cpus(root)
    cpus = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    method = f"{affinity} CPUs in the process's affinity (os.sched_getaffinity)"
    if quota is not None:
        method += f", cgroup CPU quota {quota:g} CPUs"
    return CpuBudget(cpus=cpus, affinity_cpus=affinity, quota_cpus=quota, method=f"{cpus} usable: {method}")


def threads_per_rank(local_world_size: int, root: str = "/") -> tuple[int, str]:
    """Threads for each of `local_world_size` ranks sharing this process's CPUs, and why."""
    budget = usable_cpus(root)
    threads = max(1, budget.cpus // local_world_size)
    return threads, f"{budget.method}; // {local_world_size} rank(s) on this node"
