"""The time check: the step times trainkit reports against the worker's own clock around their window."""

from __future__ import annotations

from typing import Any

from .results import FAIL, OK, Check, failed_cell, finite, on_gpu
from .thresholds import TIME_TOLERANCE


def _reason(steps: int, difference: float, method: str, passed: bool) -> str:
    if passed:
        return (f"{steps} steps timed by {method} sum to {difference:+.2%} of the worker's clock around the same "
                "synchronised window")
    if difference > 0:
        return (f"the steps sum to {difference:+.1%} MORE than the clock around them: intervals overlap or "
                f"are counted twice ({method})")
    return (f"the steps sum to {difference:+.1%} of the clock around them: {method} miss part of "
            "each step, or work runs outside the marks")


def check_time(record: dict[str, Any], wall_s: float | None, launcher_s: float | None = None) -> Check:
    """The worker's step times (CUDA events, or a clock read after each step on a CPU) summed over
    one window, against the worker's perf_counter from before the window's first step to the sync
    after its last (the device is idle at both ends: the warmup ended with a sync). The launcher's
    clock from command to reply (`launcher_s`) is reported beside it, not judged: it adds two
    process hand-offs, which a container's CPU quota can stretch to a scheduling period each (a CI
    runner's was 225 ms, 9 % of a 2.5 s window, with the marks right)."""
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
                          "relative_difference": difference,
                          "launcher_s": launcher_s if finite(launcher_s) else None})
