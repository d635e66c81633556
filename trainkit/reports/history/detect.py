"""Change points over a series, and the drift since a pinned reference.

Statistical series (throughput; memory measured by NVML or the host's RSS) take the scheme of
Apache Otava (a divisive search proposes, a Student t-test confirms), with
ruptures (a maintained implementation) doing the search:

1. The best single split of the log of the nightly values (so a change is relative): ruptures'
   binary segmentation, L2 cost, at least `min_size` nights on each side.
2. Student's t-test between the two sides (pooled variance, as Otava: a two-night segment's own
   variance is no estimate), its p multiplied by the number of splits searched (Bonferroni: the best
   of many splits looks significant even in pure noise). The split stands when p <= `max_pvalue` and
   the change is at least `min_magnitude`; then each side is searched the same way.
3. Each side holds at least `min_size` nights on its own side of the middle of the two means
   (consistent_sides): a lone slow night at either end of a series is a two-night segment whose
   mean departs with one night only (nights 1, 2, 39 or 40 made change points in 44-47 of 50 series
   at 2 % noise); a change is a level that holds over the nights after it.

Deterministic series (the allocator's peak, the fixed-seed final loss) take an exact rule: a new
segment starts at a night that departs from its segment's value by more than `tolerance` and the
next night agrees with it; a lone departing night is an outlier, not a change; a departure on the
last night is a change point seen on one night only (nights_after = 1).

An acknowledged change (store.Ack) is a forced boundary: the series is analysed in pieces on either
side of it, and the boundary is listed as acknowledged, never as a regression.

The drift check compares the first `drift_window` nights from a pinned reference (a release's
commit, a date) with the last `drift_window` nights: slow drifts that no single step shows.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import ruptures
from scipy import stats

from .params import DetectorParams
from .series import BAD_DIRECTION, EXACT, Series, noise
from .store import Ack, RunInfo


@dataclass(frozen=True)
class Segment:
    """Nights [start, stop) of a series between change points."""

    start: int
    stop: int
    mean: float
    std: float
    """Standard deviation of the segment's nightly values (0 for one night)."""


@dataclass(frozen=True)
class ChangePoint:
    """A change between night `index - 1` and night `index` of a series."""

    index: int
    """Position in the series of the first night after the change."""
    run_before: int
    """Run id of the last night before the change."""
    run_after: int
    """Run id of the first night after it."""
    commit_before: str | None
    commit_after: str | None
    """The change came in the commits (commit_before, commit_after]."""
    mean_before: float
    mean_after: float
    magnitude: float | None
    """mean_after / mean_before - 1 (relative change of the segment means); None when mean_before
    is 0 (a deterministic figure that was 0), where no relative change exists."""
    p_value: float | None
    """The t-test between the two segments (Bonferroni-corrected, see split_p); None under the exact rule."""
    method: str
    """statistical or exact."""
    nights_after: int
    """Nights in the segment after the change (1: seen on one night only)."""
    kind: str
    """regression, improvement, or change (the loss: either way is a change)."""
    acknowledged: Ack | None = None


@dataclass(frozen=True)
class Drift:
    """The last nights against the nights from a pinned reference."""

    reference_run: int
    reference_median: float
    """Median of the drift_window nights from the reference on."""
    latest_median: float
    """Median of the last drift_window nights."""
    change: float
    """latest_median / reference_median - 1."""
    p_value: float | None
    drifted: bool
    """The change goes the bad way (either way for the loss) past the threshold, significantly."""


@dataclass(frozen=True)
class Analysis:
    """One series analysed."""

    series: Series
    segments: tuple[Segment, ...]
    change_points: tuple[ChangePoint, ...]
    noise: float | None
    """Robust relative noise of the series (sigma of night-to-night changes); 'most unstable' sorts by it.
    None where it cannot be measured (fewer than 3 nights, a value <= 0)."""
    outliers: tuple[int, ...] = ()
    """Positions of lone departing nights (exact rule)."""
    drift: Drift | None = None
    params: DetectorParams = field(default_factory=DetectorParams)


def t_test_p(before: list[float], after: list[float]) -> float:
    """Student's t-test p-value (pooled variance); segments without spread compare their means exactly."""
    if len(before) < 2 or len(after) < 2 or (np.ptp(before) == 0 and np.ptp(after) == 0):
        return 0.0 if statistics.fmean(before) != statistics.fmean(after) else 1.0
    with warnings.catch_warnings():  # nearly constant segments: scipy warns of precision loss, p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(before, after, equal_var=True).pvalue)


def kind_of(metric: str, magnitude: float | None) -> str:
    direction = BAD_DIRECTION[metric]
    if direction == 0 or magnitude is None:
        return "change"
    return "regression" if magnitude * direction > 0 else "improvement"


def _statistical(values: list[float], params: DetectorParams) -> list[int]:
    """Boundaries (first night of each new segment) in one piece of a statistical series: the best
    single split (ruptures' binary segmentation, L2 on log values) if it passes the t-test, then the
    same on either side of it."""
    n = len(values)
    if n < 2 * params.min_size or min(values) <= 0:
        return []
    logs = np.log(np.asarray(values, dtype=float)).reshape(-1, 1)
    b = ruptures.Binseg(model="l2", min_size=params.min_size, jump=1).fit(logs).predict(n_bkps=1)[0]
    before, after = values[:b], values[b:]
    magnitude = statistics.fmean(after) / statistics.fmean(before) - 1
    if (abs(magnitude) < params.min_magnitude or split_p(before, after, params.min_size) > params.max_pvalue
            or not consistent_sides(before, after, params.min_size)):
        return []
    return [*_statistical(before, params), b, *(b + i for i in _statistical(after, params))]


