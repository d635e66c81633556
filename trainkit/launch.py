"""Run one cell in its own process(es) and turn what they report into a result record.

Every cell gets fresh processes (one per rank), so allocator caches, cuDNN autotuning and peak
memory counters never leak between cells, and an OOM, a NaN, a crash or a hang ends only that
cell. Processes come from a fork server that has torch preloaded: a fresh, isolated process costs
a fork instead of a 3 s `import torch`. This process never initialises CUDA.

Ranks follow torchrun's environment contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the same worker runs multi-node under torchrun (see `run_under_torchrun`).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from .config import ProfileConfig, RunConfig
from .measure import GpuSampler, Nvml
from .result import merge_ranks

DEFAULT_CELL_TIMEOUT_S = 900.0

_context: Any = None


def _fork_server() -> Any:
    """The multiprocessing context all cells are started from (created once per process)."""
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        # Paid once per session instead of once per cell: torch (via trainkit.worker), the
        # optimizers' lazy import of torch._dynamo (~2 s) and torchvision (~2 s, ResNets and
        # real data). A module that fails to import is skipped by the fork server.
        _context.set_forkserver_preload(["trainkit.worker", "torch._dynamo", "torchvision"])
    return _context


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CellFailed(Exception):
    """A cell ended with a status other than ok; carries what the ranks reported."""

    def __init__(self, status: str, detail: str, partials: list[dict[str, Any]]) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.partials = status, detail, partials


ProgressFn = Callable[[str, int, int, float | None], None]


class Cell:
    """One matrix cell's worker processes, driven step by step.

        with Cell(config) as cell:
            cell.start(); cell.warmup()
            times = [cell.step() for _ in range(config.steps)]   # or cell.run_timed()
            record = cell.finish()

    Any phase may raise CellFailed; `record_for(failure)` then gives the cell's record.
    """

    def __init__(self, config: RunConfig, timeout_s: float = DEFAULT_CELL_TIMEOUT_S,
                 memory_limit_bytes: int | None = None, progress: ProgressFn | None = None,
                 profile: ProfileConfig | None = None) -> None:
        self.config = config
        self.profile = profile
        self.timeout_s = timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self.progress = progress
        self.processes: list[Any] = []
        self.conns: list[Any] = []
        self.phase = "start"
        self.deadline = 0.0
        self.fixed_cost_s: dict[str, float] = {}
        self.step_round_trip_s: list[float] = []
        self.sampler = GpuSampler([])
        self.sampling = False

    def __enter__(self) -> Cell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- processes ------------------------------------------------------------------------------
    def start(self) -> None:
        from .worker import serve  # imported lazily: the fork server preloads it, this process need not

        ctx = _fork_server()
        started = time.perf_counter()
        self.deadline = time.monotonic() + self.timeout_s
        world = self.config.world_size
        base_env = dict(os.environ)
        base_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
                        LOCAL_WORLD_SIZE=str(world))
        for rank in range(world):
            parent_end, child_end = ctx.Pipe()
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank))
            process = ctx.Process(target=serve, name=f"trainkit-{self.config.cell_id}-rank{rank}",
                                  args=(self.config, rank, rank, world, child_end, env, self.memory_limit_bytes,
                                        self.profile))
            process.start()
            child_end.close()
            self.processes.append(process)
            self.conns.append(parent_end)
        replies = self._gather("start")
        self.fixed_cost_s = {"spawn_to_ready_s": time.perf_counter() - started, **replies[0]["fixed_cost_s"]}
        uuids = [r["gpu_uuid"] for r in replies if r["gpu_uuid"]]
        self.sampler = GpuSampler([n for n in (Nvml.open(uuid=u) for u in dict.fromkeys(uuids)) if n is not None])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def close(self) -> None:
        """Stop every rank (a failed cell's peers may be stuck in a collective)."""
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(timeout=10)
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []

    # --- commands -------------------------------------------------------------------------------
    def _gather(self, phase: str, command: str | None = None) -> list[Any]:
        """Send a command to every rank and wait for all replies, the deadline, or a failure."""
        self.phase = phase
        if command is not None:
            for conn in self.conns:
                try:
                    conn.send(command)
                except (BrokenPipeError, OSError):
                    pass  # the rank is gone: the wait below reports how it ended
        replies: dict[int, Any] = {}
        pending = dict(enumerate(self.conns))
        while pending:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise CellFailed("timeout", f"no reply within the cell timeout of {self.timeout_s:g} s "
                                            f"(during {phase})", [])
            if self.sampling:
                self.sampler.maybe_sample()
                due = self.sampler.due_in_s()
                remaining = remaining if due is None else min(remaining, max(due, 0.001))
            waitables = list(pending.values()) + [self.processes[r].sentinel for r in pending]
            ready = mpc.wait(waitables, timeout=remaining)
            for rank, conn in list(pending.items()):
                if conn in ready or conn.poll():
                    try:
                        kind, payload = conn.recv()
                    except (EOFError, OSError):
                        raise CellFailed("crashed", self._death(rank), []) from None
                    if kind == "failed":
                        status, detail, partial = payload
                        raise CellFailed(status, f"rank {rank}: {detail}" if self.config.world_size > 1 else detail,
                                         [partial])
                    if kind == "progress":
                        if self.progress is not None:
                            self.progress(phase, *payload)
                        continue
                    replies[rank] = payload
                    del pending[rank]
                elif self.processes[rank].sentinel in ready:
                    raise CellFailed("crashed", self._death(rank), [])
        return [replies[r] for r in range(len(self.conns))]

    def _death(self, rank: int) -> str:
        process = self.processes[rank]
        process.join(timeout=5)
        code = process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (the kernel's OOM killer sends SIGKILL when host memory runs out)" if name == "SIGKILL" else ""
            return f"worker rank {rank} was killed by {name} during {self.phase}{hint}"
        return f"worker rank {rank} exited with code {code} during {self.phase} without a result"

    def warmup(self) -> float:
        return max(self._gather("warmup", "warmup"))

    def step(self) -> float:
        """One timed optimizer step on every rank; its duration is the slowest rank's."""
        started = time.perf_counter()
        self.sampling = True
        try:
            duration = max(self._gather(f"step {len(self.step_round_trip_s) + 1}", "step"))
        finally:
            self.sampling = False
        self.step_round_trip_s.append(time.perf_counter() - started)
        return duration

    def run_timed(self) -> None:
        self.sampling = True
        try:
            self._gather("timed steps", "run")
        finally:
            self.sampling = False

    def finish(self) -> dict[str, Any]:
        partials = self._gather("finish", "finish")
        return self._with_samples(merge_ranks(self.config, partials, extra=self._extra(partials)))

    def _extra(self, partials: list[dict[str, Any]]) -> dict[str, Any]:
        fixed = dict(self.fixed_cost_s)
        if partials:
            fixed.update(partials[0].get("fixed_cost_s", {}))
        extra: dict[str, Any] = {"fixed_cost_s": fixed, "worker_pids": self.pids}
        if self.step_round_trip_s:
            extra["step_round_trip_s"] = self.step_round_trip_s
        return extra

    def _with_samples(self, record: dict[str, Any]) -> dict[str, Any]:
        """The launcher's NVML samples of the timed steps: clocks, temperature, power, throttling;
        and the energy from power readings where the energy counter is unsupported."""
        summary = self.sampler.summary()
        record["gpu_samples"] = summary
        record["throttled"] = summary["throttled"] if summary else None
        if record["energy_j_per_sample"] is None and record["status"] == "ok":
            energy = self.sampler.energy_j()
            samples = record["timed_samples"]
            if energy is not None and samples:
                record["energy_j_per_sample"] = energy / samples
                record["energy_method"] = "power-integral (NVML power samples)"
        return record

    def record_for(self, failure: CellFailed) -> dict[str, Any]:
        self.close()
        return self._with_samples(merge_ranks(self.config, failure.partials, failure.status, failure.detail,
                                              extra=self._extra(failure.partials)))


def run_cell(config: RunConfig, timeout_s: float = DEFAULT_CELL_TIMEOUT_S, memory_limit_bytes: int | None = None,
             progress: ProgressFn | None = None, profile: ProfileConfig | None = None,
             single_steps: int = 0) -> dict[str, Any]:
    """Run a whole cell and return its record: warmup, then the first `single_steps` timed steps
    one command each (as bench's pytest-benchmark rounds take them), the rest as one window."""
    with Cell(config, timeout_s, memory_limit_bytes, progress, profile) as cell:
        try:
            cell.start()
            cell.warmup()
            for _ in range(min(single_steps, config.steps)):
                cell.step()
            if single_steps < config.steps:
                cell.run_timed()
            return cell.finish()
        except CellFailed as failure:
            return cell.record_for(failure)


def call_in_fresh_process(target: Callable[..., None], *args: Any, timeout_s: float = 300.0,
                          what: str = "the worker") -> Any:
    """Run `target(conn, *args, environ)` in a fresh process from the fork server and return the
    payload it sends as ("ok", payload); ("failed", detail) or its death raise RuntimeError."""
    ctx = _fork_server()
    parent_end, child_end = ctx.Pipe()
    process = ctx.Process(target=target, args=(child_end, *args, dict(os.environ)), name=f"trainkit-{what}")
    process.start()
    child_end.close()
    try:
        if not parent_end.poll(timeout_s):
            raise RuntimeError(f"{what} did not answer within {timeout_s:g} s")
        kind, payload = parent_end.recv()
    except EOFError:
        raise RuntimeError(f"{what} died (exit code {process.exitcode})") from None
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
        parent_end.close()
    if kind != "ok":
        raise RuntimeError(f"{what} failed: {payload}")
    return payload


def probe(device: str = "auto", timeout_s: float = 300.0) -> dict[str, Any]:
    """Ask a fresh worker process what the cells will run on (device, GPU count and capability,
    the environment fingerprint): this process never initialises CUDA."""
    from .worker import probe as probe_main

    return call_in_fresh_process(probe_main, device, timeout_s=timeout_s, what="the device probe")


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "MASTER_ADDR" in os.environ)


def run_under_torchrun(config: RunConfig, profile: ProfileConfig | None = None) -> dict[str, Any] | None:
    """This process is one rank started by torchrun (any number of nodes): run it in place,
    gather the partial results on rank 0 and return the record there (None on other ranks)."""
    import torch.distributed as dist

    from .worker import RankWorker, classify, failure_partial

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != config.world_size:
        raise ValueError(f"world_size={config.world_size} but torchrun started {world} ranks")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    worker, status, detail = None, "ok", ""
    try:
        worker = RankWorker(config, rank, local_rank, local_world, profile)
        worker.warmup()
        worker.run_timed()
        partial = worker.collect()
    except Exception as exc:  # torchrun's agent stops the other ranks when one fails
        status, detail = classify(exc)
        partial = failure_partial(worker, rank)
    gathered: list[Any] = [None] * world if rank == 0 else []
    if dist.is_initialized():
        dist.gather_object(partial, gathered if rank == 0 else None, dst=0)
        dist.destroy_process_group()
    else:
        gathered = [partial]
    return merge_ranks(config, gathered, status, detail) if rank == 0 else None
