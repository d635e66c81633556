"""trainkit's loop against a hand-written one: the cost of the library, measured side by side.

Both loops train the same model instance with the same optimizer on the same samples in the same
process, in interleaved blocks (hand, trainkit, trainkit, hand, ...) so that drift in the
machine's speed falls on both alike. The hand-written loop is the seeds' loop:
zero_grad -> forward -> loss -> backward -> step.

What trainkit's step adds at small steps (the mlp case, one CPU thread, median of the interleaved
pairs, 2026-12, on the shared 2-core host at load average 16-24, where a step took 0.9-1.2 ms instead
of 0.75): the step of 2026-11 (a list of micro-batch losses and shares per step, two context managers
per micro-batch) kept 0.962-0.975 of the hand loop's throughput (process CPU time) and 0.944-0.965
(wall clock); the step built for its configuration (no context or identity hook a mode lacks, one
device tensor of loss per step) keeps 0.971-0.979 (CPU time) and 0.959-0.972 (wall). The hand loop
run as the "trainkit" side keeps 0.996-1.004 (the noise floor), and a minimal trainkit step (the
trainer's forward, backward, step and zero_grad, no bookkeeping) 0.987-0.988. The record's own figure
of this cost (trainkit.engine.train.overhead, harness_overhead_per_step_us) says 2.2 µs per step,
0.2 %: its null steps run with the harness's code warm in the caches, which a real step's is not
after the model's kernels, so it is a lower bound of the 1-2 % this bench sees.
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
from trainkit.engine.train.overhead import METHOD as OVERHEAD_METHOD
from trainkit.engine.train.overhead import harness_overhead_us


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HandWrittenLoop:
    """The seeds' loop over a Trainer's own model, optimizer and samples.

    Sharing them matters: two instances of the same model can differ by 5% in speed on a CPU
    (where their weights happen to lie in memory), more than the difference being measured.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.model, self.loss_fn, self.data = trainer.raw_model, trainer.workload.loss_fn, trainer.data.source
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


CPU_CLOCK = ("process CPU time (time.process_time): what the loops cost this process, without the time other "
             "processes took from its cores")
CUDA_CLOCK = "wall clock around a CUDA-synchronised block (time.perf_counter)"


def measure(config: RunConfig, blocks: int, steps_per_block: int) -> dict[str, Any]:
    """Interleaved blocks of both loops; returns per-step times (s) of each and their ratio.

    On a CPU each block is timed by the process's CPU time: on a shared machine the wall clock also
    holds whatever other processes ran on these cores in between, which falls on either loop by
    chance and swamps a 1 % difference; the wall-clock ratio is kept beside it. On a GPU the wall
    clock around a synchronised block is the step time."""
    if config.grad_accum != 1 or config.world_size != 1 or config.precision != "fp32":
        raise ValueError("the hand-written loop is single-rank fp32 without accumulation")
    device = torch.device("cuda", 0) if config.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    config = config.replace(warmup_steps=3, steps=blocks * steps_per_block)  # a run long enough for all blocks
    if device.type == "cpu":
        # One thread, as the step the bar is set at (0.75 ms): with the cores shared, intra-op threads
        # wait for each other at every op while another process holds a core, and a 2-core machine's
        # load then moves a block's time by tens of percent, whichever loop it is.
        torch.set_num_threads(1)
    library = Trainer(config, device)
    hand = HandWrittenLoop(library)
    library.run(3)  # warm up, lazy optimizer state included
    hand.run(3, 0)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {"hand": [], "trainkit": []}
    wall: dict[str, list[float]] = {"hand": [], "trainkit": []}
    step = 3
    for block in range(blocks):
        order = ("hand", "trainkit") if block % 2 == 0 else ("trainkit", "hand")
        for name in order:
            _sync(device)
            started, wall_started = clock(), time.perf_counter()
            if name == "hand":
                hand.run(steps_per_block, step)
            else:
                library.run(steps_per_block)
            _sync(device)
            times[name].append((clock() - started) / steps_per_block)
            wall[name].append((time.perf_counter() - wall_started) / steps_per_block)
        step += steps_per_block
    overhead_us = harness_overhead_us(library)  # the record's figure, beside the ratio it predicts

    def ratio(hand_s: list[float], library_s: list[float]) -> float:
        # Throughput ratio per interleaved pair, then the median: robust to a slow moment.
        return statistics.median(h / t for h, t in zip(hand_s, library_s))

    median_step_s = statistics.median(times["trainkit"])
    return {"hand_step_s": times["hand"], "trainkit_step_s": times["trainkit"],
            "throughput_ratio": ratio(times["hand"], times["trainkit"]),
            "clock": CPU_CLOCK if device.type == "cpu" else CUDA_CLOCK,
            "wall_hand_step_s": wall["hand"], "wall_trainkit_step_s": wall["trainkit"],
            "wall_throughput_ratio": ratio(wall["hand"], wall["trainkit"]),
            "harness_overhead_per_step_us": overhead_us, "harness_overhead_method": OVERHEAD_METHOD,
            "harness_overhead_share": overhead_us / (median_step_s * 1e6),
            "device": str(device), "samples_per_step": config.batch_size,
            "torch_num_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}


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
