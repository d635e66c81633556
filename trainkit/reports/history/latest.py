"""The latest nights of each series, as the nightly gate reads them.

PyTorch HUD's rule: a regression is at least two consecutive violations at the
end of the series; one violating night is `unknown`, and asks for a re-run, not a bisect (Chromium
Pinpoint's UNKNOWN). A violation is a night beyond the threshold in the bad direction (throughput
down, memory up, the loss either way) against the nights before the violating run:

    statistical  the median of up to `reference_nights` nights before, threshold
                 max(min_magnitude, k x the noise of those nights)
    exact        the same median, threshold the exact rule's tolerance

The reference nights never reach back past an acknowledged change: an acknowledgement starts a new
segment, so an intended step stops failing the gate from the night it is acknowledged for.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainkit.engine.spec.schema import fingerprint

from .params import DetectorParams
from .series import BAD_DIRECTION, EXACT, Series, build_series, noise
from .store import Ack, RunInfo, acks, fingerprint_key, opened, record_key, record_rows, runs, runs_of

REGRESSION, UNKNOWN, SAME, INSUFFICIENT = "regression", "unknown", "same", "insufficient history"


@dataclass(frozen=True)
class GateRules:
    """How the gate reads the latest nights."""

    confirm_nights: int = 2
    """Consecutive violating nights that make a regression (fewer, but one: unknown)."""
    k: float = 3.0
    """A statistical violation must exceed k x the noise of the reference nights..."""
    min_history: int = 5
    """Fewest reference nights before a verdict other than `insufficient history`."""
    reference_nights: int = 10
    """Most nights the reference median is over (the recent past, not the whole history)."""


@dataclass(frozen=True)
class LatestVerdict:
    """One series' latest nights."""

    label: str
    """cell @ hardware."""
    cell_id: str
    metric: str
    verdict: str
    """regression, unknown, same or insufficient history."""
    bad_nights: int
    """Consecutive violating nights at the end of the series."""
    reference: float | None
    """Median of the reference nights (before the first violating night)."""
    latest: float
    change: float | None
    """latest / reference - 1."""
    threshold: float | None
    """The relative change a night had to exceed."""
    commit_before: str | None
    commit_after: str | None
    """The first violating night came in the commits (commit_before, commit_after]."""
    noise: float | None = None
    """Relative night-to-night spread of the nights before the last (series.noise), when there are
    at least `min_history` of them: the reference noise the nightly gate judges tonight against."""

    def line(self) -> str:
        change = f"{self.change:+.1%}" if self.change is not None else "n/a"
        where = f" in {self.commit_before or '?'}..{self.commit_after or '?'}" if self.bad_nights else ""
        return (f"{self.label} {self.metric}: {self.verdict} ({self.bad_nights} bad night(s), {change} against "
                f"the {self.reference:.4g} before{where})" if self.reference is not None
                else f"{self.label} {self.metric}: {self.verdict}")


def _violates(series: Series, value: float, reference: list[float], params: DetectorParams,
              rules: GateRules) -> tuple[bool, float, float]:
    median = statistics.median(reference)
    change = value / median - 1 if median else 0.0
    direction = BAD_DIRECTION[series.metric]
    bad = abs(change) if direction == 0 else change * direction
    if series.method == EXACT:
        threshold = params.tolerance(series.metric)
        return bad > threshold, change, threshold
    threshold = max(params.min_magnitude, rules.k * (noise(reference) or 0.0))  # unmeasured: the floor
    return bad >= threshold, change, threshold


