"""Cells as SLURM jobs through submitit's SlurmExecutor, and the probe of a node as a one-task job."""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..spec.config import RunConfig
from .jobs import SIGNAL_DELAY_S, Counts, Jobs, LocalJobs, _one_line, _Watched
from .options import ExecutorOptions
from .sacct import is_active, state_name, status_from_sacct
from .shapes import JobShape, job_shape, time_limit_s
from .task import CellJob, probe_node, run_cell_job

RESULT_GRACE_S = 15.0
"""How long an ended job may take for its result file to appear (a shared filesystem's attribute
cache lags; submitit waits as long in Job.result)."""


class SlurmJobs(Jobs):
    """submitit's SlurmExecutor: one sbatch job array per resource shape. States come from sacct
    (squeue when accounting does not answer); results from the files the jobs' tasks write."""

    def node_sharing(self) -> str:
        if self.options.exclusive:
            return "exclusive: sbatch --exclusive, no other job on the cell's nodes"
        return "shared: --slurm-shared-nodes, other jobs may have run on the cell's nodes"

    def __init__(self, options: ExecutorOptions, folder: str, time_limit_s: float) -> None:
        super().__init__(options, folder, time_limit_s)
        self.time_limit_min = math.ceil(time_limit_s / 60)
        self.sacct_error: str | None = None

    def parameters(self, shape: JobShape, job_name: str = "trainkit", timed: bool = True) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters (sbatch options) of a job of this shape; a timed cell's
        job gets its nodes to itself unless --slurm-shared-nodes (the probe times nothing)."""
        o = self.options
        # The matrix records a failed cell and goes on; a requeued job would run it again later.
        extra: dict[str, Any] = {"no-requeue": True, **({"exclusive": True} if timed and o.exclusive else {}),
                                 **dict(o.sbatch)}
        return {"job_name": f"{job_name}-{shape.label}", "time": self.time_limit_min, "nodes": shape.nodes,
                "ntasks_per_node": shape.tasks_per_node, "gpus_per_node": shape.gpus_per_node or None,
                "cpus_per_task": shape.cpus_per_task, "partition": o.partition, "account": o.account,
                "qos": o.qos, "constraint": o.constraint, "array_parallelism": o.array_parallelism,
                "signal_delay_s": SIGNAL_DELAY_S, "additional_parameters": extra}

    def submit(self, cells: list[CellJob]) -> None:
        import submitit  # submitit: the optional cluster extra, only when jobs are submitted

        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=0)
        groups: dict[JobShape, list[CellJob]] = {}
        for cell in cells:
            groups.setdefault(job_shape(cell.config, self.options), []).append(cell)
        for shape, group in groups.items():
            executor.update_parameters(**self.parameters(shape))
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr too
                    jobs = executor.map_array(run_cell_job, group)
            except Exception as exc:  # sbatch refused the array: its cells end, the others go on
                for cell in group:
                    w = _Watched(cell, None, done=False)
                    self.watched.append(w)
                    self._end(w, self._failure(cell, "crashed", f"sbatch refused the job ({shape.label}): "
                                                                f"{_one_line(exc)}"))
                continue
            self.watched += [_Watched(cell, job) for cell, job in zip(group, jobs)]

    def _query(self, command: list[str]) -> dict[str, dict[str, str]]:
        # submitit: the optional cluster extra, only when jobs are submitted
        from submitit.slurm.slurm import SlurmInfoWatcher

        output = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
        return SlurmInfoWatcher().read_info(output)

    def _states(self, ids: Iterable[str]) -> dict[str, dict[str, str]] | None:
        """State, ExitCode and NodeList by job id ("123_4"); from squeue (State only, and only the
        jobs not ended) when sacct fails; None when neither answers."""
        jobs = ",".join(sorted(set(ids)))
        try:
            states = self._query(["sacct", "-o", "JobID,State,ExitCode,NodeList", "--parsable2", "-j", jobs])
            self.sacct_error = None
            return states
        except (OSError, subprocess.SubprocessError) as exc:
            self.sacct_error = _one_line(getattr(exc, "stderr", None) or exc)
        try:
            lines = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T", f"--jobs={jobs}"],
                                   capture_output=True, text=True, timeout=120, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return self._query_text("JobID|State\n" + lines, gone_means_ended=True)

    def _query_text(self, text: str, gone_means_ended: bool) -> dict[str, dict[str, str]]:
        # submitit: the optional cluster extra, only when jobs are submitted
        from submitit.slurm.slurm import SlurmInfoWatcher

        states = SlurmInfoWatcher().read_info(text)
        if gone_means_ended:  # squeue lists only jobs that have not ended
            for w in self.watched:
                if w.job is not None and not w.done and w.job.job_id not in states:
                    states[w.job.job_id] = {"State": "", "gone": "1"}
        return states

    def poll(self) -> list[tuple[CellJob, dict[str, Any]]]:
        start = len(self.ended)
        waiting = [w for w in self.watched if not w.done]
        if not waiting:
            return []
        with contextlib.suppress(OSError):  # refreshes a shared filesystem's view of the folder
            os.chmod(self.folder, os.stat(self.folder).st_mode)
        states = self._states(w.job.job_id.split("_")[0] for w in waiting)  # first: see LocalJobs.poll
        now = time.monotonic()
        for w in waiting:
            if states is not None and w.job.job_id in states:
                w.info = {k: v for k, v in states[w.job.job_id].items() if k != "JobID"}
            state = w.info.get("State", "")
            result = os.path.exists(self._result_path(w))
            if result and w.result_at is None:
                w.result_at = now
            if is_active(state) or (not state and not w.info.get("gone")):
                # Running still (or not yet in sacct): wait for its final state, which tells an OOM
                # kill from a clean end, unless accounting lags far behind the result.
                if result and now - w.result_at > RESULT_GRACE_S:
                    self._end(w, self._from_result(w))
                continue
            if w.terminal_at is None:
                w.terminal_at = now
            if result:
                self._end(w, self._with_state(w, self._from_result(w)))
            elif state_name(state) in ("COMPLETED", "FAILED", "") and now - w.terminal_at < RESULT_GRACE_S:
                continue  # the result may still be on its way through the shared filesystem
            elif not state:
                detail = (f"SLURM job {w.job.job_id} ended without a record; its final state is unknown "
                          f"(sacct: {self.sacct_error})")
                self._end(w, self._failure(w.cell, "crashed", detail))
            else:
                status, detail = status_from_sacct(state, w.info.get("ExitCode"), w.job.job_id,
                                                   w.info.get("NodeList"), self.time_limit_min)
                self._end(w, self._failure(w.cell, status, f"{detail}; log: {w.job.task(0).paths.stderr}"))
        return self.ended[start:]

    def _with_state(self, w: _Watched, record: dict[str, Any]) -> dict[str, Any]:
        """A record that says crashed (a rank killed by SIGKILL) from a job SLURM ended
        OUT_OF_MEMORY was the cgroup's OOM kill: status oom."""
        if record.get("status") == "crashed" and state_name(w.info.get("State", "")) == "OUT_OF_MEMORY":
            record["status"] = "oom"
            record["status_detail"] = (f"{status_from_sacct(w.info['State'], w.info.get('ExitCode'), w.job.job_id)[1]}:"
                                       f" {record.get('status_detail', '')}")
        return record

    def counts(self) -> Counts:
        done = sum(w.done for w in self.watched)
        running = sum(1 for w in self.watched if not w.done and state_name(w.info.get("State", "")) not in
                      ("", "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"))
        return Counts(done, running, len(self.watched) - done - running)

    def cancel(self) -> None:
        arrays = sorted({w.job.job_id.split("_")[0] for w in self.watched if not w.done and w.job is not None})
        if arrays:
            subprocess.run(["scancel", *arrays], capture_output=True, timeout=120, check=False)


