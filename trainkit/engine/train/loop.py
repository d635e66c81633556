"""The training loop: one rank's model, optimizer, data and precision policy, stepped.

`Trainer.train_step` is the whole algorithm and reads top to bottom: micro-batches with loss
weighting and DDP's no_sync, then unscale, clip, step, zero and schedule. Everything else here
builds what it needs or reads results out after the fact, so the loop adds no host sync to a step:
the only one a step holds is GradScaler's own (amp-fp16 reads whether any gradient overflowed).

The step is built for its configuration once (`build_forward`, `Trainer.__init__`): a mode without
autocast or an output cast enters no context and calls no identity hook, a cell without
accumulation over ranks never touches DDP's sync flag, and a step keeps one device tensor of its
loss (with one rank and one micro-batch, the loss itself: no kernel) and no Python object per
micro-batch. At the bench's 0.75 ms CPU steps every microsecond is 0.13 % of the hand-written
loop's throughput (trainkit/bench/overhead.py).
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..measure.timing import Marks
from ..spec.config import RunConfig
from ..spec.schema import replacing
from ..workloads.data import AccumulationWindow, build_data, build_real_dataset, num_classes_of
from ..workloads.resolve import build_workload, workload_dataset
from ..workloads.workload import WorkloadError, non_scalar_loss
from . import checkpointing, compiled, optimizers
from .optimizers import build_optimizer
from .precision import Precision, Unsupported, build_precision


def _mark(marks: Marks | None, phase: str) -> None:
    if marks is not None:
        marks.mark(phase)


CURVE_CHUNK_STEPS = 64
"""Steps of loss curve one preallocated device tensor holds (a new one every so many steps)."""

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A micro-batch's loss from its inputs and targets."""


