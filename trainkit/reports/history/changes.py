"""The store analysed: every series' change points and drift, as rows for the table, JSON and page."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, replace
from typing import Any

from .detect import Analysis, ChangePoint, Drift, analyse, drift
from .params import DetectorParams
from .series import METRICS, build_series, percent
from .store import Ack, RunInfo, acks, opened, record_rows, resolve, runs


@dataclass(frozen=True)
class History:
    """Every series of the store analysed, with the runs in order (night n is runs[n - 1])."""

    path: str
    runs: tuple[RunInfo, ...]
    analyses: tuple[Analysis, ...]
    params: DetectorParams
    since: RunInfo | None = None
    """The pinned reference of the drift check, when one was given."""

    def night(self, run_id: int) -> int:
        """1-based position of a run among all the store's runs."""
        return next(i for i, r in enumerate(self.runs, 1) if r.run_id == run_id)

    def run(self, run_id: int) -> RunInfo:
        return next(r for r in self.runs if r.run_id == run_id)


def load(path: str, params: DetectorParams = DetectorParams(), since: str | None = None, cells: str = "*",
         metrics: tuple[str, ...] = METRICS) -> History:
    """Read the store (read-only) and analyse every series of the cells matching the glob."""
    with opened(path, readonly=True) as conn:
        all_runs = tuple(runs(conn))
        rows = record_rows(conn)
        acknowledged = acks(conn)
    reference = resolve(since, all_runs) if since else None
    by_id = {r.run_id: r for r in all_runs}
    analyses = []
    for series in build_series([r for r in rows if fnmatch.fnmatchcase(r.cell_id, cells)], metrics):
        analysis = analyse(series, by_id, acknowledged, params)
        if reference is not None:
            analysis = replace(analysis, drift=drift(series, reference.run_id, by_id, params))
        analyses.append(analysis)
    return History(path, all_runs, tuple(analyses), params, reference)


def _ack(ack: Ack | None) -> dict[str, Any] | None:
    return None if ack is None else {"who": ack.who, "why": ack.why, "at": ack.created_at}


def change_row(history: History, analysis: Analysis, point: ChangePoint) -> dict[str, Any]:
    """A change point as one flat row (the table's and the JSON's)."""
    series = analysis.series
    before, after = history.run(point.run_before), history.run(point.run_after)
    return {"series": series.label, "cell_id": series.cell_id, "fingerprint": series.fingerprint,
            "metric": series.metric, "measure": series.measure, "kind": point.kind, "magnitude": point.magnitude,
            "mean_before": point.mean_before, "mean_after": point.mean_after, "p_value": point.p_value,
            "method": point.method, "night_before": history.night(point.run_before),
            "night_after": history.night(point.run_after), "date_before": before.date, "date_after": after.date,
            "commit_before": point.commit_before, "commit_after": point.commit_after,
            "nights_after": point.nights_after, "acknowledged": _ack(point.acknowledged)}


def drift_row(history: History, analysis: Analysis, found: Drift) -> dict[str, Any]:
    series = analysis.series
    return {"series": series.label, "cell_id": series.cell_id, "fingerprint": series.fingerprint,
            "metric": series.metric, **asdict(found), "reference_night": history.night(found.reference_run),
            "window_nights": history.params.drift_window}


def change_rows(history: History) -> list[dict[str, Any]]:
    """Every change point, or with --since only those after the reference, oldest first."""
    start = history.night(history.since.run_id) if history.since else 1
    rows = [change_row(history, a, p) for a in history.analyses for p in a.change_points]
    return sorted((r for r in rows if r["night_after"] >= start), key=lambda r: (r["night_after"], r["series"]))


def drift_rows(history: History) -> list[dict[str, Any]]:
    return [drift_row(history, a, a.drift) for a in history.analyses if a.drift is not None and a.drift.drifted]


def _p(row: dict[str, Any]) -> str:
    return "exact" if row["p_value"] is None else f"p={row['p_value']:.1e}"


def table(history: History) -> list[str]:
    """The change points and drifts as aligned text lines."""
    rows = change_rows(history)
    lines = [f"{len(rows)} change point(s) in {len(history.analyses)} series over {len(history.runs)} night(s)"
             + (f" since {history.since.commit or history.since.date}" if history.since else "")]
    for r in rows:
        ack = f"  acknowledged by {r['acknowledged']['who']}: {r['acknowledged']['why']}" if r["acknowledged"] else ""
        lines.append(f"  {r['series']}  {r['metric']}  {r['kind']} {percent(r['magnitude'])} ({_p(r)})  "
                     f"nights {r['night_before']}->{r['night_after']}  commits "
                     f"{(r['commit_before'] or '?')[:12]}..{(r['commit_after'] or '?')[:12]}  "
                     f"({r['nights_after']} night(s) since){ack}")
    drifts = drift_rows(history)
    if history.since:
        lines.append(f"{len(drifts)} drift(s) since night {history.night(history.since.run_id)} "
                     f"(last {history.params.drift_window} nights against the {history.params.drift_window} from it)")
    for d in drifts:
        p = "exact" if d["p_value"] is None else f"p={d['p_value']:.1e}"
        lines.append(f"  {d['series']}  {d['metric']}  drifted {d['change']:+.1%} ({p}) since night "
                     f"{d['reference_night']}")
    return lines
