"""torch.compile as a matrix axis: can it run here, has compilation stopped, what did it cost.

The Trainer compiles the whole model (`torch.compile(model, mode=...)`) after the precision's
conversion, activation checkpointing and DDP's wrapper, in that order: float8 layers and
checkpointed blocks are then traced as they run, and DDP's bucket boundaries are known to
compile's DDP optimizer (PyTorch's DDP notes: wrap first, then compile). Loss, optimizer, clipping
and the scaler stay eager.

Compilation happens lazily, in the first steps (the backward graph at the first backward), and
again whenever a guard fails (a new shape, autocast toggled). The worker's warmup therefore runs
until a step compiles nothing new (`Counters` before and after each step), then sets the stance
"fail_on_recompile", so a recompile inside the timed steps is an error the cell reports instead
of seconds of compilation hidden in a step time. The compile time is the warmup steps that
compiled, minus what those steps would take at the steady speed (the median timed step).

On a CPU inductor writes C++ and builds it with the system's compiler (g++, or $CXX); without
one, compiled cells are unsupported with that reason (bench skips them at collection).
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MAX_SETTLE_STEPS = 10
"""Warmup steps past the configured ones a compiled cell may take for compilation to stop."""
FAIL_ON_RECOMPILE = "fail_on_recompile"
TIME_METHOD = ("sum over the warmup steps that compiled (new frames, graphs or recompiles) of their "
               "wall time minus the median timed step")


@functools.cache
def cpp_compiler() -> tuple[str | None, str | None]:
    """(the C++ compiler inductor will use, None) or (None, why there is none). Runs
    `<compiler> --version` once per process, as inductor itself does."""
    from torch._inductor import cpp_builder  # inductor: heavy, not loaded by `import torch`; only for compiled cells

    try:
        return cpp_builder.get_cpp_compiler(), None
    except Exception as exc:  # InvalidCxxCompiler, or whatever a broken toolchain raises
        return None, " ".join(str(exc).split()) or type(exc).__name__


def unsupported_reason(device_type: str) -> str | None:
    """Why torch.compile cannot run cells on this device type here, or None."""
    if device_type != "cpu":
        return None  # CUDA kernels are Triton's; no C++ compiler is needed for a training step
    compiler, why = cpp_compiler()
    if compiler is None:
        return f"torch.compile on a CPU needs a C++ compiler for inductor (install g++ or set CXX): {why}"
    return None


def quiet_cpp_extension() -> None:
    """inductor's C++ build imports torch.utils.cpp_extension, which warns "No CUDA runtime is found,
    using CUDA_HOME=..." when a CUDA build of torch runs without a GPU: true, expected on a CPU, and a
    stray line among a matrix's progress lines or check-workload's rows."""
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def thread_lock_for_progress_bars() -> None:
    """inductor waits on its compile workers behind a tqdm bar, and tqdm's first bar makes a
    multiprocessing lock: a semaphore registered with the resource tracker this process shares with
    the process that started it, which warns of it as leaked when it exits (the bench's last line
    after a compiled cell). A thread lock serves a bar in one process as well."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())


def compile_model(model: nn.Module, mode: str | None) -> nn.Module:
    quiet_cpp_extension()
    thread_lock_for_progress_bars()
    return torch.compile(model, mode=mode)  # type: ignore[return-value]


@dataclass(frozen=True)
class Counters:
    """Dynamo's process-wide compilation counters at one moment (compare two to see what a step compiled)."""

    frames: int
    """Frames dynamo compiled (graph breaks add frames)."""
    graphs: int
    """Unique graphs it produced."""
    recompiles: int
    """Guard failures that made it compile a frame again."""

    @classmethod
    def now(cls) -> Counters:
        from torch._dynamo.utils import counters, guard_failures  # dynamo: not loaded by `import torch`

        return cls(frames=counters["frames"]["total"], graphs=counters["stats"]["unique_graphs"],
                   recompiles=sum(len(reasons) for reasons in guard_failures.values()))

    def minus(self, before: Counters) -> Counters:
        return Counters(self.frames - before.frames, self.graphs - before.graphs, self.recompiles - before.recompiles)

    @property
    def any(self) -> bool:
        return bool(self.frames or self.graphs or self.recompiles)


def guard_failure_counts() -> dict[Any, int]:
    """How many guard failures dynamo holds per code object now (pass it to recompile_reasons later)."""
    from torch._dynamo.utils import guard_failures  # dynamo: not loaded by `import torch`

    return {code: len(reasons) for code, reasons in guard_failures.items()}


def recompile_reasons(since: dict[Any, int], limit: int = 5) -> list[str]:
    """Why dynamo recompiled after `since` (its guard failures, e.g. "tensor 'x' size mismatch at
    index 0"), the first few."""
    from torch._dynamo.utils import guard_failures  # dynamo: not loaded by `import torch`

    return [str(reason) for code, reasons in guard_failures.items() for reason in reasons[since.get(code, 0):]][:limit]


def fail_on_recompile() -> None:
    """From now on a recompile in this process raises instead of compiling (see the module docstring)."""
    torch.compiler.set_stance(FAIL_ON_RECOMPILE)


def compile_time_s(warmup: list[tuple[float, bool]], steady_step_s: float | None) -> float | None:
    """Seconds the warmup spent compiling: its steps that compiled, less their steady-state time.
    `warmup` holds (seconds, compiled) per warmup step."""
    if steady_step_s is None:
        return None
    compiling = [seconds for seconds, compiled in warmup if compiled]
    return max(0.0, sum(compiling) - len(compiling) * steady_step_s)


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line (compile errors carry pages of generated code after it)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return ""


def is_compile_error(exc: BaseException) -> bool:
    """The exception came from dynamo or inductor (a failed compile), or is the stance's recompile error."""
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or FAIL_ON_RECOMPILE in str(exc)


def record(warmup: list[tuple[float, bool]], counted: Counters, reasons: list[str], settle_steps: int,
           mode: str | None, steady_step_s: float | None) -> dict[str, Any]:
    """A rank's account of compilation (the record's `compile`)."""
    return {
        "mode": mode or "default",
        "compile_time_s": compile_time_s(warmup, steady_step_s),
        "compile_time_method": TIME_METHOD,
        "warmup_step_times_s": [seconds for seconds, _ in warmup],
        "compiling_warmup_steps": [i for i, (_, compiled) in enumerate(warmup) if compiled],
        "settle_steps": settle_steps,
        "frames": counted.frames,
        "graphs": counted.graphs,
        "recompiles": counted.recompiles,
        "recompile_reasons": reasons,
        "after_warmup": f"torch.compiler.set_stance({FAIL_ON_RECOMPILE!r}): a recompile in the timed steps "
                        "ends the cell",
    }
