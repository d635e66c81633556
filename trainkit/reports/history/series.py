"""Series: what the detectors read, one value per night for each cell x fingerprint x metric.

A night's value is the median over its records of the series that ended ok (the nightly runs each
cell three times in fresh workers); a night where none did is left out of the series.

    throughput  samples/s over the timed steps; higher is better; judged statistically
    memory      the series' headline measure (trainkit.engine.spec.schema.headline_memory over all its
                records, so every night is judged on one measure); lower is better. The caching
                allocator's peaks (torch_max_reserved/allocated_bytes) are deterministic with a fixed
                seed (byte-identical over 13 runs): judged exactly.
                NVML and host RSS move with the machine: judged statistically
    loss        the final loss; with the fixed seed the nightly uses it is deterministic on one
                fingerprint up to kernel non-associativity: judged near-exactly, in either direction
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.schema import MEMORY_NAMES, headline_memory

METRICS = ("throughput", "memory", "loss")
DETERMINISTIC_MEMORY = ("torch_max_reserved_bytes", "torch_max_allocated_bytes")
STATISTICAL, EXACT = "statistical", "exact"
UNITS = {"throughput": "samples/s", "memory": "bytes", "loss": ""}
BAD_DIRECTION = {"throughput": -1, "memory": +1, "loss": 0}
"""The direction of a regression: throughput down, memory up, loss either way (0)."""


@dataclass(frozen=True)
class RecordRow:
    """One stored record, as the detectors read it."""

    cell_id: str
    fingerprint: dict[str, Any]
    run_id: int
    status: str | None
    throughput_samples_per_s: float | None
    loss_final: float | None
    memory: dict[str, Any] | None
    model: str | None = None
    precision: str | None = None


@dataclass(frozen=True)
class Point:
    """One night of a series."""

    run_id: int
    value: float
    """The median over the night's ok records of the series."""
    n: int
    """Records the median is over."""


@dataclass(frozen=True)
class Series:
    """One metric of one cell on one environment, night by night (oldest first)."""

    cell_id: str
    fingerprint: dict[str, Any]
    metric: str
    """throughput, memory or loss."""
    measure: str
    """What the values are: throughput_samples_per_s, the memory measure's key, or loss.final."""
    method: str
    """statistical or exact (see the module docstring)."""
    points: tuple[Point, ...]
    model: str | None = None
    """The cell's model and precision (from its records' config), for the page's filters."""
    precision: str | None = None

    @property
    def hardware(self) -> str:
        return self.fingerprint.get("gpu_name") or f"CPU {self.fingerprint.get('cpu')}"

    @property
    def label(self) -> str:
        """cell @ hardware, as the table and the page name the series."""
        return f"{self.cell_id} @ {self.hardware}"

    @property
    def measure_name(self) -> str:
        return MEMORY_NAMES.get(self.measure, self.measure)

    @property
    def values(self) -> list[float]:
        return [p.value for p in self.points]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(first: RecordRow, metric: str, measure: str, method: str, by_run: dict[int, list[float]]) -> Series | None:
    points = tuple(Point(run_id, statistics.median(values), len(values)) for run_id, values in by_run.items() if values)
    return (Series(first.cell_id, first.fingerprint, metric, measure, method, points, first.model, first.precision)
            if points else None)


def build_series(rows: list[RecordRow], metrics: tuple[str, ...] = METRICS) -> list[Series]:
    """Every series of the rows (ordered by run already), in order of first appearance."""
    groups: dict[tuple[str, str], list[RecordRow]] = {}
    for row in rows:
        if row.status == "ok":
            groups.setdefault((row.cell_id, repr(sorted(row.fingerprint.items()))), []).append(row)
    out: list[Series] = []
    for group in groups.values():
        for metric in metrics:
            measure, method = _measure(metric, group)
            if measure is None:
                continue
            by_run: dict[int, list[float]] = {}
            for row in group:
                value = _value(row, metric, measure)
                if _finite(value):
                    by_run.setdefault(row.run_id, []).append(float(value))
            series = _series(group[0], metric, measure, method, by_run)
            if series is not None:
                out.append(series)
    return out


def _measure(metric: str, group: list[RecordRow]) -> tuple[str | None, str]:
    if metric == "throughput":
        return "throughput_samples_per_s", STATISTICAL
    if metric == "loss":
        return "loss.final", EXACT
    measure = headline_memory([row.memory for row in group])
    return measure, EXACT if measure in DETERMINISTIC_MEMORY else STATISTICAL


def _value(row: RecordRow, metric: str, measure: str) -> Any:
    if metric == "throughput":
        return row.throughput_samples_per_s
    if metric == "loss":
        return row.loss_final
    return (row.memory or {}).get(measure)


def noise(values: list[float]) -> float | None:
    """Relative noise of nightly values: 1.4826 x the median absolute deviation of the night-to-night
    changes of their logs, / sqrt 2 (a difference holds two nights' noise); a step moves one
    difference only, so it barely moves this. None, not measured, with fewer than 3 nights or a value
    <= 0 (no log): a noise of 0 would say the series is perfectly steady."""
    if len(values) < 3 or min(values) <= 0:
        return None
    diffs = [math.log(b) - math.log(a) for a, b in zip(values, values[1:])]
    center = statistics.median(diffs)
    return 1.4826 * statistics.median(abs(d - center) for d in diffs) / math.sqrt(2)


def noise_text(value: float | None) -> str:
    """A series' noise as 2.1%, or n/a where it was not measured (fewer than 3 nights, a value <= 0)."""
    return "n/a" if value is None else f"{value:.1%}"


def percent(change: float | None) -> str:
    """A relative change as +1.2 %, or n/a where none exists."""
    return "n/a" if change is None else f"{change:+.1%}"
