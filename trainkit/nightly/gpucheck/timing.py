"""The time check: the step times trainkit reports against the launcher's wall clock."""

from __future__ import annotations

from typing import Any

from .results import FAIL, OK, Check, failed_cell, finite, on_gpu
from .thresholds import TIME_TOLERANCE


def _reason(steps: int, difference: float, method: str, passed: bool) -> str:
    if passed:
        return (f"{steps} steps timed by {method} sum to {difference:+.2%} of the launcher's wall clock "
                "around the same synchronised window")
    if difference > 0:
        return (f"the steps sum to {difference:+.1%} MORE than the wall clock around them: intervals overlap or "
                f"are counted twice ({method})")
    return (f"the steps sum to {difference:+.1%} of the wall clock around them: {method} miss part of "
            "each step, or work runs outside the marks")


def check_time(record: dict[str, Any], wall_s: float | None) -> Check:
    """The worker's step times (CUDA events, or a clock read after each step on a CPU) summed over
    one window, against the launcher's perf_counter around the same window: the launcher sends the
    command after a synchronised warmup and stops its clock when the worker, synchronised again,
    replies. A few ms of pipe and wake-up separate them, nothing else."""
    name = "time"
    expected = f"outside wall clock, within {TIME_TOLERANCE:.0%}"
    if failed := failed_cell(name, expected, [record]):
        return failed
    steps = record["step_time_s"].get("values") or []
    if not steps or not finite(wall_s) or not wall_s:
        return Check(name=name, status=FAIL, expected=expected, reason="no window of timed steps was measured")
    marks_s = sum(steps)
    difference = (marks_s - wall_s) / wall_s
    method = "CUDA events" if on_gpu(record) else "a clock read after each step (CPU work is synchronous)"
    passed = abs(difference) <= TIME_TOLERANCE
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f"{wall_s:.3f} s ±{TIME_TOLERANCE:.0%} ({len(steps)} steps)",
                 measured=f"{marks_s:.3f} s ({difference:+.2%})",
                 reason=_reason(len(steps), difference, method, passed),
                 figures={"steps": len(steps), "marks_s": marks_s, "wall_s": wall_s,
                          "relative_difference": difference})
