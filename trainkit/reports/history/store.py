"""The run store: one SQLite file in WAL mode, append-only, every record of every night.

    runs     one row per ingested run: commit, branch, date (ISO 8601), preset, host, source file,
             the link to that night's report
    records  one row per result record: its run, cell id, environment fingerprint, status, the
             figures the detectors read, the raw per-step times and the whole record as JSON
    acks     acknowledged changes: a series, a metric, the run from which the change is intended,
             who and why (an acknowledgement starts a new segment)

A series is a cell id x fingerprint (trainkit.engine.spec.schema.fingerprint: GPU model, driver, CUDA and
torch; on a CPU the CPU model and torch): records from different machines never mix.

Why SQLite in WAL mode: it is in the standard library, a reader
does not block the nightly's writer nor the writer a reader, and its file format has been stable
since 2004; DuckDB refuses a read-only open while a writer holds the file. DuckDB can still
`ATTACH 'history.db' (TYPE sqlite)` for heavy analysis. WAL needs every process on one host: keep
the file on a local disk, not NFS.

Append-only: triggers refuse UPDATE and DELETE on runs and records, so no tool edits history.
The schema version is SQLite's `PRAGMA user_version`; MIGRATIONS[i] takes a store from version i to
i + 1, and a store of a newer version than this code knows is refused with a message.

Non-finite numbers (a diverged step's NaN loss, an infinite throughput) are stored as JSON null:
Python's json writes them as the tokens NaN and Infinity, which are not JSON, and one such record
made every `json_extract` over the table fail. Stores written before version 3 are repaired by its
migration (the one change history allows: the triggers are lifted for it and put back).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.options import UsageError

from ..records import InputError
from .series import RecordRow

_APPEND_ONLY = "".join(
    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the run store is append-only: {table} rows are never changed'); END;\n"
    for table in ("runs", "records") for verb in ("UPDATE", "DELETE"))

def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, +-inf) inside it replaced by None: JSON has no token
    for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Strict JSON text of `value`, non-finite numbers as null (finite)."""
    return json.dumps(finite(value), allow_nan=False)


JSON_COLUMNS = ("record", "memory", "step_times_s")


def _repair_non_finite(conn: sqlite3.Connection) -> None:
    """2 -> 3: the records an earlier version kept with NaN or Infinity tokens, rewritten as strict
    JSON with null in their place (the reading json.loads accepts the tokens)."""
    conn.execute("DROP TRIGGER records_no_update")
    invalid = " OR ".join(f"({c} IS NOT NULL AND json_valid({c}) = 0)" for c in JSON_COLUMNS)
    rows = conn.execute(f"SELECT id, {', '.join(JSON_COLUMNS)} FROM records WHERE {invalid}").fetchall()
    conn.executemany(f"UPDATE records SET {', '.join(f'{c} = ?' for c in JSON_COLUMNS)}, "
                     "throughput_samples_per_s = json_extract(?, '$.throughput_samples_per_s'), "
                     "loss_final = json_extract(?, '$.loss.final') WHERE id = ?",
                     [(*(None if v is None else to_json(json.loads(v)) for v in values),
                       to_json(json.loads(values[0])), to_json(json.loads(values[0])), row_id)
                      for row_id, *values in rows])
    conn.execute("CREATE TRIGGER records_no_update BEFORE UPDATE ON records BEGIN SELECT RAISE(ABORT, "
                 "'the run store is append-only: records rows are never changed'); END")


MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    # 0 -> 1: runs and records.
    """
    CREATE TABLE runs (id INTEGER PRIMARY KEY, run_key TEXT NOT NULL UNIQUE, commit_sha TEXT, branch TEXT,
                       date TEXT NOT NULL, preset TEXT, host TEXT, source TEXT, ingested_at TEXT NOT NULL);
    CREATE TABLE records (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id),
                          record_key TEXT NOT NULL UNIQUE, cell_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
                          status TEXT, throughput_samples_per_s REAL, loss_final REAL, memory TEXT,
                          step_times_s TEXT, record TEXT NOT NULL);
    CREATE INDEX records_series ON records (cell_id, fingerprint);
    """ + _APPEND_ONLY,
    # 1 -> 2: a link to each night's report, and acknowledged changes.
    """
    ALTER TABLE runs ADD COLUMN report_url TEXT;
    CREATE TABLE acks (id INTEGER PRIMARY KEY, cell_id TEXT NOT NULL, fingerprint TEXT NOT NULL,
                       metric TEXT NOT NULL, run_id INTEGER NOT NULL REFERENCES runs(id), who TEXT NOT NULL,
                       why TEXT NOT NULL, created_at TEXT NOT NULL);
    """,
    # 2 -> 3: records an earlier version stored with NaN tokens, as strict JSON (module docstring).
    _repair_non_finite,
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_MS = 30_000  # a reader or a second writer waits this long for the writer's lock


