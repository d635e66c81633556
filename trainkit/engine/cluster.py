"""Cells as cluster jobs: one submitit job per cell, on SLURM or as local subprocesses.

    executor    where a cell's job runs
    local       no job: the cell runs in worker processes of the calling process (trainkit.engine.launch)
    slurm       a SLURM job per cell, submitted with sbatch as one job array per resource shape
    submitit-local  the same jobs as subprocesses of this machine (submitit's LocalExecutor), one at a time

Inside a job the cell runs with trainkit's own machinery, so its record is the record the local
executor makes. A cell that fits on one node is one task running `launch.run_cell` (a fresh process
per rank, the cell's timeout, its memory cap). A cell with more ranks than a node has GPUs is a
multi-node job: one task per GPU, each started under torchrun's environment contract (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT taken from SLURM's variables
through submitit's JobEnvironment) running `launch.run_under_torchrun`; rank 0 returns the record.

A job that ends without a record (killed at its time limit, for memory, with its node, preempted,
cancelled) becomes a record with a status: sacct's State says which (`status_from_sacct`).

SLURM arrays share one resource request, so cells are grouped by shape (nodes, tasks, GPUs): one
array per shape, each capped at `array_parallelism` running tasks (sbatch --array=0-N%CAP).

Importing this module costs nothing (no torch, no submitit): option parsing uses it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .config import ProfileConfig, RunConfig
from .options import choice, integer

EXECUTORS = ("local", "slurm", "submitit-local")
INSTALL = "pip install 'trainkit[cluster]'"

JOB_TIME_MARGIN_S = 300.0
"""Added to the cell timeout for a job's time limit: the interpreter, imports and the fork server
before the cell's own deadline starts, the record's return after it, and for a multi-node cell
the rendezvous. A cell that hangs ends by its own deadline (status timeout, with what it measured)
well before the scheduler kills its job."""
SIGNAL_DELAY_S = 90
"""submitit asks SLURM for USR2 this long before the time limit (sbatch --signal=USR2@90); the job
then returns a timeout record instead of being killed without one."""
RESULT_GRACE_S = 15.0
"""How long an ended job may take for its result file to appear (a shared filesystem's attribute
cache lags; submitit waits as long in Job.result)."""


# --- options (bench and `python -m nightly` share them) ----------------------------------------

def executor_name(text: str) -> str:
    """An argparse type: a valid executor whose requirements are installed."""
    choice(EXECUTORS)(text)
    if text != "local":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise argparse.ArgumentTypeError(f"{text} needs submitit: {INSTALL}") from None
    if text == "slurm" and shutil.which("sbatch") is None:
        raise argparse.ArgumentTypeError("slurm: no sbatch on PATH; run on a SLURM login node "
                                         "(submitit-local runs the same jobs on this machine)")
    return text


def slurm_name(text: str) -> str:
    """An argparse type: a partition, account, QOS or constraint (one word, as sbatch takes it)."""
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected one word without spaces: {text!r}")
    return text


_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")


def sbatch_param(text: str) -> tuple[str, str | bool]:
    """An argparse type: KEY=VALUE, or KEY for a flag; an sbatch option without its dashes."""
    key, equals, value = text.partition("=")
    if not _SBATCH_KEY.fullmatch(key) or (equals and not value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE or KEY, an sbatch option without its dashes "
                                         f"(e.g. mem=64G, exclusive): {text!r}")
    return key, value if equals else True


@dataclass(frozen=True, kw_only=True)
class ExecutorOptions:
    """Where bench runs its cells. Every field is a bench option and a `python -m nightly run/matrix` option."""

    executor: str = "local"
    """local (the cells run here, in worker processes), slurm (one SLURM job per cell, through
    submitit) or submitit-local (the same jobs as subprocesses of this machine, one at a time)."""
    partition: str | None = None
    """sbatch --partition (default: the cluster's)."""
    account: str | None = None
    """sbatch --account (default: the user's)."""
    qos: str | None = None
    """sbatch --qos (default: the cluster's)."""
    constraint: str | None = None
    """sbatch --constraint, e.g. a GPU model's feature, so every cell lands on the same kind of node."""
    gpus_per_node: int = 8
    """GPUs of a node (CPU ranks of a node with --device cpu): a cell with more runs on several nodes."""
    cpus_per_gpu: int = 4
    """CPU cores requested per GPU (per CPU rank): data loading and the ranks' host work need them."""
    array_parallelism: int = 32
    """Most tasks of one job array running at once (sbatch --array=...%N)."""
    sbatch: tuple[tuple[str, str | bool], ...] = ()
    """Further sbatch options as (key, value) pairs (value True for a flag), e.g. (("mem", "0"),)."""
    job_dir: str | None = None
    """Where jobs' scripts, logs and results go (default: beside the results file, RESULTS.jobs/);
    on a cluster it must be on a filesystem the nodes share."""

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r} is not valid; choose from {', '.join(EXECUTORS)}")
        for name in ("gpus_per_node", "cpus_per_gpu", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def remote(self) -> bool:
        """Whether cells run as jobs (and their records come back from them)."""
        return self.executor != "local"


# flag, field, argparse keywords; `dest` is tk_<field> (pytest keeps all options in one namespace).
_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--executor", "executor", {"type": executor_name, "default": "local", "metavar": "|".join(EXECUTORS),
                                "help": "where cells run: here (local, default), one SLURM job per cell (slurm), "
                                        "or the same jobs as subprocesses here, one at a time (submitit-local)"}),
    ("--slurm-partition", "partition", {"type": slurm_name, "metavar": "NAME", "help": "sbatch --partition"}),
    ("--slurm-account", "account", {"type": slurm_name, "metavar": "NAME", "help": "sbatch --account"}),
    ("--slurm-qos", "qos", {"type": slurm_name, "metavar": "NAME", "help": "sbatch --qos"}),
    ("--slurm-constraint", "constraint", {"type": slurm_name, "metavar": "FEATURES",
                                          "help": "sbatch --constraint (e.g. a GPU model's node feature)"}),
    ("--slurm-gpus-per-node", "gpus_per_node", {"type": integer(1), "metavar": "N",
                                                "help": "GPUs of a node (default 8); a cell with more runs on "
                                                        "several nodes, one task per GPU"}),
    ("--slurm-cpus-per-gpu", "cpus_per_gpu", {"type": integer(1), "metavar": "N",
                                              "help": "CPU cores requested per GPU, or per rank on a CPU (default 4)"}),
    ("--slurm-array-parallelism", "array_parallelism", {"type": integer(1), "metavar": "N",
                                                        "help": "most tasks of a job array running at once "
                                                                "(default 32; submitit-local runs one at a time)"}),
    ("--slurm-param", "sbatch", {"type": sbatch_param, "action": "append", "metavar": "KEY[=VALUE]",
                                 "help": "a further sbatch option, repeatable: --slurm-param mem=0 "
                                         "--slurm-param exclusive"}),
    ("--job-dir", "job_dir", {"metavar": "DIR", "help": "where jobs' scripts, logs and results go "
                                                       "(default: RESULTS.jobs/ beside the results file)"}),
)


