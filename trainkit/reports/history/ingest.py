"""Result files into the run store: results JSON lines, pytest-benchmark JSON (bench's, or old
`.benchmarks/` autosaves), single records, or directories of them, read as every other command
reads them (trainkit.reports.records: a cut-off last line is read up to the cut, with a warning).

Each input file is one run unless --commit and --date say otherwise: files that resolve to the same
commit and date (a night's results.jsonl and benchmark.json) are one run, and a record two files
hold is stored once. What a run is:

    commit   --commit, else pytest-benchmark's commit_info.id, else the records' env.git_commit
    date     --date, else pytest-benchmark's datetime, else the latest finished_at of its records
    branch   --branch, else commit_info.branch;  host: the records' env.hostname
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.options import UsageError
from trainkit.engine.spec.schema import fingerprint

from ..records import Run, read_runs
from .store import IngestResult, add_run, opened

ADDED_KEYS = ("run", "source")  # what trainkit.reports.records adds to each record; not part of the record


def iso_date(text: str) -> str:
    """An ISO 8601 date or time as the store keeps it: UTC, to the second (a bare date: midnight UTC)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"date {text!r} is not ISO 8601 (e.g. 2026-12-04 or 2026-12-04T02:17:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunMeta:
    """What the command line says about the runs it ingests (None: read it from the files)."""

    commit: str | None = None
    date: str | None = None
    branch: str | None = None
    preset: str | None = None
    report_url: str | None = None


def _most_common(values: list[Any]) -> Any:
    values = [v for v in values if v]
    return Counter(values).most_common(1)[0][0] if values else None


def _info(run: Run, meta: RunMeta) -> dict[str, Any]:
    envs = [r.get("env") or {} for r in run.records]
    finished = [r["finished_at"] for r in run.records if isinstance(r.get("finished_at"), str)]
    date = meta.date or run.datetime or (max(finished) if finished else None)
    if date is None:
        raise UsageError(f"{run.source}: its records carry no finish time and the file no date; give --date")
    return {"commit": meta.commit or run.commit_info.get("id") or _most_common([e.get("git_commit") for e in envs]),
            "branch": meta.branch or run.commit_info.get("branch"), "date": iso_date(date), "preset": meta.preset,
            "host": _most_common([e.get("hostname") for e in envs]), "source": run.source,
            "report_url": meta.report_url}


def ingest(db: str, paths: list[str], meta: RunMeta = RunMeta()) -> list[IngestResult]:
    """Append the runs in `paths` to the store at `db` (created if missing); one result per run."""
    groups: dict[tuple[Any, str], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for run in read_runs(paths):
        if not run.records:  # every record was in an earlier file of this command
            continue
        info = _info(run, meta)
        records = [{k: v for k, v in r.items() if k not in ADDED_KEYS} for r in run.records]
        group = groups.setdefault((info["commit"], info["date"]), (info, []))
        group[1].extend(records)
    with opened(db) as conn:
        return [add_run(conn, info, records, [fingerprint(r.get("env")) for r in records])
                for info, records in groups.values()]
