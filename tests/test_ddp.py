"""DDP accumulation: gradients are all-reduced once per optimizer step, not once per micro-batch."""

import os
import time

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from trainkit.engine.cell.launch import _fork_server, _free_port
from trainkit.engine.cell.record import check_record
from trainkit.engine.train.loop import Trainer

from .conftest import small_config


def _count_allreduces(rank: int, port: int, grad_accum: int, steps: int, queue) -> None:  # runs in a rank
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        trainer = Trainer(small_config(world_size=2, grad_accum=grad_accum, steps=steps), torch.device("cpu"), rank)
        calls = []

        def counting_hook(state, bucket):
            calls.append(bucket.index())
            return allreduce_hook(state, bucket)

        trainer.model.register_comm_hook(dist.group.WORLD, counting_hook)
        trainer.run(steps)
        queue.put((rank, len(calls), len(set(calls))))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_no_sync_all_reduces_once_per_optimizer_step(grad_accum):
    ctx = _fork_server()
    queue = ctx.Queue()
    port, steps = _free_port(), 2
    ranks = [ctx.Process(target=_count_allreduces, args=(r, port, grad_accum, steps, queue)) for r in range(2)]
    for p in ranks:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=30)
        assert p.exitcode == 0
    for _, calls, buckets in results:
        assert calls == steps * buckets  # one all-reduce of each bucket per step, whatever grad_accum


# --- a rank that fails under torchrun's contract stops its peers --------------------------------------

FAIL_AT_STEP = 3  # a timed step: warmup is 1 step


def _torchrun_rank(rank: int, port: int, failing: int, how: str, queue) -> None:  # runs in a rank
    """One rank of a 2-rank cell under torchrun's environment contract (no launcher outside it);
    rank `failing` fails in its train step FAIL_AT_STEP, before its backward: its peer is then
    alone in the gradient all-reduce."""
    from trainkit.engine.cell.launch import run_under_torchrun
    from trainkit.engine.cell.worker import limit_host_memory
    from trainkit.engine.train import loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    step = loop.Trainer.train_step

    def failing_step(self, marks=None):
        if self.step == FAIL_AT_STEP:
            if how == "raises":
                raise RuntimeError(f"injected failure on rank {rank}")
            limit_host_memory(64 * 2**20)  # a real allocation failure under an address-space cap
            torch.empty(2**30, dtype=torch.uint8).fill_(1)
        return step(self, marks)

    if rank == failing:
        loop.Trainer.train_step = failing_step
    started = time.monotonic()
    record = run_under_torchrun(small_config(world_size=2, steps=400, warmup_steps=1))
    queue.put((rank, time.monotonic() - started, record))


def _run_failing_cell(failing: int, how: str) -> dict:
    ctx = _fork_server()
    queue = ctx.Queue()
    port = _free_port()
    ranks = [ctx.Process(target=_torchrun_rank, args=(r, port, failing, how, queue)) for r in range(2)]
    for p in ranks:
        p.start()
    try:
        # Without the fix the cell hangs: the failing rank waits in the gather, its peer in the all-reduce.
        results = {rank: (seconds, record) for rank, seconds, record in (queue.get(timeout=90) for _ in ranks)}
        for p in ranks:
            p.join(timeout=30)
    finally:
        for p in ranks:
            if p.is_alive():
                p.kill()
    assert results[1][1] is None  # rank 0 alone returns the record
    assert max(seconds for seconds, _ in results.values()) < 60
    return results[0][1]


@pytest.mark.parametrize("failing", [1, 0])
def test_a_rank_that_raises_mid_step_stops_its_peer_and_the_cell_ends_with_its_status(failing):
    record = _run_failing_cell(failing, "raises")
    assert record["status"] == "crashed", record["status_detail"]
    assert record["status_detail"].startswith(f"rank {failing}: RuntimeError: injected failure on rank {failing}")
    assert check_record(record) == [] and record["ranks_reported"] == (2 if failing else 1)


def test_a_rank_that_runs_out_of_memory_mid_step_ends_the_cell_as_oom():
    record = _run_failing_cell(1, "oom")
    assert record["status"] == "oom" and record["status_detail"].startswith("rank 1: out of memory"), \
        record["status_detail"]
    assert "rank 0 then stopped" in record["status_detail"]  # its all-reduce lost its peer