def add_options(add: Callable[..., Any]) -> None:
    """Declare the executor options with `add`: argparse's add_argument or pytest's addoption."""
    defaults = ExecutorOptions()
    for flag, name, kwargs in _OPTIONS:
        default = None if name == "sbatch" else getattr(defaults, name)
        add(flag, dest=f"tk_{name}", **{"default": default, **kwargs})


def from_namespace(namespace: Any) -> ExecutorOptions:
    """The options as parsed by add_options' parser (argparse's namespace, or pytest's config.option)."""
    values = {name: getattr(namespace, f"tk_{name}") for _, name, _ in _OPTIONS}
    values["sbatch"] = tuple(values["sbatch"] or ())
    return ExecutorOptions(**values)


def command_line(options: ExecutorOptions) -> list[str]:
    """The options as command-line arguments (those that differ from the defaults)."""
    defaults, args = ExecutorOptions(), []
    for flag, name, _ in _OPTIONS:
        value = getattr(options, name)
        if name == "sbatch":
            args += [a for key, v in value for a in (flag, key if v is True else f"{key}={v}")]
        elif value != getattr(defaults, name):
            args += [flag, str(value)]
    return args


# --- what a job runs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellJob:
    """One cell as a job: its config and how bench measures it."""

    key: str
    """The cell's id in the matrix (with -repK for a repeat): what the caller waits for."""
    config: RunConfig
    repeat: int = 0
    timeout_s: float = 900.0
    """The cell's own deadline, as for the local executor (trainkit.engine.launch.Cell)."""
    memory_limit_bytes: int | None = None
    profile: ProfileConfig | None = None
    single_steps: int = 0
    """Timed steps taken one command each, as pytest-benchmark's rounds; the rest run as one window."""


