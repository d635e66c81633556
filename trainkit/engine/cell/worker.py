"""One rank of one cell, in its own process: build, warm up, take timed steps, report.

A worker is driven by commands (trainkit.engine.cell.protocol, from the launcher's pipe, or directly under
torchrun) and answers each with a measurement. Every failure becomes a status with a readable
detail; what was measured until then is still reported.

The timed steps hold no host sync beyond what the step itself needs (GradScaler's, in amp-fp16):
progress reports carry what the host knows, divergence is checked between rounds, and losses are
read after the window.
"""

from __future__ import annotations

import ctypes
import os
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..measure import conditions
from ..measure.cpus import threads_per_rank, usable_cpus
from ..measure.env import collect_env
from ..measure.flops import training_flops_per_sample
from ..measure.memory import (
    host_rss_now_bytes,
    host_rss_peak_bytes,
    host_vm_now_bytes,
    host_vm_peak_bytes,
    reset_peaks,
    torch_memory,
)
from ..measure.nvml import Nvml
from ..measure.timing import Marks
from ..measure.what_ran import dtype_name, observe, stored_bytes
from ..spec.config import ProfileConfig, RunConfig
from ..train import compiled
from ..train.loop import Trainer, Unsupported
from ..train.overhead import harness_overhead_us
from ..workloads.models import count_params
from ..workloads.workload import WorkloadError, user_frame
from . import allocator
from .diagnostics import diagnose
from .profile import profile_cell
from .protocol import Command, Reply
from .record import RankReport, TimedSpan

PROGRESS_INTERVAL_S = float(os.environ.get("TRAINKIT_PROGRESS_INTERVAL_S", "0.5"))
"""Seconds between a worker's progress reports (between steps, outside their time); the environment
variable sets it (0: after every step), read when the worker starts."""


class Diverged(Exception):
    def __init__(self, step: int, why: str) -> None:
        super().__init__(f"diverged@{step}: {why}")
        self.step = step


def classify(exc: BaseException) -> tuple[str, str]:
    """(status, one-line detail) of an exception that ended a cell."""
    if isinstance(exc, Unsupported):
        return "unsupported", str(exc)
    if isinstance(exc, Diverged):
        return "diverged", str(exc)
    message = " ".join(str(exc).split())
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "can't allocate memory" in message \
            or "Cannot allocate memory" in message:
        return "oom", f"out of memory: {message[:300]}" if message else "out of memory"
    if compiled.is_compile_error(exc):  # its message goes on with pages of generated code
        return "crashed", f"torch.compile: {type(exc).__name__}: {compiled.first_line(exc)[:300]}"
    if isinstance(exc, WorkloadError):  # already one line naming what is wrong with the workload
        return "crashed", message[:400]
    # Where the user's code raised it or called what did; else where it was raised.
    where = user_frame(exc)
    if where is None and exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
    at = f" ({where})" if where else ""
    return "crashed", f"{type(exc).__name__}: {message[:300]}{at}"


