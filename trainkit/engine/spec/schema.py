"""The result record's contract, without torch: what bench, reports and the nightly gate share.

Importing this module costs nothing (no torch), so readers of results stay fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from .options import UsageError

SCHEMA = "trainkit.result/1"
STATUSES = ("ok", "oom", "diverged", "timeout", "crashed", "unsupported", "precision-mismatch")
"""precision-mismatch: the cell ran, but one step's dtypes differ from what its precision declares
(trainkit.engine.measure.what_ran); its figures are of another configuration."""
MEMORY_KEYS = ("torch_max_allocated_bytes", "torch_max_reserved_bytes", "nvml_process_peak_bytes",
               "nvml_context_baseline_bytes", "host_rss_peak_bytes")
OPTIONAL_MEMORY_KEYS = ("host_rss_growth_bytes",)
"""Memory keys newer records carry and older ones lack; check_record does not ask for them.
host_rss_growth_bytes: a CPU cell's own growth of the resident set over its worker's baseline
(most of a worker's RSS is torch, inherited from the fork server, the same for every cell)."""
OPTIONAL_RECORD_KEYS = ("noise", "conditions", "what_ran", "harness_overhead_per_step_us", "harness_overhead_method",
                        "harness_overhead_share", "harness_overhead_flag")
"""Record keys newer records carry and older ones lack; check_record does not ask for them, and
readers judge an older record on what it has. noise: the spread of the step times and the interval
of their median; conditions: the host, threads and GPU neighbours over the timed window
(trainkit.engine.measure.conditions); what_ran: the dtypes one extra step observed against the
declared ones (trainkit.engine.measure.what_ran); harness_overhead_*: trainkit's own cost per step
beyond a hand-written loop, its share of the median step and the flag where that is over 1 %
(trainkit.engine.train.overhead)."""
RECORD_KEYS = ("schema", "cell_id", "status", "status_detail", "config", "throughput_samples_per_s",
               "step_time_s", "memory", "loss", "scaler", "mfu", "flops_per_sample", "energy_j_per_sample", "env")

# A cell whose data phase takes more than this share of its step is data-bound: the data pipeline,
# not the model, sets its speed (trainkit.engine.cell.profile flags it; reports show it).
DATA_BOUND_SHARE = 0.2

# What a baseline must match: GPU model, driver, CUDA and torch (on the CPU: the CPU model, the
# cores the process may use, and torch: a 2-core baseline says nothing about a 4-core runner).
# Records from before usable_cpus was recorded fingerprint it as None, so they match only each other.
FINGERPRINT_KEYS = ("gpu_name", "driver", "cuda", "torch")
FINGERPRINT_KEYS_CPU = ("cpu", "usable_cpus", "torch")


def fingerprint(env: dict[str, Any] | None) -> dict[str, Any]:
    env = env or {}
    keys = FINGERPRINT_KEYS if env.get("gpu_name") else FINGERPRINT_KEYS_CPU
    return {k: env.get(k) for k in keys}


# The one number that stands for a cell's peak memory, wherever one is printed or judged (the
# `trainkit run` line, bench's table, the report's summary, the regression gate), first found
# first: what PyTorch holds on the device (allocations plus its cache, without the CUDA context,
# so a driver update does not move it); the allocations alone; NVML's per-process peak; on a CPU,
# the cell's own RSS growth, else the whole worker's RSS (older records lack the growth).
HEADLINE_MEMORY = ("torch_max_reserved_bytes", "torch_max_allocated_bytes", "nvml_process_peak_bytes",
                   "host_rss_growth_bytes", "host_rss_peak_bytes")
MEMORY_NAMES = {"torch_max_reserved_bytes": "reserved", "torch_max_allocated_bytes": "allocated",
                "nvml_process_peak_bytes": "NVML", "host_rss_growth_bytes": "host RSS growth",
                "host_rss_peak_bytes": "host RSS"}
"""Short names of the memory measures, for headers and printed lines."""


def _measured(value: Any) -> bool:
    # A finite number: null means not measurable, and tables read back from pandas hold NaN.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def headline_memory(memories: Iterable[Mapping[str, Any] | None]) -> str | None:
    """The memory measure that stands for these records' peak: the first of HEADLINE_MEMORY that
    every one of the given `memory` objects measured, so repeats and both sides of a comparison
    are judged on one measure. None when there is no memory object or no measure common to all."""
    memories = [m or {} for m in memories]
    for measure in HEADLINE_MEMORY:
        if memories and all(_measured(m.get(measure)) for m in memories):
            return measure
    return None


def check_record(record: Any) -> list[str]:
    """What is wrong with a record, as readable lines (empty when it honours the contract)."""
    if not isinstance(record, dict):
        return [f"a record must be a JSON object, not {type(record).__name__}"]
    problems = [f"missing key {k!r}" for k in RECORD_KEYS if k not in record]
    if record.get("schema") != SCHEMA:
        problems.append(f"schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    if record.get("status") not in STATUSES:
        problems.append(f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    if not isinstance(record.get("memory", {}), dict) or any(k not in record.get("memory", {}) for k in MEMORY_KEYS):
        problems.append("memory lacks one of " + ", ".join(MEMORY_KEYS))
    return problems


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temporary path beside `path`, moved over it when the block succeeds: a reader never sees a
    half-written file, and a write that fails leaves the old one (and no temporary) behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (see `replacing`)."""
    with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj: Any) -> None:
    """Write a JSON document atomically; NaN is refused (JSON has none)."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def append_jsonl(record: dict[str, Any], path: str) -> None:
    """Append one record as a line and flush it to disk: a run killed later keeps this cell."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


class ResultsFileError(ValueError):
    """A results file that is not JSON lines: a line other than the last is not JSON. The message
    is one line naming the file and the line (bad input, exit status 2, in every command)."""


class JsonFileError(UsageError, ValueError):
    """A JSON file that cannot be read: missing, unreadable, not UTF-8 or not JSON. The message is one
    line naming the file and what it should have been (bad input, exit status 2, in every command)."""


def read_json(path: str, what: str, error: type[Exception] = JsonFileError) -> Any:
    """The JSON document in `path`, or `error` (one line: the file, what it should have been, and
    why it is not) for a file that cannot be read as JSON. The one JSON reader of every command."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: {exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from None


class CutOffLineWarning(UserWarning):
    """A results file whose last line is cut off, as a run killed while appending a record leaves
    it: the complete records before it are read, and this says so, naming the file and the line."""


def parse_jsonl(text: str, path: str) -> list[tuple[int, Any]]:
    """(line number, object) for each non-blank line of a results file's text; `path` names it in
    messages. A last line that is not JSON is a cut-off record: left out, with a CutOffLineWarning.
    Any other line that is not JSON raises ResultsFileError."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    parsed: list[tuple[int, Any]] = []
    for i, (n, line) in enumerate(lines):
        try:
            parsed.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ResultsFileError(f"{path}: line {n} is not valid JSON ({e.msg}); not a results file") from None
            k = len(parsed)
            warnings.warn(CutOffLineWarning(
                f"{path} line {n} is cut off (a run killed while writing it?); "
                f"read the {k} complete record{'' if k == 1 else 's'} before it"), stacklevel=2)
    return parsed


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a results file (see parse_jsonl: a cut-off last line warns, any other line that
    is not JSON raises ResultsFileError)."""
    with open(path, encoding="utf-8") as f:
        return [obj for _, obj in parse_jsonl(f.read(), path)]


@contextlib.contextmanager
def cut_off_lines_on_stderr() -> Iterator[None]:
    """Within it, each CutOffLineWarning is printed on stderr once, as `warning: MESSAGE`: a command
    reads its results at several stages and should say it once, in its own words, not Python's
    warning format (nor, under warnings-as-errors, fail on it). Other warnings keep their filters."""
    shown: set[str] = set()
    with warnings.catch_warnings():  # restores the filters and showwarning on the way out
        warnings.simplefilter("always", CutOffLineWarning)
        show_other = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if not issubclass(category, CutOffLineWarning):
                show_other(message, category, filename, lineno, file, line)
            elif str(message) not in shown:
                shown.add(str(message))
                print(f"warning: {message}", file=sys.stderr, flush=True)

        warnings.showwarning = show
        yield