class TimeLimit(BaseException):
    """The scheduler's signal that the job's time limit is near. A BaseException, so the launcher's
    `except Exception` (a failing rank) does not turn it into a crash."""


def _time_limit(signum: int, frame: Any) -> None:
    raise TimeLimit()


def rendezvous_port(job_id: str) -> int:
    """A port for rank 0's TCP store, from the job id: jobs sharing a node pick different ones."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 20000


def torchrun_environment(env: Any, visible_gpus: str | None = None) -> dict[str, str]:
    """torchrun's environment contract for this task of a multi-node job, from submitit's
    JobEnvironment (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, ...).
    LOCAL_RANK picks the task's GPU among those it sees; a cluster that binds one GPU to each task
    (CUDA_VISIBLE_DEVICES, `visible_gpus`, lists one) leaves it GPU 0."""
    per_node = env.num_tasks // env.num_nodes
    bound = visible_gpus is not None and len([g for g in visible_gpus.split(",") if g.strip()]) == 1
    local_rank = 0 if bound and per_node > 1 else env.local_rank
    return {"RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(per_node), "MASTER_ADDR": env.hostnames[0],
            "MASTER_PORT": str(rendezvous_port(env.job_id))}


def run_cell_job(job: CellJob) -> dict[str, Any] | None:
    """A job's entry point (submitit calls it in every task): the cell's record on rank 0, None on
    the other ranks of a multi-node job."""
    import submitit

    from .result import merge_ranks

    env = submitit.JobEnvironment()
    started = time.monotonic()
    # submitit's own handler would raise an error at the signal; a cell past its time is a result.
    signal.signal(env._usr_sig(), _time_limit)
    rank = env.global_rank
    # The job's log says which cell it runs, and where: what a person (or a test) looks for.
    print(f"trainkit: cell {job.key} in job {env.job_id}, task {rank}/{env.num_tasks}, on {socket.gethostname()} "
          f"(pid {os.getpid()})", flush=True)
    try:
        if env.num_tasks > 1:
            from .launch import run_under_torchrun
            from .worker import limit_host_memory

            os.environ.update(torchrun_environment(env, os.environ.get("CUDA_VISIBLE_DEVICES")))
            if job.memory_limit_bytes is not None:
                limit_host_memory(job.memory_limit_bytes)
            record = run_under_torchrun(job.config, job.profile)
        else:
            from .launch import run_cell

            record = run_cell(job.config, job.timeout_s, job.memory_limit_bytes, profile=job.profile,
                              single_steps=job.single_steps)
    except TimeLimit:
        detail = (f"the job's time limit came before the cell ended (signalled after "
                  f"{time.monotonic() - started:.0f} s in the job; cell timeout {job.timeout_s:g} s)")
        record = merge_ranks(job.config, [], "timeout", detail) if rank == 0 else None
    finally:
        signal.signal(env._usr_sig(), signal.SIG_IGN)
    if record is not None:
        record["repeat"] = job.repeat
        record["job"] = {"job_id": env.job_id, "hostname": socket.gethostname(), "tasks": env.num_tasks,
                         "nodes": env.num_nodes, "job_wall_s": time.monotonic() - started}
    return record


class _Reply:
    """Stands for the pipe of trainkit.engine.worker.probe when the probe runs in this process."""

    message: tuple[str, Any] = ("failed", "no reply")

    def send(self, message: tuple[str, Any]) -> None:
        self.message = message


def probe_node(device: str) -> dict[str, Any]:
    """A job's entry point: what cells on `device` will run on there (device, GPUs, fingerprint)."""
    from .worker import probe

    reply = _Reply()
    probe(reply, device, dict(os.environ))
    kind, payload = reply.message
    if kind != "ok":
        raise RuntimeError(payload)
    return payload


