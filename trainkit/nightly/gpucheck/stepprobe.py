"""The step probe: one real optimizer step of a cell's configuration, run by trainkit's own Trainer
in a fresh process, counted for the memory floor (memory.check_memory_floor).

It counts what the floor cannot derive from the configuration alone: the bytes autograd saves for
backward (trainkit.engine.measure.memory.SavedTensors over the real step: autocast's weight copies, SDPA's
choice of what to keep, exactly as the cell's device runs them), the data the run keeps on the
device, and the parameter count of the model it really built. On a CPU, where a cell's record has
no allocator peak, it also measures the CPU allocator's peak over that step from torch.profiler's
memory events, so the floor is exercised there too.

torch is imported inside the functions that run in the probe's process: `python -m nightly` never
imports it (its parser and --help do not need it) and the parent never initialises CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainkit.engine.cell.protocol import Reply
from trainkit.engine.spec.config import RunConfig

COUNTED_STEP = "gpu-check: the counted step"
"""The torch.profiler range around the step whose peak is read (the build and the first step are not)."""
CPU_PEAK_METHOD = ("the CPU allocator's bytes held at its highest during the probe's counted step, for every "
                   "allocation made since just before the probe built its trainer (torch.profiler's memory "
                   "events); the probe runs the cell's configuration, since a CPU cell's record has no "
                   "allocator peak")


@dataclass(frozen=True, kw_only=True)
class StepCount:
    """What one real optimizer step of a configuration holds, counted by the step probe."""

    cell_id: str
    device: str
    """The device the probe's step ran on: cpu or cuda:N."""
    params: int
    """Parameter elements of the model the trainer built (trainkit.engine.workloads.models, the cell's config)."""
    data_bytes: int
    """The synthetic pool and the held-out evaluation set the run keeps on the device, as stored."""
    saved_activation_bytes: int
    """Bytes autograd saved for backward by one micro-batch of the counted step, on the device:
    each storage once, never the weights, buffers or data (SavedTensors). A step's micro-batches
    are the same shape, so one saves the step's count / grad_accum."""
    loss_input_elements_per_sample: int
    """Elements of the loss's input (the logits) per sample: tokens x vocabulary for a language
    model, the classes otherwise (the model's spec)."""
    cpu_allocator_peak_bytes: int | None = None
    """CPU only (None on a GPU): the peak CPU_PEAK_METHOD describes."""
    cpu_allocator_peak_method: str | None = None


@contextlib.contextmanager
def _cpu_allocator_events(on_cpu: bool) -> Iterator[Any]:
    """torch.profiler recording every allocation and free of the CPU allocator (None on a GPU)."""
    # torch: runs in the probe's process, kept out of `python -m nightly`'s import path
    import torch

    from trainkit.engine.measure.memory import quiet_profiler

    if not on_cpu:
        yield None
        return
    quiet_profiler()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        yield prof


def _counted_step_peak(prof: Any) -> int:
    """The most bytes the CPU allocator held inside the COUNTED_STEP range: the running sum of its
    allocation (+) and free (-) events from the profile's start."""
    events = prof.profiler.kineto_results.events()
    step = next(e for e in events if e.name() == COUNTED_STEP)
    start, end = step.start_ns(), step.start_ns() + step.duration_ns()
    held = 0
    peak: int | None = None
    for event in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        if event.start_ns() >= start and peak is None:
            peak = held  # what the step started from
        held += event.nbytes()
        if start <= event.start_ns() <= end:
            peak = max(held, peak if peak is not None else held)
    return peak if peak is not None else held


def count_step(config: RunConfig) -> StepCount:
    """Build the cell's trainer, take one step (it creates the optimizer's state, as the warmup
    does before a timed step), then take one more counting what it saves for backward."""
    # torch and the engine's torch modules: in the probe's process, kept out of `python -m nightly`'s import path
    import torch

    from trainkit.engine.cell.worker import select_device
    from trainkit.engine.measure.memory import SavedTensors
    from trainkit.engine.train.loop import Trainer
    from trainkit.engine.workloads.data import SyntheticData

    device = select_device(config, 0)
    with _cpu_allocator_events(device.type == "cpu") as prof:
        trainer = Trainer(config, device)
        trainer.train_step()
        source = trainer.data.source
        pool = (source.inputs, source.targets) if isinstance(source, SyntheticData) else ()
        data = (*pool, *(t for t in trainer.data.eval_set if t.device == device))
        elsewhere: list[int] = []  # saved tensors off the device (a CPU scalar of a GPU op): not its memory
        counter = SavedTensors(trainer.raw_model, exclude=data,
                               on_count=lambda t: elsewhere.append(t.untyped_storage().nbytes())
                               if t.device != device else None)
        with torch.profiler.record_function(COUNTED_STEP), counter.hooks():
            trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    workload = trainer.workload
    per_sample = workload.num_classes * (workload.input_shape[0] if workload.tokens else 1)
    return StepCount(cell_id=config.cell_id, device=str(device),
                     params=sum(p.numel() for p in trainer.raw_model.parameters()),
                     data_bytes=trainer.data.device_bytes + sum(t.nbytes for t in trainer.data.eval_set
                                                                if t.device == device),
                     saved_activation_bytes=(counter.bytes - sum(elsewhere)) // config.grad_accum,
                     loss_input_elements_per_sample=per_sample,
                     cpu_allocator_peak_bytes=_counted_step_peak(prof) if prof is not None else None,
                     cpu_allocator_peak_method=CPU_PEAK_METHOD if prof is not None else None)


def step_probe_worker(conn: Any, configs: Sequence[dict[str, Any]], environ: dict[str, str]) -> None:
    """Entry point of the step probe's fresh process (trainkit.engine.cell.launch.call_in_fresh_process):
    each config's count, or {"error": ...} for a config whose step failed."""
    # torch and the engine's torch modules: in the probe's process, kept out of `python -m nightly`'s import path
    import torch

    from trainkit.engine.cell.worker import classify

    os.environ.clear()
    os.environ.update(environ)
    answers: dict[str, dict[str, Any]] = {}
    for values in configs:
        config = RunConfig.from_dict(values)
        try:
            answers[config.cell_id] = asdict(count_step(config))
        except Exception as exc:  # one config's failure is its result: the floor of that cell fails with it
            status, detail = classify(exc)
            answers[config.cell_id] = {"error": f"{status}: {detail}"}
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the next config's step starts from an empty cache
    conn.send((Reply.OK, answers))


def read_answers(answers: dict[str, dict[str, Any]]) -> tuple[dict[str, StepCount], dict[str, str]]:
    """The probe's plain answers as (counts, errors), both by cell id."""
    counts = {cell: StepCount(**answer) for cell, answer in answers.items() if "error" not in answer}
    errors = {cell: str(answer["error"]) for cell, answer in answers.items() if "error" in answer}
    return counts, errors
