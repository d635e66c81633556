"""A CPU rank's threads come from the CPUs its process may use (affinity, cgroup quota), not the node's
count: stand-in /proc and cgroup files for SLURM's nested v2 cgroups, a v1 container and a namespaced one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainkit.engine.measure import cpus
from trainkit.engine.measure.cpus import threads_per_rank, usable_cpus

from .conftest import small_config

V2_MOUNT = "31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate"
V1_MOUNT = ("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct\n"
            "33 31 0:30 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory")


def tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> str:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup + "\n")
    (root / "proc/self/mountinfo").write_text(mountinfo + "\n")
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "\n")
    return str(root)


@pytest.fixture
def node_of_128(monkeypatch):
    """A 128-core node whose scheduler lets this process run on all of them."""
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(128)))


def test_a_slurm_jobs_nested_v2_cgroup_quota_bounds_the_threads(tmp_path, node_of_128):
    """SLURM's job cgroup sits deep under the hierarchy; its quota (4 CPUs) applies, the root's does not limit."""
    job = "sys/fs/cgroup/system.slice/slurmstepd.scope/job_42"
    root = tree(tmp_path, "0::/system.slice/slurmstepd.scope/job_42/step_0/user/task_0", V2_MOUNT,
                {"sys/fs/cgroup/cpu.max": "max 100000", f"{job}/cpu.max": "400000 100000",
                 f"{job}/step_0/user/task_0/cpu.max": "max 100000"})
    budget = usable_cpus(root)
    assert (budget.cpus, budget.affinity_cpus, budget.quota_cpus) == (4, 128, 4.0)
    assert budget.method == ("4 usable: 128 CPUs in the process's affinity (os.sched_getaffinity), "
                             "cgroup CPU quota 4 CPUs")
    assert threads_per_rank(1, root)[0] == 4 and threads_per_rank(2, root)[0] == 2 and threads_per_rank(8, root)[0] == 1


def test_a_v1_quota_of_two_and_a_half_cpus_gives_two(tmp_path, node_of_128):
    root = tree(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc", V1_MOUNT,
                {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                 "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
                 "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000",
                 "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"})
    assert (usable_cpus(root).cpus, usable_cpus(root).quota_cpus) == (2, 2.5)


def test_a_namespaced_container_reads_its_own_root_and_a_small_quota_still_gives_one(tmp_path, node_of_128):
    """In a cgroup namespace the mount's root is the container's cgroup: /proc/self/cgroup's path is
    relative to it. Half a CPU still runs one thread."""
    mount = "40 30 0:40 /kubepods/pod1 /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw"
    root = tree(tmp_path, "0::/kubepods/pod1/ctr", mount, {"sys/fs/cgroup/ctr/cpu.max": "50000 100000"})
    assert (usable_cpus(root).cpus, usable_cpus(root).quota_cpus) == (1, 0.5)


def test_without_a_quota_the_affinity_decides_not_the_nodes_count(tmp_path, monkeypatch):
    """SLURM binds a job's tasks to its cores with a cpuset: the affinity, 4 of the node's 128."""
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {8, 9, 10, 11})
    root = tree(tmp_path, "0::/", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "max 100000"})
    assert usable_cpus(root) == cpus.CpuBudget(cpus=4, affinity_cpus=4, quota_cpus=None, method=(
        "4 usable: 4 CPUs in the process's affinity (os.sched_getaffinity)"))
    assert usable_cpus(str(tmp_path / "nothing")).cpus == 4  # no /proc, no cgroup files: the affinity


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_a_cpu_rank_takes_as_many_threads_as_its_affinity_allows():
    """The real thing: this process pinned to one core builds a rank, which takes one thread (the
    node's count would give every core) and says why in its record."""
    import torch

    from trainkit.engine.cell.worker import RankWorker

    before_affinity, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(before_affinity)})
    try:
        rank = RankWorker(small_config(steps=1, cpu_threads=None))  # the threads derived, not given
        threads = torch.get_num_threads()
        derived = rank.derived()
    finally:
        os.sched_setaffinity(0, before_affinity)
        torch.set_num_threads(before_threads)
    assert threads == 1 and derived["torch_num_threads"] == 1
    assert derived["torch_num_threads_method"].startswith("1 usable: 1 CPUs in the process's affinity")


def test_omp_num_threads_bounds_a_rank_s_threads_and_the_config_overrides_it(monkeypatch):
    import torch

    from trainkit.engine.cell.worker import start_cpu_threads
    from trainkit.engine.measure.cpus import threads_per_rank

    derived, _ = threads_per_rank(1)
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        threads, method = start_cpu_threads(small_config(cpu_threads=None), 1)
        assert threads == torch.get_num_threads() == 1
        assert method.startswith("OMP_NUM_THREADS=1 (the environment)") if derived > 1 else "OMP" not in method
        assert start_cpu_threads(small_config(cpu_threads=2), 1) == (2, "cpu_threads=2 (the config)")
        monkeypatch.setenv("OMP_NUM_THREADS", "64")  # a bound above the cores changes nothing
        assert start_cpu_threads(small_config(cpu_threads=None), 1)[0] == derived
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert start_cpu_threads(small_config(cpu_threads=None), 1)[0] == derived
    finally:
        torch.set_num_threads(before)
