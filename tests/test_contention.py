"""The contention flag counts only others' load: never the cell's own ranks, threads, launcher or fork server.

A stand-in /proc gives the exact cases (a quiet host under a 2-rank cell's own load, a busy process
outside the cell, others on a core the cell leaves idle); a real busy process outside a real process
tree shows the readings add up on this machine.
"""

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from trainkit.engine.measure import conditions
from trainkit.engine.measure.conditions import cell_processes, condition_flags, host_snapshot, host_window

ROOT, FORK_SERVER, RANK0, RANK1, GLOO = 500, 501, 502, 503, 504
TICKS = os.sysconf("SC_CLK_TCK")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _plant(proc, busy_ticks, pressure_us, threads):
    """A stand-in /proc: two cores with `busy_ticks` (user) each, PSI, and the cell's tree launcher ->
    fork server -> two ranks, with each thread's (on-CPU ns, wait ns) from `threads`."""
    idle = 10_000
    _write(proc / "stat", f"cpu  {sum(busy_ticks)} 0 0 {2 * idle} 0 0 0 0 0 0\n"
           + "".join(f"cpu{i} {b} 0 0 {idle} 0 0 0 0 0 0\n" for i, b in enumerate(busy_ticks)))
    _write(proc / "loadavg", "2.9 1.0 0.5 3/200 999\n")
    _write(proc / "pressure" / "cpu", f"some avg10=40.00 avg60=0 avg300=0 total={pressure_us}\n")
    tree = {ROOT: [FORK_SERVER], FORK_SERVER: [RANK0, RANK1], RANK0: [], RANK1: []}
    tids = {ROOT: [ROOT], FORK_SERVER: [FORK_SERVER], RANK0: [RANK0, GLOO], RANK1: [RANK1]}
    for pid, children in tree.items():
        for tid in tids[pid]:
            task = proc / str(pid) / "task" / str(tid)
            _write(task / "children", " ".join(map(str, children)) + " " if tid == pid and children else "")
            on_cpu, wait = threads[tid]
            _write(task / "schedstat", f"{on_cpu} {wait} 10\n")


def _window(tmp_path, monkeypatch, after_busy, after_threads, after_pressure_us=1_400_000):
    """The window between a quiet start and `after_*`, 1.0 s long, on cores 0 and 1."""
    monkeypatch.setattr(conditions, "affinity_core_ids", lambda: frozenset({0, 1}))
    monkeypatch.setenv(conditions.CELL_ROOT_ENV, str(ROOT))
    proc = tmp_path / "proc"
    _plant(proc, [1000, 1000], 1_000_000, {tid: (0, 0) for tid in (ROOT, FORK_SERVER, RANK0, RANK1, GLOO)})
    before = dataclasses.replace(host_snapshot(proc=str(proc)), monotonic_s=10.0)
    assert sorted(before.cell.pids) == [ROOT, FORK_SERVER, RANK0, RANK1] and before.cores == 2
    _plant(proc, after_busy, after_pressure_us, after_threads)
    after = dataclasses.replace(host_snapshot(before.cell.pids, proc=str(proc)), monotonic_s=11.0)
    return {**host_window(before, after), "host_cores": 2, "usable_cores": 2, "threads_on_busiest_host": 2}


