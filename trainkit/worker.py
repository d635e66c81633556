"""One rank of one cell, in its own process: build, warm up, take timed steps, report.

A worker is driven by commands (from the launcher's pipe, or directly under torchrun) and answers
each with a measurement. Every failure becomes a status with a readable detail; what was measured
until then is still reported.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .config import ProfileConfig, RunConfig
from .env import collect_env
from .flops import training_flops_per_sample
from .loop import Trainer, Unsupported
from .memory import host_rss_peak_bytes, torch_memory
from .models import count_params
from .nvml import Nvml
from .profile import profile_cell
from .timing import Marks

PROGRESS_INTERVAL_S = 0.5
ENERGY_MIN_WINDOW_S = 1.0  # NVML's energy counter updates every ~10 ms (gpuopenanalytics/pynvml#18)


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
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" ({os.path.basename(where.filename)}:{where.lineno})" if where else ""
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


def limit_host_memory(extra_bytes: int) -> None:
    """Cap this process's address space at its current size plus extra_bytes, so a runaway CPU
    cell fails with an allocation error (status oom) instead of taking the machine down."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (current + extra_bytes, resource.RLIM_INFINITY))


class RankWorker:
    """Builds one rank's Trainer and measures it."""

    def __init__(self, config: RunConfig, rank: int = 0, local_rank: int = 0, local_world_size: int = 1,
                 profile: ProfileConfig | None = None) -> None:
        started = time.perf_counter()
        self.config, self.rank, self.profile = config, rank, profile
        self.partial: dict[str, Any] = {"rank": rank, "pid": os.getpid(), "memory": {}}
        self.device = select_device(config, local_rank)
        if self.device.type == "cpu":
            # Ranks share the cores: without this, 2 ranks x all-cores threads thrash.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
        if config.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=rank, world_size=config.world_size,
                                    device_id=self.device if self.device.type == "cuda" else None)
        self.nvml = Nvml.open(self.device) if self.device.type == "cuda" else None
        memory = self.partial["memory"]
        memory["nvml_method"] = "per-process (nvmlDeviceGetComputeRunningProcesses)" if self.nvml else \
            ("unavailable: no NVML" if self.device.type == "cuda" else "unavailable: no GPU")
        self.gpu_uuid = str(torch.cuda.get_device_properties(self.device).uuid) if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            torch.zeros(1, device=self.device)  # creates the CUDA context: the baseline below
            torch.cuda.synchronize(self.device)
            memory["nvml_context_baseline_bytes"] = self._nvml_used()
        initialised = time.perf_counter()
        self.trainer = Trainer(config, self.device, rank)
        built = time.perf_counter()
        self.partial["fixed_cost_s"] = {"init_s": initialised - started, "build_s": built - initialised}
        self.partial["resumed_from_step"] = self.trainer.resumed_from_step
        memory["data_device_bytes"] = self.trainer.data.device_bytes if self.device.type == "cuda" else None
        self.timer = Marks(self.device)
        self.step_times_s: list[float] = []
        self.first_timed_step: int | None = None
        self.energy_start: tuple[float, int] | None = None

    def _nvml_used(self) -> int | None:
        return self.nvml.process_used_bytes({os.getpid()}) if self.nvml else None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- commands ----------------------------------------------------------------------------
    def warmup(self) -> float:
        started = time.perf_counter()
        self.trainer.run(self.config.warmup_steps)
        self._sync()
        self.check_divergence()
        self.partial["warmup_time_s"] = time.perf_counter() - started
        return self.partial["warmup_time_s"]

    def _begin_timed(self) -> None:
        if self.first_timed_step is None:
            self.first_timed_step = self.trainer.step
            if self.nvml and (energy := self.nvml.energy_mj()) is not None:
                self.energy_start = (time.perf_counter(), energy)

    def step(self) -> float:
        """One timed optimizer step; returns its duration in seconds (synchronised)."""
        if self.trainer.finished:
            raise RuntimeError(f"the run has no step left after {self.trainer.total_steps}")
        self._begin_timed()
        self.timer.mark()
        self.trainer.train_step()
        self.timer.mark()
        (elapsed,) = self.timer.read_s()
        self.step_times_s.append(elapsed)
        self.check_divergence()  # after the timing: the host sync it needs is not measured
        return elapsed

    def run_timed(self, progress: Callable[[int, int, float | None], None] | None = None) -> list[float]:
        """All remaining steps as one timed window: one sync at its end (and one per progress
        report, at most every PROGRESS_INTERVAL_S, to read the latest loss)."""
        self._begin_timed()
        last_report = time.perf_counter()
        self.timer.mark()
        while not self.trainer.finished:
            self.trainer.run(1)
            self.timer.mark()
            if progress is not None and time.perf_counter() - last_report >= PROGRESS_INTERVAL_S:
                last_report = time.perf_counter()
                # This rank's share of the last step's loss; every rank holds an equal share of the
                # samples, so world_size times it is the mean over this rank's samples.
                local_mean = float(self.trainer.loss_curve()[-1]) * self.config.world_size
                progress(self.trainer.step, self.trainer.total_steps, local_mean)
                self.check_divergence()
        self.step_times_s.extend(self.timer.read_s())
        self.check_divergence()
        return self.step_times_s

    def check_divergence(self) -> None:
        bad = self.trainer.first_nonfinite_step()
        if bad is not None:
            raise Diverged(bad, "the loss is not finite")
        if self.trainer.scale_collapsed():
            scale = self.trainer.policy.scaler.get_scale()  # type: ignore[union-attr]
            raise Diverged(self.trainer.step - 1, f"loss scale {scale:g} fell below "
                                                  f"min_loss_scale={self.config.min_loss_scale:g}")

    # --- results -----------------------------------------------------------------------------
    def collect(self, evaluate: bool = True) -> dict[str, Any]:
        """This rank's partial result. Memory is read before anything else allocates."""
        self._sync()
        trainer, memory = self.trainer, self.partial["memory"]
        memory.update(torch_memory(self.device))
        # The caching allocator keeps what it reserved, so the process's NVML usage never shrinks
        # during a cell: its value now is the peak, read without a sampler that would perturb timing.
        memory["nvml_process_peak_bytes"] = self._nvml_used()
        memory["host_rss_peak_bytes"] = host_rss_peak_bytes()
        if self.energy_start is not None and self.nvml is not None:
            started, energy_mj = self.energy_start
            end_mj = self.nvml.energy_mj()
            window_s = time.perf_counter() - started
            if end_mj is not None and window_s >= ENERGY_MIN_WINDOW_S and end_mj >= energy_mj:
                self.partial["energy_j"] = (end_mj - energy_mj) / 1e3  # a counter reset shows as end < start
        first_timed = self.first_timed_step if self.first_timed_step is not None else trainer.step
        local_first = first_timed - (trainer.resumed_from_step or 0)
        self.partial.update(
            step_times_s=self.step_times_s,
            timed_samples=trainer.step_samples[local_first:local_first + len(self.step_times_s)],
            first_timed_step=first_timed,
            loss_curve=trainer.loss_curve().tolist(),
            skipped=trainer.skipped(),
            step_samples=trainer.step_samples,
            final_scale=trainer.policy.scaler.get_scale() if trainer.policy.scaler is not None else None,
            derived=self.derived(),
            # DDP keeps replicas identical only if every rank synced the same gradients; a wrong
            # no_sync ends with ranks apart (modelscope/FunASR#3472), so compare them at the end.
            param_checksum=float(sum(p.detach().double().sum() for p in trainer.raw_model.parameters())),
        )
        if self.rank == 0:
            self.partial["env"] = collect_env(self.device)
            self.partial["flops_per_sample"] = training_flops_per_sample(trainer.spec)
            if evaluate:
                self.partial["eval_loss"] = trainer.evaluate()
        if evaluate and self.profile is not None:
            self.partial["profile"] = self._profile()
        return self.partial

    def _profile(self) -> dict[str, Any]:
        """The profiling passes, after everything above was read: they never touch those figures.
        A profiler failure is reported beside the cell's results, which stay valid."""
        try:
            result = profile_cell(self.trainer, self.profile, self.rank)  # type: ignore[arg-type]
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
        state_dtypes = {str(v.dtype) for v in state}
        param_bytes = sum(p.numel() * p.element_size() for p in trainer.raw_model.parameters())
        return {
            "resolved_device": str(self.device),
            "param_dtype": str(param.dtype),
            "grad_dtype": str(param.dtype),  # gradients take their parameter's dtype
            "compute_dtype": str(trainer.policy.compute_dtype),
            "optimizer_state_dtype": ",".join(sorted(state_dtypes)) or None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark_enabled": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "distributed_backend": dist.get_backend() if dist.is_initialized() else None,
            "has_batchnorm": trainer.spec.has_batchnorm,
            "num_classes": trainer.spec.num_classes,
            "params": count_params(trainer.raw_model),
            # The floor of any peak: weights, their gradients (same dtype) and optimizer state.
            "param_bytes": param_bytes,
            "optimizer_state_bytes": sum(v.numel() * v.element_size() for v in state),
            "total_steps": trainer.total_steps,
            "steps_per_epoch": trainer.data.steps_per_epoch,
            "torch_num_threads": torch.get_num_threads(),
        }


