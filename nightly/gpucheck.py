"""`python -m nightly gpu-check`: every figure trainkit reports, held against something that did not
produce it.

    python -m nightly gpu-check --out DIR [--device auto|cuda|cpu] [--only CHECK[,CHECK]]

A handful of cells run in fresh worker processes (trainkit.engine.launch; this process never initialises
CUDA), a fresh process times matmuls, and each check compares one figure with an independent
measure (CHECKS below; the README's "GPU check" says what each proves and what it does not):

    time                  the worker's step times against the launcher's wall clock around the same
                          synchronised window of steps, within 3 %
    memory.floor          PyTorch's allocated peak >= weights + gradients + optimizer state, from the
                          parameter count and the precision table's dtypes
    memory.state          the live weights and optimizer state hold exactly those bytes
    memory.nvml           NVML's process peak >= PyTorch's reserved peak + the CUDA context
    memory.accumulation   B x 4 micro-batches take less memory than 4B x 1
    precision.fp32        fp32 matmuls err against fp64 at fp32's level (TF32 really off)
    precision.tf32        TF32 matmuls err at TF32's level, and precision.tf32-speed: faster
    precision.amp-bf16    a profile of the step: a third or more of operator time in bf16 / fp16
    precision.amp-fp16
    anchor.resnet50       ResNet-50 AMP over TF32 over FP32, beside DeepLearningExamples' figures
    anchor.mfu            GPT-2 124M amp-bf16 MFU in a plausible band (15-80 %)
    anchor.energy         NVML's energy counter against mean power x time, within 10 %

On a CPU (`--device cpu`, as the test suite runs it) the checks that need a GPU are skipped with
their reasons and the others run at tiny sizes in about a minute, so the command cannot rot.

DIR receives gpu-check.md (the table and every reason), gpu-check.json (the same, for scripts),
results.jsonl (the cells' records) and report.html (reports.build, with report.csv and report.md).
Exit status (nightly/__init__.py): 0 no check failed (skips allowed), 1 a check failed, 2 bad
input, 3 the device cannot be used (--device cuda without a GPU) or the report could not be built.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.matrix import CPU_GPT, GPU_GPT, RECIPES
from trainkit.engine.config import RunConfig
from trainkit.engine.precision_facts import DTYPE_BYTES, facts_of, unsupported_reason
from trainkit.engine.schema import append_jsonl, write_json, write_text

from . import INFRASTRUCTURE, PASS, REGRESSION

FAILED = REGRESSION
"""Exit 1, as for a regression: a figure trainkit reports disagrees with its independent measure."""
SCHEMA = "trainkit.gpu-check/1"
DEFAULT_OUT = os.path.join("reports", "out", "gpu-check")
RESULTS, REPORT, SUMMARY_MD, SUMMARY_JSON, PROFILES = ("results.jsonl", "report.html", "gpu-check.md",
                                                      "gpu-check.json", "profiles")
OUTPUTS = (RESULTS, REPORT, "report.csv", "report.md", SUMMARY_MD, SUMMARY_JSON)
OK, FAIL, SKIP = "pass", "fail", "skip"

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
CPU_TIME_STEPS = 24
"""About 2 s of timed steps: the launcher's clock adds a few ms of pipe and wake-up, far inside 3 %."""
CPU_ACCUM_BATCH = 128
"""4B x 1 against 32 x 4: a GPT's activations at this size set the cell's RSS growth (~100 vs
~60 MiB), well apart from the allocator's noise."""
CPU_TRACE_STEPS = 2
CPU_MATMUL_SIZE = 512
CPU_MATMUL_REPEATS = 3
CELL_TIMEOUT_S = 300.0
"""A cell that takes longer is ended as a timeout (its checks fail); none takes a minute."""

# --- bounds -----------------------------------------------------------------------------------
TIME_TOLERANCE = 0.03
"""A cell's summed step times within 3 % of the wall clock around the same steps."""
ENERGY_TOLERANCE = 0.10
"""Energy from NVML's counter within 10 % of NVML's mean power x the window."""
MFU_BAND = (0.15, 0.80)
"""Plausible MFU of GPT-2 124M in amp-bf16: nanoGPT reaches about 33 % on one H100 and llm.c about
60 % on A100s (research/frontier.md §3). Below 15 % the GPU starves; above 80 % the FLOPs are
over-counted or the peak is wrong."""
MFU_REFERENCE = "GPT-2 124M bf16 on one H100: about 33% (nanoGPT#464)"
HALF_SHARE_MIN = 1 / 3
"""Least share of operator time with fp16/bf16 inputs in an autocast step. Autocast keeps norms,
softmax, the loss and the fp32 optimizer step in fp32, so even a working mode stays well below 1;
a mode that silently computes in fp32 shows 0 (the fp32 cell does)."""
FP32_UNIT_ROUNDOFF = 2.0**-24
TF32_UNIT_ROUNDOFF = 2.0**-11
"""TF32 keeps 10 of fp32's 23 mantissa bits (as fp16 does); bf16 keeps 7 (unit roundoff 2^-8)."""
TF32_BAND_FACTOR = math.sqrt(8)
"""TF32's level: within a factor sqrt(8) (1.5 bits) of its unit roundoff either way. Rounding the
inputs to nearest gives a relative error of about 0.6 x 2^-11, truncating them about 1.6 x 2^-11;
bf16 (8x coarser) lands above the band, fp32 (2^13 x finer) far below it."""
DLE_RESNET50 = (
    {"gpu": "A100 80GB", "from": "TF32", "from_img_per_s": 938, "amp_img_per_s": 2470, "speedup": 2.63},
    {"gpu": "V100 16GB", "from": "FP32", "from_img_per_s": 367, "amp_img_per_s": 1200, "speedup": 3.26},
)
"""NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Training
performance", one GPU (pytorch-21.03 NGC container, ImageNet through DALI, AMP in channels-last,
none of which trainkit's synthetic NCHW cells use: so they are printed beside the figures, not
gated on)."""


# --- results ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Check:
    """One check's result: the independent measure, the figure, and why it passed, failed or was skipped."""

    name: str
    """The check's name (`--only` takes it, or its group: the part before the dot)."""
    status: str
    """pass, fail or skip (skip: the check cannot run on this device; the reason says why)."""
    expected: str = ""
    """The independent measure or bound, readable, units included."""
    measured: str = ""
    """The figure trainkit reported, readable."""
    reason: str = ""
    """One line: why it passed, failed or was skipped."""
    figures: Mapping[str, Any] = field(default_factory=dict)
    """The numbers the decision read, units in the keys (gpu-check.json)."""

    def __post_init__(self) -> None:
        if self.status not in (OK, FAIL, SKIP):
            raise ValueError(f"status={self.status!r}; choose from {OK}, {FAIL}, {SKIP}")


