"""Run one cell in its own process(es) and turn what they report into a result record.

Every cell gets fresh processes (one per rank), so allocator caches, cuDNN autotuning and peak
memory counters never leak between cells, and an OOM, a NaN, a crash or a hang ends only that
cell. Processes come from a fork server that has torch preloaded: a fresh, isolated process costs
a fork instead of a 3 s `import torch`. This process never initialises CUDA.

Ranks follow torchrun's environment contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the same worker runs multi-node under torchrun (see `run_under_torchrun`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import multiprocessing.forkserver
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

from ..measure.conditions import CELL_ROOT_ENV
from ..measure.nvml import GpuSampler, Nvml
from ..spec.config import ProfileConfig, RunConfig
from . import allocator
from .failures import Failure, FailureBoard, leave
from .protocol import Command, Reply
from .record import ENERGY_MIN_WINDOW_S, LauncherReport, RankReport, merge_ranks

DEFAULT_CELL_TIMEOUT_S = 900.0

_context: Any = None
RANK_LIBRARY_ENV = {"MKL_DISABLE_FAST_MM": "1", "MALLOC_ARENA_MAX": "1"}
"""What every rank's libraries start with, for a CPU cell's address-space cap (RLIMIT_AS) to charge
the model with what its steps hold and nothing else. Both are read once per process, when the
library starts, so the fork server starts with them (a rank's own settings come too late):

- MKL's memory manager keeps each sgemm packing buffer it ever allocated, per thread and per size
  (4-6 MiB each, mostly untouched: 37 MiB of address space after a small GPT's first step on 2
  threads); without it MKL allocates them for the call and frees them after (oneMKL Developer
  Reference: mkl_disable_fast_mm);
- glibc gives each thread that first allocates an arena of its own, 64 MiB of address space
  reserved at once (the pool thread's, in the first step); its limit is fixed when a process first
  needs a second arena, which the fork server has done, so mallopt(M_ARENA_MAX) in a rank is too
  late (glibc malloc/arena.c: narenas_limit)."""


def preloaded_modules() -> list[str]:
    """What the fork server imports once, so that no cell imports it again: torch (via
    trainkit.engine.cell.worker), the optimizers' lazy import of torch._dynamo (~2 s), torchvision
    (~2 s, ResNets and real data), and the adapters' libraries this process has already imported for
    a workload (transformers, timm: seconds) with the transformers models' modules it has imported:
    transformers imports a model's module on the model's first use (Llama's ~1.7 s and ~150 MiB of
    address space, which every hf: cell paid again, and a capped CPU probe charged to the model). A
    module that fails to import is skipped by the fork server."""
    adapters = [name for name in ("transformers", "timm") if name in sys.modules]
    models = sorted(name for name in sys.modules
                    if name.startswith("transformers.models.") and name.rpartition(".")[2].startswith("modeling_"))
    return ["trainkit.engine.cell.worker", "torch._dynamo", "torchvision", *adapters, *models]


def _fork_server() -> Any:
    """The multiprocessing context all cells are started from (created once per process)."""
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(preloaded_modules())
        # MKL and glibc read these once, when they start: so the fork server starts with them.
        with _environment(RANK_LIBRARY_ENV):
            multiprocessing.forkserver.ensure_running()
    return _context


def _context_for(config: RunConfig) -> tuple[Any, dict[str, str]]:
    """Where a cell's ranks come from, and the environment they must have from their first
    instruction: the fork server (torch preloaded) for every cell but one whose allocator setting
    picks a backend, which torch reads once, at import (trainkit.engine.cell.allocator): its ranks are
    fresh interpreters (multiprocessing's spawn) started with the setting, at a fresh import's cost."""
    if allocator.requested_backend(config.alloc_conf) is None:
        return _fork_server(), {}
    setting = {name: str(config.alloc_conf) for name in allocator.ENV_VARS}
    return mp.get_context("spawn"), {**RANK_LIBRARY_ENV, **setting}


@contextlib.contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """This process's environment with `changes` while a spawned process starts (spawn passes it on
    at exec; there is no other way to give one), then as it was: this process never starts CUDA."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CellFailed(Exception):
    """A cell ended with a status other than ok; carries what the ranks reported."""

    def __init__(self, status: str, detail: str, reports: list[RankReport]) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail, self.reports = status, detail, reports


ProgressFn = Callable[[str, int, int], None]
"""progress(phase, step, total), called as rank 0 reports progress of the timed window."""


class CellWorkers:
    """The worker processes of one matrix cell (one per rank), driven through trainkit.engine.cell.protocol.

        with CellWorkers(config) as workers:
            workers.start(); workers.warmup()
            times = [workers.step() for _ in range(config.steps)]   # or workers.run_timed()
            record = workers.finish()

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
        self.nvml_unavailable: str | None = "no GPU"
        """Why the launcher cannot sample NVML, or None when it can."""

    def __enter__(self) -> CellWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- processes ------------------------------------------------------------------------------
    def start(self) -> None:
        # imported lazily: the fork server preloads it, this process need not (nor loop, models, data)
        from .worker import serve

        ctx, start_env = _context_for(self.config)
        started = time.perf_counter()
        self.deadline = time.monotonic() + self.timeout_s
        world = self.config.world_size
        base_env = dict(os.environ, **start_env)
        base_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
                        LOCAL_WORLD_SIZE=str(world))
        # This process, the fork server below it and the ranks are the cell's own load, not contention.
        base_env[CELL_ROOT_ENV] = str(os.getpid())
        for rank in range(world):
            parent_end, child_end = ctx.Pipe()
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank))
            process = ctx.Process(target=serve, name=f"trainkit-{self.config.cell_id}-rank{rank}",
                                  args=(self.config, rank, rank, world, child_end, env, self.memory_limit_bytes,
                                        self.profile))
            with _environment(start_env):
                process.start()
            child_end.close()
            self.processes.append(process)
            self.conns.append(parent_end)
        replies = self._gather("start")
        self.fixed_cost_s = {"spawn_to_ready_s": time.perf_counter() - started, **replies[0]["fixed_cost_s"]}
        uuids = [r["gpu_uuid"] for r in replies]
        gpus = {u: Nvml.open(uuid=u) for u in dict.fromkeys(uuids) if u}
        processes = [(gpus[u], p.pid) for u, p in zip(uuids, self.processes) if u and gpus[u] is not None]
        self.sampler = GpuSampler([n for n in gpus.values() if n is not None],
                                  processes=processes if len(processes) == world else None)
        if not gpus:
            self.nvml_unavailable = "no GPU"
        elif len(processes) < world:
            self.nvml_unavailable = "NVML cannot open the cell's GPUs (no driver library, or MIG)"
        else:
            self.nvml_unavailable = None

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
    def _gather(self, phase: str, command: Command | None = None, argument: Any = None) -> list[Any]:
        """Send a command to every rank and wait for all replies, the deadline, or a failure."""
        self.phase = phase
        if command is not None:
            for conn in self.conns:
                try:
                    conn.send((command, argument))
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
                    if kind is Reply.FAILED:
                        status, detail, report = payload
                        raise CellFailed(status, f"rank {rank}: {detail}" if self.config.world_size > 1 else detail,
                                         [report])
                    if kind is Reply.PROGRESS:
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

    def _timed(self, phase: str, command: Command, argument: Any = None) -> list[Any]:
        """A command whose replies end a window of timed steps, sampled through NVML meanwhile."""
        self.sampler.open_window()
        self.sampling = True
        try:
            return self._gather(phase, command, argument)
        finally:
            self.sampling = False
            self.sampler.close_window()

    def warmup(self) -> float:
        return max(self._gather("warmup", Command.WARMUP))

    def step(self) -> float:
        """One timed optimizer step on every rank; its duration is the slowest rank's."""
        started = time.perf_counter()
        duration = max(self._timed(f"step {len(self.step_round_trip_s) + 1}", Command.STEP))
        self.step_round_trip_s.append(time.perf_counter() - started)
        return duration

    def run_timed(self) -> list[float | None]:
        """The remaining steps as one timed window (rank 0 reports progress if it is shown); each
        rank's host clock around its window, from its first step's start to the sync after its last."""
        return self._timed("timed steps", Command.RUN, self.progress is not None)

    def finish(self, evaluate: bool = True) -> dict[str, Any]:
        """The cell's record; evaluate=False leaves out the held-out loss (a memory probe needs none,
        and at a small batch its passes over the evaluation set cost more than the steps)."""
        reports = self._gather("finish", Command.FINISH, evaluate)
        return merge_ranks(self.config, reports, launcher=self.launcher_report(reports))

    def record_for(self, failure: CellFailed) -> dict[str, Any]:
        self.close()
        return merge_ranks(self.config, failure.reports, failure.status, failure.detail,
                           launcher=self.launcher_report(failure.reports))

    def launcher_report(self, reports: list[RankReport]) -> LauncherReport:
        """What this process saw: fixed costs, round trips, and NVML over the timed steps."""
        fixed = dict(self.fixed_cost_s)
        if reports:
            fixed.update(reports[0].fixed_cost_s)
        energy, window_s = self.sampler.energy_j(ENERGY_MIN_WINDOW_S)
        return LauncherReport(fixed_cost_s=fixed, worker_pids=self.pids, step_round_trip_s=self.step_round_trip_s,
                              gpu_samples=self.sampler.summary(),
                              nvml_process_peak_bytes=self.sampler.process_peaks if self.sampler.processes else None,
                              nvml_note=f"unavailable: {self.nvml_unavailable}" if self.nvml_unavailable
                              else self.sampler.process_note(), power_energy_j=energy, power_window_s=window_s)


def run_cell(config: RunConfig, timeout_s: float = DEFAULT_CELL_TIMEOUT_S, memory_limit_bytes: int | None = None,
             progress: ProgressFn | None = None, profile: ProfileConfig | None = None,
             single_steps: int = 0, evaluate: bool = True) -> dict[str, Any]:
    """Run a whole cell and return its record: warmup, then the first `single_steps` timed steps
    one command each (as bench's pytest-benchmark rounds take them), the rest as one window
    (evaluate=False: without the held-out loss, see CellWorkers.finish)."""
    with CellWorkers(config, timeout_s, memory_limit_bytes, progress, profile) as workers:
        try:
            workers.start()
            workers.warmup()
            for _ in range(min(single_steps, config.steps)):
                workers.step()
            if single_steps < config.steps:
                workers.run_timed()
            return workers.finish(evaluate)
        except CellFailed as failure:
            return workers.record_for(failure)


def call_in_fresh_process(target: Callable[..., None], *args: Any, timeout_s: float = 300.0,
                          what: str = "the worker") -> Any:
    """Run `target(conn, *args, environ)` in a fresh process from the fork server and return the
    payload it sends as (Reply.OK, payload); (Reply.FAILED, detail) or its death raise RuntimeError."""
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
    if kind is not Reply.OK:
        raise RuntimeError(f"{what} failed: {payload}")
    return payload


def probe(device: str = "auto", timeout_s: float = 300.0) -> dict[str, Any]:
    """Ask a fresh worker process what the cells will run on (device, GPU count and capability,
    the environment fingerprint): this process never initialises CUDA."""
    # the worker's modules (loop, models, data): the launching process never imports them
    from .worker import probe as probe_main

    return call_in_fresh_process(probe_main, device, timeout_s=timeout_s, what="the device probe")


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "MASTER_ADDR" in os.environ)


def run_under_torchrun(config: RunConfig, profile: ProfileConfig | None = None) -> dict[str, Any] | None:
    """This process is one rank started by torchrun (any number of nodes): run it in place,
    gather the partial results on rank 0 and return the record there (None on other ranks).
    A rank that fails stops its peers, and the cell ends with its status (trainkit.engine.cell.failures)."""
    # the worker's modules (loop, models, data): the launching process never imports them
    from .worker import RankWorker

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != config.world_size:
        raise ValueError(f"world_size={config.world_size} but torchrun started {world} ranks")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    worker: RankWorker | None = None
    board: FailureBoard | None = None
    try:
        worker = RankWorker(config, rank, local_rank, local_world, profile)
        board = FailureBoard.of_process_group(rank)
        if board is not None:
            board.watch()
        worker.warmup()
        worker.run_timed()
        report = worker.collect()
        if board is not None:
            board.stop()  # from here on a failure shows in the gather itself
        gathered: list[Any] = [None] * world if rank == 0 else []
        if dist.is_initialized():
            dist.gather_object(report, gathered if rank == 0 else None, dst=0)
            # A sender's gather can return before rank 0 has received; tearing gloo down then aborts
            # the process (std::terminate in its pair thread). Every rank leaves together.
            dist.barrier()
            dist.destroy_process_group()
        else:
            gathered = [report]
    except Exception as exc:
        return _failed_rank(config, rank, worker, board or FailureBoard.of_process_group(rank), exc)
    return merge_ranks(config, gathered, launcher=_TORCHRUN_LAUNCHER) if rank == 0 else None


_TORCHRUN_LAUNCHER = LauncherReport(nvml_note="unavailable: ranks started by torchrun have no launcher to sample NVML")
"""No launcher stands outside the ranks here: NVML's per-process peak is not sampled."""


def _failed_rank(config: RunConfig, rank: int, worker: Any, board: FailureBoard | None,
                 exc: Exception) -> dict[str, Any] | None:
    """A rank whose cell ended in an exception: post it (unless a peer's failure came first and
    this one is its consequence, such as a collective whose peer left), leave the group so that
    the peers stop, and on rank 0 return the record of the first failure."""
    # the worker's modules (loop, models, data): the launching process never imports them
    from .worker import classify, failure_report

    status, detail = classify(exc)
    own = Failure(rank, status, detail, failure_report(worker, rank))
    first = board.first() if board is not None else None
    if first is None:
        first = board.post(own) if board is not None else own
    leave(board)
    if rank != 0:
        return None
    reports = [own.report] if first.rank == rank else [own.report, first.report]
    if first.rank != rank:
        detail = f"rank {first.rank}: {first.detail} (rank 0 then stopped: {own.detail[:160]})"
    elif config.world_size > 1:
        detail = f"rank 0: {own.detail}"
    return merge_ranks(config, reports, first.status, detail, launcher=_TORCHRUN_LAUNCHER)


def time_left(done: list[tuple[tuple[Any, ...], float]], pending: list[tuple[Any, ...]]) -> tuple[float, int]:
    """(seconds the pending cells should take, how many of them no finished cell can stand for).
    A kind is a tuple, most telling part first (trainkit.bench.runner.cell_kind: compiled, checkpointed,
    ranks, precision). Each pending cell takes the median wall time of the finished cells of its
    kind; failing that, of those that share the longest leading part of its kind, down to the first
    part alone (a median, not a mean: a first cell that started the fork server does not stand for
    the rest once others ran). A cell whose first part no finished cell shares (a compiled cell
    before any compiled one finished) cannot be guessed: it is counted, not timed."""
    seconds, unknown = 0.0, 0
    for kind in pending:
        for length in range(len(kind), 0, -1):
            like = [s for k, s in done if k[:length] == kind[:length]]
            if like:
                seconds += statistics.median(like)
                break
        else:
            unknown += 1
    return seconds, unknown