class StoreError(InputError):
    """A store that cannot be used (newer schema, not a run store, unreadable): one line, exit 2."""


@dataclass(frozen=True)
class RunInfo:
    """What is known about one ingested run."""

    run_id: int
    commit: str | None
    """The commit the run measured (--commit, pytest-benchmark's commit_info, or the records' env)."""
    branch: str | None
    date: str
    """ISO 8601; runs are ordered by it (then by ingestion)."""
    preset: str | None
    host: str | None
    source: str | None
    report_url: str | None


@dataclass(frozen=True)
class IngestResult:
    """What one ingest added."""

    run_id: int | None
    """The new run, or None when every record was in the store already (ingesting twice is a no-op)."""
    added: int
    """Records added."""
    already: int
    """Records the store held already (left as they are)."""


def fingerprint_key(fp: dict[str, Any]) -> str:
    """The fingerprint as the store keys it: canonical JSON."""
    return json.dumps(fp, sort_keys=True)


def record_key(record: dict[str, Any]) -> str:
    """One execution of a cell: bench writes each ok cell twice (results file and pytest-benchmark
    JSON), and the measured step times with the finishing time and host tell executions apart
    (the same key trainkit.reports.records uses to drop such repeats)."""
    steps = record.get("step_time_s") or {}
    key = [record.get("cell_id"), record.get("finished_at"), (record.get("env") or {}).get("hostname"),
           steps.get("values") or [], record.get("status_detail")]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _version(conn: sqlite3.Connection, path: str) -> int:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: not a run store ({e})") from None
    if version == 0 and tables:
        raise StoreError(f"{path}: an SQLite file, but not a trainkit run store (tables {', '.join(sorted(tables))})")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: run store schema version {version} is newer than this trainkit reads "
                         f"({SCHEMA_VERSION}); upgrade trainkit to read it")
    return version


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the store to `target`, one migration per transaction; returns the version found."""
    found = _version(conn, path)
    for version in range(found, target):
        step = MIGRATIONS[version]
        try:  # one transaction per step: a failed migration leaves the previous version
            if callable(step):
                conn.execute("BEGIN IMMEDIATE")
                step(conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            else:
                conn.executescript(f"BEGIN IMMEDIATE;\n{step}\nPRAGMA user_version = {version + 1};\nCOMMIT;")
        except sqlite3.DatabaseError as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{path}: cannot migrate the run store from schema version {version} ({e})") from None
    return found


def _must_exist(path: str) -> None:
    if not os.path.isfile(path):
        raise StoreError(f"{path}: no such run store (create it with `python -m reports history ingest`)")


def connect(path: str, *, readonly: bool = False, target: int = SCHEMA_VERSION,
            existing: bool = False) -> sqlite3.Connection:
    """An open store: a writer creates and migrates it (only an `existing` one where it reads what is
    there, as `ack`); a reader opens it read-only and refuses a missing store or one of another
    version."""
    if readonly or existing:
        _must_exist(path)
    if readonly:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        version = _version(conn, path)
        if version != SCHEMA_VERSION:
            conn.close()
            raise StoreError(f"{path}: run store schema version {version}, this trainkit reads {SCHEMA_VERSION}; "
                             "open it once with `python -m reports history ingest` (or migrate) to migrate it")
        return conn
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path}: cannot open as a run store ({e})") from None
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn, path, target)
    return conn


@contextmanager
def opened(path: str, *, readonly: bool = False, existing: bool = False) -> Iterator[sqlite3.Connection]:
    with closing(connect(path, readonly=readonly, existing=existing)) as conn:
        yield conn


def _columns(record: dict[str, Any]) -> tuple[Any, ...]:
    loss = record.get("loss") or {}
    steps = record.get("step_time_s") or {}
    return (record.get("cell_id"), record.get("status"), finite(record.get("throughput_samples_per_s")),
            finite(loss.get("final")), to_json(record.get("memory")), to_json(steps.get("values")))


def add_run(conn: sqlite3.Connection, info: dict[str, Any], records: list[dict[str, Any]],
            fingerprints: list[dict[str, Any]]) -> IngestResult:
    """Append one run and its records in one transaction; records the store holds already are left
    out, and a run none of whose records is new adds nothing."""
    keys = [record_key(r) for r in records]
    conn.execute("BEGIN IMMEDIATE")
    try:
        known = known_keys(conn, keys)
        new = [(k, r, fp) for k, r, fp in zip(keys, records, fingerprints) if k not in known]
        new = list({k: (k, r, fp) for k, r, fp in new}.values())  # a file holding one execution twice
        if not new:
            conn.execute("ROLLBACK")
            return IngestResult(None, 0, len(known))
        run_key = hashlib.sha256(json.dumps([info.get("commit"), info["date"], sorted(k for k, _, _ in new)])
                                 .encode()).hexdigest()
        run_id = conn.execute(
            "INSERT INTO runs (run_key, commit_sha, branch, date, preset, host, source, ingested_at, report_url) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, datetime('now'), ?)",
            (run_key, info.get("commit"), info.get("branch"), info["date"], info.get("preset"), info.get("host"),
             info.get("source"), info.get("report_url"))).lastrowid
        conn.executemany(
            "INSERT INTO records (run_id, record_key, fingerprint, cell_id, status, throughput_samples_per_s, "
            "loss_final, memory, step_times_s, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, k, fingerprint_key(fp), *_columns(r), to_json(r)) for k, r, fp in new])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return IngestResult(run_id, len(new), len(known))


def _among_keys(conn: sqlite3.Connection, column: str, keys: list[str], chunk: int = 500) -> set[Any]:
    """`column` of the records whose key is among `keys` (asked in chunks: SQLite caps the
    parameters of one statement)."""
    found: set[Any] = set()
    for i in range(0, len(keys), chunk):
        part = keys[i:i + chunk]
        found |= {value for (value,) in conn.execute(
            f"SELECT DISTINCT {column} FROM records WHERE record_key IN ({','.join('?' * len(part))})", part)}
    return found


def known_keys(conn: sqlite3.Connection, keys: list[str]) -> set[str]:
    """The record keys the store holds among `keys`."""
    return _among_keys(conn, "record_key", keys)


def runs_of(conn: sqlite3.Connection, keys: list[str]) -> set[int]:
    """The runs that hold any of these record keys."""
    return _among_keys(conn, "run_id", keys)


def runs(conn: sqlite3.Connection) -> list[RunInfo]:
    """Every run, oldest first."""
    rows = conn.execute("SELECT id, commit_sha, branch, date, preset, host, source, report_url FROM runs "
                        "ORDER BY date, id").fetchall()
    return [RunInfo(*row) for row in rows]


def record_rows(conn: sqlite3.Connection, cell_glob: str = "*") -> list[RecordRow]:
    """The detectors' view of every record whose cell id matches the glob, oldest run first."""
    rows = conn.execute(
        "SELECT r.cell_id, r.fingerprint, r.run_id, r.status, r.throughput_samples_per_s, r.loss_final, r.memory, "
        "json_extract(r.record, '$.config.model'), json_extract(r.record, '$.config.precision') "
        "FROM records r JOIN runs u ON u.id = r.run_id WHERE r.cell_id GLOB ? ORDER BY u.date, u.id, r.id",
        (cell_glob,)).fetchall()
    return [RecordRow(cell, json.loads(fp), run_id, status, throughput, loss, json.loads(memory) if memory else None,
                      model, precision)
            for cell, fp, run_id, status, throughput, loss, memory, model, precision in rows]