def test_a_quiet_host_under_the_cells_own_two_ranks_is_not_contention(tmp_path, monkeypatch):
    # Both cores busy 0.98 s of the 1 s window, all of it the cell's: two ranks at 0.95 s each, their
    # gloo thread, the launcher and the fork server; the ranks waited for each other's helpers (PSI 40 %).
    threads = {ROOT: (20_000_000, 1_000_000), FORK_SERVER: (0, 0), RANK0: (950_000_000, 150_000_000),
               RANK1: (950_000_000, 150_000_000), GLOO: (30_000_000, 20_000_000)}
    window = _window(tmp_path, monkeypatch, [1000 + TICKS * 98 // 100] * 2, threads)
    assert window["cpu_pressure_share"] == pytest.approx(0.4)  # the signal that flagged every 2-rank cell
    assert window["cell_cpu_cores"] == pytest.approx(1.95) and window["cell_processes"] == 4
    assert window["others_cpu_share"] == pytest.approx(0.005, abs=0.006)
    assert window["cell_wait_share"] == pytest.approx(0.321 / 2.271)
    assert condition_flags(window) == []
    # A 68 ms window reads a tick per core off: 12 % of others' time is within its 15 % resolution.
    assert condition_flags({**window, "others_cpu_share": 0.12, "others_cpu_share_resolution": 0.15}) == []


def test_a_busy_process_outside_the_cell_is_contention(tmp_path, monkeypatch):
    # Both cores busy the whole window; the cell ran 1.3 s of the 2 core-seconds and waited 0.7 s.
    threads = {ROOT: (0, 0), FORK_SERVER: (0, 0), RANK0: (650_000_000, 350_000_000),
               RANK1: (650_000_000, 350_000_000), GLOO: (0, 0)}
    window = _window(tmp_path, monkeypatch, [1000 + TICKS] * 2, threads)
    assert window["others_cpu_share"] == pytest.approx(0.35, abs=0.01)
    assert condition_flags(window) == ["CPU contention: other processes ran 35% of its 2 cores' time in the "
                                       "timed window, its threads waited for a CPU 35% of their runnable time"]


def test_others_on_a_core_the_cell_leaves_idle_take_nothing_from_it(tmp_path, monkeypatch):
    # One rank on two cores: a busy process has the other core, the rank hardly waits.
    threads = {ROOT: (0, 0), FORK_SERVER: (0, 0), RANK0: (990_000_000, 5_000_000), RANK1: (0, 0), GLOO: (0, 0)}
    window = _window(tmp_path, monkeypatch, [1000 + TICKS] * 2, threads)
    assert window["others_cpu_share"] == pytest.approx(0.5, abs=0.01) and window["cell_wait_share"] < 0.01
    assert condition_flags(window) == []


BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"
CELL = ("import multiprocessing as mp, sys, time\n"
        f"def busy(s):\n    exec({BUSY!r}.format(s=s))\n"
        "if __name__ == '__main__':\n"
        "    ranks = [mp.get_context('fork').Process(target=busy, args=(float(sys.argv[1]),)) for _ in range(2)]\n"
        "    [r.start() for r in ranks]\n    print('ready', flush=True)\n    [r.join() for r in ranks]\n")


def _on_cpu_s(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat"),
                    reason="needs Linux's per-thread schedstat")
def test_on_this_host_a_planted_busy_process_is_counted_as_others_and_the_cells_tree_as_its_own(monkeypatch):
    cell = subprocess.Popen([sys.executable, "-c", CELL, "3"], stdout=subprocess.PIPE, text=True)
    planted = subprocess.Popen([sys.executable, "-c", BUSY.format(s=3)])
    try:
        assert cell.stdout.readline().strip() == "ready"
        monkeypatch.setenv(conditions.CELL_ROOT_ENV, str(cell.pid))
        before = host_snapshot()
        ranks = [p for p in before.cell.pids if p not in (cell.pid, os.getpid())]  # this test counts itself
        planted_before, ranks_before = _on_cpu_s(planted.pid), sum(_on_cpu_s(p) for p in ranks)
        time.sleep(1.0)
        after = host_snapshot(before.cell.pids)
        planted_s, ranks_s = _on_cpu_s(planted.pid) - planted_before, sum(_on_cpu_s(p) for p in ranks) - ranks_before
        window = host_window(before, after)
    finally:
        planted.kill(), cell.kill()
        planted.wait(), cell.wait()
        cell.stdout.close()
    assert len(ranks) == 2 and planted.pid not in before.cell.pids
    own_s = window["cell_cpu_cores"] * window["window_s"]
    assert own_s == pytest.approx(ranks_s, abs=0.02)  # the ranks' time is the cell's own, all of it
    # The planted process's time is others', whatever else the shared host ran (ticks: 1/TICKS s per core).
    core_s = window["window_s"] * after.cores
    assert window["others_cpu_share"] >= planted_s / core_s - 4 / TICKS / window["window_s"]
    assert window["cell_wait_share"] > 0 and any(f.startswith("CPU contention") for f in condition_flags(
        {**window, "host_cores": os.cpu_count()})) == (window["others_cpu_share"] > conditions.OTHERS_SHARE_LIMIT
                                                       and window["cell_wait_share"] > conditions.OWN_WAIT_SHARE_LIMIT)


def test_without_children_files_the_tree_comes_from_every_processs_parent(tmp_path):
    for pid, parent in ((ROOT, 1), (FORK_SERVER, ROOT), (RANK0, FORK_SERVER), (RANK1, FORK_SERVER), (77, 1)):
        _write(tmp_path / str(pid) / "stat", f"{pid} (python3 (x) y) S {parent} 1 1 0 -1 0 0 0 0 0 5 3\n")
    assert sorted(cell_processes(ROOT, str(tmp_path))) == [ROOT, FORK_SERVER, RANK0, RANK1]