@dataclass(frozen=True, kw_only=True)
class CellPlan:
    """A cell the checks read: its run configuration and the profiled steps after its timed ones."""

    config: RunConfig
    trace_steps: int = 0
    """torch.profiler steps after the timed steps (the half-precision share); 0: no profile."""


@dataclass(frozen=True, kw_only=True)
class Observed:
    """What the run measured: the input of every check's decision."""

    records: Mapping[str, dict[str, Any]]
    """Each role's cell record (roles: see plan_cells)."""
    wall_s: Mapping[str, float | None]
    """Each role's launcher clock around its window of timed steps (None: the cell failed first)."""
    matmul: Mapping[str, Any] | None = None
    """The matmul probe's answer (measure_matmuls), or {"error": ...}."""


def _failed_cell(name: str, expected: str, records: Sequence[dict[str, Any]]) -> Check | None:
    """A fail naming the first cell that did not end ok, or None when all did."""
    for record in records:
        if record.get("status") != "ok":
            return Check(name=name, status=FAIL, expected=expected, measured=f"{record.get('status')}",
                         reason=f"cell {record.get('cell_id')} ended {record.get('status')}: "
                                f"{record.get('status_detail') or 'no detail'}")
    return None


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- the checks: one small, pure function each -------------------------------------------------

def check_time(record: dict[str, Any], wall_s: float | None) -> Check:
    """The worker's step times (CUDA events, or a clock read after each step on a CPU) summed over
    one window, against the launcher's perf_counter around the same window: the launcher sends the
    command after a synchronised warmup and stops its clock when the worker, synchronised again,
    replies. A few ms of pipe and wake-up separate them, nothing else."""
    name = "time"
    expected = "outside wall clock, within 3%"
    if failed := _failed_cell(name, expected, [record]):
        return failed
    steps = record["step_time_s"].get("values") or []
    if not steps or not _finite(wall_s) or not wall_s:
        return Check(name=name, status=FAIL, expected=expected, reason="no window of timed steps was measured")
    marks_s = sum(steps)
    difference = (marks_s - wall_s) / wall_s
    on_gpu = str(record["config"].get("resolved_device", "")).startswith("cuda")
    method = "CUDA events" if on_gpu else "a clock read after each step (CPU work is synchronous)"
    figures = {"steps": len(steps), "marks_s": marks_s, "wall_s": wall_s, "relative_difference": difference}
    passed = abs(difference) <= TIME_TOLERANCE
    if passed:
        reason = (f"{len(steps)} steps timed by {method} sum to {difference:+.2%} of the launcher's wall clock "
                  "around the same synchronised window")
    elif difference > 0:
        reason = (f"the steps sum to {difference:+.1%} MORE than the wall clock around them: intervals overlap or "
                  f"are counted twice ({method})")
    else:
        reason = (f"the steps sum to {difference:+.1%} of the wall clock around them: {method} miss part of "
                  "each step, or work runs outside the marks")
    return Check(name=name, status=OK if passed else FAIL, expected=f"{wall_s:.3f} s ±3% ({len(steps)} steps)",
                 measured=f"{marks_s:.3f} s ({difference:+.2%})", reason=reason, figures=figures)


def optimizer_states(optimizer: str, momentum: float) -> int:
    """Tensors of a parameter's size that torch.optim keeps per parameter: SGD's momentum buffer (none
    without momentum), Adam's and AdamW's two moments (exp_avg, exp_avg_sq; `step` is a scalar)."""
    if optimizer == "sgd":
        return 1 if momentum else 0
    if optimizer in ("adam", "adamw"):
        return 2
    raise ValueError(f"optimizer={optimizer!r} has no known state count; choose from sgd, adam, adamw")


