"""DDP accumulation: gradients are all-reduced once per optimizer step, not once per micro-batch."""

import os

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from trainkit.engine.launch import _fork_server, _free_port
from trainkit.engine.loop import Trainer

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