def select_device(config: RunConfig, local_rank: int) -> torch.device:
    """The device of this rank; set before any CUDA work so no rank touches GPU 0 by accident."""
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise Unsupported("device=cuda but no CUDA GPU is visible")
    if local_rank >= torch.cuda.device_count():
        raise Unsupported(f"rank needs GPU {local_rank} but only {torch.cuda.device_count()} are visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


GLIBC_M_MMAP_THRESHOLD, GLIBC_M_ARENA_MAX = -3, -8  # mallopt's parameters (malloc.h)
CAPPED_MMAP_THRESHOLD_BYTES = 128 * 1024


PARALLEL_ELEMENTS = 1 << 17
"""Elements of an operation at::parallel_for splits over every thread (its grain is 32,768)."""


def start_cpu_threads(config: RunConfig, local_world_size: int) -> tuple[int, str]:
    """Set this CPU rank's thread count and start its thread pool now; (threads, where the count
    came from). Ranks share the cores this process may use (its affinity and cgroup quota, not the
    node's count): without this, 2 ranks x all-cores threads thrash.

    The pool's threads start at the first parallel operation, each with a stack (8 MiB of address
    space by default); started here, before the baseline and the cap, they count as the worker's,
    not as the model's first step's."""
    threads, method = threads_per_rank(local_world_size)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if config.cpu_threads:
        threads, method = config.cpu_threads, f"cpu_threads={config.cpu_threads} (the config)"
    elif omp.isdigit() and 1 <= int(omp) < threads:  # the environment's bound, as torch itself reads it
        threads, method = int(omp), f"OMP_NUM_THREADS={omp} (the environment) under {threads}: {method}"
    torch.set_num_threads(threads)
    torch.zeros(PARALLEL_ELEMENTS).add_(1)
    return threads, method


def limit_host_memory(extra_bytes: int) -> None:
    """Cap this process's address space at its current size plus extra_bytes, so a runaway CPU
    cell fails with an allocation error (status oom) instead of taking the machine down.

    The cap counts address space, so glibc's malloc is first made to keep none it does not use:
    one arena (each thread's arena reserves 64 MiB up front, whenever the thread first allocates;
    glibc fixes the limit once per process, so a rank from the fork server has it from its
    environment, trainkit.engine.cell.launch.RANK_LIBRARY_ENV, and this call sets it for a process
    that has not needed a second arena yet) and a fixed mmap threshold (the adaptive one keeps freed
    large blocks in the heap, fragmented in an order the threads decide). Without this, the same cell
    near the cap runs or fails by chance; with it, the cap bounds the memory in use and a cell fails
    the same way every time."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(GLIBC_M_ARENA_MAX, 1)
        libc.mallopt(GLIBC_M_MMAP_THRESHOLD, CAPPED_MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator decides, and the cap still holds
    resource.setrlimit(resource.RLIMIT_AS, (host_vm_now_bytes() + extra_bytes, resource.RLIM_INFINITY))


class RankWorker:
    """Builds one rank's Trainer and measures it into a RankReport."""

    def __init__(self, config: RunConfig, rank: int = 0, local_rank: int = 0, local_world_size: int = 1,
                 profile: ProfileConfig | None = None, device: torch.device | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        started = time.perf_counter()
        self.config, self.rank, self.profile = config, rank, profile
        self.clock = clock
        """What the warmup and the CPU's step times are read on (seconds): perf_counter; a test injects
        a clock a loaded host cannot move (tests/test_frontier.py charges each compile a fixed time)."""
        self.threads_method: str | None = None
        """Where a CPU rank's thread count came from (None on a GPU: torch's default)."""
        self.report = RankReport(rank=rank, pid=os.getpid())
        memory = self.report.memory
        memory.host_rss_baseline_bytes = host_rss_now_bytes()  # mostly the fork server's pages
        allocator.set_alloc_conf(config.alloc_conf)  # before CUDA starts (serve() has done it already)
        self.device = device if device is not None else select_device(config, local_rank)
        if self.device.type == "cpu":
            # CUDA reserves far more address space than memory: no such measure there.
            _, self.threads_method = start_cpu_threads(config, local_world_size)
            # After the threads: their stacks are the worker's address space, not the model's.
            memory.host_vm_baseline_bytes = host_vm_now_bytes()
        self.nvml = Nvml.open(self.device) if self.device.type == "cuda" else None
        self.gpu_uuid = str(torch.cuda.get_device_properties(self.device).uuid) if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            torch.zeros(1, device=self.device)  # creates the CUDA context: the baseline, before NCCL's buffers
            torch.cuda.synchronize(self.device)
            memory.nvml_context_baseline_bytes = self.nvml.process_used_bytes({os.getpid()}) if self.nvml else None
        if config.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=rank, world_size=config.world_size,
                                    device_id=self.device if self.device.type == "cuda" else None)
        initialised = time.perf_counter()
        self.trainer = Trainer(config, self.device, rank)
        built = time.perf_counter()
        self.report.fixed_cost_s = {"init_s": initialised - started, "build_s": built - initialised}
        self.report.loss.resumed_from_step = self.trainer.resumed_from_step
        memory.data_device_bytes = self.trainer.data.device_bytes if self.device.type == "cuda" else None
        self.timer = Marks(self.device, self.clock)
        self.compile_warmup: dict[str, Any] | None = None
        """What the warmup of a compiled cell saw (see _compile_warmup)."""
        self.allocator_before: dict[str, int] | None = None
        """The allocator's retry and OOM counters when the timed steps began (CUDA)."""
        self.host_before: conditions.HostSnapshot | None = None
        """The host when the timed steps began (trainkit.engine.measure.conditions)."""

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _energy_mj(self) -> int | None:
        return self.nvml.energy_mj() if self.nvml is not None else None

    # --- commands ----------------------------------------------------------------------------
    def warmup(self) -> float:
        started = self.clock()
        reset_peaks(self.device)  # from here on: the model and the data pool are in, generation is not
        if self.config.compile:
            self._compile_warmup()
        else:
            self.trainer.run(self.config.warmup_steps)
        self._sync()
        self.check_divergence()
        memory = self.report.memory
        memory.torch_warmup_max_allocated_bytes, memory.torch_warmup_max_reserved_bytes = torch_memory(self.device)
        self.report.timing.warmup_time_s = self.clock() - started
        return self.report.timing.warmup_time_s

    def _compile_warmup(self) -> None:
        """The warmup of a compiled cell: the configured steps, then more while the last one still
        compiled something (up to compiled.MAX_SETTLE_STEPS), each timed on its own; then any
        recompile becomes an error (trainkit/compiled.py). In step mode the extra steps lengthen
        the run, so the timed steps stay `steps` (a schedule keeps the configured length); in
        epoch mode they come out of the first epoch. With several ranks every rank takes as many
        extra steps as the one that compiled longest (their collectives must pair up)."""
        trainer, config = self.trainer, self.config
        start, failures = compiled.Counters.now(), compiled.guard_failure_counts()
        steps: list[tuple[float, bool]] = []
        settle = 0
        while len(steps) < config.warmup_steps or not steps or steps[-1][1]:
            if len(steps) >= config.warmup_steps:
                if settle == compiled.MAX_SETTLE_STEPS:
                    raise RuntimeError(f"torch.compile was still compiling after {len(steps)} warmup steps "
                                       f"(recompiles: {compiled.recompile_reasons(failures)})")
                settle += 1
                if config.epochs is None:
                    trainer.total_steps += 1
            if trainer.finished:
                break
            before, began = compiled.Counters.now(), self.clock()
            trainer.run(1)
            self._sync()
            seconds, compiled_now = self.clock() - began, compiled.Counters.now().minus(before).any
            if config.world_size > 1 and dist.is_initialized():  # any rank that compiled keeps all warming up
                flag = torch.tensor(float(compiled_now), device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                compiled_now = bool(flag.item())
            steps.append((seconds, compiled_now))
        self.compile_warmup = {"steps": steps, "counted": compiled.Counters.now().minus(start),
                               "reasons": compiled.recompile_reasons(failures), "settle": settle}
        compiled.fail_on_recompile()

    def _timed_span(self, steps: int, report: Callable[[int, int], None] | None = None) -> list[float]:
        """Up to `steps` timed optimizer steps back to back; their durations in seconds. The energy
        counter is read before and after (the device is idle at both: the span before ended with a
        sync, and reading this one's times is one)."""
        timing, trainer = self.report.timing, self.trainer
        if timing.first_timed_step is None:
            timing.first_timed_step = trainer.step
            reset_peaks(self.device)  # the record's peaks are the timed steps'
            self.allocator_before = allocator.counters(self.device)
            self.host_before = conditions.host_snapshot()
            self.report.gpu_other_pids = conditions.other_gpu_pids(self.nvml, os.getpid(), None)
        first = len(trainer.step_samples)
        energy_before, counter_started = self._energy_mj(), time.perf_counter()
        trainer.run(steps, self.timer, report, PROGRESS_INTERVAL_S)
        times = self.timer.read_s()
        energy_after, counter_s = self._energy_mj(), time.perf_counter() - counter_started
        samples = trainer.step_samples[first:first + len(times)]
        timing.step_times_s += times
        timing.timed_samples += samples
        energy_j = None
        if energy_before is not None and energy_after is not None and energy_after >= energy_before:
            energy_j = (energy_after - energy_before) / 1e3  # a counter reset shows as after < before
        timing.spans.append(TimedSpan(steps=len(times), seconds=sum(times), samples=sum(samples), energy_j=energy_j,
                                      counter_s=counter_s))
        # The host from the first timed step to this span's end, read outside every step's time.
        self.report.conditions = conditions.rank_conditions(self.host_before, torch.get_num_threads(),
                                                            torch.get_num_interop_threads())
        self.report.gpu_other_pids = conditions.other_gpu_pids(self.nvml, os.getpid(), self.report.gpu_other_pids)
        return times

    def step(self) -> float:
        """One timed optimizer step (a checkpoint due after it is written outside its time)."""
        if self.trainer.finished:
            raise RuntimeError(f"the run has no step left after {self.trainer.total_steps}")
        (elapsed,) = self._timed_span(1)
        self.check_divergence()  # after the timing: the host sync it needs is not measured
        return elapsed

    def run_timed(self, progress: Callable[[int, int], None] | None = None) -> list[float]:
        """All remaining steps as one timed window, synchronised once at its end; `progress(step,
        total)` is called at most every PROGRESS_INTERVAL_S, between steps and outside their time."""
        self._timed_span(self.trainer.total_steps - self.trainer.step, progress)
        self.check_divergence()
        return self.report.timing.step_times_s

    def check_divergence(self) -> None:
        bad = self.trainer.first_nonfinite_step()
        if bad is not None:
            raise Diverged(bad, "the loss is not finite")
        if self.trainer.scale_collapsed():
            scale = self.trainer.policy.scaler.get_scale()  # type: ignore[union-attr]
            raise Diverged(self.trainer.step - 1, f"loss scale {scale:g} fell below "
                                                  f"min_loss_scale={self.config.min_loss_scale:g}")

    # --- results -----------------------------------------------------------------------------
    def collect(self, evaluate: bool = True, overhead: bool = True) -> RankReport:
        """This rank's report. Memory is read before anything else allocates; the profiling passes
        run last, on a report already complete (they append to the trainer's lists, not to it).
        `overhead`: measure the harness's overhead per step (not for a rank that failed)."""
        self._sync()
        trainer, report, memory = self.trainer, self.report, self.report.memory
        allocated, reserved = torch_memory(self.device)
        if report.timing.first_timed_step is not None:
            memory.torch_max_allocated_bytes, memory.torch_max_reserved_bytes = allocated, reserved
        elif report.timing.warmup_time_s is None:  # failed in warmup: its peaks are all there is
            memory.torch_warmup_max_allocated_bytes, memory.torch_warmup_max_reserved_bytes = allocated, reserved
        memory.host_rss_peak_bytes = host_rss_peak_bytes()
        memory.allocator = allocator.figures(self.device, self.config.alloc_conf, self.allocator_before,
                                             memory.torch_max_allocated_bytes, memory.torch_max_reserved_bytes)
        if self.compile_warmup is not None:
            times = report.timing.step_times_s
            warm = self.compile_warmup
            report.compile = compiled.record(warm["steps"], warm["counted"], warm["reasons"], warm["settle"],
                                             self.config.compile_mode, statistics.median(times) if times else None)
        if memory.host_vm_baseline_bytes is not None:
            memory.host_vm_peak_bytes = host_vm_peak_bytes()
        loss = report.loss
        loss.curve = trainer.loss_curve().tolist()
        loss.step_samples = list(trainer.step_samples)
        loss.skipped = trainer.skipped()
        loss.final_scale = trainer.policy.scaler.get_scale() if trainer.policy.scaler is not None else None
        report.derived = self.derived()
        if overhead:
            self._harness_overhead()
        # Compared across ranks by merge_ranks: replicas that drifted apart mean a wrong no_sync.
        report.param_checksum = float(sum(p.detach().double().sum() for p in trainer.raw_model.parameters()))
        if self.rank == 0:
            report.env = collect_env(self.device)
            report.flops_per_sample = training_flops_per_sample(trainer.workload)
            report.precision_details = trainer.policy.details(trainer.workload)
            if evaluate:
                loss.eval_loss = trainer.evaluate()
        if evaluate and self.profile is not None and self.profile.diagnostics:
            report.diagnostics = self._diagnose()
        if evaluate and self.profile is not None:
            report.profile = self._profile()
        if evaluate:  # last, so the passes above keep their steps; every rank: its all-reduce needs them all
            report.what_ran = self._beside_the_figures(lambda: observe(self.trainer))
        report.cpu_time_s = time.process_time()  # this process's, all threads, from its fork on
        return report

    def _harness_overhead(self) -> None:
        """trainkit's own cost per step (trainkit.engine.train.overhead), on a null copy of the trainer
        after the timed steps: it runs none of the cell's work and touches none of its figures."""
        report = self.report
        if not report.timing.step_times_s:
            report.harness_overhead_note = "the cell has no timed steps"
            return
        try:
            report.harness_overhead_us = harness_overhead_us(self.trainer)
        except Exception as exc:  # a figure beside the others: its failure is reported, not raised
            report.harness_overhead_note = f"the measurement failed: {classify(exc)[1]}"

    def _diagnose(self) -> dict[str, Any]:
        """Why the loss moved, from one more step after everything above was read (like the profiling
        passes, it never touches those figures)."""
        return self._beside_the_figures(lambda: diagnose(self.trainer))

    def _profile(self) -> dict[str, Any]:
        """The profiling passes, after everything above was read: they never touch those figures."""
        return self._beside_the_figures(lambda: profile_cell(self.trainer, self.profile, self.rank))  # type: ignore[arg-type]

    def _beside_the_figures(self, extra_pass: Any) -> dict[str, Any]:
        """An extra pass after the figures: its failure is reported beside the cell's results, which
        stay valid, never instead of them."""
        try:
            result = extra_pass()
            self._sync()
            return result
        except Exception as exc:
            return {"error": classify(exc)[1]}

    def derived(self) -> dict[str, Any]:
        """Facts of the run the config alone does not say: dtypes, backend flags, sizes."""
        trainer = self.trainer
        param = next(trainer.raw_model.parameters())
        state = [v for s in trainer.optimizer.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor) and v.ndim > 0]
        # torchao's quantized states by their kind (8bit, fp8): their dtype is the apparent one
        state_dtypes = {str(v.dtype) if type(v) is torch.Tensor else dtype_name(v) for v in state}
        param_bytes = sum(p.numel() * p.element_size() for p in trainer.raw_model.parameters())
        return {
            "resolved_device": str(self.device),
            "param_dtype": str(param.dtype),
            "grad_dtype": str(param.dtype),  # gradients take their parameter's dtype
            # ... and add up over micro-batches and ranks in this one (fp32 main gradients of master modes)
            "grad_accum_dtype": str(trainer.policy.grad_accum_dtype),
            "compute_dtype": str(trainer.policy.compute_dtype),
            "optimizer_state_dtype": ",".join(sorted(state_dtypes)) or None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark_enabled": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "distributed_backend": dist.get_backend() if dist.is_initialized() else None,
            "has_batchnorm": trainer.workload.has_batchnorm,
            "num_classes": trainer.workload.num_classes,
            # The workload's own (a user's sequence model, hf:), which the config alone does not know.
            "tokens_per_sample": trainer.workload.tokens_per_sample,
            "params": count_params(trainer.raw_model),
            # The floor of any peak: weights, their gradients (same dtype) and optimizer state.
            "param_bytes": param_bytes,
            "optimizer_state_bytes": sum(stored_bytes(v) for v in state),
            # The price of master weights: an fp32 copy of every parameter (0 without one).
            "master_dtype": str(trainer.params[0].dtype) if trainer.policy.master_bytes else None,
            "master_bytes": trainer.policy.master_bytes,
            "total_steps": trainer.total_steps,
            "steps_per_epoch": trainer.data.steps_per_epoch,
            # A compiled or FP8 cell drops each epoch's short last micro-batch (data.fixed_rows_reason).
            "short_micro_batch_dropped": trainer.data.drop_reason,
            "dropped_samples_per_epoch": trainer.data.dropped_samples_per_epoch,
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_threads_method": self.threads_method or "torch's default (a GPU rank's host threads)",
            "checkpointed_modules": list(trainer.checkpointed),
        }


