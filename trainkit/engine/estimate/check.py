"""Checks of a workload before GPU hours go into it (`python -m trainkit check-workload`).

Each check trains the workload for a few steps in this process, on the device asked for, and says
what it found in one `Check`: accumulation equivalence and determinism (the invariants the
built-in models pass in tests/test_equivalence.py), its FLOPs per sample, the layers FP8 would
convert, the planner's estimate of a step's peak against a real step, and, for every precision
mode, whether it runs here (one optimizer step) or why not.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..measure.flops import training_flops_per_sample
from ..spec.config import RunConfig
from ..spec.precision_facts import precision_names
from ..train import float8
from ..train.loop import Trainer
from ..train.precision import Unsupported, policy_class
from ..workloads.models import count_params
from ..workloads.workload import Workload
from .estimate import STEP_KINDS, Estimator

RTOL = 1e-5
"""Relative tolerance of the equivalence checks (tests/test_equivalence.py's)."""
ATOL = 1e-7
VERDICTS = ("ok", "expected", "fails", "unsupported", "unknown")


@dataclass(frozen=True)
class Check:
    """One row of the check table."""

    check: str
    """What was checked, e.g. "accumulation exact" or "precision amp-bf16"."""
    verdict: str
    """ok; expected (differs, as the workload says it will: BatchNorm); fails (an invariant broken
    or a step that errors); unsupported (a mode this device cannot run, with why); unknown (could not
    be measured, with why)."""
    detail: str
    """The figures behind the verdict, or the reason, in one line."""


@dataclass(frozen=True)
class WorkloadCheck:
    """Everything check-workload found about one workload on one device."""

    spec: str
    name: str
    source: str
    device: str
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        """An invariant broken or a mode that errors: the command exits 1."""
        return any(c.verdict == "fails" for c in self.checks)


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:200]


def _train(config: RunConfig, device: torch.device) -> Trainer:
    trainer = Trainer(config, device)
    trainer.run(config.warmup_steps + config.steps)
    return trainer


def _params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten().cpu() for p in trainer.raw_model.parameters()])


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / (b.abs() + ATOL / RTOL)).max())


def check_accumulation(config: RunConfig, device: torch.device, workload: Workload) -> Check:
    """fp32, batch 2B x accum 1 == batch B x accum 2: the loss curve and the final parameters."""
    base = config.replace(precision="fp32", batch_size=2 * config.batch_size, grad_accum=1)
    whole = _train(base, device)
    split = _train(base.replace(batch_size=config.batch_size, grad_accum=2), device)
    curve = _max_rel(split.loss_curve(), whole.loss_curve())
    params = _max_rel(_params(split), _params(whole))
    figures = (f"batch {config.batch_size} x accum 2 vs {2 * config.batch_size} x 1 over {base.steps} steps: "
               f"max relative difference {curve:.1e} (loss), {params:.1e} (parameters); tolerance {RTOL:.0e}")
    exact = curve <= RTOL and params <= RTOL
    if workload.has_batchnorm:
        return Check("accumulation exact", "expected" if not exact else "ok",
                     f"BatchNorm: statistics per micro-batch, not exact by design ({figures})")
    if exact:
        return Check("accumulation exact", "ok", figures)
    return Check("accumulation exact", "fails", f"{figures}; without BatchNorm the loss must be a mean over the "
                 "micro-batch and the model must treat samples independently")


def check_determinism(config: RunConfig, device: torch.device) -> Check:
    """The same seed twice: bitwise the same loss curve and parameters."""
    base = config.replace(precision="fp32")
    first, second = _train(base, device), _train(base, device)
    same = torch.equal(first.loss_curve(), second.loss_curve()) and torch.equal(_params(first), _params(second))
    detail = f"two runs of seed {base.seed}, {base.steps} steps: " + (
        "bitwise the same loss curve and parameters" if same else
        f"differ (max relative loss difference {_max_rel(first.loss_curve(), second.loss_curve()):.1e}): "
        "make_batch must draw from its generator only, build() must draw from torch's seeded RNG")
    return Check("deterministic", "ok" if same else "fails", detail)


def check_flops(workload: Workload) -> Check:
    if workload.flops_per_sample is not None:
        return Check("FLOPs per sample", "ok", f"{workload.flops_per_sample:.4g} (given by the workload)")
    return Check("FLOPs per sample", "ok", f"{training_flops_per_sample(workload):.4g} "
                 "(forward + backward, torch's FlopCounterMode)")


