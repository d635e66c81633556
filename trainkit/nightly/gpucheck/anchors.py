"""The anchors: trainkit's speed figures beside published ones. ResNet-50's precision speedups in the
order DeepLearningExamples shows, and GPT-2 124M's MFU in a plausible band. (anchor.energy, an NVML
check, is in nvml.py.)"""

from __future__ import annotations

from typing import Any

from .results import FAIL, OK, Check, failed_cell, finite
from .thresholds import DLE_RESNET50, mfu_band


def check_resnet50(fp32: dict[str, Any], tf32: dict[str, Any], amp: dict[str, Any]) -> Check:
    """ResNet-50's AMP over TF32 and over FP32, beside DeepLearningExamples' figures; sane when AMP is
    faster than TF32 and TF32 faster than FP32 (the order every GPU with tensor cores shows)."""
    name = "anchor.resnet50"
    dle = "; ".join(f"DLE {d['gpu']}: AMP {d['speedup']:.2f}x {d['from']}" for d in DLE_RESNET50)
    expected = f"AMP > TF32 > FP32 ({dle})"
    if failed := failed_cell(name, expected, [fp32, tf32, amp]):
        return failed
    rates = [r["throughput_samples_per_s"] for r in (fp32, tf32, amp)]
    if not all(finite(r) and r > 0 for r in rates):
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
    the plausible band of the cell as it ran, eager or compiled (thresholds.mfu_band); a GPU without
    a sourced peak fails: MFU is then unknown, not plausible."""
    name = "anchor.mfu"
    compiled = bool((record.get("config") or {}).get("compile"))
    low, high, source = mfu_band(compiled)
    expected = f"{low:.1%}..{high:.1%}, {'compiled' if compiled else 'eager'} ({source})"
    if failed := failed_cell(name, expected, [record]):
        return failed
    utilisation = record.get("mfu")
    gpu = (record.get("env") or {}).get("gpu_name")
    if not finite(utilisation):
        return Check(name=name, status=FAIL, expected=expected, measured="null",
                     reason=f"no sourced peak for {gpu}: {record.get('mfu_note') or 'MFU is null'} "
                            "(add the GPU's datasheet figures to trainkit.engine.measure.flops.PEAK_TFLOPS)")
    peak = record.get("peak_flops_per_s") or 0
    passed = low <= utilisation <= high
    reason = (f"{utilisation:.1%} of {gpu}'s dense {peak / 1e12:.0f} TFLOP/s "
              f"({record['config']['precision']}, {record.get('tokens_per_s') or 0:,.0f} tokens/s)")
    if not passed:
        reason += (": below the band the GPU starves (input, launch overhead, a slow kernel)" if utilisation < low
                   else ": above the band the FLOPs are over-counted or the peak is wrong")
    return Check(name=name, status=OK if passed else FAIL, expected=expected, measured=f"{utilisation:.1%}",
                 reason=reason, figures={"mfu": utilisation, "peak_flops_per_s": peak, "gpu_name": gpu})
