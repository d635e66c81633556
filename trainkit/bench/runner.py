"""One benchmark session: runs cells in isolated workers, keeps every record, shows progress.

Every cell's record, whatever its status, is appended (and fsynced) to the results file the
moment the cell ends, so a run killed halfway keeps what it finished.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest

from trainkit.engine.cell.launch import CellFailed, CellWorkers, time_left
from trainkit.engine.cell.record import append_jsonl, merge_ranks
from trainkit.engine.measure.conditions import condition_flags
from trainkit.engine.spec.config import ProfileConfig
from trainkit.engine.spec.schema import MEMORY_NAMES, headline_memory

from .clock import advance
from .matrix import CellSpec


@dataclass(frozen=True)
class SessionOptions:
    """The bench options that shape how each cell runs (documented in conftest's --help)."""

    rounds: int
    cell_timeout_s: float
    memory_limit_bytes: int | None
    strict_cells: bool
    report_dir: str
    results_file: str
    profile: ProfileConfig | None = None
    resume: bool = False
    """Add to the results file (--resume) instead of starting it empty."""


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def cell_kind(cell: CellSpec) -> tuple[Any, ...]:
    """What sets a cell's wall time besides its size, most telling first: compiled (a compile's
    seconds), activation checkpointing, ranks, precision (bf16 on a CPU is several times fp32)."""
    config = cell.config
    return (config.compile, config.activation_checkpointing != "none", config.world_size, config.precision)


class BenchSession:
    def __init__(self, options: SessionOptions, write: Any) -> None:
        self.options = options
        self.write = write
        self.records: list[dict[str, Any]] = []
        self.total = 0
        self.setup_s = 0.0
        self.started = time.monotonic()
        self.cell_seconds: list[float] = []
        self.timed: list[tuple[tuple[Any, ...], float]] = []
        """(cell_kind, wall seconds) of each cell run so far."""
        self.planned: list[CellSpec] = []
        """The cells this session will run, in order (the progress line's time left)."""
        self.remote: Any = None
        """bench.executors.RemoteCells when the cells run as jobs (--executor slurm, submitit-local)."""
        os.makedirs(os.path.dirname(os.path.abspath(options.results_file)), exist_ok=True)
        if not options.resume:
            open(options.results_file, "w").close()  # this session's file, empty until a cell ends

    def keep(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        append_jsonl(record, self.options.results_file)

    def note_skipped(self, cells: list[CellSpec], env: dict[str, Any]) -> None:
        """Cells the hardware cannot run are results too: status unsupported, with the reason and
        the environment that could not run them."""
        for cell in cells:
            if cell.skip_reason:
                self.keep(merge_ranks(cell.config, [], "unsupported", cell.skip_reason,
                                      extra={"repeat": cell.repeat, "skipped_at_collection": True, "env": env}))

    def _progress(self, cell: CellSpec) -> None:
        done = len(self.cell_seconds)
        elapsed = time.monotonic() - self.started
        left = ""
        if done:
            position = next((i for i, c in enumerate(self.planned) if c.id == cell.id), len(self.planned))
            pending = [cell_kind(c) for c in self.planned[position:]] or [cell_kind(cell)]
            seconds, unknown = time_left(self.timed, pending)
            left = f", ~{_clock(seconds)} left" + (f" + {unknown} compiled cell{'s' if unknown > 1 else ''} not "
                                                   "yet timed" if unknown else "")
        self.write(f"\n[cell {done + 1}/{self.total}] {cell.id} (elapsed {_clock(elapsed)}{left}) ")

    def complete(self, record: dict[str, Any], cell: CellSpec) -> dict[str, Any]:
        """What bench adds to a cell's record, wherever the cell ran."""
        record["repeat"] = cell.repeat
        record["round"] = cell.repeat  # the matrix runs in rounds (matrix.build_matrix): repeat r is round r
        record["bench_rounds"] = min(self.options.rounds, cell.config.steps)
        return record

    def run(self, cell: CellSpec, benchmark: Any) -> dict[str, Any]:
        """Start the cell's workers, warm up, let pytest-benchmark time `rounds` single steps,
        run the remaining steps as one window, and keep the record. With --executor slurm or
        submitit-local the cell ran as a job: its timed steps are replayed to pytest-benchmark."""
        if self.remote is not None:
            return self._reported(self.remote.run(cell, benchmark), benchmark)
        self._progress(cell)
        began = time.monotonic()
        config = cell.config
        rounds = min(self.options.rounds, config.steps)
        fault: Exception | None = None
        with CellWorkers(config, self.options.cell_timeout_s, self.options.memory_limit_bytes,
                  profile=self.options.profile) as workers:
            try:
                workers.start()
                workers.warmup()
                benchmark.pedantic(lambda: advance(workers.step()), rounds=rounds, iterations=1, warmup_rounds=0)
                if rounds < config.steps:
                    workers.run_timed()
                record = workers.finish()
            except CellFailed as failure:
                record = workers.record_for(failure)
            except Exception as exc:  # trainkit's own fault, not the cell's (see harness_fault_record)
                record, fault = harness_fault_record(config, exc), exc
        self.complete(record, cell)
        self.cell_seconds.append(time.monotonic() - began)
        self.timed.append((cell_kind(cell), self.cell_seconds[-1]))
        self.keep(record)
        if fault is not None:
            raise fault  # the record is kept; the test fails with the traceback, and the matrix goes on
        return self._reported(record, benchmark)

    def _reported(self, record: dict[str, Any], benchmark: Any) -> dict[str, Any]:
        benchmark.extra_info.update(record)  # mutate, never rebind: pytest-benchmark holds this dict
        if record["status"] != "ok":
            benchmark.has_error = True  # partial timings of a failed cell stay out of the JSON
        self.write(f"-> {outcome(record)} ")
        return record

    def time_split(self) -> str:
        """Where the session's wall time went: timed steps, warmup, and each cell's fixed cost."""
        ran = [r for r in self.records if not r.get("skipped_at_collection")]
        wall = time.monotonic() - self.started
        timed = sum(sum(r["step_time_s"].get("values") or []) for r in ran)
        warmup = sum(r.get("warmup_time_s") or 0 for r in ran)
        fixed = sorted(r["fixed_cost_s"]["spawn_to_ready_s"] for r in ran
                       if r.get("fixed_cost_s", {}).get("spawn_to_ready_s") is not None)
        if not ran or not fixed:
            return f"wall time {wall:.1f} s, no cell ran"
        return (f"wall time {wall:.1f} s for {len(ran)} cells (after {self.setup_s:.1f} s starting the fork server): "
                f"timed steps {timed:.1f} s ({timed / wall:.0%}), warmup {warmup:.1f} s; fixed cost per cell "
                f"(process start to model built): median {fixed[len(fixed) // 2]:.2f} s, max {fixed[-1]:.2f} s")

    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok" and not r.get("skipped_at_collection")]


def harness_fault_record(config: Any, exc: Exception) -> dict[str, Any]:
    """The record of a cell whose record trainkit itself failed to make, or whose driving raised
    something other than the cell's own end (CellFailed): status crashed, the error in its detail.
    Every cell run leaves a record, so a results file never silently lacks one (a merge that raised
    once left a matrix without its third cell); bench still fails the cell's test with the traceback."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return merge_ranks(config, [], "crashed", f"trainkit failed, not the cell: {detail}")


def outcome(record: dict[str, Any]) -> str:
    """A cell's result in a few words, for the progress lines."""
    if record["status"] == "ok":
        return f"{record['throughput_samples_per_s']:.1f} samples/s"
    return f"{record['status']}: {record['status_detail']}"


TABLE_HEADER = (f"{'cell':44} {'status':11} {'samples/s':>11} {'step ms':>9} {'95% CI':>7} {'peak MiB':>9} "
                f"{'final loss':>10}  memory measure  flags")


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval_text(record: dict[str, Any]) -> str:
    """The half-width of the median step time's 95 % interval, relative to the median ("±4%")."""
    noise, median = record.get("noise") or {}, (record.get("step_time_s") or {}).get("median")
    low, high = noise.get("median_ci_low_s"), noise.get("median_ci_high_s")
    if low is None or high is None or not median:
        return "-"
    return f"±{(high - low) / 2 / median:.0%}"


def table_row(record: dict[str, Any]) -> str:
    """The record's line in the session's closing table (TABLE_HEADER): its peak memory is the
    headline measure the report and the gate use, named; then how precise its step time is and,
    at the end, what its conditions put in doubt (a loaded host, other processes on its GPUs, a step
    so short that trainkit's own overhead is more than 1 % of it)."""
    memory = record.get("memory") or {}
    measure = headline_memory([memory])
    peak = memory[measure] if measure else None
    median = (record.get("step_time_s") or {}).get("median")
    name = record["cell_id"] + (f"-rep{record['repeat']}" if record.get("repeat") else "")
    flags = condition_flags(record.get("conditions")) + [f for f in [record.get("harness_overhead_flag")] if f]
    return (f"{name:44} {record['status']:11} {_fmt(record.get('throughput_samples_per_s'), 1):>11} "
            f"{_fmt(median and median * 1e3, 2):>9} {_interval_text(record):>7} {_fmt(peak and peak / 2**20, 1):>9} "
            f"{_fmt((record.get('loss') or {}).get('final'), 4):>10}  {MEMORY_NAMES[measure] if measure else '-'}"
            + (f"  {'; '.join(flags)}" if flags else ""))


def end_cell(record: dict[str, Any], strict: bool) -> None:
    """A non-ok cell is a result, not an error: xfail it with its status (fail with --strict-cells)."""
    if record["status"] == "ok":
        return
    reason = f"{record['status']}: {record['status_detail']}"
    if strict:
        pytest.fail(f"cell {record['cell_id']} ended {reason}", pytrace=False)
    pytest.xfail(reason)


def timestamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")
