"""The resources of a cell's job: nodes, tasks, GPUs and CPUs, and its time limit."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..spec.config import RunConfig
from .options import ExecutorOptions

JOB_TIME_MARGIN_S = 300.0
"""Added to the cell timeout for a job's time limit: the interpreter, imports and the fork server
before the cell's own deadline starts, the record's return after it, and for a multi-node cell
the rendezvous. A cell that hangs ends by its own deadline (status timeout, with what it measured)
well before the scheduler kills its job."""


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

