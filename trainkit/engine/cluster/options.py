"""The executor options: where bench and `python -m nightly run/matrix` run their cells.

Importing this module costs nothing (no torch, no submitit): option parsing uses it.
"""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..spec.options import choice, integer

EXECUTORS = ("local", "slurm", "submitit-local")
INSTALL = "pip install 'trainkit[cluster]'"


# --- options (bench and `python -m nightly` share them) ----------------------------------------

def executor_name(text: str) -> str:
    """An argparse type: a valid executor whose requirements are installed."""
    choice(EXECUTORS)(text)
    if text != "local":
        try:
            import submitit  # noqa: F401 - optional (the cluster extra): is it installed?
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
    shared_nodes: bool = False
    """Let other jobs run on a cell's nodes (no sbatch --exclusive). By default a cell's job has its
    nodes to itself: SLURM packs jobs onto shared nodes, and cells on one node measure each other
    (their GPUs share the host's PCIe, memory bandwidth and CPU cores)."""
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
    def exclusive(self) -> bool:
        """Whether a cell's job gets its nodes to itself (sbatch --exclusive, from this option or --slurm-param)."""
        return not self.shared_nodes or "exclusive" in dict(self.sbatch)

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
                                         "--slurm-param hint=nomultithread"}),
    ("--slurm-shared-nodes", "shared_nodes", {"action": "store_true",
                                              "help": "let other jobs share a cell's nodes (default: each cell's "
                                                      "job has its nodes to itself, sbatch --exclusive, so cells "
                                                      "do not measure each other); records say which"}),
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
        elif isinstance(value, bool):
            args += [flag] if value else []
        elif value != getattr(defaults, name):
            args += [flag, str(value)]
    return args