@dataclass(frozen=True)
class Ack:
    """An intended change: from run `run_id` on, the series' `metric` is expected to differ."""

    cell_id: str
    fingerprint: dict[str, Any]
    metric: str
    run_id: int
    who: str
    why: str
    created_at: str


def add_ack(conn: sqlite3.Connection, ack: Ack) -> None:
    with conn:
        conn.execute("INSERT INTO acks (cell_id, fingerprint, metric, run_id, who, why, created_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (ack.cell_id, fingerprint_key(ack.fingerprint), ack.metric,
                                                      ack.run_id, ack.who, ack.why, ack.created_at))


def acks(conn: sqlite3.Connection) -> list[Ack]:
    rows = conn.execute("SELECT cell_id, fingerprint, metric, run_id, who, why, created_at FROM acks "
                        "ORDER BY id").fetchall()
    return [Ack(cell, json.loads(fp), metric, run_id, who, why, at) for cell, fp, metric, run_id, who, why, at in rows]


def resolve(ref: str, all_runs: tuple[RunInfo, ...] | list[RunInfo]) -> RunInfo:
    """The run a reference names: the first run of a commit (a prefix of 4+ characters), or the first
    run at or after an ISO date."""
    if not all_runs:
        raise UsageError("the run store holds no runs yet")
    if len(ref) >= 4:
        hit = next((r for r in all_runs if r.commit and r.commit.startswith(ref)), None)
        if hit:
            return hit
    try:
        when = dt.datetime.fromisoformat(ref.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is not None:
        when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
        hit = next((r for r in all_runs if dt.datetime.fromisoformat(r.date) >= when), None)
        if hit:
            return hit
    first, last = all_runs[0], all_runs[-1]
    raise UsageError(f"{ref!r} names no run: give a commit (4+ characters) or an ISO date; the store holds "
                     f"{len(all_runs)} runs, {first.commit or '?'} ({first.date}) to "
                     f"{last.commit or '?'} ({last.date})")