def verdict(series: Series, runs_by_id: Mapping[int, RunInfo], start: int = 0,
            params: DetectorParams = DetectorParams(), rules: GateRules = GateRules()) -> LatestVerdict:
    """The verdict on the series' last nights; `start`: its first night after the last acknowledgement."""
    values, n = series.values, len(series.values)
    bad, result = 0, None
    for trailing in range(1, n - start - rules.min_history + 1):
        reference = values[max(start, n - trailing - rules.reference_nights):n - trailing]
        checks = [_violates(series, v, reference, params, rules) for v in values[n - trailing:]]
        if not all(ok for ok, _, _ in checks):
            break
        bad, result = trailing, (statistics.median(reference), checks[-1][1], checks[-1][2])
    if result is None:
        if n - start - 1 < rules.min_history:
            return LatestVerdict(series.label, series.cell_id, series.metric, INSUFFICIENT, 0, None, values[-1],
                                 None, None, None, None)
        reference = values[max(start, n - 1 - rules.reference_nights):n - 1]
        _, change, threshold = _violates(series, values[-1], reference, params, rules)
        return LatestVerdict(series.label, series.cell_id, series.metric, SAME, 0, statistics.median(reference),
                             values[-1], change, threshold, None, None)
    first = n - bad
    name = REGRESSION if bad >= rules.confirm_nights else UNKNOWN
    before, after = series.points[first - 1].run_id, series.points[first].run_id
    return LatestVerdict(series.label, series.cell_id, series.metric, name, bad, result[0], values[-1], result[1],
                         result[2], runs_by_id[before].commit, runs_by_id[after].commit)


def _start(series: Series, order: Mapping[int, int], acknowledged: list[Ack]) -> int:
    """The first night after the series' last acknowledgement (0 without one)."""
    start = 0
    for ack in acknowledged:
        if (ack.cell_id, ack.fingerprint, ack.metric) == (series.cell_id, series.fingerprint, series.metric):
            start = max(start, next((i for i, p in enumerate(series.points)
                                     if order[p.run_id] >= order.get(ack.run_id, -1)), start))
    return start


@dataclass(frozen=True)
class HistoryCheck:
    """The gate's view of the store for one night's records."""

    verdicts: tuple[LatestVerdict, ...]
    warning: str | None = None
    """Why there are no verdicts (the night is not in the store, or no series has the nights a verdict
    needs), else None."""


def check_night(path: str, records: list[dict[str, Any]], metrics: tuple[str, ...],
                gated: Callable[[str], bool] = lambda cell: True, params: DetectorParams = DetectorParams(),
                rules: GateRules = GateRules()) -> HistoryCheck:
    """Verdicts on every series tonight's records belong to; the records must be ingested already."""
    keys = [record_key(r) for r in records]
    with opened(path, readonly=True) as conn:
        found = runs_of(conn, keys)
        if not found:
            return HistoryCheck((), f"{path}: tonight's results are not in the run store; ingest them first "
                                    "(python -m reports history ingest)")
        all_runs = runs(conn)
        wanted = {(r.get("cell_id"), fingerprint_key(fingerprint(r.get("env")))) for r in records}
        rows = [row for row in record_rows(conn) if (row.cell_id, fingerprint_key(row.fingerprint)) in wanted]
        acknowledged = acks(conn)
    by_id = {r.run_id: r for r in all_runs}
    order = {r.run_id: i for i, r in enumerate(all_runs)}
    out = []
    for s in build_series(rows, metrics):
        if gated(s.cell_id) and s.points[-1].run_id in found:
            start = _start(s, order, acknowledged)
            before = s.values[max(start, len(s.values) - 1 - rules.reference_nights):-1]
            spread = noise(list(before)) if len(before) >= rules.min_history else None
            out.append(replace(verdict(s, by_id, start, params, rules), noise=spread))
    if all(v.verdict == INSUFFICIENT for v in out):
        earlier = max((len(s.points) - 1 for s in build_series(rows, metrics)), default=0)
        return HistoryCheck(tuple(out), f"{path}: no history to judge tonight by: {len(out)} series, the longest "
                                        f"with {earlier} earlier night{'' if earlier == 1 else 's'}, fewer than the "
                                        f"{rules.min_history} a verdict needs; tonight is judged against the "
                                        "baseline alone")
    return HistoryCheck(tuple(out))
