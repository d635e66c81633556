"""gpu-check's typed results: one check's verdict, what the run observed, and the whole document
(gpu-check.json keeps the keys it always had), with the small helpers every check family uses."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .stepprobe import StepCount

SCHEMA = "trainkit.gpu-check/1"
RESULTS, REPORT, SUMMARY_MD, SUMMARY_JSON, PROFILES = ("results.jsonl", "report.html", "gpu-check.md",
                                                      "gpu-check.json", "profiles")
OUTPUTS = (RESULTS, REPORT, "report.csv", "report.md", SUMMARY_MD, SUMMARY_JSON)
"""The files a run writes into --out (an earlier run's are removed first, so nothing stale is read)."""
OK, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True, kw_only=True)
class Check:
    """One check's result: the independent measure, the figure, and why it passed, failed or was skipped."""

    name: str
    """The check's name (`--only` takes it, or its group: the part before the dot)."""
    status: str
    """pass, fail or skip (skip: the check cannot run on this device; the reason says why)."""
    expected: str = ""
    """The independent measure or bound, readable, units included."""
    measured: str = ""
    """The figure trainkit reported, readable."""
    reason: str = ""
    """One line: why it passed, failed or was skipped."""
    figures: Mapping[str, Any] = field(default_factory=dict)
    """The numbers the decision read, units in the keys (gpu-check.json)."""

    def __post_init__(self) -> None:
        if self.status not in (OK, FAIL, SKIP):
            raise ValueError(f"status={self.status!r}; choose from {OK}, {FAIL}, {SKIP}")


@dataclass(frozen=True)
class WindowClocks:
    """Two clocks around one cell's window of timed steps (None: the cell failed before it ended)."""

    worker_s: float | None = None
    """The worker's host clock (perf_counter) from before its first timed step to the sync after its
    last: the time check's reference."""
    launcher_s: float | None = None
    """This process's clock from sending the command to the reply: worker_s plus two process
    hand-offs, which a CPU quota (a container's CFS period) can stretch to ~100 ms each. Reported,
    not judged."""


@dataclass(frozen=True, kw_only=True)
class Observed:
    """What the run measured: the input of every check's decision."""

    records: Mapping[str, dict[str, Any]]
    """Each role's cell record (roles: cells.plan_cells)."""
    clocks: Mapping[str, WindowClocks]
    """Each role's clocks around its window of timed steps (cells.WindowClocks)."""
    matmul: Mapping[str, Any] | None = None
    """The matmul probe's answer (numerics.measure_matmuls), or {"error": ...}."""
    steps: Mapping[str, StepCount] = field(default_factory=dict)
    """The step probe's count of each cell the floor reads, by cell id (stepprobe.count_step)."""
    step_errors: Mapping[str, str] = field(default_factory=dict)
    """Why the step probe has no count of a cell, by cell id."""


@dataclass(frozen=True, kw_only=True)
class CellRun:
    """One cell as the run went: gpu-check.json's `cells` and gpu-check.md's last table."""

    cell_id: str
    roles: tuple[str, ...]
    """The roles it served (cells.plan_cells)."""
    status: str
    """The record's status: ok, oom, diverged, timeout, crashed, unsupported."""
    status_detail: str | None
    wall_s: float | None
    """The worker's clock around its timed window; None when the cell failed before it ended."""


@dataclass(frozen=True, kw_only=True)
class GpuCheckDocument:
    """gpu-check.json (and the source of gpu-check.md): the verdict, the machine, the cells, the
    probes' answers and every check. Fields the run never reached are None."""

    schema: str = SCHEMA
    verdict: str
    """pass, fail or infrastructure failure."""
    exit_status: int
    """The command's exit status (trainkit/nightly/__init__.py)."""
    device: str | None = None
    """cuda or cpu, as the device probe answered."""
    gpu_name: str | None = None
    capability: tuple[int, ...] | None = None
    device_line: str
    """The machine in one line (or the --device asked for, when it could not be used)."""
    env: Mapping[str, Any] | None = None
    """The environment fingerprint the device probe gave (torch, CUDA, driver, CPU, ...)."""
    only: tuple[str, ...] = ()
    """The checks --only chose (empty: all)."""
    started_at: str
    """UTC, ISO 8601, seconds."""
    duration_s: float
    cells: tuple[CellRun, ...] = ()
    matmul: Mapping[str, Any] | None = None
    """The matmul probe's answer (None when no chosen check reads it)."""
    step_probe: Mapping[str, Any] | None = None
    """The step probe's counts and errors by cell id (None when no chosen check reads it)."""
    report: str | None = None
    """Path of the HTML report of the cells' records."""
    report_problem: str | None = None
    """Why there is no report (None when there is one)."""
    error: str | None = None
    """The infrastructure failure that ended the run before any cell, in one line."""
    checks: tuple[Check, ...] = ()

    def counts(self) -> dict[str, int]:
        """Checks per status: pass, fail, skip."""
        return {status: sum(c.status == status for c in self.checks) for status in (OK, FAIL, SKIP)}

    def to_json(self) -> dict[str, Any]:
        """The JSON object of gpu-check.json: NaN and infinity written as null."""
        return jsonable(asdict(self))


def jsonable(value: Any) -> Any:
    """JSON has no NaN or infinity: such a figure is written as null; tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def failed_cell(name: str, expected: str, records: Sequence[dict[str, Any]]) -> Check | None:
    """A fail naming the first cell that did not end ok, or None when all did."""
    for record in records:
        if record.get("status") != "ok":
            return Check(name=name, status=FAIL, expected=expected, measured=f"{record.get('status')}",
                         reason=f"cell {record.get('cell_id')} ended {record.get('status')}: "
                                f"{record.get('status_detail') or 'no detail'}")
    return None


def size_text(n: float) -> str:
    """Bytes, readable: GiB from 1 GiB up, MiB below (KiB below 1 MiB: the CPU cells are small)."""
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if abs(n) >= 2**20 else f"{n / 2**10:.1f} KiB"


def finite(value: Any) -> bool:
    """A real, finite number (not a bool, None, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def on_gpu(record: Mapping[str, Any]) -> bool:
    """The cell ran on a CUDA device."""
    return str(record["config"].get("resolved_device", "")).startswith("cuda")