def analytic_state(config: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of weights, gradients, a master copy of the weights (modes that keep one) and optimizer
    state, from the parameter count and the dtypes the precision table gives the mode: independent
    of the tensors the worker measured."""
    params = int(config["params"])
    facts = facts_of(config["precision"])
    weights = params * DTYPE_BYTES[facts.param_dtype]
    master = params * DTYPE_BYTES[facts.master_dtype] if facts.master_dtype else 0
    states = optimizer_states(config["optimizer"], config.get("momentum", 0.0))
    state = states * params * DTYPE_BYTES[facts.optimizer_state_dtype]
    return {"params": params, "weights_bytes": weights, "grads_bytes": weights, "master_bytes": master,
            "optimizer_states": states, "optimizer_state_bytes": state, "floor_bytes": 2 * weights + master + state}


def _state_formula(config: Mapping[str, Any]) -> str:
    facts = facts_of(config["precision"])
    states = optimizer_states(config["optimizer"], config.get("momentum", 0.0))
    state = f" + {states}x{DTYPE_BYTES[facts.optimizer_state_dtype]}" if states else ""
    master = f" + {DTYPE_BYTES[facts.master_dtype]}" if facts.master_dtype else ""
    weight = DTYPE_BYTES[facts.param_dtype]
    return f"{int(config['params']) / 1e6:.1f}M params x ({weight}+{weight}{master}{state} B)"


def check_memory_floor(records: Sequence[dict[str, Any]]) -> Check:
    """PyTorch's allocated peak over the timed steps is at least the weights, their gradients and the
    optimizer's state: all three are live at the end of every backward pass."""
    name = "memory.floor"
    expected = "allocated peak >= weights + grads + optimizer state"
    if failed := _failed_cell(name, expected, records):
        return failed
    expected_parts, measured_parts, figures, short = [], [], {}, []
    for record in records:
        model, floor = record["config"]["model"], analytic_state(record["config"])
        allocated = record["memory"].get("torch_max_allocated_bytes")
        figures[record["cell_id"]] = {**floor, "torch_max_allocated_bytes": allocated}
        expected_parts.append(f"{model}: >= {_size(floor['floor_bytes'])} ({_state_formula(record['config'])})")
        if not _finite(allocated):
            short.append(f"{record['cell_id']} has no allocator peak")
            measured_parts.append(f"{model}: none")
            continue
        measured_parts.append(f"{model}: {_size(allocated)} ({allocated / floor['floor_bytes']:.1f}x)")
        if allocated < floor["floor_bytes"]:
            short.append(f"{record['cell_id']}: allocated {_size(allocated)} < floor {_size(floor['floor_bytes'])}")
    if short:
        reason = ("below the floor, so the peak misses tensors that must be live: " + "; ".join(short))
    else:
        reason = ("every peak holds at least the weights, gradients and optimizer state the parameter count and "
                  "the precision table's dtypes imply")
    return Check(name=name, status=FAIL if short else OK, expected="; ".join(expected_parts),
                 measured="; ".join(measured_parts), reason=reason, figures=figures)


def check_memory_state(records: Sequence[dict[str, Any]]) -> Check:
    """The live weights and optimizer state (the worker sums the tensors' sizes) hold exactly the bytes
    the precision table's dtypes and the optimizer's state count give. (A master copy of the weights,
    where a mode keeps one, is in the floor but not in these sums.)"""
    name = "memory.state"
    expected = "live weights + optimizer state = the precision table's bytes"
    if failed := _failed_cell(name, expected, records):
        return failed
    expected_parts, measured_parts, figures, wrong = [], [], {}, []
    for record in records:
        config, floor = record["config"], analytic_state(record["config"])
        want = floor["weights_bytes"] + floor["optimizer_state_bytes"]
        live = (config.get("param_bytes") or 0) + (config.get("optimizer_state_bytes") or 0)
        figures[record["cell_id"]] = {"expected_bytes": want, "live_param_bytes": config.get("param_bytes"),
                                      "live_optimizer_state_bytes": config.get("optimizer_state_bytes")}
        label = f"{config['model']} {config['precision']} {config['optimizer']}"
        expected_parts.append(f"{label}: {want:,} B")
        measured_parts.append(f"{label}: {live:,} B")
        if live != want:
            wrong.append(f"{record['cell_id']}: weights {config.get('param_bytes')} B + state "
                         f"{config.get('optimizer_state_bytes')} B, the table says {floor['weights_bytes']} + "
                         f"{floor['optimizer_state_bytes']} B (param {config.get('param_dtype')}, state "
                         f"{config.get('optimizer_state_dtype')})")
    reason = ("the policy or the optimizer keeps other dtypes or more state than the mode says: " + "; ".join(wrong)
              if wrong else "weights and optimizer state are in the dtypes and counts the mode promises")
    return Check(name=name, status=FAIL if wrong else OK, expected="; ".join(expected_parts),
                 measured="; ".join(measured_parts), reason=reason, figures=figures)


def check_nvml(record: dict[str, Any]) -> Check:
    """NVML's per-process peak (sampled by the launcher) is at least what PyTorch reserved at its
    peak plus the CUDA context measured before anything was allocated: the driver sees everything
    the allocator holds, and more."""
    name = "memory.nvml"
    expected = "NVML peak >= reserved + context"
    if failed := _failed_cell(name, expected, [record]):
        return failed
    memory = record["memory"]
    nvml, reserved = memory.get("nvml_process_peak_bytes"), memory.get("torch_max_reserved_bytes")
    context = memory.get("nvml_context_baseline_bytes")
    if not _finite(nvml) or not _finite(context):
        return Check(name=name, status=SKIP, expected=expected,
                     reason=f"NVML did not see the worker's process: {memory.get('nvml_method') or 'no reason given'}")
    if not _finite(reserved):
        return Check(name=name, status=FAIL, expected=expected, reason="the GPU cell has no reserved peak")
    floor = reserved + context
    figures = {"nvml_process_peak_bytes": nvml, "torch_max_reserved_bytes": reserved,
               "nvml_context_baseline_bytes": context}
    passed = nvml >= floor
    reason = ("the driver's view holds the allocator's reserved peak and the context" if passed else
              f"NVML saw {_size(floor - nvml)} less than reserved + context: a peak the sampler missed, or a "
              "reserved figure that counts memory the process never held")
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f">= {_size(floor)} ({_size(reserved)} reserved + {_size(context)} context)",
                 measured=f"{_size(nvml)}", reason=reason, figures=figures)


def check_accumulation(one_big: dict[str, Any], four_small: dict[str, Any]) -> Check:
    """B x 4 holds one micro-batch of B's activations at a time, 4B x 1 those of 4B; weights,
    gradients, optimizer state and the data pool are the same, so B x 4 must take less memory.
    On a GPU the measure is PyTorch's allocated peak; on a CPU, the cell's host RSS growth."""
    name = "memory.accumulation"
    expected = "B x 4 takes less memory than 4B x 1"
    if failed := _failed_cell(name, expected, [one_big, four_small]):
        return failed
    on_gpu = str(one_big["config"].get("resolved_device", "")).startswith("cuda")
    measure = "torch_max_allocated_bytes" if on_gpu else "host_rss_growth_bytes"
    label = "allocated peak" if on_gpu else "host RSS growth"
    big, small = one_big["memory"].get(measure), four_small["memory"].get(measure)

    def shape(record: dict[str, Any]) -> str:
        return f"{record['config']['batch_size']} x {record['config']['grad_accum']}"

    if not _finite(big) or not _finite(small):
        return Check(name=name, status=FAIL, expected=expected, reason=f"no {label} in the cells' records")
    figures = {"measure": measure, "one_big_bytes": big, "four_small_bytes": small,
               "ratio": small / big if big else None}
    passed = small < big
    reason = (f"{label}: the micro-batch of {shape(four_small)} holds fewer activations than {shape(one_big)}"
              if passed else f"{label}: {shape(four_small)} took at least as much as {shape(one_big)}, so "
              "accumulation keeps more than one micro-batch's activations alive")
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f"< {_size(big)} ({label} of {shape(one_big)})",
                 measured=f"{_size(small)} ({shape(four_small)}, {small / big:.2f}x)" if big else _size(small),
                 reason=reason, figures=figures)


def _matmul_mode(matmul: Mapping[str, Any] | None, mode: str) -> tuple[dict[str, Any] | None, str | None]:
    """One mode's matmul measurement, or why there is none."""
    if not matmul:
        return None, "the matmul probe did not run"
    if matmul.get("error"):
        return None, f"the matmul probe failed: {matmul['error']}"
    result = (matmul.get("modes") or {}).get(mode)
    if result is None:
        return None, f"the matmul probe measured no {mode} matmul"
    if result.get("unsupported"):
        return None, result["unsupported"]
    return result, None


def fp32_level(size: int) -> float:
    """The largest relative error of an fp32 matmul with inner dimension `size` at fp32's level:
    sqrt(K) x 2^-24, the probabilistic bound of an inner product of K terms (Higham and Mary 2019)."""
    return math.sqrt(size) * FP32_UNIT_ROUNDOFF


def tf32_band() -> tuple[float, float]:
    return TF32_UNIT_ROUNDOFF / TF32_BAND_FACTOR, TF32_UNIT_ROUNDOFF * TF32_BAND_FACTOR


