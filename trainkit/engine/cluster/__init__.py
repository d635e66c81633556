"""Cells as cluster jobs: one submitit job per cell, on SLURM or as local subprocesses.

    executor    where a cell's job runs
    local       no job: the cell runs in worker processes of the calling process (trainkit.engine.cell.launch)
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

    options   the executor options (bench's and `python -m nightly`'s), ExecutorOptions
    shapes    a cell's job resources (JobShape) and time limit
    task      what a job runs on its node: run_cell_job, probe_node
    sacct     how a job that returned no record ended: status_from_sacct
    jobs      the driver (Jobs) and submitit-local's jobs (LocalJobs)
    slurm     SLURM's job arrays (SlurmJobs), make_jobs, probe_on_cluster

Importing this package costs nothing (no torch, no submitit): option parsing uses it. It belongs
to the engine: it imports neither reports nor any command.
"""

from .jobs import SIGNAL_DELAY_S, Counts, Jobs, LocalJobs
from .options import (
    EXECUTORS,
    INSTALL,
    ExecutorOptions,
    add_options,
    command_line,
    executor_name,
    from_namespace,
    sbatch_param,
    slurm_name,
)
from .sacct import ACTIVE_STATES, SACCT_STATUS, is_active, state_name, status_from_sacct
from .shapes import JOB_TIME_MARGIN_S, JobShape, job_shape, placement_problem, time_limit_s
from .slurm import RESULT_GRACE_S, SlurmJobs, make_jobs, probe_on_cluster
from .task import CellJob, TimeLimit, probe_node, rendezvous_port, run_cell_job, torchrun_environment

__all__ = ["ACTIVE_STATES", "EXECUTORS", "INSTALL", "JOB_TIME_MARGIN_S", "RESULT_GRACE_S", "SACCT_STATUS",
           "SIGNAL_DELAY_S", "CellJob", "Counts", "ExecutorOptions", "JobShape", "Jobs", "LocalJobs", "SlurmJobs",
           "TimeLimit", "add_options", "command_line", "executor_name", "from_namespace", "is_active", "job_shape",
           "make_jobs", "placement_problem", "probe_node", "probe_on_cluster", "rendezvous_port", "run_cell_job",
           "sbatch_param", "slurm_name", "state_name", "status_from_sacct", "time_limit_s", "torchrun_environment"]
