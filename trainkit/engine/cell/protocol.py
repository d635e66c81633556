"""The worker protocol, named once: what a launcher sends a rank over its pipe, and what it answers.

    launcher                         rank (trainkit.engine.cell.worker.serve)
    --------                         ----
                                 <-  READY (fixed costs, GPU UUID)    once built
    WARMUP                       ->  OK (seconds)
    STEP                         ->  OK (seconds of the step)         one timed optimizer step
    RUN                          ->  PROGRESS (step, total)...        the remaining steps, one window
                                     OK (seconds of every step)
    FINISH (evaluate?)           ->  RESULT (the rank's RankReport)   then the rank exits
    any command                  ->  FAILED (status, detail, RankReport with what was measured)

A one-shot process (the device probe) answers OK (payload) or FAILED (detail) once.
"""

from __future__ import annotations

from enum import Enum


class Command(str, Enum):
    """What the launcher asks of a rank."""

    WARMUP = "warmup"
    STEP = "step"
    RUN = "run"
    FINISH = "finish"


class Reply(str, Enum):
    """What a rank (or a one-shot process) sends back: (Reply, payload)."""

    READY = "ready"
    OK = "ok"
    PROGRESS = "progress"
    RESULT = "result"
    FAILED = "failed"
