"""pytest-benchmark's timer for matrix cells.

A cell's steps run in a worker process, which times each one itself (CUDA events, or a
synchronised clock on the CPU) and replies with the duration. This clock advances by exactly
that duration, so pytest-benchmark's statistics are the optimizer steps themselves: never the
pipe round trip to the worker, process start, imports or warmup. (The round trip is recorded
apart, as `step_round_trip_s`, so the difference stays visible.)
"""

_now_s = 0.0


def worker_clock() -> float:
    """The time of the timed steps so far, in seconds."""
    return _now_s


def advance(seconds: float) -> None:
    global _now_s
    _now_s += seconds