# --- resources ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobShape:
    """The resources of one cell's job; cells of one shape share a job array."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    """0 for a CPU cell."""
    cpus_per_task: int

    @property
    def label(self) -> str:
        what = f"{self.gpus_per_node}gpu" if self.gpus_per_node else f"{self.tasks_per_node * self.cpus_per_task}cpu"
        return f"{self.nodes}x{what}" if self.nodes > 1 else what


def job_shape(config: RunConfig, options: ExecutorOptions) -> JobShape:
    """One task that starts every rank itself when the cell fits on a node (as the local executor
    does); else as many nodes as it takes, one task per GPU."""
    ranks, per_node = config.world_size, options.gpus_per_node
    gpu = config.device != "cpu"
    if options.executor != "slurm" or ranks <= per_node:
        return JobShape(1, 1, ranks if gpu else 0, ranks * options.cpus_per_gpu)
    nodes = math.ceil(ranks / per_node)
    return JobShape(nodes, ranks // nodes, ranks // nodes if gpu else 0, options.cpus_per_gpu)


def placement_problem(config: RunConfig, options: ExecutorOptions) -> str | None:
    """Why a cell cannot be laid out over whole nodes, or None."""
    ranks, per_node = config.world_size, options.gpus_per_node
    if options.executor == "slurm" and ranks > per_node and ranks % math.ceil(ranks / per_node):
        nodes = math.ceil(ranks / per_node)
        return (f"{ranks} ranks do not split evenly over the {nodes} nodes of {per_node} GPUs they need "
                f"(--slurm-gpus-per-node)")
    return None


def time_limit_s(cell_timeout_s: float) -> float:
    return cell_timeout_s + JOB_TIME_MARGIN_S


# --- sacct states -------------------------------------------------------------------------------------

# What a job's final sacct State says about its cell, when the job returned no record.
SACCT_STATUS: dict[str, tuple[str, str]] = {
    "TIMEOUT": ("timeout", "was killed at its time limit"),
    "DEADLINE": ("timeout", "was killed at its deadline"),
    "OUT_OF_MEMORY": ("oom", "was killed for using more memory than it was given"),
    "NODE_FAIL": ("crashed", "lost its node"),
    "BOOT_FAIL": ("crashed", "could not boot its node"),
    "PREEMPTED": ("crashed", "was preempted"),
    "CANCELLED": ("crashed", "was cancelled"),
    "FAILED": ("crashed", "failed"),
    "COMPLETED": ("crashed", "completed without returning a record"),
}
# States of a job that has not ended (sacct and squeue both use these names).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
                           "SUSPENDED", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD", "UNKNOWN"})


def state_name(state: str) -> str:
    """"CANCELLED by 1234" -> "CANCELLED"; "" stays ""."""
    return state.split()[0].upper() if state.strip() else ""


def is_active(state: str) -> bool:
    return state_name(state) in ACTIVE_STATES


def status_from_sacct(state: str, exit_code: str | None = None, job_id: str = "", node: str | None = None,
                      time_limit_min: int | None = None) -> tuple[str, str]:
    """(status, one-line detail) of a cell whose job ended in sacct `state` without a record."""
    name = state_name(state)
    status, what = SACCT_STATUS.get(name, ("crashed", f"ended {name or 'in an unknown state'}"))
    if name == "TIMEOUT" and time_limit_min:
        what += f" of {time_limit_min} min"
    facts = [f"sacct {state.strip() or 'no state'}"]
    if exit_code:
        facts.append(f"exit code {exit_code}")
    if node and node not in ("None assigned", "None"):
        facts.append(f"node {node}")
    return status, f"SLURM job {job_id} {what} ({', '.join(facts)})".replace("  ", " ")


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

    # --- records ---
    def _failure(self, cell: CellJob, status: str, detail: str) -> dict[str, Any]:
        from .result import merge_ranks

        return merge_ranks(cell.config, [], status, detail, extra={"repeat": cell.repeat})

    def _result_path(self, w: _Watched) -> Any:
        return w.job.task(0).paths.result_pickle

    def _from_result(self, w: _Watched) -> dict[str, Any]:
        """The record rank 0's task returned, or a crash naming why there is none."""
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
                              "log": str(w.job.task(0).paths.stdout) if w.job else None}
        self.ended.append((w.cell, record))