def build_forward(model: Callable[[torch.Tensor], torch.Tensor],
                  loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], policy: Precision) -> Forward:
    """The loss of a micro-batch, built once for the policy: under its forward context (autocast) and
    through its output cast only where the policy has them, so fp32's step enters no context and calls
    no identity hook. The loss is computed inside the context: autocast runs cross-entropy in fp32
    on the low-precision logits."""
    convert = policy.convert_output if policy.overrides("convert_output") else None
    if policy.overrides("forward_context"):
        def in_context(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            with policy.forward_context():
                output = model(inputs)
                return loss_fn(convert(output) if convert is not None else output, targets)
        return in_context
    if convert is not None:
        return lambda inputs, targets: loss_fn(convert(model(inputs)), targets)
    return lambda inputs, targets: loss_fn(model(inputs), targets)


def lr_factor(config: RunConfig, total_steps: int):  # noqa: ANN201 - returns a LambdaLR lambda
    """The multiplier of the peak learning rate at each optimizer step, or None for constant."""
    if config.schedule == "lambda":
        return lambda step: max(0.0, 1.0 - step / total_steps)
    if config.schedule == "cosine":
        warmup = config.lr_warmup_steps

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        return cosine
    return None


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A schedule stepped once per optimizer step (never per micro-batch), or None."""
    if config.schedule == "constant":
        return None
    if config.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total_steps))


class Trainer:
    """One rank of a run, built once (model, policy, optimizer, schedule, data), then stepped.

    The per-step losses and GradScaler's skip flags stay on the device as the step left them and
    are read after the timed steps, so keeping them costs a step no sync.
    """

    def __init__(self, config: RunConfig, device: torch.device, rank: int = 0, policy: Precision | None = None) -> None:
        """`policy`: a precision policy the caller built for config.precision, used instead of the
        default one (the tests pass FP8's with emulate=True, which runs on a CPU)."""
        self.config, self.device, self.rank = config, device, rank
        self.world_size = config.world_size
        self.policy = policy if policy is not None else build_precision(config, device)
        reason = (self.policy.unsupported_reason()
                  or (compiled.unsupported_reason(device.type) if config.compile else None)
                  or optimizers.unsupported_reason(config, device.type))
        if reason:
            raise Unsupported(reason)
        dataset = build_real_dataset(config) if config.data not in ("synthetic", "workload") else None
        self.workload = build_workload(config, num_classes_of(dataset) if dataset is not None else 10)
        reason = checkpointing.unsupported_reason(self.workload, config.activation_checkpointing)
        if reason:
            raise Unsupported(reason)
        self.policy.configure_backends()
        torch.backends.cudnn.benchmark = config.cudnn_benchmark

        if config.data == "workload":
            dataset = workload_dataset(self.workload)
        torch.manual_seed(config.seed)  # the same initial weights on every rank and in every run
        # The order matters: precision conversion (float8 layers), activation checkpointing around
        # the converted blocks, DDP, and torch.compile last, so that it traces all of them.
        model = self.policy.convert_module(self.workload.build().to(device))
        self.checkpointed = checkpointing.apply(model, self.workload, config.activation_checkpointing)
        """Modules that recompute their forward in backward (activation_checkpointing)."""
        self.raw_model = model
        self.accumulating_ddp: nn.parallel.DistributedDataParallel | None = None
        """The DDP module where its all-reduce waits for a window's last micro-batch (several ranks and
        micro-batches, DDP reducing); None where the step never changes DDP's sync flag."""
        if self.world_size > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
            if self.policy.reduces_gradients:  # it averages over ranks itself (fp32 main gradients)
                model.require_backward_grad_sync = False  # what no_sync sets, for every micro-batch
            elif config.grad_accum > 1:
                self.accumulating_ddp = model
        if config.compile:
            model = compiled.compile_model(model, config.compile_mode)
        self.model = model
        self.forward = build_forward(self.model, self.workload.loss_fn, self.policy)
        self.params = self.policy.trained_parameters(self.raw_model)
        """What the optimizer updates and clipping reads: the parameters, or their fp32 master copies."""

        self.data = build_data(config, self.workload, device, self.policy.input_dtype, rank, dataset)
        if config.epochs is not None:
            assert self.data.steps_per_epoch is not None
            self.total_steps = config.epochs * self.data.steps_per_epoch
        else:
            self.total_steps = config.warmup_steps + config.steps
        self.optimizer = build_optimizer(config, self.params)
        self.scheduler = build_scheduler(config, self.optimizer, self.total_steps)

        self.step = 0
        self.recent_losses: list[torch.Tensor] = []
        """This rank's share of each recent step's mean loss, a 0-d device tensor per step as the step
        left it (with one rank and one micro-batch, the very loss backward took: no kernel, no sync),
        stacked into `loss_chunks` every CURVE_CHUNK_STEPS steps so thousands never pile up."""
        self.loss_chunks: list[torch.Tensor] = []
        """The stacked steps (one float32 device tensor per chunk, made by one kernel, no host transfer)."""
        self.step_skips: dict[int, torch.Tensor] = {}
        """GradScaler's skip flag of each step, as a device tensor (modes with a scaler only)."""
        self.step_samples: list[int] = []
        """Samples each step of this process covered, over all ranks (known without a sync)."""
        self.resumed_from_step: int | None = None
        if config.resume_from:
            self.load_checkpoint(config.resume_from)
        self.windows: Iterator[AccumulationWindow] = self.data.source.windows(self.step)

    # --- the step ------------------------------------------------------------------------------
    def train_step(self, marks: Marks | None = None) -> None:
        """One optimizer step over this rank's micro-batches of the effective batch.
        `marks`, when given, marks the end of each phase (the profiler's phase breakdown)."""
        window = next(self.windows)
        _mark(marks, "data")
        step_loss = None
        last = len(window.micro_batches) - 1
        for i, (inputs, targets) in enumerate(window.micro_batches):
            if self.accumulating_ddp is not None:
                # DDP decides during forward whether backward will all-reduce, so the flag no_sync
                # sets must hold over forward and backward (baidu-baige/LoongForge#163): set here, as
                # nanoGPT does, without a context per micro-batch. Only the last micro-batch syncs.
                self.accumulating_ddp.require_backward_grad_sync = i == last
            loss = self.forward(inputs, targets)
            _mark(marks, "forward")
            # DDP averages gradients over ranks, hence world_size: the gradient is the mean over
            # the effective batch however it is split, a short last window included. (A weight
            # of exactly 1 is skipped: on small models each extra kernel shows in the timing.)
            share = inputs.shape[0] / window.global_samples  # of the effective batch, all ranks
            if loss.ndim:  # a shape: known without a sync
                raise WorkloadError(non_scalar_loss(self.workload.name, loss))
            weight = share * self.world_size
            scaled = loss * weight if weight != 1.0 else loss
            self.policy.backward(scaled)
            _mark(marks, "backward")
            # Where the policy keeps the gradient (fp32 main gradients); after the mark, so that
            # diagnostics read the gradient as backward left it.
            self.policy.after_backward()
            # This rank's share of the step's mean loss: with one rank, the loss backward took.
            part = (scaled if self.world_size == 1 else loss * share).detach()
            step_loss = part if step_loss is None else step_loss + part
        self.policy.unscale_(self.optimizer)  # once per step, before clipping (pytorch#36601)
        if self.config.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        if (skipped := self.policy.optimizer_step(self.optimizer)) is not None:
            self.step_skips[self.step] = skipped
        self.optimizer.zero_grad(set_to_none=True)
        self.step_schedule()
        _mark(marks, "optimizer")
        self.end_step(step_loss, window.global_samples)

    def end_step(self, loss: torch.Tensor | None, samples: int) -> None:
        """Count the step: its loss kept on the device (no sync), its samples (known on the host)."""
        self.recent_losses.append(loss)  # type: ignore[arg-type]  # a window holds a micro-batch at least
        if len(self.recent_losses) == CURVE_CHUNK_STEPS:
            self.loss_chunks.append(self._stack(self.recent_losses))
            self.recent_losses = []
        self.step_samples.append(samples)
        self.step += 1

    @staticmethod
    def _stack(losses: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([loss.float() for loss in losses])

    def step_schedule(self) -> None:
        if self.scheduler is None:
            return
        if self.policy.scaler is None:
            self.scheduler.step()
            return
        # A step GradScaler skipped still advances the schedule; torch warns when the very first
        # optimizer step was skipped (pytorch/pytorch#44511), which is expected here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()

    # --- running ------------------------------------------------------------------------------
    def run(self, steps: int, timer: Marks | None = None, report: Callable[[int, int], None] | None = None,
            report_every_s: float = 0.5) -> None:
        """Run up to `steps` optimizer steps (fewer at the end of the run). With a timer, each step
        is one interval between two marks; what happens between steps (a checkpoint written, a
        progress report) falls in a pause, outside every interval. `report(step, total)` is called
        at most every report_every_s with what the host knows, never reading the device."""
        if timer is not None:
            timer.mark()
        next_report = time.monotonic() + report_every_s
        checkpoints = self.config.checkpoint_every is not None

        def between_steps(work: Callable[[], Any]) -> None:
            if timer is not None:
                timer.pause()
            work()
            if timer is not None:
                timer.mark()

        for _ in range(min(steps, self.total_steps - self.step)):
            self.train_step()
            if timer is not None:
                timer.mark()
            if checkpoints and self.checkpoint_due():
                between_steps(self.save_checkpoint)
            if report is not None and time.monotonic() >= next_report:
                between_steps(lambda: report(self.step, self.total_steps))
                next_report = time.monotonic() + report_every_s

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def loss_curve(self) -> torch.Tensor:
        """This rank's share of every step's mean loss, float64 on the CPU (the ranks' shares add up
        to the step's mean over the effective batch): each step's micro-batch losses weighted by
        their shares. Reading it is a host sync."""
        chunks = [*self.loss_chunks, self._stack(self.recent_losses)] if self.recent_losses else self.loss_chunks
        if not chunks:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([chunk.to("cpu", torch.float64) for chunk in chunks])

    def skipped(self) -> list[bool]:
        """Whether GradScaler skipped each step (a host sync)."""
        return [bool(self.step_skips[step]) if step in self.step_skips else False for step in range(self.step)]

    def first_nonfinite_step(self) -> int | None:
        """First step whose loss is inf/NaN, or None (a host sync)."""
        bad = (~torch.isfinite(self.loss_curve())).nonzero()
        return int(bad[0, 0]) if bad.numel() else None

    def scale_collapsed(self) -> bool:
        scaler = self.policy.scaler
        return scaler is not None and scaler.get_scale() < self.config.min_loss_scale

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss on the fixed held-out samples, in the policy's forward precision."""
        inputs, targets = self.data.eval_set
        self.raw_model.eval()
        total = torch.zeros((), device=self.device)
        for start in range(0, inputs.shape[0], self.config.batch_size):
            x, y = inputs[start:start + self.config.batch_size], targets[start:start + self.config.batch_size]
            with self.policy.forward_context():
                loss = self.workload.loss_fn(self.policy.convert_output(self.raw_model(x)), y)
            total += loss.float() * x.shape[0]
        self.raw_model.train()
        return float(total) / inputs.shape[0]

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return every is not None and (self.step % every == 0 or self.finished)

    def checkpoint_path(self, step: int) -> str:
        return os.path.join(self.config.checkpoint_dir or ".", f"step{step:08d}.pt")

    def save_checkpoint(self) -> str | None:
        """Everything a resumed run needs to continue the same loss curve (rank 0 writes)."""
        curve = self.loss_curve()
        if self.world_size > 1:  # every rank holds its share of each step's loss: add them up
            curve = curve.to(self.device)  # NCCL reduces device tensors
            torch.distributed.all_reduce(curve)
        if self.rank != 0:
            return None
        path = self.checkpoint_path(self.step)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        state = {
            "step": self.step,
            "config": self.config.to_dict(),
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "precision": self.policy.state_dict(),
            "loss_curve": curve.cpu(),
            "skipped": self.skipped(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
        }
        with replacing(path) as temporary:  # never a half-written checkpoint under the real name
            torch.save(state, temporary)
        return path

    def load_checkpoint(self, path: str) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["step"] > self.total_steps:
            raise ValueError(f"checkpoint {path} is at step {state['step']}, past this run's {self.total_steps} steps")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.policy.load_state_dict(state["precision"])
        self.step = state["step"]
        # The saved curve is the sum over ranks: rank 0 carries it, so the merged curve is whole.
        curve = state["loss_curve"].to(torch.float64)
        self.loss_chunks = [curve if self.rank == 0 else torch.zeros_like(curve)]
        self.recent_losses = []
        self.step_skips = {step: torch.tensor(flag) for step, flag in enumerate(state["skipped"]) if flag}
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.resumed_from_step = self.step