def check_fp32_matmul(matmul: Mapping[str, Any] | None) -> Check:
    """An fp32 matmul under the fp32 policy's backend flags errs against fp64 (of the same inputs)
    at fp32's level: TF32, bf16 or fp16 math would err 100x or more above it."""
    name = "precision.fp32"
    result, why = _matmul_mode(matmul, "fp32")
    size = int((matmul or {}).get("size") or 0)
    if result is None:
        return Check(name=name, status=FAIL, expected="fp32's level", reason=why or "")
    bound, error = fp32_level(size), result["relative_error"]
    passed = error <= bound
    reason = (f"{size}x{size} fp32 matmul against fp64: at fp32's level (float32_matmul_precision="
              f"{result.get('float32_matmul_precision')}, allow_tf32={result.get('allow_tf32')})" if passed else
              f"error {error / FP32_UNIT_ROUNDOFF:.0f}x fp32's unit roundoff: the fp32 policy's matmuls do not run "
              f"in IEEE fp32 (allow_tf32={result.get('allow_tf32')}, "
              f"float32_matmul_precision={result.get('float32_matmul_precision')})")
    return Check(name=name, status=OK if passed else FAIL, expected=f"<= {bound:.1e} (sqrt({size}) x 2^-24)",
                 measured=f"{error:.1e}", reason=reason,
                 figures={"relative_error": error, "bound": bound, "size": size})


def check_tf32_matmul(matmul: Mapping[str, Any] | None) -> Check:
    """A matmul under the tf32 policy's flags errs at TF32's level: far above fp32's (TF32 is really
    on), below bf16's (it is not a coarser mode)."""
    name = "precision.tf32"
    low, high = tf32_band()
    expected = f"{low:.1e}..{high:.1e} (2^-11 / x sqrt(8))"
    result, why = _matmul_mode(matmul, "tf32")
    if result is None:
        return Check(name=name, status=FAIL, expected=expected, reason=why or "")
    error = result["relative_error"]
    passed = low <= error <= high
    if passed:
        reason = f"{error / TF32_UNIT_ROUNDOFF:.2f}x TF32's unit roundoff: the matmuls run on TF32 tensor cores"
    elif error < low:
        reason = (f"error {error:.1e} is below TF32's level: the tf32 policy's matmuls still run in full fp32 "
                  f"(allow_tf32={result.get('allow_tf32')})")
    else:
        reason = (f"error {error:.1e} is above TF32's level: something coarser than TF32 runs "
                  f"(float32_matmul_precision={result.get('float32_matmul_precision')})")
    return Check(name=name, status=OK if passed else FAIL, expected=expected, measured=f"{error:.1e}",
                 reason=reason, figures={"relative_error": error, "low": low, "high": high})


def check_tf32_speed(matmul: Mapping[str, Any] | None) -> Check:
    """The same matmul under the tf32 policy is faster than under the fp32 policy."""
    name = "precision.tf32-speed"
    expected = "faster than fp32 (> 1.00x)"
    fp32, why32 = _matmul_mode(matmul, "fp32")
    tf32, why = _matmul_mode(matmul, "tf32")
    if fp32 is None or tf32 is None:
        return Check(name=name, status=FAIL, expected=expected, reason=why or why32 or "")
    speedup = fp32["seconds_per_matmul"] / tf32["seconds_per_matmul"]
    passed = speedup > 1.0
    reason = (f"tf32 {tf32['tflops']:.0f} TFLOP/s against fp32 {fp32['tflops']:.0f} TFLOP/s" if passed else
              f"tf32 is no faster than fp32 ({tf32['tflops']:.1f} against {fp32['tflops']:.1f} TFLOP/s): the "
              "tensor cores are not used")
    return Check(name=name, status=OK if passed else FAIL, expected=expected, measured=f"{speedup:.2f}x",
                 reason=reason, figures={"speedup": speedup, "fp32_tflops": fp32["tflops"],
                                         "tf32_tflops": tf32["tflops"]})


def check_half_share(record: dict[str, Any], mode: str) -> Check:
    """A torch.profiler trace of the mode's steps (after the timed ones) shows at least a third of
    operator time with fp16/bf16 inputs: the policy really computes in half precision."""
    name = f"precision.{mode}"
    expected = f">= {HALF_SHARE_MIN:.0%} of operator time in fp16/bf16"
    if failed := _failed_cell(name, expected, [record]):
        return failed
    if record["config"].get("precision") != mode:
        return Check(name=name, status=FAIL, expected=expected,
                     reason=f"cell {record['cell_id']} is not a {mode} cell")
    profile = record.get("profile") or {}
    share = profile.get("reduced_precision_share")
    if not _finite(share):
        return Check(name=name, status=FAIL, expected=expected,
                     reason=f"no profile of {record['cell_id']}: {profile.get('error') or 'no operator time recorded'}")
    basis = profile.get("time_basis", "operator time")
    passed = share >= HALF_SHARE_MIN
    reason = (f"{share:.0%} of {basis} in {profile.get('trace_steps')} profiled steps ran with fp16/bf16 inputs"
              if passed else f"only {share:.0%} of {basis} had fp16/bf16 inputs: {mode} computes mostly in fp32")
    return Check(name=name, status=OK if passed else FAIL, expected=expected, measured=f"{share:.0%}",
                 reason=reason, figures={"reduced_precision_share": share, "time_basis": basis})


def check_resnet50(fp32: dict[str, Any], tf32: dict[str, Any], amp: dict[str, Any]) -> Check:
    """ResNet-50's AMP over TF32 and over FP32, beside DeepLearningExamples' figures; sane when AMP is
    faster than TF32 and TF32 faster than FP32 (the order every GPU with tensor cores shows)."""
    name = "anchor.resnet50"
    dle = "; ".join(f"DLE {d['gpu']}: AMP {d['speedup']:.2f}x {d['from']}" for d in DLE_RESNET50)
    expected = f"AMP > TF32 > FP32 ({dle})"
    if failed := _failed_cell(name, expected, [fp32, tf32, amp]):
        return failed
    rates = [r["throughput_samples_per_s"] for r in (fp32, tf32, amp)]
    if not all(_finite(r) and r > 0 for r in rates):
        return Check(name=name, status=FAIL, expected=expected, reason="a ResNet-50 cell has no throughput")
    over_tf32, over_fp32 = rates[2] / rates[1], rates[2] / rates[0]
    figures = {"fp32_img_per_s": rates[0], "tf32_img_per_s": rates[1], "amp_img_per_s": rates[2],
               "amp_over_tf32": over_tf32, "amp_over_fp32": over_fp32, "dle": list(DLE_RESNET50),
               "amp_precision": amp["config"]["precision"]}
    problems = []
    if over_tf32 <= 1:
        problems.append(f"AMP is not faster than TF32 ({over_tf32:.2f}x)")
    if rates[1] <= rates[0]:
        problems.append(f"TF32 is not faster than FP32 ({rates[1] / rates[0]:.2f}x)")
    measured = (f"AMP {over_tf32:.2f}x TF32, {over_fp32:.2f}x FP32 "
                f"({rates[2]:,.0f} / {rates[1]:,.0f} / {rates[0]:,.0f} img/s)")
    reason = ("; ".join(problems) if problems else
              f"batch {amp['config']['batch_size']}, {amp['config']['precision']}, NCHW and synthetic data: the "
              "order holds; DLE's speedups use channels-last and DALI, so they are a reference, not a bound")
    return Check(name=name, status=FAIL if problems else OK, expected=expected, measured=measured, reason=reason,
                 figures=figures)


