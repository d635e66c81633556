"""What a job runs on its node: one cell (`run_cell_job`), or the probe of a node (`probe_node`).

submitit pickles these functions by reference; the job's interpreter imports this module first,
so torch is imported only inside them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..spec.config import ProfileConfig, RunConfig

ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
"""trainkit.engine.cell.allocator.ENV_VARS, named here without importing torch."""

# --- what a job runs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellJob:
    """One cell as a job: its config and how bench measures it."""

    key: str
    """The cell's id in the matrix (with -repK for a repeat): what the caller waits for."""
    config: RunConfig
    repeat: int = 0
    timeout_s: float = 900.0
    """The cell's own deadline, as for the local executor (trainkit.engine.cell.launch.CellWorkers)."""
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
    if job.config.alloc_conf is not None:
        # The job runs this one cell: its allocator setting is the process's, set before this
        # process first imports torch (below), which reads the allocator backend at import.
        os.environ.update(dict.fromkeys(ALLOC_CONF_VARS, job.config.alloc_conf))
    # Only now, in the job: torch (merge_ranks) after the allocator setting above; submitit is the cluster extra.
    import submitit

    from ..cell.record import merge_ranks

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
            from ..cell.launch import run_under_torchrun  # torch: after the allocator setting above
            from ..cell.worker import limit_host_memory  # torch: likewise

            os.environ.update(torchrun_environment(env, os.environ.get("CUDA_VISIBLE_DEVICES")))
            if job.memory_limit_bytes is not None:
                limit_host_memory(job.memory_limit_bytes)
            record = run_under_torchrun(job.config, job.profile)
        else:
            from ..cell.launch import run_cell  # torch: after the allocator setting above

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
    """Stands for the pipe of trainkit.engine.cell.worker.probe when the probe runs in this process."""

    message: tuple[str, Any] = ("failed", "no reply")

    def send(self, message: tuple[str, Any]) -> None:
        self.message = message


def probe_node(device: str) -> dict[str, Any]:
    """A job's entry point: what cells on `device` will run on there (device, GPUs, fingerprint)."""
    from ..cell.worker import probe  # torch: kept out of `python -m nightly`'s import path (it imports cluster)

    reply = _Reply()
    probe(reply, device, dict(os.environ))
    kind, payload = reply.message
    if kind != "ok":
        raise RuntimeError(payload)
    return payload