def failure_partial(worker: RankWorker | None, rank: int) -> dict[str, Any]:
    """What a failed rank can still report (memory at the failure, the curve so far)."""
    if worker is None:
        return {"rank": rank, "pid": os.getpid(), "memory": {"host_rss_peak_bytes": host_rss_peak_bytes()}}
    try:
        return worker.collect(evaluate=False)
    except BaseException:  # the failure may have left the device unusable; report what we have
        worker.partial.setdefault("memory", {})["host_rss_peak_bytes"] = host_rss_peak_bytes()
        return worker.partial


def serve(config: RunConfig, rank: int, local_rank: int, local_world_size: int, conn: Any,
          environ: dict[str, str], memory_limit_bytes: int | None, profile: ProfileConfig | None = None) -> None:
    """Entry point of a launched rank: answers the launcher's commands over `conn`."""
    os.environ.clear()
    os.environ.update(environ)  # the launcher's environment now, not the fork server's at its start
    worker: RankWorker | None = None
    try:
        if memory_limit_bytes is not None:
            limit_host_memory(memory_limit_bytes)
        worker = RankWorker(config, rank, local_rank, local_world_size, profile)
        conn.send(("ready", {"fixed_cost_s": worker.partial["fixed_cost_s"], "gpu_uuid": worker.gpu_uuid}))
        while True:
            command = conn.recv()
            if command == "warmup":
                conn.send(("ok", worker.warmup()))
            elif command == "step":
                conn.send(("ok", worker.step()))
            elif command == "run":
                def report(step: int, total: int, loss: float | None) -> None:
                    conn.send(("progress", (step, total, loss)))

                conn.send(("ok", worker.run_timed(report if rank == 0 else None)))
            elif command == "finish":
                conn.send(("result", worker.collect()))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
    except (EOFError, BrokenPipeError):
        return  # the launcher is gone: nothing to report to
    except BaseException as exc:  # every failure is a result, reported with what was measured
        status, detail = classify(exc)
        try:
            conn.send(("failed", (status, detail, failure_partial(worker, rank))))
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
                                "cpu_count": os.cpu_count() or 1}
        if chosen.type == "cuda":
            info.update(gpu_count=torch.cuda.device_count(), capability=torch.cuda.get_device_capability(chosen),
                        gpu_name=torch.cuda.get_device_name(chosen))
        info["env"] = collect_env(chosen)
        conn.send(("ok", info))
    except BaseException as exc:
        status, detail = classify(exc)
        conn.send(("failed", f"{status}: {detail}"))