def check_mfu(record: dict[str, Any]) -> Check:
    """GPT-2 124M amp-bf16 MFU (FLOPs counted by torch, the sourced dense peak of the GPU) falls in
    the plausible band; a GPU without a sourced peak fails: MFU is then unknown, not plausible."""
    name = "anchor.mfu"
    low, high = MFU_BAND
    expected = f"{low:.0%}..{high:.0%} ({MFU_REFERENCE})"
    if failed := _failed_cell(name, expected, [record]):
        return failed
    utilisation = record.get("mfu")
    gpu = (record.get("env") or {}).get("gpu_name")
    if not _finite(utilisation):
        return Check(name=name, status=FAIL, expected=expected, measured="null",
                     reason=f"no sourced peak for {gpu}: {record.get('mfu_note') or 'MFU is null'} "
                            "(add the GPU's datasheet figures to trainkit.engine.flops.PEAK_TFLOPS)")
    peak = record.get("peak_flops_per_s") or 0
    passed = low <= utilisation <= high
    reason = (f"{utilisation:.1%} of {gpu}'s dense {peak / 1e12:.0f} TFLOP/s "
              f"({record['config']['precision']}, {record.get('tokens_per_s') or 0:,.0f} tokens/s)")
    if not passed:
        reason += (": below the band the GPU starves (input, launch overhead, a slow kernel)" if utilisation < low
                   else ": above the band the FLOPs are over-counted or the peak is wrong")
    return Check(name=name, status=OK if passed else FAIL, expected=expected, measured=f"{utilisation:.1%}",
                 reason=reason, figures={"mfu": utilisation, "peak_flops_per_s": peak, "gpu_name": gpu})


COUNTER_METHOD = "NVML energy counter"
"""How trainkit.engine.result.merge_energy names energy read from the counter (the only method this check
can hold against power samples: its fallback integrates the same samples)."""


def check_energy(record: dict[str, Any]) -> Check:
    """Energy per sample (NVML's energy counter over the timed window) x the samples, against NVML's
    mean power sampled by the launcher over the same window x its length, within 10 %."""
    name = "anchor.energy"
    expected = "mean power x window, within 10%"
    if failed := _failed_cell(name, expected, [record]):
        return failed
    power_w = (record.get("gpu_samples") or {}).get("power_w_mean")
    method = record.get("energy_method") or ""
    if not _finite(power_w):
        return Check(name=name, status=SKIP, expected=expected,
                     reason=f"NVML gave no power readings: {method or 'no energy method recorded'}")
    per_sample, window_s = record.get("energy_j_per_sample"), record.get("energy_window_s")
    if not _finite(per_sample) or not _finite(window_s):
        return Check(name=name, status=FAIL, expected=expected, measured="null",
                     reason=f"no energy per sample: {method or 'no reason recorded'}")
    if not method.startswith(COUNTER_METHOD):
        return Check(name=name, status=SKIP, expected=expected,
                     reason=f"the energy counter is unsupported here; the record's energy ({method}) integrates "
                            "the same power samples, so the comparison would be circular")
    samples = record["timed_samples"]
    counter_j, power_j = per_sample * samples, power_w * window_s
    difference = (counter_j - power_j) / power_j
    passed = abs(difference) <= ENERGY_TOLERANCE
    figures = {"counter_j": counter_j, "power_w_mean": power_w, "window_s": window_s, "samples": samples,
               "relative_difference": difference, "energy_j_per_sample": per_sample}
    reason = (f"{per_sample:.3g} J/sample x {samples:,} samples from the counter, against "
              f"{record['gpu_samples'].get('samples')} power samples")
    if not passed:
        reason += f": {difference:+.0%} apart, beyond 10%"
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f"{power_w:.0f} W x {window_s:.2f} s = {power_j:,.0f} J ±10%",
                 measured=f"{counter_j:,.0f} J ({difference:+.1%})", reason=reason, figures=figures)


# --- which checks, which cells ------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CheckSpec:
    """A check: what it proves, the cells it reads, where it can run, and its decision."""

    name: str
    proves: str
    """What a pass shows, in one line (gpu-check.md repeats it)."""
    judge: Callable[[Observed], Check]
    roles: tuple[str, ...] = ()
    """Roles of the cells it reads (plan_cells); the roles a device's plan lacks are left out."""
    matmul: bool = False
    """It reads the matmul probe."""
    gpu_only: str | None = None
    """Why it cannot run on a CPU; None when it runs there too."""
    modes: tuple[str, ...] = ()
    """Precision modes the device must run for the check to mean anything."""

    @property
    def group(self) -> str:
        return self.name.split(".")[0]


def _records(observed: Observed, roles: Sequence[str]) -> list[dict[str, Any]]:
    """The records of these roles, each cell once."""
    seen: dict[str, dict[str, Any]] = {}
    for role in roles:
        if role in observed.records:
            seen.setdefault(observed.records[role]["cell_id"], observed.records[role])
    return list(seen.values())


