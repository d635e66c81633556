"""The cells gpu-check runs: their sizes, which cell serves which role on a device, and running one
in fresh worker processes with two clocks around its timed window."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.config import ProfileConfig, RunConfig
from trainkit.engine.spec.precision_facts import unsupported_reason
from trainkit.engine.spec.presets import CPU_GPT, GPU_GPT, RECIPES

from .results import WindowClocks

# --- sizes ------------------------------------------------------------------------------------
# GPU: sized for about 3 minutes on one H100/H200, worker start-up included (an estimate: 6 cells of
# 15-40 s, most of it CUDA start-up, cuDNN autotuning and the profiler, and a matmul probe), well
# inside the 8 minutes it may take; the largest cell, the GPT's, needs roughly 20 GB.
# The models are bench's: GPU_GPT is GPT-2 124M, the model of the MFU anchor, trained with AdamW
# (two moments per parameter); ResNet-50 with SGD and momentum (one buffer), as bench's RECIPES say.
GPT_RECIPE, RESNET_RECIPE = RECIPES["gpt"], RECIPES["resnet50"]
GPU_GPT_BATCH = 16
"""16 x 1024 tokens a step; the accumulation check runs 4 x 4 against it."""
GPU_GPT_STEPS = 100
"""Timed steps of the main GPT cell, one window of 5-8 s on an H100/H200: energy needs at least
1 s (NVML's counter), and NVML's power reading averages over about a second, so a window several
seconds long keeps mean power x time meaningful at 10 %."""
GPU_SHORT_STEPS = 10
"""Timed steps of cells read for their memory, profile or throughput only."""
GPU_RESNET_BATCH = 128
GPU_RESNET_STEPS = 20
GPU_WARMUP_STEPS = 5
"""Untimed steps first: cuDNN's autotuning and the optimizer's lazy state happen there."""
GPU_TRACE_STEPS = 3
GPU_MATMUL_SIZE = 4096
GPU_MATMUL_REPEATS = 20
# CPU: tiny sizes, about a minute on 2 cores, fork server start-up included. bf16 and fp16 are slow
# on a CPU, so the time cell is fp32 and the half-precision cells run one step.
CPU_GPT_BATCH = 16
CPU_TIME_STEPS = 60
"""About 0.4 s of timed steps (6 ms each on a 2-core Xeon): the worker's clock around them adds only
its own reads and the window's last clock read, tens of microseconds."""
CPU_ACCUM_BATCH = 128
"""4B x 1 against 32 x 4: a GPT's activations at this size set the cell's RSS growth (~100 vs
~60 MiB), well apart from the allocator's noise."""
CPU_TRACE_STEPS = 2
CPU_MATMUL_SIZE = 512
CPU_MATMUL_REPEATS = 3
CELL_TIMEOUT_S = 300.0
"""A cell that takes longer is ended as a timeout (its checks fail); none takes a minute."""


@dataclass(frozen=True, kw_only=True)
class CellPlan:
    """A cell the checks read: its run configuration and the profiled steps after its timed ones."""

    config: RunConfig
    trace_steps: int = 0
    """torch.profiler steps after the timed steps (the half-precision share); 0: no profile."""


def _config(model: str, precision: str, batch: int, accum: int, steps: int, warmup: int, device: str,
            options: Mapping[str, Any]) -> RunConfig:
    return RunConfig(model=model, precision=precision, batch_size=batch, grad_accum=accum, steps=steps,
                     warmup_steps=warmup, device=device, **options)


def _cpu_cells() -> dict[str, CellPlan]:
    gpt = {**CPU_GPT, **GPT_RECIPE}

    def cpu(precision: str, batch: int, accum: int, steps: int, warmup: int) -> RunConfig:
        return _config("gpt", precision, batch, accum, steps, warmup, "cpu", gpt)

    return {"time": CellPlan(config=cpu("fp32", CPU_GPT_BATCH, 1, CPU_TIME_STEPS, 2)),
            "amp-bf16": CellPlan(config=cpu("amp-bf16", CPU_GPT_BATCH, 1, 1, 1), trace_steps=CPU_TRACE_STEPS),
            "amp-fp16": CellPlan(config=cpu("amp-fp16", CPU_GPT_BATCH, 1, 1, 1), trace_steps=CPU_TRACE_STEPS),
            "accum-1": CellPlan(config=cpu("fp32", CPU_ACCUM_BATCH, 1, 1, 1)),
            "accum-4": CellPlan(config=cpu("fp32", CPU_ACCUM_BATCH // 4, 4, 1, 1))}


def plan_cells(device: str, capability: Sequence[int] | None = None,
               gpu_name: str | None = None) -> dict[str, CellPlan]:
    """The cell of each role on this device. Roles: time (the main cell: time, memory, energy),
    amp-bf16 and amp-fp16 (profiled), accum-1 and accum-4 (4B x 1 and B x 4), resnet50-fp32, -tf32
    and -amp (anchors). Roles share a cell where the same cell serves (run once)."""
    if device != "cuda":
        return _cpu_cells()
    capability = tuple(capability) if capability is not None else None
    # bf16 needs compute capability 8.0: older GPUs run the main cell in fp16 (and skip the bf16 checks).
    amp = "amp-bf16" if unsupported_reason("amp-bf16", "cuda", capability, gpu_name) is None else "amp-fp16"
    gpt = {**GPU_GPT, **GPT_RECIPE}

    def gpu_gpt(precision: str, batch: int, accum: int, steps: int) -> RunConfig:
        return _config("gpt", precision, batch, accum, steps, GPU_WARMUP_STEPS, "cuda", gpt)

    def resnet(precision: str) -> CellPlan:
        return CellPlan(config=_config("resnet50", precision, GPU_RESNET_BATCH, 1, GPU_RESNET_STEPS,
                                       GPU_WARMUP_STEPS, "cuda", RESNET_RECIPE))

    main = CellPlan(config=gpu_gpt(amp, GPU_GPT_BATCH, 1, GPU_GPT_STEPS), trace_steps=GPU_TRACE_STEPS)
    plans = {"time": main, "accum-1": main,
             "accum-4": CellPlan(config=gpu_gpt(amp, GPU_GPT_BATCH // 4, 4, GPU_SHORT_STEPS)),
             "amp-fp16": main if amp == "amp-fp16" else CellPlan(
                 config=gpu_gpt("amp-fp16", GPU_GPT_BATCH, 1, GPU_SHORT_STEPS), trace_steps=GPU_TRACE_STEPS)}
    if amp == "amp-bf16":
        plans["amp-bf16"] = main
    if unsupported_reason("tf32", "cuda", capability, gpu_name) is None:
        plans.update({"resnet50-fp32": resnet("fp32"), "resnet50-tf32": resnet("tf32"),
                      "resnet50-amp": resnet("amp-fp16")})  # AMP with fp16, as DeepLearningExamples'
    return plans


def run_cell_with_clock(plan: CellPlan, profile_dir: str,
                        timeout_s: float = CELL_TIMEOUT_S) -> tuple[dict[str, Any], WindowClocks]:
    """Run a cell as trainkit.engine.cell.launch.run_cell does (warmup, then every timed step as one window) and
    time that window twice: by the worker's own clock from its first step's start to the sync after its
    last, and by this process's clock from the command to the reply. Returns the record and both."""
    # trainkit.engine.cell.launch imports torch: kept out of `python -m nightly`'s import path (its
    # parser and --help never need it).
    from trainkit.engine.cell.launch import CellFailed, CellWorkers

    profile = (ProfileConfig(phase_steps=0, trace_steps=plan.trace_steps, output_dir=profile_dir)
               if plan.trace_steps else None)
    with CellWorkers(plan.config, timeout_s=timeout_s, profile=profile) as workers:
        try:
            workers.start()
            workers.warmup()
            started = time.perf_counter()
            worker_s = workers.run_timed()[0]
            launcher_s = time.perf_counter() - started
            return workers.finish(), WindowClocks(worker_s=worker_s, launcher_s=launcher_s)
        except CellFailed as failure:
            return workers.record_for(failure), WindowClocks()