class LocalJobs(Jobs):
    """submitit's LocalExecutor: each job a subprocess of this machine, one at a time, since cells
    sharing a machine would measure each other. Its controller signals the job SIGNAL_DELAY_S
    before the time limit, as SLURM does."""

    def __init__(self, options: ExecutorOptions, folder: str, time_limit_s: float) -> None:
        super().__init__(options, folder, time_limit_s)
        self.queue: list[CellJob] = []

    def submit(self, cells: list[CellJob]) -> None:
        self.queue.extend(cells)
        self._start_next()

    def _start_next(self) -> None:
        import submitit

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


class SlurmJobs(Jobs):
    """submitit's SlurmExecutor: one sbatch job array per resource shape. States come from sacct
    (squeue when accounting does not answer); results from the files the jobs' tasks write."""

    def __init__(self, options: ExecutorOptions, folder: str, time_limit_s: float) -> None:
        super().__init__(options, folder, time_limit_s)
        self.time_limit_min = math.ceil(time_limit_s / 60)
        self.sacct_error: str | None = None

    def parameters(self, shape: JobShape, job_name: str = "trainkit") -> dict[str, Any]:
        """submitit's SlurmExecutor parameters (sbatch options) of a job of this shape."""
        o = self.options
        # The matrix records a failed cell and goes on; a requeued job would run it again later.
        extra: dict[str, Any] = {"no-requeue": True, **dict(o.sbatch)}
        return {"job_name": f"{job_name}-{shape.label}", "time": self.time_limit_min, "nodes": shape.nodes,
                "ntasks_per_node": shape.tasks_per_node, "gpus_per_node": shape.gpus_per_node or None,
                "cpus_per_task": shape.cpus_per_task, "partition": o.partition, "account": o.account,
                "qos": o.qos, "constraint": o.constraint, "array_parallelism": o.array_parallelism,
                "signal_delay_s": SIGNAL_DELAY_S, "additional_parameters": extra}

    def submit(self, cells: list[CellJob]) -> None:
        import submitit

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
    import submitit

    jobs = SlurmJobs(options, folder, time_limit_s(0))
    shape = JobShape(1, 1, 0 if device == "cpu" else 1, options.cpus_per_gpu)
    executor = submitit.SlurmExecutor(folder=jobs.folder, max_num_timeout=0)
    executor.update_parameters(**jobs.parameters(shape, job_name="trainkit-probe"))
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

