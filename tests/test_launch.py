"""Cells run in their own processes; every way a cell can end is a record, never a crash."""

import os
import signal
import time

import pytest

from trainkit.launch import Cell, CellFailed, run_cell
from trainkit.result import check_record

from .conftest import small_config


def test_an_ok_cell_reports_every_rank_and_its_fixed_cost():
    record = run_cell(small_config("gpt", world_size=2, batch_size=4, steps=2), timeout_s=120)
    assert check_record(record) == [] and record["status"] == "ok"
    assert record["ranks_reported"] == 2 and len(record["memory"]["per_rank"]) == 2
    per_rank = record["memory"]["per_rank"]
    assert record["memory"]["host_rss_peak_bytes"] == max(r["host_rss_peak_bytes"] for r in per_rank)
    assert record["config"]["torch_num_threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert set(record["fixed_cost_s"]) >= {"spawn_to_ready_s", "init_s", "build_s"}


def test_a_nan_ends_the_cell_as_diverged_at_its_step():
    record = run_cell(small_config(precision="half-fp16", lr=1e4, steps=6, warmup_steps=1), timeout_s=120)
    assert record["status"] == "diverged"
    assert record["status_detail"].startswith("diverged@") and "not finite" in record["status_detail"]
    assert check_record(record) == []
    assert record["loss"]["curve"] and record["loss"]["curve"][-1] is None  # the curve up to the NaN is kept


def test_a_collapsing_loss_scale_ends_the_cell_as_diverged():
    config = small_config(precision="amp-fp16", init_scale=2.0**40, min_loss_scale=2.0**39.5, steps=4, warmup_steps=1)
    record = run_cell(config, timeout_s=120)
    assert record["status"] == "diverged" and "fell below min_loss_scale" in record["status_detail"]


def test_running_out_of_host_memory_is_an_oom_result():
    """A real allocation failure: the worker's address space is capped (like `ulimit -v`) and the
    batch needs more than the cap."""
    config = small_config(batch_size=200_000, steps=1)
    record = run_cell(config, timeout_s=120, memory_limit_bytes=256 * 2**20)
    assert record["status"] == "oom", record["status_detail"]
    assert record["memory"]["host_rss_peak_bytes"] is not None


def _wait_for_steps(cell, n):
    for _ in range(n):
        cell.step()


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_killed_worker_ends_the_cell_as_crashed(world_size):
    with Cell(small_config("gpt", world_size=world_size, steps=50), timeout_s=120) as cell:
        cell.start()
        cell.warmup()
        _wait_for_steps(cell, 2)
        os.kill(cell.pids[-1], signal.SIGKILL)
        with pytest.raises(CellFailed) as info:
            _wait_for_steps(cell, 10)
        record = cell.record_for(info.value)
    assert record["status"] == "crashed"
    assert f"rank {world_size - 1} was killed by SIGKILL" in record["status_detail"]
    assert check_record(record) == []


def test_a_hung_worker_ends_the_cell_as_timeout():
    with Cell(small_config(steps=50), timeout_s=8) as cell:
        cell.start()
        cell.warmup()
        os.kill(cell.pids[0], signal.SIGSTOP)  # a real hang: the worker stops answering
        started = time.monotonic()
        with pytest.raises(CellFailed) as info:
            cell.step()
        assert time.monotonic() - started < 10
        record = cell.record_for(info.value)
    assert record["status"] == "timeout" and "cell timeout of 8 s" in record["status_detail"]
    assert "during step 1" in record["status_detail"]


def test_cells_are_isolated_processes():
    first = run_cell(small_config(steps=1), timeout_s=120)
    second = run_cell(small_config(steps=1), timeout_s=120)
    assert set(first["worker_pids"]).isdisjoint(second["worker_pids"])
    assert first["loss"]["curve"] == second["loss"]["curve"]


def test_the_fixed_cost_of_a_cell_is_small_once_the_fork_server_runs():
    run_cell(small_config(steps=1), timeout_s=120)  # starts the fork server if needed
    record = run_cell(small_config(steps=1), timeout_s=120)
    assert record["fixed_cost_s"]["spawn_to_ready_s"] < 1.0


def test_the_same_cell_runs_under_torchrun_and_rank_0_writes_the_record(tmp_path):
    """torchrun's environment contract (what multi-node runs use): no launcher, the ranks gather
    their partial results on rank 0, and the record equals the launcher's for the same cell."""
    import json
    import subprocess
    import sys

    from trainkit.launch import _free_port

    from .conftest import REPO

    out = tmp_path / "torchrun.json"
    args = ["--model", "mlp", "--world-size", "2", "--batch-size", "8", "--steps", "3", "--warmup-steps", "1",
            "--device", "cpu", "--quiet", "--phase-steps", "0"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "-m", "trainkit", "run", *args, "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["ranks_reported"] == 2
    assert record["config"]["distributed_backend"] == "gloo"
    launched = run_cell(small_config(world_size=2, steps=3, warmup_steps=1), timeout_s=120)
    assert record["loss"]["curve"] == launched["loss"]["curve"]
