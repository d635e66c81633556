"""The harness's own cost per optimizer step: what trainkit's step spends beyond a hand-written loop.

trainkit's step does what the seeds' loop does (forward, loss, backward, optimizer step, zero_grad)
plus its own bookkeeping: the window, the loss weights, the kept loss, the precision hooks, the
accumulation flags. At short steps that bookkeeping is a share of the figure (the overhead bench,
trainkit/bench/overhead.py, measures it against a hand-written loop at 0.75 ms CPU steps), so every cell
measures it in its own process after its timed steps, and the record flags a cell whose step is so
short that it exceeds 1 % of the step (trainkit.engine.cell.record.harness_overhead).

How (METHOD): both loops run on a copy of the cell's trainer whose data, model, loss function,
precision hooks, optimizer and schedule are null stand-ins: calls that return at once, the same
calls for both loops, the loss a fixed 0-d tensor on the cell's device. What is left of each is its
own Python, and the difference is the harness's: `Trainer.run` of this cell's configuration (its
accumulation, ranks, forward built for its mode, clipping and schedule calls) against the seeds'
loop making the same calls. Interleaved rounds on this thread's CPU clock (a shared host's other
processes do not count), the median of the per-round differences.

What it leaves out, so the figure is a lower bound of what the harness costs a real step: the
calls both loops make (the work itself); and the caches. The null steps run back to back, so the
harness's code and objects stay in the CPU's caches, while in a real step they run after the
model's kernels have evicted them. On the loaded 2-core CPU host (load average 16-24) the bench's
0.9-1.2 ms mlp steps showed the difference: this figure was 2.2 µs (0.2 % of the step), while the
full step against a minimal one (forward, backward, step, zero_grad through the same trainer, no
bookkeeping) kept 0.970 against 0.987-0.988 of the hand-written loop's throughput, about 1.7 %.
On a GPU the host time is an upper bound of what the step loses, since the device hides host work
shorter than its own.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..workloads.data import AccumulationWindow
from .loop import Trainer, build_forward
from .precision import NO_CONTEXT

ROUNDS = 15
"""Interleaved rounds of each loop; the figure is the median of their per-round differences."""
STEPS_PER_ROUND = 100
"""Null steps per round: a null step is a few microseconds, so a round is well under a millisecond."""
METHOD = (f"Trainer.run against the seeds' loop (zero_grad, forward, loss, backward, step) on a copy of the "
          "cell's trainer whose data, model, loss, precision hooks, optimizer and schedule are null calls "
          f"(the same for both); thread CPU time, {ROUNDS} interleaved rounds of {STEPS_PER_ROUND} steps, "
          "median of the per-round differences per step; rank's maximum. A lower bound: the null steps run "
          "with the harness's code warm in the caches, a real step's does not")


def _null(*_: Any, **__: Any) -> None:
    """A stand-in for a call whose work is left out: it returns at once."""


class _NullPolicy:
    """The cell's policy with every hook a null call; it answers `overrides` as the real one does, so
    the forward is built with the same shape (a context entered, an output cast) as the cell's."""

    scaler = None

    def __init__(self, real: Any) -> None:
        self.overrides = real.overrides
        self.backward = self.after_backward = self.unscale_ = self.optimizer_step = _null

    @staticmethod
    def forward_context() -> Any:
        return NO_CONTEXT

    @staticmethod
    def convert_output(output: torch.Tensor) -> torch.Tensor:
        return output


class _NullOptimizer:
    step = zero_grad = staticmethod(_null)


class _NullDDP:
    """DDP's sync flag without the module: setting it is the harness's cost, DDP's hooks are not."""

    require_backward_grad_sync = True


class _NullScheduler:
    step = staticmethod(_null)


def _null_copy(trainer: Trainer) -> tuple[Trainer, Callable[[int], None]]:
    """The null copy of `trainer` and the seeds' loop over the same null calls."""
    config, device = trainer.config, trainer.device
    loss = torch.zeros((), device=device)
    rows = torch.empty((config.batch_size, 0), device=device)  # the step reads a micro-batch's rows
    window = AccumulationWindow([(rows, rows)] * config.grad_accum, config.effective_batch)
    policy = _NullPolicy(trainer.policy)

    def model(inputs: torch.Tensor) -> torch.Tensor:
        return loss

    def loss_fn(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return output

    null = copy.copy(trainer)
    null.windows = itertools.repeat(window)
    null.policy = policy  # type: ignore[assignment]
    null.forward = build_forward(model, loss_fn, policy)  # type: ignore[arg-type]
    null.optimizer = _NullOptimizer()  # type: ignore[assignment]
    null.scheduler = _NullScheduler() if trainer.scheduler is not None else None  # type: ignore[assignment]
    null.accumulating_ddp = _NullDDP() if trainer.accumulating_ddp is not None else None  # type: ignore[assignment]
    null.params = []
    null.checkpoint_due = lambda: False  # type: ignore[method-assign]
    null.step, null.total_steps = 0, 2**62
    null.recent_losses, null.loss_chunks, null.step_samples, null.step_skips = [], [], [], {}
    optimizer, scheduler, clip, accum = null.optimizer, null.scheduler, config.clip_grad_norm, config.grad_accum
    windows: Iterator[AccumulationWindow] = itertools.repeat(window)

    def hand(steps: int) -> None:
        """The seeds' loop, with the calls a hand-written loop of this configuration adds (a schedule,
        clipping); each micro-batch's loss goes to backward divided as a hand-written loop divides it."""
        for _ in range(steps):
            optimizer.zero_grad()
            for inputs, targets in next(windows).micro_batches:
                micro_loss = loss_fn(model(inputs), targets)
                policy.backward(micro_loss / accum if accum > 1 else micro_loss)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_([], clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

    return null, hand


def harness_overhead_us(trainer: Trainer, rounds: int = ROUNDS, steps: int = STEPS_PER_ROUND) -> float:
    """Microseconds per optimizer step that trainkit's step of this trainer's configuration spends
    beyond the seeds' loop (module docstring); a negative figure is below what the clock resolves."""
    null, hand = _null_copy(trainer)
    clock = time.thread_time_ns
    differences = []
    for round_ in range(rounds):
        pair: dict[str, float] = {}
        for name in (("trainkit", "hand") if round_ % 2 == 0 else ("hand", "trainkit")):
            started = clock()
            if name == "hand":
                hand(steps)
            else:
                null.run(steps)
            pair[name] = (clock() - started) / steps
        differences.append(pair["trainkit"] - pair["hand"])
    return statistics.median(differences) / 1e3
