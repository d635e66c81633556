"""trainkit's loop against a hand-written one: the cost of the library, measured side by side.

Both loops train the same model instance with the same optimizer on the same samples in the same
process, in interleaved blocks (hand, trainkit, trainkit, hand, ...) so that drift in the
machine's speed falls on both alike. The hand-written loop is the seeds' loop:
zero_grad -> forward -> loss -> backward -> step.

What trainkit's step adds at small steps (the mlp case, ~0.75 ms steps on one CPU thread,
median of 60 blocks, 2026-12): the step as it is keeps 0.969-0.982 of the hand loop's throughput;
the hand loop run as the "trainkit" side keeps 0.996-1.005 (the noise floor); trainkit's step
without its two context managers and without keeping each micro-batch's loss keeps 0.991-0.997.
Keeping the loss tensor (a device tensor, read after the timed steps: the loss curve without a
host sync or an extra kernel) costs 0.5-1%, the DDP no_sync and autocast contexts ~0.3%; both
stay, since the curve and those contexts are what the record and the DDP/AMP cells need.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from trainkit.engine.cell.launch import call_in_fresh_process
from trainkit.engine.cell.protocol import Reply
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.train.loop import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HandWrittenLoop:
    """The seeds' loop over a Trainer's own model, optimizer and samples.

    Sharing them matters: two instances of the same model can differ by 5% in speed on a CPU
    (where their weights happen to lie in memory), more than the difference being measured.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.model, self.loss_fn, self.data = trainer.raw_model, trainer.spec.loss_fn, trainer.data.source
        self.optimizer = trainer.optimizer  # a plain torch.optim.SGD(lr, momentum): what the seeds build

    def run(self, steps: int, first_step: int) -> None:
        for step in range(first_step, first_step + steps):
            inputs, targets = self.data.window(step).micro_batches[0]
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(inputs), targets)
            loss.backward()
            self.optimizer.step()
        # Leave no gradients behind: the next block (trainkit's) would otherwise accumulate into
        # them, an extra pass over every gradient that a loop of its own never makes.
        self.optimizer.zero_grad()


def measure(config: RunConfig, blocks: int, steps_per_block: int) -> dict[str, Any]:
    """Interleaved blocks of both loops; returns per-step times (s) of each and their ratio."""
    if config.grad_accum != 1 or config.world_size != 1 or config.precision != "fp32":
        raise ValueError("the hand-written loop is single-rank fp32 without accumulation")
    device = torch.device("cuda", 0) if config.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    config = config.replace(warmup_steps=3, steps=blocks * steps_per_block)  # a run long enough for all blocks
    library = Trainer(config, device)
    hand = HandWrittenLoop(library)
    library.run(3)  # warm up, lazy optimizer state included
    hand.run(3, 0)
    times: dict[str, list[float]] = {"hand": [], "trainkit": []}
    step = 3
    for block in range(blocks):
        order = ("hand", "trainkit") if block % 2 == 0 else ("trainkit", "hand")
        for name in order:
            _sync(device)
            started = time.perf_counter()
            if name == "hand":
                hand.run(steps_per_block, step)
            else:
                library.run(steps_per_block)
            _sync(device)
            times[name].append((time.perf_counter() - started) / steps_per_block)
        step += steps_per_block
    # Throughput ratio per interleaved pair, then the median: robust to a slow moment.
    ratios = [h / t for h, t in zip(times["hand"], times["trainkit"])]
    return {"hand_step_s": times["hand"], "trainkit_step_s": times["trainkit"],
            "throughput_ratio": statistics.median(ratios), "device": str(device),
            "samples_per_step": config.batch_size, "torch_num_threads": torch.get_num_threads()}


def run_in_worker(config: RunConfig, blocks: int, steps_per_block: int, timeout_s: float = 600) -> dict[str, Any]:
    """`measure` in a fresh worker process from trainkit's fork server (isolated, torch preloaded)."""
    return call_in_fresh_process(_child, config, blocks, steps_per_block, timeout_s=timeout_s,
                                 what="the overhead measurement")


def _child(conn: Any, config: RunConfig, blocks: int, steps_per_block: int, environ: dict[str, str]) -> None:
    os.environ.update(environ)
    try:
        conn.send((Reply.OK, measure(config, blocks, steps_per_block)))
    except Exception as exc:  # any failure is the parent's to report, as one line
        conn.send((Reply.FAILED, f"{type(exc).__name__}: {exc}"))