def _first_state(jobs: Jobs) -> str:
    """The first watched job's SLURM state, as sacct last said it."""
    return next((w.info.get("State") or "PENDING" for w in jobs.watched), "PENDING")


def make_jobs(options: ExecutorOptions, folder: str, cell_timeout_s: float) -> Jobs:
    kind = {"slurm": SlurmJobs, "submitit-local": LocalJobs}.get(options.executor)
    if kind is None:
        raise ValueError(f"executor {options.executor!r} runs no jobs")
    return kind(options, folder, time_limit_s(cell_timeout_s))


def probe_on_cluster(options: ExecutorOptions, device: str, folder: str, wait_s: float | None = None,
                     say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run `probe_node` as a one-task SLURM job with the matrix's partition, account, QOS and
    constraint (one GPU unless device is cpu) and return what it saw; `say` hears a line when it
    is submitted and while it waits (a queue can be long). Raises RuntimeError with one line when
    the job cannot be submitted or fails."""
    import submitit  # submitit: the optional cluster extra, only when jobs are submitted

    jobs = SlurmJobs(options, folder, time_limit_s(0))
    shape = JobShape(1, 1, 0 if device == "cpu" else 1, options.cpus_per_gpu)
    executor = submitit.SlurmExecutor(folder=jobs.folder, max_num_timeout=0)
    executor.update_parameters(**jobs.parameters(shape, job_name="trainkit-probe", timed=False))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            job = executor.submit(probe_node, device)
    except Exception as exc:
        raise RuntimeError(f"--executor slurm: sbatch refused the probe job: {_one_line(exc)}") from None
    jobs.watched.append(_Watched(CellJob("probe", RunConfig(device=device)), job))
    started = time.monotonic()
    deadline = None if wait_s is None else started + wait_s
    interval, said = 0.5, started
    if say is not None:
        say(f"probing a node: SLURM job {job.job_id} (log: {job.paths.stdout})")
    while not (ended := jobs.poll()):
        if deadline is not None and time.monotonic() > deadline:
            jobs.cancel()
            raise RuntimeError(f"--executor slurm: the probe job {job.job_id} did not end within {wait_s:g} s")
        if say is not None and time.monotonic() - said > 300:
            said = time.monotonic()
            say(f"probe job {job.job_id}: {_first_state(jobs)} after {said - started:.0f} s")
        time.sleep(interval)
        interval = min(interval * 1.5, 10.0)
    (_, answer), = ended
    if answer.get("schema"):  # a record made from how the job ended: it did not answer
        raise RuntimeError(f"--executor slurm: the probe job did not answer: {answer['status_detail']}")
    return {k: v for k, v in answer.items() if k not in ("repeat", "executor")}

