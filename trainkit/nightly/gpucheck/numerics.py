"""The precision checks: each mode's math is the math it says. fp32 and tf32 matmuls against fp64
of the same inputs (a fresh process measures them: measure_matmuls), and a profile of each
autocast mode's step for the share of operator time in fp16/bf16."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from trainkit.engine.cell.protocol import Reply
from trainkit.engine.spec.config import RunConfig

from .results import FAIL, OK, Check, failed_cell, finite
from .thresholds import FP32_UNIT_ROUNDOFF, HALF_SHARE_MIN, TF32_BAND_FACTOR, TF32_UNIT_ROUNDOFF


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
    if failed := failed_cell(name, expected, [record]):
        return failed
    if record["config"].get("precision") != mode:
        return Check(name=name, status=FAIL, expected=expected,
                     reason=f"cell {record['cell_id']} is not a {mode} cell")
    profile = record.get("profile") or {}
    share = profile.get("reduced_precision_share")
    if not finite(share):
        return Check(name=name, status=FAIL, expected=expected,
                     reason=f"no profile of {record['cell_id']}: {profile.get('error') or 'no operator time recorded'}")
    basis = profile.get("time_basis", "operator time")
    passed = share >= HALF_SHARE_MIN
    reason = (f"{share:.0%} of {basis} in {profile.get('trace_steps')} profiled steps ran with fp16/bf16 inputs"
              if passed else f"only {share:.0%} of {basis} had fp16/bf16 inputs: {mode} computes mostly in fp32")
    return Check(name=name, status=OK if passed else FAIL, expected=expected, measured=f"{share:.0%}",
                 reason=reason, figures={"reduced_precision_share": share, "time_basis": basis})


def measure_matmuls(device: str, size: int, repeats: int) -> dict[str, Any]:
    """In a worker process: a size x size fp32 matmul under the fp32 and the tf32 policies'
    backend flags (configure_backends, as every cell sets them), its relative error (Frobenius)
    against fp64 of the same inputs, and its time (CUDA events on a GPU)."""
    # torch and the engine's torch modules are imported here, in the probe's process: `python -m
    # nightly` never imports torch, and its own process never initialises CUDA.
    import torch

    from trainkit.engine.cell.worker import select_device
    from trainkit.engine.measure.timing import Marks
    from trainkit.engine.train.precision import policy_class

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
    """Entry point of the matmul probe's fresh process (trainkit.engine.cell.launch.call_in_fresh_process)."""
    os.environ.clear()
    os.environ.update(environ)
    try:
        conn.send((Reply.OK, measure_matmuls(device, size, repeats)))
    except BaseException as exc:  # the probe's failure is a result: the checks that read it fail with it
        conn.send((Reply.FAILED, f"{type(exc).__name__}: {exc}"))