def check_fp8(workload: Workload) -> Check:
    """Which nn.Linear layers torchao's float8 training would convert (emulated: runs anywhere)."""
    missing = float8.missing_reason("fp8")
    if missing:
        return Check("FP8 layers", "unknown", missing)
    _, conversion = float8.convert(workload.build(), "tensorwise", emulate=True)
    skipped = "; ".join(f"{name}: {why}" for name, why in conversion.skipped.items())
    converted = len(conversion.converted)
    detail = (f"{converted} of {converted + len(conversion.skipped)} linear layers convert"
              + (f" ({', '.join(conversion.converted[:4])}{', ...' if converted > 4 else ''})" if converted else "")
              + (f"; skipped {skipped}" if skipped else ""))
    return Check("FP8 layers", "ok" if converted else "unsupported", detail)


def _real_step_bytes(config: RunConfig, device: torch.device) -> int:
    """What one steady-state step allocates above what was held before it, at its highest point:
    the CUDA allocator's peak, or on a CPU the profiler's memory events (every allocation and free
    the CPU allocator reports), as tests/test_estimate.py measures it."""
    trainer = Trainer(config, device)
    trainer.train_step()  # the optimizer's state exists from here on, as in a timed step
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        trainer.train_step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
    held = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def check_estimate(config: RunConfig, device: torch.device) -> Check:
    """The planner's step peak (trainkit.engine.estimate.estimate, on fake tensors) against a real step's."""
    try:
        estimate = Estimator(config, device).estimate(config.batch_size, config.grad_accum)
    except Exception as exc:  # the fake-tensor step of an arbitrary model may fail: say how
        return Check("planner estimate", "unknown", f"the estimator cannot step this model: {_first_line(exc)}")
    predicted = sum(estimate.terms[kind] for kind in STEP_KINDS)
    real = _real_step_bytes(config, device)
    ratio = f"{predicted / real:.3f}x the real step" if real else "the real step allocated nothing"
    return Check("planner estimate", "ok",
                 f"step peak at batch {config.batch_size} x accum {config.grad_accum}, {config.precision}: "
                 f"estimated {predicted / 2**20:.2f} MiB, real {real / 2**20:.2f} MiB ({ratio}); "
                 f"whole peak estimated {estimate.total_bytes / 2**20:.2f} MiB")


def check_precision(config: RunConfig, device: torch.device) -> Check:
    """One optimizer step in config.precision, or why the mode cannot run here."""
    row = f"precision {config.precision}"
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    reason = policy_class(config.precision).unsupported_on(device.type, capability, gpu_name)
    if reason:
        return Check(row, "unsupported", reason)
    try:
        trainer = _train(config.replace(warmup_steps=0, steps=1), device)
    except Unsupported as exc:
        return Check(row, "unsupported", str(exc))
    except Exception as exc:  # the point of the check: any error of the model in this mode, in one line
        return Check(row, "fails", _first_line(exc))
    loss = float(trainer.loss_curve()[0])
    if loss != loss or loss in (float("inf"), float("-inf")):
        return Check(row, "fails", f"the first step's loss is {loss}")
    return Check(row, "ok", f"one step: loss {loss:.4f}, parameters {str(trainer.params[0].dtype)[6:]}")


def run_checks(spec: str, workload: Workload, config: RunConfig, device: torch.device,
               precisions: tuple[str, ...] | None = None,
               progress: Callable[[str], None] | None = None) -> WorkloadCheck:
    """Every check of the workload `config` names (config.workload resolved to `workload`)."""
    module = workload.build()
    shapes = (f"{count_params(module):,} parameters; inputs {tuple(workload.input_shape)} "
              f"{str(workload.probe[0].dtype)[6:]}, targets {tuple(workload.target_shape)} "
              f"{str(workload.probe[1].dtype)[6:]}; BatchNorm: {'yes' if workload.has_batchnorm else 'no'}")
    checks = [Check("builds", "ok", shapes)]
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("accumulation exact", lambda: check_accumulation(config, device, workload)),
        ("deterministic", lambda: check_determinism(config, device)),
        ("FLOPs per sample", lambda: check_flops(workload)),
        ("FP8 layers", lambda: check_fp8(workload)),
        ("planner estimate", lambda: check_estimate(config, device)),
    ]
    for mode in precisions or precision_names():
        steps.append((f"precision {mode}", lambda mode=mode: check_precision(config.replace(precision=mode), device)))
    for name, run in steps:
        if progress is not None:
            progress(name)
        try:
            checks.append(run())
        except Exception as exc:  # a check that cannot run says why; the others still run
            traceback.clear_frames(exc.__traceback__)
            checks.append(Check(name, "fails", _first_line(exc)))
    return WorkloadCheck(spec, workload.name, workload.source, str(device), tuple(checks))