def failure_report(worker: RankWorker | None, rank: int) -> RankReport:
    """What a failed rank can still report (memory at the failure, the curve so far)."""
    if worker is None:
        report = RankReport(rank=rank, pid=os.getpid())
        report.memory.host_rss_peak_bytes = host_rss_peak_bytes()
        return report
    try:
        return worker.collect(evaluate=False, overhead=False)
    except BaseException:  # the failure may have left the device unusable; report what we have
        worker.report.memory.host_rss_peak_bytes = host_rss_peak_bytes()
        if worker.report.memory.host_vm_baseline_bytes is not None:
            worker.report.memory.host_vm_peak_bytes = host_vm_peak_bytes()
        return worker.report


def serve(config: RunConfig, rank: int, local_rank: int, local_world_size: int, conn: Any,
          environ: dict[str, str], memory_limit_bytes: int | None, profile: ProfileConfig | None = None) -> None:
    """Entry point of a launched rank: answers the launcher's commands over `conn` (trainkit.engine.cell.protocol)."""
    os.environ.clear()
    os.environ.update(environ)  # the launcher's environment now, not the fork server's at its start
    worker: RankWorker | None = None
    try:
        allocator.set_alloc_conf(config.alloc_conf)  # first: the allocator reads it once, when CUDA starts
        device = select_device(config, local_rank)
        if memory_limit_bytes is not None:
            if device.type != "cpu":
                raise Unsupported("a memory limit caps a CPU worker's address space (RLIMIT_AS); CUDA reserves "
                                  "far more address space than memory, so on a GPU it would fail every cell")
            # The cap is relative to what the worker holds before the model: its threads included.
            start_cpu_threads(config, local_world_size)
            limit_host_memory(memory_limit_bytes)
        worker = RankWorker(config, rank, local_rank, local_world_size, profile, device)
        conn.send((Reply.READY, {"fixed_cost_s": worker.report.fixed_cost_s, "gpu_uuid": worker.gpu_uuid}))
        while True:
            command, argument = conn.recv()
            if command is Command.WARMUP:
                conn.send((Reply.OK, worker.warmup()))
            elif command is Command.STEP:
                conn.send((Reply.OK, worker.step()))
            elif command is Command.RUN:
                def progress(step: int, total: int) -> None:
                    conn.send((Reply.PROGRESS, (step, total)))

                wanted = argument and rank == 0  # only when the launcher shows progress
                worker.run_timed(progress if wanted else None)
                # The rank's own host clock around the window (TimedSpan.counter_s): the launcher's
                # clock would add two process hand-offs, which a CPU quota can stretch to a period each.
                conn.send((Reply.OK, worker.report.timing.spans[-1].counter_s))
            elif command is Command.FINISH:
                conn.send((Reply.RESULT, worker.collect(evaluate=argument is not False)))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
    except (EOFError, BrokenPipeError):
        return  # the launcher is gone: nothing to report to
    except BaseException as exc:  # every failure is a result, reported with what was measured
        status, detail = classify(exc)
        try:
            conn.send((Reply.FAILED, (status, detail, failure_report(worker, rank))))
        except (OSError, EOFError):
            pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def probe(conn: Any, device: str, environ: dict[str, str]) -> None:
    """Entry point of a probe process: what cells on `device` will run on, and the fingerprint."""
    os.environ.clear()
    os.environ.update(environ)
    try:
        chosen = select_device(RunConfig(device=device), 0)
        info: dict[str, Any] = {"device": chosen.type, "gpu_count": 0, "capability": None, "gpu_name": None,
                                "gpu_memory_bytes": None, "cpu_count": usable_cpus().cpus}
        if chosen.type == "cuda":
            info.update(gpu_count=torch.cuda.device_count(), capability=torch.cuda.get_device_capability(chosen),
                        gpu_name=torch.cuda.get_device_name(chosen),
                        gpu_memory_bytes=torch.cuda.get_device_properties(chosen).total_memory)
        info["compile_unsupported"] = compiled.unsupported_reason(chosen.type)
        info["env"] = collect_env(chosen)
        conn.send((Reply.OK, info))
    except BaseException as exc:
        status, detail = classify(exc)
        conn.send((Reply.FAILED, f"{status}: {detail}"))


def serve_estimates(conn: Any, requests: list[dict[str, Any]], environ: dict[str, str]) -> None:
    """Entry point of the planner's estimate process (launch.call_in_fresh_process). It lives
    here, beside the worker's device choice and failure classes, which it shares: fake CUDA
    tensors initialise CUDA, which the planner's own process never does."""
    from ..estimate.estimate import estimate_request  # only the planner's process pays for the estimator

    os.environ.clear()
    os.environ.update(environ)
    try:
        if any(r["device"] == "cuda" for r in requests):
            select_device(RunConfig(device="cuda"), 0)
        conn.send((Reply.OK, [estimate_request(r) for r in requests]))
    except BaseException as exc:
        status, detail = classify(exc)
        conn.send((Reply.FAILED, f"{status}: {detail}"))
