"""Read result files into records: pure Python, no pandas, no torch.

Two kinds of file come out of bench, and a third out of `python -m trainkit run -o`:

- pytest-benchmark JSON (`--benchmark-json`, `--benchmark-autosave`): a `benchmarks` list whose
  entries carry the cell's result record in `extra_info`; only cells whose test passed are there.
- a results file: JSON lines, one record per cell of any status, appended as each cell ends, so
  a run killed mid-write leaves a cut-off last line: the records before it are read, with a
  `trainkit.engine.spec.schema.CutOffLineWarning` naming the file and the line (the CLIs print it on stderr
  once). The reader is `trainkit.engine.spec.schema.parse_jsonl`, the one bench's results are read with.
- one record as a JSON object.

A directory stands for every `*.json` and `*.jsonl` file under it (pytest-benchmark autosaves to
`.benchmarks/<machine>/NNNN_*.json`) but the profiler's Chrome traces (`*.trace.json`, which bench
writes under its report directory). Anything else is bad input: `InputError`, one line, which the
CLI prints and turns into exit status 2.

The schema and the fingerprint come from `trainkit.engine.spec.schema`, which does not import torch: reading a
report must not cost torch's 3 s import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from trainkit.engine.spec.options import UsageError
from trainkit.engine.spec.schema import SCHEMA, ResultsFileError, fingerprint, parse_jsonl  # noqa: F401 - fingerprint: this module's interface

OK = "ok"
TRACE_SUFFIX = ".trace.json"  # trainkit.engine.cell.profile's Chrome traces: JSON, never results
UNKNOWN_HARDWARE = "unknown device"


class InputError(UsageError):
    """A file that cannot be read as results; the message is one line naming the file (bad input:
    the commands exit 2)."""


@dataclass
class Run:
    """One input file: the records it holds and what it says about the session that wrote it."""

    source: str
    """Path of the file."""
    kind: str
    """pytest-benchmark, results (JSON lines) or record (one JSON object)."""
    records: list[dict[str, Any]]
    """Result records, each with `run` (the label below) and `source` added by read_runs, which also
    drops a record an earlier file already holds (see `envs` for what the file itself says)."""
    label: str = ""
    """Short name of the run in tables and legends (the file name, or its path when names clash)."""
    machine_info: dict[str, Any] = field(default_factory=dict)
    """pytest-benchmark's machine_info (with bench's fingerprint under `trainkit_env`), if any."""
    commit_info: dict[str, Any] = field(default_factory=dict)
    datetime: str | None = None
    envs: list[dict[str, Any]] = field(default_factory=list)
    """The environment of every record in the file, duplicates included."""


def hardware(env: dict[str, Any] | None) -> str:
    """What the cell ran on, for grouping and labels: the GPU model, or the CPU model."""
    env = env or {}
    if env.get("gpu_name"):
        return str(env["gpu_name"])
    return f"CPU {env['cpu']}" if env.get("cpu") else UNKNOWN_HARDWARE


def _is_record(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA and isinstance(obj.get("cell_id"), str)


def _from_benchmark_json(path: str, doc: dict[str, Any]) -> Run:
    entries = doc.get("benchmarks")
    if not isinstance(entries, list):
        raise InputError(f"{path}: 'benchmarks' is not a list; not a pytest-benchmark file")
    records = []
    for entry in entries:
        record = entry.get("extra_info") if isinstance(entry, dict) else None
        if _is_record(record):
            # The pytest-benchmark timing of the same steps, kept beside the record for reference.
            stats = entry.get("stats") or {}
            records.append({**record, "benchmark": {"name": entry.get("name"), **{
                k: stats.get(k) for k in ("min", "max", "mean", "median", "iqr", "stddev", "rounds")}}})
    if not entries:
        raise InputError(f"{path}: pytest-benchmark file with no benchmarks (an empty run)")
    if not records:
        raise InputError(f"{path}: none of its {len(entries)} benchmarks carries a trainkit result "
                         f"record in extra_info ({SCHEMA})")
    machine_info = doc.get("machine_info") if isinstance(doc.get("machine_info"), dict) else {}
    commit_info = doc.get("commit_info") if isinstance(doc.get("commit_info"), dict) else {}
    return Run(path, "pytest-benchmark", records, machine_info=machine_info, commit_info=commit_info,
               datetime=doc.get("datetime"))


def _from_json_lines(path: str, text: str) -> Run:
    try:
        lines = parse_jsonl(text, path)
    except ResultsFileError as e:
        raise InputError(str(e)) from None
    records = []
    for n, obj in lines:
        if not _is_record(obj):
            raise InputError(f"{path}: line {n} is not a trainkit result record ({SCHEMA})")
        records.append(obj)
    if not records:
        raise InputError(f"{path}: no result records (an empty run)")
    return Run(path, "results", records)


def read_run(path: str) -> Run:
    """The records of one file (see the module docstring for the kinds); raises InputError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    if not text.strip():
        raise InputError(f"{path}: empty file (an empty run)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        # Not one document: JSON lines when its first line is one, else malformed.
        first_line = text.lstrip().split("\n", 1)[0]
        try:
            json.loads(first_line)
        except json.JSONDecodeError:
            raise InputError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return _from_json_lines(path, text)
    if isinstance(doc, dict) and "benchmarks" in doc:
        return _from_benchmark_json(path, doc)
    if _is_record(doc):
        return Run(path, "results" if path.endswith(".jsonl") else "record", [doc])
    raise InputError(f"{path}: JSON, but neither a pytest-benchmark file nor a trainkit result record ({SCHEMA})")


def expand(paths: list[str]) -> list[str]:
    """Files named, with each directory replaced by the result files under it (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                           for name in names if name.endswith((".json", ".jsonl"))
                           and not name.endswith(TRACE_SUFFIX))
            if not found:
                raise InputError(f"{path}: directory without .json or .jsonl result files")
            files.extend(found)
        else:
            files.append(path)
    return files


def _dedup_key(record: dict[str, Any]) -> tuple[Any, ...]:
    # bench writes each ok cell twice (results file and pytest-benchmark JSON); the measured step
    # times and the finishing time tell one execution of a cell from another.
    steps = record.get("step_time_s") or {}
    return (record.get("cell_id"), record.get("finished_at"), (record.get("env") or {}).get("hostname"),
            tuple(steps.get("values") or ()), record.get("status_detail"))


def read_runs(paths: list[str]) -> list[Run]:
    """Every run in the files and directories named; each execution of a cell appears once even when
    two files hold it. Raises InputError on the first bad file, or when no path was given."""
    files = expand(paths)
    if not files:
        raise InputError("no result files given")
    runs = [read_run(p) for p in files]
    names = [os.path.basename(r.source) for r in runs]
    seen: set[tuple[Any, ...]] = set()
    for run, name in zip(runs, names):
        run.label = name if names.count(name) == 1 else run.source
        run.envs = [r.get("env") or {} for r in run.records]
        unique = []
        for record in run.records:
            key = _dedup_key(record)
            if key not in seen:
                seen.add(key)
                unique.append({**record, "run": run.label, "source": run.source})
        run.records = unique
    return runs


def all_records(runs: list[Run]) -> list[dict[str, Any]]:
    return [record for run in runs for record in run.records]


def get(record: dict[str, Any], dotted: str) -> Any:
    """record["a"]["b"] for "a.b", or None anywhere along the way."""
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