NEEDS_GPU = "needs a CUDA GPU: "
CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(name="time", roles=("time",),
              proves="the step times trainkit reports are the wall-clock time of the steps",
              judge=lambda o: check_time(o.records["time"], o.wall_s["time"])),
    CheckSpec(name="memory.floor", roles=("time", "resnet50-amp"),
              gpu_only=NEEDS_GPU + "a CPU has no allocator statistics, and host RSS counts the whole process "
                                   "(torch included), not the cell's tensors",
              proves="the allocator's peak holds at least the weights, gradients and optimizer state",
              judge=lambda o: check_memory_floor(_records(o, ("time", "resnet50-amp")))),
    CheckSpec(name="memory.state", roles=("time", "resnet50-amp"),
              proves="weights and optimizer state are kept in the dtypes and counts the precision mode promises",
              judge=lambda o: check_memory_state(_records(o, ("time", "resnet50-amp")))),
    CheckSpec(name="memory.nvml", roles=("time",),
              gpu_only=NEEDS_GPU + "NVML measures GPU memory of processes",
              proves="the driver sees at least the memory PyTorch reserved, plus the CUDA context",
              judge=lambda o: check_nvml(o.records["time"])),
    CheckSpec(name="memory.accumulation", roles=("accum-1", "accum-4"),
              proves="accumulating 4 micro-batches of B takes less memory than one batch of 4B",
              judge=lambda o: check_accumulation(o.records["accum-1"], o.records["accum-4"])),
    CheckSpec(name="precision.fp32", matmul=True,
              proves="the fp32 mode's matmuls are IEEE fp32 (TF32 really off)",
              judge=lambda o: check_fp32_matmul(o.matmul)),
    CheckSpec(name="precision.tf32", matmul=True, modes=("tf32",),
              gpu_only=NEEDS_GPU + "TF32 is a tensor-core math mode (compute capability >= 8.0)",
              proves="the tf32 mode's matmuls really run in TF32",
              judge=lambda o: check_tf32_matmul(o.matmul)),
    CheckSpec(name="precision.tf32-speed", matmul=True, modes=("tf32",),
              gpu_only=NEEDS_GPU + "TF32 is a tensor-core math mode (compute capability >= 8.0)",
              proves="TF32 matmuls are faster than fp32 ones",
              judge=lambda o: check_tf32_speed(o.matmul)),
    CheckSpec(name="precision.amp-bf16", roles=("amp-bf16",), modes=("amp-bf16",),
              proves="amp-bf16 really computes in bf16",
              judge=lambda o: check_half_share(o.records["amp-bf16"], "amp-bf16")),
    CheckSpec(name="precision.amp-fp16", roles=("amp-fp16",), modes=("amp-fp16",),
              proves="amp-fp16 really computes in fp16",
              judge=lambda o: check_half_share(o.records["amp-fp16"], "amp-fp16")),
    CheckSpec(name="anchor.resnet50", roles=("resnet50-fp32", "resnet50-tf32", "resnet50-amp"), modes=("tf32",),
              gpu_only=NEEDS_GPU + "the anchors are GPU speedups (CPU rows are no speed claims, and tf32 has no CPU "
                                   "implementation)",
              proves="ResNet-50's precision speedups are in the order published figures show",
              judge=lambda o: check_resnet50(o.records["resnet50-fp32"], o.records["resnet50-tf32"],
                                             o.records["resnet50-amp"])),
    CheckSpec(name="anchor.mfu", roles=("amp-bf16",), modes=("amp-bf16",),
              gpu_only=NEEDS_GPU + "MFU is a fraction of a GPU's sourced peak FLOP/s",
              proves="GPT-2 124M's MFU is plausible: FLOP counts, throughput and the peak table agree",
              judge=lambda o: check_mfu(o.records["amp-bf16"])),
    CheckSpec(name="anchor.energy", roles=("time",),
              gpu_only=NEEDS_GPU + "energy comes from NVML's counter",
              proves="energy per sample agrees with the power the GPU drew over the same time",
              judge=lambda o: check_energy(o.records["time"])),
)
CHECK_NAMES = tuple(spec.name for spec in CHECKS)
GROUPS = tuple(dict.fromkeys(spec.group for spec in CHECKS))


def parse_only(text: str) -> tuple[str, ...]:
    """`--only`: a comma list of check names or groups (the part before the dot), in CHECKS' order.
    Raises argparse.ArgumentTypeError naming the bad value and the valid ones."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:
        raise argparse.ArgumentTypeError(f"empty list; choose from {', '.join(CHECK_NAMES)}")
    for name in wanted:
        if name not in CHECK_NAMES and name not in GROUPS:
            raise argparse.ArgumentTypeError(f"unknown check {name!r}; choose from {', '.join(CHECK_NAMES)} "
                                             f"(or a group: {', '.join(GROUPS)})")
    return tuple(spec.name for spec in CHECKS if spec.name in wanted or spec.group in wanted)


def _config(model: str, precision: str, batch: int, accum: int, steps: int, warmup: int, device: str,
            options: Mapping[str, Any]) -> RunConfig:
    return RunConfig(model=model, precision=precision, batch_size=batch, grad_accum=accum, steps=steps,
                     warmup_steps=warmup, device=device, **options)


def plan_cells(device: str, capability: Sequence[int] | None = None,
               gpu_name: str | None = None) -> dict[str, CellPlan]:
    """The cell of each role on this device. Roles: time (the main cell: time, memory, energy),
    amp-bf16 and amp-fp16 (profiled), accum-1 and accum-4 (4B x 1 and B x 4), resnet50-fp32, -tf32
    and -amp (anchors). Roles share a cell where the same cell serves (run once)."""
    if device != "cuda":
        gpt = {**CPU_GPT, **GPT_RECIPE}

        def cpu(precision: str, batch: int, accum: int, steps: int, warmup: int) -> RunConfig:
            return _config("gpt", precision, batch, accum, steps, warmup, "cpu", gpt)

        return {"time": CellPlan(config=cpu("fp32", CPU_GPT_BATCH, 1, CPU_TIME_STEPS, 2)),
                "amp-bf16": CellPlan(config=cpu("amp-bf16", CPU_GPT_BATCH, 1, 1, 1), trace_steps=CPU_TRACE_STEPS),
                "amp-fp16": CellPlan(config=cpu("amp-fp16", CPU_GPT_BATCH, 1, 1, 1), trace_steps=CPU_TRACE_STEPS),
                "accum-1": CellPlan(config=cpu("fp32", CPU_ACCUM_BATCH, 1, 1, 1)),
                "accum-4": CellPlan(config=cpu("fp32", CPU_ACCUM_BATCH // 4, 4, 1, 1))}
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


def skip_reason(spec: CheckSpec, device: str, capability: Sequence[int] | None, gpu_name: str | None) -> str | None:
    """Why the check cannot run on this device, or None."""
    if device != "cuda" and spec.gpu_only:
        return spec.gpu_only
    for mode in spec.modes:
        reason = unsupported_reason(mode, device, tuple(capability) if capability else None, gpu_name)
        if reason:
            return f"the device cannot run it: {reason}"
    return None


# --- measuring, in fresh processes ------------------------------------------------------------

def run_cell_with_clock(plan: CellPlan, profile_dir: str,
                        timeout_s: float = CELL_TIMEOUT_S) -> tuple[dict[str, Any], float | None]:
    """Run a cell as trainkit.engine.launch.run_cell does (warmup, then every timed step as one window) and
    time that window from this process: the clock starts once the warmup, which ends synchronised,
    has answered, and stops when the worker, synchronised again, replies. Returns the record and the
    clock's seconds (None when the cell failed before the window ended)."""
    from trainkit.engine.config import ProfileConfig
    from trainkit.engine.launch import CellFailed, CellWorkers

    profile = (ProfileConfig(phase_steps=0, trace_steps=plan.trace_steps, output_dir=profile_dir)
               if plan.trace_steps else None)
    with CellWorkers(plan.config, timeout_s=timeout_s, profile=profile) as workers:
        try:
            workers.start()
            workers.warmup()
            started = time.perf_counter()
            workers.run_timed()
            wall_s = time.perf_counter() - started
            return workers.finish(), wall_s
        except CellFailed as failure:
            return workers.record_for(failure), None


