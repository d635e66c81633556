"""Timing: marks at the boundaries of GPU or CPU work, and summary statistics of step times.

Rules this module keeps (each one a bug someone shipped, see the design notes):
- GPU time comes from CUDA events read after one synchronisation, never from a host clock around
  asynchronous launches; on the CPU, work is synchronous and perf_counter is exact.
- Boundaries are contiguous (one mark between two steps or phases), so the intervals add up to
  the window they cover.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

PAUSE = None  # a break in the chain of marks: no interval spans it


class Marks:
    """Marks the end of each piece of work: a CUDA event on a GPU (recorded into the stream, so it
    times the GPU's own timeline and costs the host no sync until read), a clock on the CPU.

    An interval runs from one mark to the next and is charged to the label of the mark that ends
    it. pause() breaks the chain: work between the pause and the next mark (a checkpoint written
    between two steps) belongs to no interval.

        marks = Marks(device)
        marks.mark()                      # starts the clock
        ...step...; marks.mark("step")
        marks.read_s()                    # [seconds of each interval], one sync, then empty
    """

    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter) -> None:
        self.cuda = device.type == "cuda"
        self.clock = clock
        """The CPU's clock (seconds); tests inject one that a loaded host cannot move."""
        self.marks: list[tuple[str, Any] | None] = []

    def mark(self, label: str = "") -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((label, event))
        else:
            self.marks.append((label, self.clock()))

    def pause(self) -> None:
        self.marks.append(PAUSE)

    def intervals_s(self) -> list[tuple[str, float]]:
        """(label, seconds) of every interval between consecutive marks; synchronises once on the
        last mark, then starts afresh."""
        marks, self.marks = self.marks, []
        pairs = [(a, b) for a, b in zip(marks, marks[1:]) if a is not PAUSE and b is not PAUSE]
        if not pairs:
            return []
        if self.cuda:
            pairs[-1][1][1].synchronize()
            return [(label, start.elapsed_time(end) / 1e3) for (_, start), (label, end) in pairs]
        return [(label, end - start) for (_, start), (label, end) in pairs]

    def read_s(self) -> list[float]:
        """Seconds of every interval, in order (see intervals_s)."""
        return [seconds for _, seconds in self.intervals_s()]

    def totals_s(self, labels: tuple[str, ...]) -> dict[str, float]:
        """Seconds per label, summed over its intervals (see intervals_s)."""
        totals = dict.fromkeys(labels, 0.0)
        for label, seconds in self.intervals_s():
            totals[label] += seconds
        return totals


def summarize_s(values: list[float]) -> dict[str, float | int | list[float] | None]:
    """median, IQR, min, max, mean and count of step times (seconds), plus the values."""
    if not values:
        return {"median": None, "iqr": None, "min": None, "max": None, "mean": None, "n": 0, "values": []}
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"median": statistics.median(values), "iqr": q3 - q1, "min": min(values), "max": max(values),
            "mean": statistics.fmean(values), "n": len(values), "values": list(values)}
