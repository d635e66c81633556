"""Checks of a workload before GPU hours go into it (`python -m trainkit check-workload`).

Each check trains the workload for a few steps in this process, on the device asked for, and says
what it found in one `Check`: accumulation equivalence and determinism (the invariants the
built-in models pass in tests/test_equivalence.py), its FLOPs per sample, the layers FP8 would
convert, the planner's estimate of a step's peak against a real step, for every precision mode
whether it runs here (one optimizer step) or why not, what ran in it (the dtypes one observed step
used against the mode's declared ones: trainkit.engine.measure.what_ran), and whether the weight roundings
the modes claim happen, eager and compiled (trainkit.engine.train.rounding.accumulation_check).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..measure.flops import training_flops_per_sample
from ..measure.memory import quiet_profiler
from ..measure.what_ran import compact, observe
from ..spec.config import RunConfig
from ..spec.precision_facts import facts_of, precision_names
from ..train import compiled, float8
from ..train.loop import Trainer
from ..train.precision import Unsupported, policy_class
from ..train.rounding import accumulation_check
from ..workloads.models import count_params
from ..workloads.workload import Workload, describe_error, non_scalar_loss
from .estimate import STEP_KINDS, Estimator

RTOL = 1e-5
"""Relative tolerance of the equivalence checks (tests/test_equivalence.py's)."""
ATOL = 1e-7
LOSS_MEAN_TOLERANCE = 1e-4
"""How far a batch's loss may be from the mean of its halves' (the same outputs): rounding of a
mean over a few samples is ~1e-7; a sum is 2x."""
ESTIMATE_TOLERANCE = 0.25
"""How far the planner's step peak may be from a real step's (the tests hold it to the byte on a
CPU; on a GPU the allocator's blocks and cuBLAS's workspace add a few MiB)."""
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
    what_ran: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each mode that ran: the table its observed step gave (trainkit.engine.measure.what_ran.observe)."""

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


# --- what the accumulation check needs to know first: the loss, the samples, the randomness ---------
def _eval_outputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The module's outputs in eval mode (no dropout; BatchNorm reads its running statistics, so
    each sample's output is its own), without gradients."""
    module.eval()
    with torch.no_grad():
        return module(inputs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the larger tensor's largest magnitude (0 for equal tensors)."""
    scale = float(torch.maximum(a.abs().max(), b.abs().max())) if a.numel() else 0.0
    return float((a.double() - b.double()).abs().max()) / scale if scale else 0.0


@dataclass(frozen=True)
class Probe:
    """What one batch of 2B samples, run through a fresh module outside the training loop, tells
    about the workload (the facts the accumulation check's verdict rests on)."""

    loss_shape: tuple[int, ...]
    """The shape of loss_fn's value: () for a scalar."""
    loss_ratio: float | None
    """A batch's loss over the mean of its two halves' losses, on the same outputs: 1 for a mean
    over the samples, 2 for a sum (None: the outputs cannot be split by sample)."""
    mixing: float | None
    """The largest relative difference between a batch's outputs and its halves' run apart, in
    eval mode: 0 (up to rounding) when the model treats samples independently."""
    random_in_training: bool
    """Two forwards of one batch in training mode differ: dropout or other training-mode randomness."""
    random_layers: tuple[str, ...]
    """The dropout layers with p > 0 (nn.Dropout and its kind, nn.MultiheadAttention's dropout)."""


def probe(workload: Workload, batch_size: int) -> Probe:
    """Run a batch of 2 x batch_size and its halves through the workload's model and loss (CPU)."""
    torch.manual_seed(0)
    module = workload.build()
    inputs, targets = workload.make_batch(2 * batch_size, torch.Generator().manual_seed(1), torch.device("cpu"))
    dropout = tuple(name for name, m in module.named_modules()
                    if (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
                    or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0))
    module.train()
    with torch.no_grad():
        first, second = module(inputs), module(inputs)
    random_in_training = isinstance(first, torch.Tensor) and not torch.equal(first, second)
    outputs = _eval_outputs(module, inputs)
    loss = workload.loss_fn(outputs, targets)
    if not isinstance(outputs, torch.Tensor) or outputs.ndim == 0 or outputs.shape[0] != 2 * batch_size:
        return Probe(tuple(loss.shape), None, None, random_in_training, dropout)
    halves = torch.cat([_eval_outputs(module, inputs[:batch_size]), _eval_outputs(module, inputs[batch_size:])])
    mixing = _rel(halves, outputs)
    ratio = None
    if loss.ndim == 0:
        with torch.no_grad():
            parts = [workload.loss_fn(outputs[i:i + batch_size], targets[i:i + batch_size])
                     for i in (0, batch_size)]
        mean_of_halves = float(sum(parts)) / 2
        ratio = float(loss) / mean_of_halves if mean_of_halves else None
    return Probe(tuple(loss.shape), ratio, mixing, random_in_training, dropout)


def check_loss_scalar(workload: Workload, found: Probe) -> Check:
    if found.loss_shape:
        return Check("loss is a scalar", "fails", non_scalar_loss(workload.name, torch.empty(found.loss_shape)))
    return Check("loss is a scalar", "ok", "loss_fn returns a tensor of shape ()")


def check_loss_mean(found: Probe, batch_size: int) -> Check:
    """A batch's loss against its halves', on the same outputs: a mean over samples gives 1x."""
    if found.loss_ratio is None:
        return Check("loss is a mean", "unknown", "the model's output is not one tensor of a row per sample (or the "
                     "halves' loss is 0): the loss cannot be compared with its halves'")
    figures = (f"the loss of {2 * batch_size} samples is {found.loss_ratio:.4f}x the mean of its halves' "
               f"(same outputs; 1 for a mean, tolerance {LOSS_MEAN_TOLERANCE:.0e})")
    if abs(found.loss_ratio - 1) <= LOSS_MEAN_TOLERANCE:
        return Check("loss is a mean", "ok", figures)
    if abs(found.loss_ratio - 2) <= LOSS_MEAN_TOLERANCE:
        return Check("loss is a mean", "fails", f"the loss is a sum over the micro-batch, not a mean ({figures}): "
                     "use reduction='mean' (F.cross_entropy's default), or divide by the batch size")
    return Check("loss is a mean", "fails", f"the loss is neither a mean nor a sum over the micro-batch ({figures}): "
                 "it must be the mean loss of the micro-batch's samples")


def check_independent(workload: Workload, found: Probe, batch_size: int) -> Check:
    """Eval mode (BatchNorm reads running statistics): a batch's outputs against its halves'."""
    if found.mixing is None:
        return Check("samples independent", "unknown", "the model's output is not one tensor of a row per sample")
    figures = (f"outputs of {2 * batch_size} samples against its halves run apart, in eval mode: max relative "
               f"difference {found.mixing:.1e}; tolerance {RTOL:.0e}")
    if found.mixing <= RTOL:
        return Check("samples independent", "ok", figures)
    return Check("samples independent", "fails", f"the model mixes samples of a batch ({figures}): a sample's "
                 "output must not depend on the others' (a normalisation, attention or pooling over dim 0?)")


def _randomness_off(module: nn.Module) -> None:
    """Every module but BatchNorm in eval mode: dropout (and any `if self.training` randomness) off;
    BatchNorm keeps its per-micro-batch statistics, whose effect on accumulation is reported."""
    for m in module.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.training = False


def _train_accumulation(config: RunConfig, device: torch.device, randomness_off: bool) -> Trainer:
    trainer = Trainer(config, device)
    if randomness_off:
        _randomness_off(trainer.raw_model)
    trainer.run(config.warmup_steps + config.steps)
    return trainer


def check_accumulation(config: RunConfig, device: torch.device, workload: Workload, found: Probe,
                       causes: list[Check]) -> Check:
    """fp32, batch 2B x accum 1 == batch B x accum 2: the loss curve and the final parameters, with
    training-mode randomness (dropout) off where the model has any; `causes` are the rows that
    tell why it is not exact (the loss's reduction, the samples' independence)."""
    base = config.replace(precision="fp32", batch_size=2 * config.batch_size, grad_accum=1)
    off = found.random_in_training
    whole = _train_accumulation(base, device, off)
    split = _train_accumulation(base.replace(batch_size=config.batch_size, grad_accum=2), device, off)
    curve = _max_rel(split.loss_curve(), whole.loss_curve())
    params = _max_rel(_params(split), _params(whole))
    figures = (f"batch {config.batch_size} x accum 2 vs {2 * config.batch_size} x 1 over {base.steps} steps: "
               f"max relative difference {curve:.1e} (loss), {params:.1e} (parameters); tolerance {RTOL:.0e}")
    if off:
        layers = (f"{len(found.random_layers)} dropout layer{'s' if len(found.random_layers) != 1 else ''}"
                  if found.random_layers else "randomness in training mode")
        figures = (f"{figures}; {layers} off for this check (every module but BatchNorm in eval mode): dropout "
                   "draws differ between micro-batches by design")
    exact = curve <= RTOL and params <= RTOL
    failed = [c.check for c in causes if c.verdict == "fails"]
    if failed:
        return Check("accumulation exact", "ok" if exact else "fails",
                     f"{figures}; cause: {' and '.join(repr(c) for c in failed)} above")
    if workload.has_batchnorm:
        return Check("accumulation exact", "expected" if not exact else "ok",
                     f"BatchNorm: statistics per micro-batch, not exact by design ({figures})")
    if exact:
        return Check("accumulation exact", "ok", figures)
    return Check("accumulation exact", "fails", f"{figures}; the loss is a mean and the samples are independent, "
                 "so something else differs between micro-batches (randomness outside training mode? state the "
                 "forward keeps?)")


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
    quiet_profiler()
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
    figures = (f"step peak at batch {config.batch_size} x accum {config.grad_accum}, {config.precision}: "
               f"estimated {predicted / 2**20:.2f} MiB, real {real / 2**20:.2f} MiB")
    if not real:
        return Check("planner estimate", "unknown", f"{figures}: the real step allocated nothing to compare with")
    ratio = predicted / real
    verdict = "ok" if abs(ratio - 1) <= ESTIMATE_TOLERANCE else "fails"
    return Check("planner estimate", verdict,
                 f"{figures} ({ratio:.3f}x the real step; tolerance {ESTIMATE_TOLERANCE:.0%}); "
                 f"whole peak estimated {estimate.total_bytes / 2**20:.2f} MiB"
                 + ("" if verdict == "ok" else ": plan's figures for this model are off by as much"))


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


def check_what_ran(config: RunConfig, device: torch.device, tables: dict[str, dict[str, Any]]) -> Check:
    """One step in config.precision, then one observed step: the dtypes that ran against the declared
    ones; the observed table goes into `tables`."""
    row = f"what ran {config.precision}"
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    reason = policy_class(config.precision).unsupported_on(device.type, capability)
    if reason:
        return Check(row, "unsupported", reason)
    try:
        trainer = _train(config.replace(warmup_steps=0, steps=1), device)
        observed = observe(trainer)
    except Unsupported as exc:
        return Check(row, "unsupported", str(exc))
    tables[config.precision] = observed
    if observed["mismatch"]:
        return Check(row, "fails", f"precision-mismatch: {observed['mismatch']}")
    return Check(row, "ok", compact(observed))


def check_rounding(rounding: str, compile_step: bool, device: torch.device) -> Check:
    """1e-3 added to bf16 ones a thousand times through the optimizer's write with `rounding`."""
    row = f"rounding {rounding}" + (" compiled" if compile_step else "")
    if compile_step and (why := compiled.unsupported_reason(device.type)):
        return Check(row, "unsupported", why)
    result = accumulation_check(rounding, compiled=compile_step, device=device)
    return Check(row, "ok" if result.holds else "fails", result.line)


def run_checks(spec: str, workload: Workload, config: RunConfig, device: torch.device,
               precisions: tuple[str, ...] | None = None,
               progress: Callable[[str], None] | None = None) -> WorkloadCheck:
    """Every check of the workload `config` names (config.workload resolved to `workload`): a list
    of small checks, each one row that can fail, run in order; a check that raises is a failed row
    and the others still run."""
    module = workload.build()
    shapes = (f"{count_params(module):,} parameters; inputs {tuple(workload.input_shape)} "
              f"{str(workload.probe[0].dtype)[6:]}, targets {tuple(workload.target_shape)} "
              f"{str(workload.probe[1].dtype)[6:]}; BatchNorm: {'yes' if workload.has_batchnorm else 'no'}")
    checks = [Check("builds", "ok", shapes)]

    def run(name: str, check: Callable[[], Check]) -> Check:
        if progress is not None:
            progress(name)
        try:
            row = check()
        except Exception as exc:  # a check that cannot run says why; the others still run
            traceback.clear_frames(exc.__traceback__)
            row = Check(name, "fails", describe_error(exc))
        checks.append(row)
        return row

    found: list[Probe] = []
    if run("loss is a scalar", lambda: check_loss_scalar(workload, _probed(found, workload, config))).verdict != "ok":
        # Every training check would end on backward in PyTorch's words: this one line says it.
        return WorkloadCheck(spec, workload.name, workload.source, str(device), tuple(checks))
    causes = [run("loss is a mean", lambda: check_loss_mean(found[0], config.batch_size)),
              run("samples independent", lambda: check_independent(workload, found[0], config.batch_size))]
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("accumulation exact", lambda: check_accumulation(config, device, workload, found[0], causes)),
        ("deterministic", lambda: check_determinism(config, device)),
        ("FLOPs per sample", lambda: check_flops(workload)),
        ("FP8 layers", lambda: check_fp8(workload)),
        ("planner estimate", lambda: check_estimate(config, device)),
    ]
    tables: dict[str, dict[str, Any]] = {}
    modes = precisions or precision_names()
    for mode in modes:
        steps.append((f"precision {mode}", lambda mode=mode: check_precision(config.replace(precision=mode), device)))
    for mode in modes:
        steps.append((f"what ran {mode}",
                      lambda mode=mode: check_what_ran(config.replace(precision=mode), device, tables)))
    # Nearest rounding is the control: the check must see its stagnation to mean anything.
    roundings = dict.fromkeys(("nearest", *(facts_of(mode).weight_rounding for mode in modes)))
    for rounding in roundings:
        for compile_step in (False, True):
            steps.append((f"rounding {rounding}" + (" compiled" if compile_step else ""),
                          lambda r=rounding, c=compile_step: check_rounding(r, c, device)))
    for name, check in steps:
        run(name, check)
    return WorkloadCheck(spec, workload.name, workload.source, str(device), tuple(checks), tables)


def _probed(found: list[Probe], workload: Workload, config: RunConfig) -> Probe:
    """The probe, made once and kept in `found` for the checks after the first."""
    if not found:
        found.append(probe(workload, config.batch_size))
    return found[0]