def measure_matmuls(device: str, size: int, repeats: int) -> dict[str, Any]:
    """In a worker process: a size x size fp32 matmul under the fp32 and the tf32 policies'
    backend flags (configure_backends, as every cell sets them), its relative error (Frobenius)
    against fp64 of the same inputs, and its time (CUDA events on a GPU)."""
    import torch

    from trainkit.engine.precision import policy_class
    from trainkit.engine.timing import Marks
    from trainkit.engine.worker import select_device

    chosen = select_device(RunConfig(device=device), 0)
    on_gpu = chosen.type == "cuda"
    capability = tuple(torch.cuda.get_device_capability(chosen)) if on_gpu else None
    gpu_name = torch.cuda.get_device_name(chosen) if on_gpu else None
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(chosen)
    b = torch.randn(size, size, generator=generator).to(chosen)
    reference = a.double() @ b.double()  # fp64's unit roundoff, 2^-53, is far below both levels
    modes: dict[str, Any] = {}
    for mode in ("fp32", "tf32"):
        policy_type = policy_class(mode)
        reason = policy_type.unsupported_on(chosen.type, capability, gpu_name)
        if reason:
            modes[mode] = {"unsupported": reason}
            continue
        policy_type(chosen, RunConfig(precision=mode, device=device)).configure_backends()
        product = a @ b
        error = float((product.double() - reference).norm() / reference.norm())
        for _ in range(3):  # cuBLAS picks and loads its kernel on the first calls
            a @ b
        marks = Marks(chosen)
        marks.mark()
        for _ in range(repeats):
            a @ b
        marks.mark()
        seconds = sum(marks.read_s()) / repeats
        modes[mode] = {"relative_error": error, "seconds_per_matmul": seconds, "tflops": 2 * size**3 / seconds / 1e12,
                       "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                       "float32_matmul_precision": torch.get_float32_matmul_precision()}
    return {"device": chosen.type, "gpu_name": gpu_name, "size": size, "repeats": repeats, "modes": modes}


def matmul_worker(conn: Any, device: str, size: int, repeats: int, environ: dict[str, str]) -> None:
    """Entry point of the matmul probe's fresh process (trainkit.engine.launch.call_in_fresh_process)."""
    from trainkit.engine.protocol import Reply

    os.environ.clear()
    os.environ.update(environ)
    try:
        conn.send((Reply.OK, measure_matmuls(device, size, repeats)))
    except BaseException as exc:  # the probe's failure is a result: the checks that read it fail with it
        conn.send((Reply.FAILED, f"{type(exc).__name__}: {exc}"))


# --- the command --------------------------------------------------------------------------------

def progress(line: str) -> None:
    print(f"gpu-check: {line}", file=sys.stderr, flush=True)


def _clean(out: str) -> None:
    """Remove what an earlier gpu-check left in `out` (its files only), so nothing stale is read."""
    os.makedirs(out, exist_ok=True)
    for name in OUTPUTS:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    shutil.rmtree(os.path.join(out, PROFILES), ignore_errors=True)


def table(checks: Sequence[Check]) -> str:
    """The checks as an aligned text table: check | expected | measured | result."""
    rows = [("check", "expected", "measured", "result")] + [
        (c.name, c.expected or "-", c.measured or "-", c.status) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(summary: dict[str, Any], checks: Sequence[Check]) -> str:
    """gpu-check.md: the verdict, the table, every reason, what each check proves, the cells."""
    counts = {s: sum(c.status == s for c in checks) for s in (OK, FAIL, SKIP)}
    lines = [f"# trainkit gpu-check: {summary['verdict']}", "",
             f"{summary['device_line']}. {len(checks)} checks: {counts[OK]} pass, {counts[FAIL]} fail, "
             f"{counts[SKIP]} skipped; {summary['duration_s']:.0f} s ({summary['started_at']}).", ""]
    if summary.get("error"):
        lines += [summary["error"], ""]
    lines += ["| check | expected | measured | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {_md(c.expected or '-')} | {_md(c.measured or '-')} | {c.status} |" for c in checks]
    lines += ["", "## Why", ""]
    lines += [f"- **{c.name}** ({c.status}): {c.reason}" for c in checks]
    proves = {spec.name: spec.proves for spec in CHECKS}
    lines += ["", "## What a pass proves", ""] + [f"- **{c.name}**: {proves[c.name]}" for c in checks]
    if summary["cells"]:
        lines += ["", "## Cells", "", "| cell | roles | status | timed window (launcher clock) |", "|---|---|---|---|"]
        for cell in summary["cells"]:
            wall = f"{cell['wall_s']:.2f} s" if cell["wall_s"] is not None else "-"
            lines.append(f"| {cell['cell_id']} | {', '.join(cell['roles'])} | {cell['status']} | {wall} |")
    report = f"`{os.path.basename(summary['report'])}`" if summary["report"] else summary["report_problem"]
    lines += ["", f"Records: `{RESULTS}`; report: {report}. The cells are sized for their checks, not for "
              "comparison: they run different numbers of steps, so the report's loss and speed columns across "
              "precisions do not compare like with like."]
    return "\n".join(lines) + "\n"


def _device_line(hw: Mapping[str, Any]) -> str:
    env = hw.get("env") or {}
    if hw["device"] == "cuda":
        capability = ".".join(str(v) for v in hw.get("capability") or ())
        return (f"{hw['gpu_name']} (compute capability {capability}), driver {env.get('driver')}, "
                f"CUDA {env.get('cuda')}, torch {env.get('torch')}")
    return f"CPU {env.get('cpu')} ({hw.get('cpu_count')} cores), torch {env.get('torch')}"


def _build_report(out: str) -> tuple[str | None, str | None]:
    """The HTML report of the records: (its path, None) or (None, why there is none)."""
    if not os.path.isfile(os.path.join(out, RESULTS)):
        return None, "no cell ran, so there is no report"
    try:
        from reports.build import build_report

        paths = build_report([os.path.join(out, RESULTS)], os.path.join(out, REPORT), title="trainkit gpu-check")
    except Exception as exc:  # the checks stand without the page; say why it is missing
        return None, f"no report: {type(exc).__name__}: {exc}"
    return paths["html"], None


def _write(out: str, summary: dict[str, Any], checks: Sequence[Check]) -> None:
    write_json(os.path.join(out, SUMMARY_JSON), {**summary, "checks": [_jsonable(asdict(c)) for c in checks]})
    write_text(os.path.join(out, SUMMARY_MD), markdown(summary, checks))


def _jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: such a figure is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_gpu_check(out: str, device: str = "auto", only: Sequence[str] = ()) -> int:
    """The command: probe the device, run the cells the chosen checks read, judge, write, print.
    Returns the exit status (module docstring)."""
    from trainkit.engine.launch import call_in_fresh_process, probe

    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    chosen = [spec for spec in CHECKS if not only or spec.name in only]
    _clean(out)
    progress(f"probing the device (--device {device}) in a fresh process")
    try:
        hw = probe(device)
    except RuntimeError as exc:
        line = f"infrastructure failure: the device cannot be used: {exc}"
        print(f"gpu-check: {line}", flush=True)
        _write(out, {"schema": SCHEMA, "verdict": "infrastructure failure", "exit_status": INFRASTRUCTURE,
                     "error": line, "device_line": f"--device {device}", "started_at": started_at,
                     "duration_s": time.perf_counter() - started, "cells": [], "report": None,
                     "report_problem": "no cell ran"}, [])
        return INFRASTRUCTURE
    on_gpu, capability, gpu_name = hw["device"] == "cuda", hw.get("capability"), hw.get("gpu_name")
    plans = plan_cells(hw["device"], capability, gpu_name)
    skips = {spec.name: reason for spec in chosen
             if (reason := skip_reason(spec, hw["device"], capability, gpu_name))}
    runnable = [spec for spec in chosen if spec.name not in skips]
    roles: dict[CellPlan, list[str]] = {}
    for spec in runnable:
        for role in spec.roles:
            if role in plans and role not in roles.setdefault(plans[role], []):
                roles[plans[role]].append(role)
    needs_matmul = any(spec.matmul for spec in runnable)
    progress(f"{_device_line(hw)}: {len(runnable)} checks to run, {len(skips)} skipped here; "
             f"{len(roles)} cells{' and a matmul probe' if needs_matmul else ''}")

    records: dict[str, dict[str, Any]] = {}
    walls: dict[str, float | None] = {}
    cells: list[dict[str, Any]] = []
    for n, (plan, plan_roles) in enumerate(roles.items(), 1):
        steps = plan.config.steps
        progress(f"cell {n}/{len(roles)} {plan.config.cell_id} ({steps} timed step{'s' if steps > 1 else ''}) for "
                 f"{', '.join(plan_roles)}")
        cell_started = time.perf_counter()
        record, wall_s = run_cell_with_clock(plan, os.path.join(out, PROFILES))
        append_jsonl(record, os.path.join(out, RESULTS))
        for role in plan_roles:
            records[role], walls[role] = record, wall_s
        window = f", timed window {wall_s:.2f} s" if wall_s is not None else ""
        detail = f": {record['status_detail']}" if record["status"] != "ok" else ""
        progress(f"  {record['status']}{detail} in {time.perf_counter() - cell_started:.1f} s{window}")
        cells.append({"cell_id": record["cell_id"], "roles": plan_roles, "status": record["status"],
                      "status_detail": record["status_detail"], "wall_s": wall_s})
    matmul: dict[str, Any] | None = None
    if needs_matmul:
        size = GPU_MATMUL_SIZE if on_gpu else CPU_MATMUL_SIZE
        repeats = GPU_MATMUL_REPEATS if on_gpu else CPU_MATMUL_REPEATS
        progress(f"matmul probe: {size} x {size}, fp32{' and tf32' if on_gpu else ''} against fp64")
        try:
            matmul = call_in_fresh_process(matmul_worker, hw["device"], size, repeats, timeout_s=CELL_TIMEOUT_S,
                                           what="the matmul probe")
        except RuntimeError as exc:
            matmul = {"error": str(exc)}

    observed = Observed(records=records, wall_s=walls, matmul=matmul)
    checks = []
    for spec in chosen:
        if spec.name in skips:
            checks.append(Check(name=spec.name, status=SKIP, reason=skips[spec.name]))
            continue
        try:
            checks.append(spec.judge(observed))
        except Exception as exc:  # a record without a figure the check reads: a fail that says so
            checks.append(Check(name=spec.name, status=FAIL,
                                reason=f"the check could not read its cells: {type(exc).__name__}: {exc}"))

    report, no_report = _build_report(out)
    failed = [c for c in checks if c.status == FAIL]
    exit_status = FAILED if failed else (INFRASTRUCTURE if no_report and records else PASS)
    verdict = "fail" if failed else ("infrastructure failure" if exit_status == INFRASTRUCTURE else "pass")
    summary = {"schema": SCHEMA, "verdict": verdict, "exit_status": exit_status, "device": hw["device"],
               "gpu_name": gpu_name, "capability": capability, "device_line": _device_line(hw),
               "env": hw.get("env"), "only": list(only), "started_at": started_at,
               "duration_s": time.perf_counter() - started, "cells": cells, "matmul": matmul,
               "report": report, "report_problem": no_report}
    _write(out, summary, checks)
    print(table(checks), flush=True)
    print(flush=True)
    for check in checks:
        print(f"{check.name} ({check.status}): {check.reason}", flush=True)
    counts = {s: sum(c.status == s for c in checks) for s in (OK, FAIL, SKIP)}
    print(f"\ngpu-check: {verdict} (exit {exit_status}): {counts[OK]} pass, {counts[FAIL]} fail, {counts[SKIP]} "
          f"skipped in {summary['duration_s']:.0f} s; {os.path.join(out, SUMMARY_MD)}"
          + (f"; {no_report}" if no_report else f"; {report}"), flush=True)
    return exit_status
