"""Watching cells' jobs: the executor-neutral driver (`Jobs`) and submitit's LocalExecutor (`LocalJobs`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .options import ExecutorOptions
from .shapes import job_shape
from .task import CellJob, run_cell_job

SIGNAL_DELAY_S = 90
"""submitit asks SLURM for USR2 this long before the time limit (sbatch --signal=USR2@90); the job
then returns a timeout record instead of being killed without one."""


# --- the driver: submit, watch, collect -------------------------------------------------------------

@dataclass
class _Watched:
    cell: CellJob
    job: Any
    """submitit's Job (for a multi-task job, the meta-job of its tasks)."""
    info: dict[str, str] = field(default_factory=dict)
    terminal_at: float | None = None
    result_at: float | None = None
    started: bool = False
    done: bool = False


@dataclass(frozen=True)
class Counts:
    done: int
    running: int
    pending: int

    @property
    def total(self) -> int:
        return self.done + self.running + self.pending


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _last_line(trace: str) -> str:
    lines = [line for line in str(trace).splitlines() if line.strip() and not line.startswith("-" * 10)]
    return _one_line(lines[-1] if lines else trace)


class Jobs:
    """The jobs of some cells on one executor. `submit` them, then `poll` until every cell has
    ended; each ended cell comes back once, with its record (the job's own, or one made from how
    the job ended)."""

    def __init__(self, options: ExecutorOptions, folder: str, time_limit_s: float) -> None:
        self.options = options
        self.folder = os.path.abspath(folder)
        self.time_limit_s = time_limit_s
        self.watched: list[_Watched] = []
        self.ended: list[tuple[CellJob, dict[str, Any]]] = []
        os.makedirs(self.folder, exist_ok=True)

    def submit(self, cells: list[CellJob]) -> None:
        raise NotImplementedError

    def poll(self) -> list[tuple[CellJob, dict[str, Any]]]:
        """Cells whose jobs ended since the last poll, with their records."""
        raise NotImplementedError

    def counts(self) -> Counts:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the jobs that have not ended (the driver is stopping)."""
        raise NotImplementedError

    def node_sharing(self) -> str:
        """Whether other jobs could run beside a cell's job, as its record says it."""
        raise NotImplementedError

    # --- records ---
    def _failure(self, cell: CellJob, status: str, detail: str) -> dict[str, Any]:
        from ..cell.record import (
            merge_ranks,  # torch: kept out of `python -m nightly`'s import path (it imports cluster)
        )

        return merge_ranks(cell.config, [], status, detail, extra={"repeat": cell.repeat})

    def _result_path(self, w: _Watched) -> Any:
        return w.job.task(0).paths.result_pickle

    def _from_result(self, w: _Watched) -> dict[str, Any]:
        """The record rank 0's task returned, or a crash naming why there is none."""
        # submitit: the optional cluster extra, only when jobs are submitted
        from submitit.core.utils import pickle_load

        try:
            outcome, value = pickle_load(self._result_path(w))
        except Exception as exc:  # a torn or foreign file: say so, the matrix goes on
            return self._failure(w.cell, "crashed", f"job {w.job.job_id}: its result could not be read "
                                                    f"({type(exc).__name__}: {_one_line(exc)})")
        if outcome == "success" and isinstance(value, dict):
            return value
        if outcome == "error":
            return self._failure(w.cell, "crashed", f"job {w.job.job_id} raised {_last_line(value)} "
                                                    f"(log: {w.job.task(0).paths.stderr})")
        return self._failure(w.cell, "crashed", f"job {w.job.job_id} returned no record")

    def _end(self, w: _Watched, record: dict[str, Any]) -> None:
        w.done = True
        record.setdefault("repeat", w.cell.repeat)
        # What the job said of itself (host, wall time) and how the scheduler saw it end.
        record["executor"] = {**record.pop("job", {}), "name": self.options.executor,
                              "job_id": w.job.job_id if w.job else None, "state": w.info.get("State"),
                              "exit_code": w.info.get("ExitCode"), "node": w.info.get("NodeList"),
                              "log": str(w.job.task(0).paths.stdout) if w.job else None,
                              "node_sharing": self.node_sharing()}
        self.ended.append((w.cell, record))


class LocalJobs(Jobs):
    """submitit's LocalExecutor: each job a subprocess of this machine, one at a time, since cells
    sharing a machine would measure each other. Its controller signals the job SIGNAL_DELAY_S
    before the time limit, as SLURM does."""

    def __init__(self, options: ExecutorOptions, folder: str, time_limit_s: float) -> None:
        super().__init__(options, folder, time_limit_s)
        self.queue: list[CellJob] = []

    def node_sharing(self) -> str:
        return "one job at a time on this machine (submitit-local); other processes are not kept off it"

    def submit(self, cells: list[CellJob]) -> None:
        self.queue.extend(cells)
        self._start_next()

    def _start_next(self) -> None:
        import submitit  # submitit: the optional cluster extra, only when jobs are submitted

        if any(w.started and not w.done for w in self.watched) or not self.queue:
            return
        cell = self.queue.pop(0)
        executor = submitit.LocalExecutor(folder=self.folder)
        executor.update_parameters(timeout_min=self.time_limit_s / 60, tasks_per_node=1,
                                   gpus_per_node=job_shape(cell.config, self.options).gpus_per_node,
                                   signal_delay_s=SIGNAL_DELAY_S)
        self.watched.append(_Watched(cell, executor.submit(run_cell_job, cell), started=True))

    def poll(self) -> list[tuple[CellJob, dict[str, Any]]]:
        start = len(self.ended)
        for w in self.watched:
            if w.done:
                continue
            # Ended means its process exited (and was reaped): a result it wrote is complete by then.
            state = w.job.get_info()["jobState"]
            w.info = {"State": state}
            if state == "RUNNING":
                continue
            if os.path.exists(self._result_path(w)):
                self._end(w, self._from_result(w))
            else:
                self._end(w, self._failure(w.cell, "crashed", f"submitit-local job {w.job.job_id} ended without "
                                                              f"a record ({state}; log: {w.job.task(0).paths.stderr})"))
        self._start_next()
        return self.ended[start:]

    def counts(self) -> Counts:
        running = sum(1 for w in self.watched if not w.done)
        return Counts(len(self.ended), running, len(self.queue))

    def cancel(self) -> None:
        self.queue.clear()
        for w in self.watched:
            if not w.done:
                w.job.cancel(check=False)  # SIGINT: the controller stops its task, then exits
                deadline = time.monotonic() + 15
                while w.job.get_info()["jobState"] == "RUNNING" and time.monotonic() < deadline:
                    time.sleep(0.1)