def consistent_sides(before: list[float], after: list[float], min_size: int) -> bool:
    """Whether at least `min_size` nights of each side lie on that side of the geometric middle of the
    two means: a change that one departing night makes is an outlier, not a level."""
    middle = math.sqrt(statistics.fmean(before) * statistics.fmean(after))
    up = statistics.fmean(after) > statistics.fmean(before)
    on_before = sum((v < middle) if up else (v > middle) for v in before)
    on_after = sum((v > middle) if up else (v < middle) for v in after)
    return on_before >= min_size and on_after >= min_size


def split_p(before: list[float], after: list[float], min_size: int) -> float:
    """Student's t-test p of the log values on either side of a split, times the splits it was the best
    of (Bonferroni): the best of many splits would otherwise look significant in pure noise."""
    searched = len(before) + len(after) - 2 * min_size + 1
    return min(1.0, t_test_p(list(np.log(before)), list(np.log(after))) * searched)


def _exact(values: list[float], tolerance: float) -> tuple[list[int], list[int]]:
    """Boundaries and outlier nights in one piece of a deterministic series."""
    def differs(a: float, b: float) -> bool:
        return abs(a - b) > tolerance * max(abs(b), 1e-30)

    bounds, outliers, reference = [], [], values[0] if values else 0.0
    for i in range(1, len(values)):
        if not differs(values[i], reference):
            continue
        if i == len(values) - 1 or not differs(values[i + 1], values[i]):
            bounds.append(i)
            reference = values[i]
        else:
            outliers.append(i)
    return bounds, outliers


def _pieces(series: Series, order: Mapping[int, int], acks: list[Ack]) -> dict[int, Ack]:
    """Position of each acknowledged boundary in the series (the first night at or after its run)."""
    out: dict[int, Ack] = {}
    for ack in acks:
        if ack.cell_id != series.cell_id or ack.fingerprint != series.fingerprint or ack.metric != series.metric:
            continue
        at = next((i for i, p in enumerate(series.points) if order[p.run_id] >= order.get(ack.run_id, -1)), None)
        if at:  # an acknowledgement at the first night (or after the last) splits nothing
            out[at] = ack
    return out


def _segments(values: list[float], bounds: list[int], outliers: list[int]) -> tuple[Segment, ...]:
    """The segments between the bounds; their mean and spread leave the exact rule's outliers out."""
    edges, out = [0, *bounds, len(values)], set(outliers)
    spans = list(zip(edges, edges[1:]))
    kept = [[values[i] for i in range(a, b) if i not in out] or values[a:b] for a, b in spans]
    return tuple(Segment(a, b, statistics.fmean(k), statistics.pstdev(k)) for (a, b), k in zip(spans, kept))


def analyse(series: Series, runs: Mapping[int, RunInfo], acks: list[Ack] | None = None,
            params: DetectorParams = DetectorParams()) -> Analysis:
    """Segments and change points of one series (see the module docstring)."""
    values = series.values
    order = {run_id: i for i, run_id in enumerate(runs)}
    acknowledged = _pieces(series, order, acks or [])
    edges = [0, *sorted(acknowledged), len(values)]
    bounds, outliers = [], []
    for a, b in zip(edges, edges[1:]):
        piece = values[a:b]
        if series.method == EXACT:
            found, lone = _exact(piece, params.tolerance(series.metric))
            outliers += [a + i for i in lone]
        else:
            found = _statistical(piece, params)
        bounds += [a + i for i in found] + ([b] if b < len(values) else [])
    segments = _segments(values, bounds, outliers)
    points = []
    for i, b in enumerate(bounds):
        before, after = segments[i], segments[i + 1]
        sides = values[before.start:before.stop], values[after.start:after.stop]
        p = None if series.method == EXACT else split_p(*sides, params.min_size)
        magnitude = after.mean / before.mean - 1 if before.mean else None
        run_before, run_after = series.points[b - 1].run_id, series.points[b].run_id
        points.append(ChangePoint(b, run_before, run_after, runs[run_before].commit, runs[run_after].commit,
                                  before.mean, after.mean, magnitude, p, series.method, after.stop - after.start,
                                  kind_of(series.metric, magnitude), acknowledged.get(b)))
    return Analysis(series, segments, tuple(points), noise(values), tuple(outliers), None, params)


def drift(series: Series, reference_run: int, runs: Mapping[int, RunInfo],
          params: DetectorParams = DetectorParams()) -> Drift | None:
    """The median of the last drift_window nights against the median of the drift_window nights from
    the reference run on (medians: one bad night in either window must not make a drift); None when
    the series has no night at or after the reference, or the two windows overlap."""
    order = {run_id: i for i, run_id in enumerate(runs)}
    values, w = series.values, params.drift_window
    start = next((i for i, p in enumerate(series.points) if order[p.run_id] >= order[reference_run]), None)
    if start is None or start + w > len(values) - w:
        return None
    reference, latest = values[start:start + w], values[-w:]
    before, after = statistics.median(reference), statistics.median(latest)
    change = after / before - 1
    direction = BAD_DIRECTION[series.metric]
    bad = abs(change) if direction == 0 else change * direction
    if series.method == EXACT:
        return Drift(series.points[start].run_id, before, after, change, None, bad > params.tolerance(series.metric))
    p = t_test_p(list(np.log(reference)), list(np.log(latest)))
    return Drift(series.points[start].run_id, before, after, change, p,
                 bad >= params.drift_threshold and p <= params.drift_pvalue)
