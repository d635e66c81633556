"""The result record: one JSON object per cell, the contract between trainkit, bench and reports.

Each rank reports what it measured as a RankReport (typed, units in the field names); the launcher
adds what it saw from outside (LauncherReport: NVML samples of the timed steps, its own clock).
`merge_ranks` turns them into one record, one small function per measure:

    timing   a step ends when its slowest rank ends; throughput is global
    loss     a step's loss is the sum of the ranks' shares; epoch means weighted by samples
    scaler   GradScaler's skips and scale, of modes with dynamic loss scaling
    memory   the max over ranks, never a sum; peaks over the timed steps, warmup's beside them
    conditions  the worst rank's host load, all ranks' threads, other processes on the GPUs; and the
             noise of the step times (trainkit.engine.measure.conditions)
    energy   joules per sample over the timed windows NVML can resolve, or null with the reason

A record is written whatever the status, so a failed cell is a result too.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..measure.conditions import merge_conditions, noise_of
from ..measure.flops import mfu, mfu_peak, peak_unknown_reason
from ..measure.timing import summarize_s
from ..spec.config import RunConfig
from ..spec.precision_facts import facts_of

# The contract itself lives in schema.py (no torch), re-exported here for the library's users.
from ..spec.schema import (  # noqa: F401
    MEMORY_KEYS,
    RECORD_KEYS,
    SCHEMA,
    STATUSES,
    append_jsonl,
    check_record,
    read_jsonl,
    write_json,
)
from ..train.overhead import METHOD as OVERHEAD_METHOD

ENERGY_MIN_WINDOW_S = 1.0
"""Shortest run of timed steps whose energy is read from NVML's counter: the counter moves in
steps of ~10 ms (gpuopenanalytics/pynvml#18), so shorter windows (a bench round of one small step)
would be mostly rounding. Energy per sample comes from the windows at least this long."""


@dataclass
class TimedSpan:
    """Timed optimizer steps one rank ran back to back: a bench round (one step) or a window."""

    steps: int
    seconds: float
    """Sum of the steps' durations (the span has no gap: steps are contiguous)."""
    samples: int
    """Samples of these steps, over all ranks."""
    energy_j: float | None = None
    """This rank's GPU energy over the span, from NVML's counter read before and after (None where
    the counter is unsupported or reset)."""
    counter_s: float | None = None
    """Host time between the two counter reads: the steps, plus any checkpoint written between
    them (the counter cannot leave that out; the steps' time does)."""

    @property
    def counts_energy(self) -> bool:
        """Long enough for the counter, and its reads hold the steps and nothing else of note."""
        return self.seconds >= ENERGY_MIN_WINDOW_S and (self.counter_s is None
                                                        or self.counter_s <= 1.05 * self.seconds + 0.05)


@dataclass
class RankTiming:
    step_times_s: list[float] = field(default_factory=list)
    """Each timed optimizer step of this rank, seconds (CUDA events or a synchronised clock)."""
    timed_samples: list[int] = field(default_factory=list)
    """Samples of each timed step, over all ranks."""
    first_timed_step: int | None = None
    """Global index of the first timed step (the warmup and a resumed run's steps come before)."""
    spans: list[TimedSpan] = field(default_factory=list)
    warmup_time_s: float | None = None


@dataclass
class RankLoss:
    curve: list[float] = field(default_factory=list)
    """This rank's share of each step's mean loss (the shares of all ranks add up to it)."""
    step_samples: list[int] = field(default_factory=list)
    """Samples of each step this process ran, over all ranks."""
    skipped: list[bool] = field(default_factory=list)
    """Whether GradScaler skipped each step."""
    final_scale: float | None = None
    eval_loss: float | None = None
    resumed_from_step: int | None = None


@dataclass
class RankMemory:
    torch_max_allocated_bytes: int | None = None
    """PyTorch allocator's peak of allocated memory over the timed steps (reset after warmup)."""
    torch_max_reserved_bytes: int | None = None
    """Its peak of reserved memory (allocations plus its cache) over the timed steps."""
    torch_warmup_max_allocated_bytes: int | None = None
    """The same over the warmup, whose first step allocates the optimizer's state."""
    torch_warmup_max_reserved_bytes: int | None = None
    nvml_context_baseline_bytes: int | None = None
    """GPU memory of this process right after creating its CUDA context, before NCCL and anything else."""
    host_rss_baseline_bytes: int | None = None
    """Resident set of this process when it started: mostly inherited from the fork server."""
    host_rss_peak_bytes: int | None = None
    """Peak resident set of this process (inherited pages included)."""
    host_vm_baseline_bytes: int | None = None
    """Address space of this process when it started, on a CPU (a CPU worker's memory cap is this
    plus the limit); None on a GPU, where CUDA reserves far more address space than memory."""
    host_vm_peak_bytes: int | None = None
    """Peak address space of this process over its life (CPU only)."""
    data_device_bytes: int | None = None
    """Device memory of the synthetic data pool (GPU only)."""
    allocator: dict[str, Any] | None = None
    """The allocator's setting and its fragmentation over the timed steps (trainkit/allocator.py)."""


@dataclass
class RankReport:
    """What one rank measured. A rank that failed fills what it got to."""

    rank: int
    pid: int
    timing: RankTiming = field(default_factory=RankTiming)
    loss: RankLoss = field(default_factory=RankLoss)
    memory: RankMemory = field(default_factory=RankMemory)
    fixed_cost_s: dict[str, float] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)
    """Facts of the run the config alone does not say: dtypes, backend flags, sizes."""
    env: dict[str, Any] | None = None
    flops_per_sample: float | None = None
    param_checksum: float | None = None
    profile: dict[str, Any] | None = None
    diagnostics: dict[str, Any] | None = None
    """Why the loss moved, read from one extra step after the figures (trainkit.engine.cell.diagnostics)."""
    what_ran: dict[str, Any] | None = None
    """The dtypes one extra step used against what the precision declares (trainkit.engine.measure.what_ran)."""
    cpu_time_s: float | None = None
    harness_overhead_us: float | None = None
    """Microseconds per step this rank's trainkit step spent beyond a hand-written loop's
    (trainkit.engine.train.overhead); None where it was not measured (harness_overhead_note says why)."""
    harness_overhead_note: str | None = None
    """CPU seconds this rank's process used, all its threads, from its start to its report."""
    compile: dict[str, Any] | None = None
    """torch.compile's warmup: compile time, graphs, recompiles (trainkit/compiled.py); None when eager."""
    precision_details: dict[str, Any] | None = None
    """What the precision mode did to the model that its config does not say (FP8's converted layers)."""
    conditions: dict[str, Any] | None = None
    """The host over this rank's timed window and the threads it ran (trainkit.engine.measure.conditions)."""
    gpu_other_pids: list[int] | None = None
    """Processes NVML saw on this rank's GPU around its timed steps, besides its own; None where NVML
    cannot tell (no GPU, no NVML, a PID namespace of its own)."""


@dataclass
class LauncherReport:
    """What the launcher saw of a cell from outside its ranks."""

    fixed_cost_s: dict[str, float] = field(default_factory=dict)
    worker_pids: list[int] = field(default_factory=list)
    step_round_trip_s: list[float] = field(default_factory=list)
    """Launcher clock around each bench round: the step plus the pipe's round trip."""
    gpu_samples: dict[str, Any] | None = None
    """NVML's samples over the timed steps: clocks, temperature, power, throttle reasons."""
    nvml_process_peak_bytes: list[int | None] | None = None
    """Per rank, the largest GPU memory NVML attributed to its process while sampling the timed steps."""
    nvml_note: str = "unavailable: no GPU"
    """How the NVML figures were taken, or why there are none."""
    power_energy_j: float | None = None
    """Energy integrated from power samples over the timed windows (all GPUs), where the energy
    counter is unsupported."""
    power_window_s: float | None = None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _max_or_none(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def scale_curve(skipped: list[bool], init_scale: float, growth_interval: int) -> list[float]:
    """GradScaler's scale after each step, replayed from the skip flags with its own rule: halve
    on a skipped step (and restart the count), double after growth_interval clean steps in a row."""
    scale, clean, curve = init_scale, 0, []
    for was_skipped in skipped:
        if was_skipped:
            scale, clean = scale * 0.5, 0
        else:
            clean += 1
            if clean == growth_interval:
                scale, clean = scale * 2.0, 0
        curve.append(scale)
    return curve


# --- one function per measure ------------------------------------------------------------------

@dataclass
class TimedSteps:
    """The timed steps of a cell as a whole."""

    step_times_s: list[float]
    samples: list[int]
    first_step: int


def merge_timing(ranks: list[RankReport]) -> TimedSteps:
    """A step ends when its slowest rank ends; the samples of a step are global (any rank knows them)."""
    per_rank = [r.timing.step_times_s for r in ranks]
    n_timed = min((len(t) for t in per_rank), default=0)
    lead = ranks[0].timing if ranks else RankTiming()
    return TimedSteps([max(t[i] for t in per_rank) for i in range(n_timed)], lead.timed_samples[:n_timed],
                      lead.first_timed_step or 0)


def throughputs(timed: TimedSteps, skipped: list[bool]) -> tuple[float | None, float | None]:
    """Global samples per second over the timed steps, and the same without the samples of steps
    GradScaler skipped (they cost time but taught nothing)."""
    seconds = sum(timed.step_times_s)
    if not timed.step_times_s or seconds <= 0:
        return None, None
    timed_skips = skipped[timed.first_step:timed.first_step + len(timed.step_times_s)]
    timed_skips += [False] * (len(timed.step_times_s) - len(timed_skips))
    kept = sum(n for n, was_skipped in zip(timed.samples, timed_skips) if not was_skipped)
    return sum(timed.samples) / seconds, kept / seconds


def merge_loss(config: RunConfig, ranks: list[RankReport]) -> dict[str, Any]:
    """A step's mean loss is the sum of the ranks' shares; epoch means are weighted by the samples
    each step held, so the short last window of an epoch counts for what it holds."""
    curves = [r.loss.curve for r in ranks]
    n_curve = min((len(c) for c in curves), default=0)
    curve = [sum(c[i] for c in curves) for i in range(n_curve)]
    lead = ranks[0] if ranks else RankReport(rank=0, pid=0)
    epoch_means = None
    steps_per_epoch = lead.derived.get("steps_per_epoch")
    if config.epochs is not None and steps_per_epoch and curve:
        weights = lead.loss.step_samples[:len(curve)]
        if len(weights) != len(curve):  # a resumed run knows the samples of its own steps only
            weights = [1] * len(curve)
        epoch_means = []
        for start in range(0, len(curve), steps_per_epoch):
            pairs = list(zip(curve[start:start + steps_per_epoch], weights[start:start + steps_per_epoch]))
            epoch_means.append(sum(c * w for c, w in pairs) / sum(w for _, w in pairs))
    return {"final": _finite_or_none(curve[-1]) if curve else None,
            "initial": _finite_or_none(curve[0]) if curve else None,
            "eval": _finite_or_none(lead.loss.eval_loss),
            "curve": [c if math.isfinite(c) else None for c in curve],
            "epoch_means": epoch_means,
            "resumed_from_step": lead.loss.resumed_from_step}


def merge_scaler(config: RunConfig, lead: RankLoss, timed: TimedSteps) -> dict[str, Any]:
    """GradScaler's behaviour (modes with dynamic loss scaling): skipped steps, timed and in all,
    the final scale and its trajectory replayed from the skips."""
    dynamic = facts_of(config.precision).loss_scaling == "dynamic"
    flags = lead.skipped
    timed_flags = flags[timed.first_step:timed.first_step + len(timed.step_times_s)]
    return {"enabled": dynamic,
            "init_scale": config.init_scale if dynamic else None,
            "final_scale": lead.final_scale,
            "skipped_steps": sum(timed_flags),
            "skipped_steps_total": sum(1 for s in flags if s),
            "scale_curve": scale_curve(flags, config.init_scale, config.growth_interval)
            if dynamic and not lead.resumed_from_step else None}


def merge_memory(ranks: list[RankReport], launcher: LauncherReport) -> dict[str, Any]:
    """Each figure is the max over ranks, never a sum (a rank's GPU holds its own copy)."""
    def peak(name: str) -> Any:
        return _max_or_none([getattr(r.memory, name) for r in ranks])

    memory: dict[str, Any] = {name: peak(name) for name in (
        "torch_max_allocated_bytes", "torch_max_reserved_bytes", "torch_warmup_max_allocated_bytes",
        "torch_warmup_max_reserved_bytes", "nvml_context_baseline_bytes", "host_rss_peak_bytes",
        "host_rss_baseline_bytes")}
    growths = [r.memory.host_rss_peak_bytes - r.memory.host_rss_baseline_bytes for r in ranks
               if r.memory.host_rss_peak_bytes is not None and r.memory.host_rss_baseline_bytes is not None]
    memory["host_rss_growth_bytes"] = max(growths) if growths else None
    # What a CPU worker's memory cap limits: address space beyond the worker's start (trainkit.commands.plan
    # fits batches into it; resident memory also counts inherited pages the cell touches).
    spans = [r.memory.host_vm_peak_bytes - r.memory.host_vm_baseline_bytes for r in ranks
             if r.memory.host_vm_peak_bytes is not None and r.memory.host_vm_baseline_bytes is not None]
    memory["host_vm_growth_bytes"] = max(spans) if spans else None
    nvml = launcher.nvml_process_peak_bytes or []
    memory["nvml_process_peak_bytes"] = _max_or_none(nvml)
    memory["nvml_method"] = launcher.nvml_note
    memory["data_device_bytes"] = ranks[0].memory.data_device_bytes if ranks else None
    memory["allocator"] = merge_allocator(ranks)
    memory["per_rank"] = [{"rank": r.rank, **vars(r.memory),
                           "nvml_process_peak_bytes": nvml[r.rank] if r.rank < len(nvml) else None} for r in ranks]
    return memory


def merge_allocator(ranks: list[RankReport]) -> dict[str, Any] | None:
    """The allocator's setting and fragmentation figures: the max over ranks, like every memory figure."""
    reports = [r.memory.allocator for r in ranks if r.memory.allocator is not None]
    if not reports:
        return None
    merged = dict(reports[0])
    for key in ("fragmentation_bytes", "num_alloc_retries", "num_ooms"):
        merged[key] = _max_or_none([report.get(key) for report in reports])
    if len(reports) > 1 and merged.get("fragmentation_bytes") is not None:
        merged["method"] = f"{merged['method']}; the max over ranks"
    return merged


def merge_compile(ranks: list[RankReport]) -> dict[str, Any] | None:
    """torch.compile's account: rank 0's, with the compile time of the slowest rank to compile
    (the cell waits for it)."""
    reports = [r.compile for r in ranks if r.compile is not None]
    if not reports:
        return None
    return {**reports[0], "compile_time_s": _max_or_none([report.get("compile_time_s") for report in reports])}


def merge_energy(ranks: list[RankReport], launcher: LauncherReport,
                 on_gpu: bool) -> tuple[float | None, str | None, float | None]:
    """Joules per sample over the timed windows of at least ENERGY_MIN_WINDOW_S (all GPUs of the
    cell), the method, and the seconds it covers. Energy adds up over GPUs; a rank whose counter
    did not answer leaves the cell without a counter figure. Where the counter is unsupported the
    launcher's power samples over the same windows stand in."""
    if not on_gpu:
        return None, "not measured: energy comes from NVML, on GPUs only", None
    if not ranks or not ranks[0].timing.spans:
        return None, None, None
    spans = [[s for s in r.timing.spans if s.counts_energy] for r in ranks]
    lead = spans[0]
    if not lead:
        longest = max(s.seconds for s in ranks[0].timing.spans)
        if longest >= ENERGY_MIN_WINDOW_S:
            return None, ("not measured: the runs of timed steps long enough for NVML's energy counter held "
                          "checkpoint writes, which the counter cannot leave out"), None
        return None, (f"not measured: no run of timed steps lasted {ENERGY_MIN_WINDOW_S:g} s (the longest "
                      f"{longest:.3g} s), too short for NVML's energy counter; time the steps as one window "
                      "(bench --rounds 1)"), None
    samples = sum(s.samples for s in lead)
    seconds = sum(s.seconds for s in lead)
    if all(s.energy_j is not None for rank in spans for s in rank) and len({len(r) for r in spans}) == 1:
        joules = sum(s.energy_j for rank in spans for s in rank)  # type: ignore[misc]
        return joules / samples, (f"NVML energy counter over {len(lead)} timed window(s) of "
                                  f"{seconds:.3g} s, all GPUs"), seconds
    if launcher.power_energy_j is not None:
        return launcher.power_energy_j / samples, ("power-integral (NVML power samples) over the timed "
                                                  f"window(s) of {launcher.power_window_s:.3g} s"), seconds
    return None, "not measured: NVML's energy counter and power readings are unavailable", None


HARNESS_SHARE_LIMIT = 0.01
"""A step whose harness overhead is more than this share of its median time is flagged: its figure
measures trainkit's loop as well as the model (the overhead bench holds trainkit within 1 % of a
hand-written loop at 0.75 ms CPU steps)."""


def harness_flag(overhead_us: float | None, step_median_s: float | None) -> tuple[float | None, str | None]:
    """The harness overhead's share of the median step, and the flag where it exceeds HARNESS_SHARE_LIMIT."""
    if overhead_us is None or not step_median_s:
        return None, None
    share = overhead_us / (step_median_s * 1e6)
    if share <= HARNESS_SHARE_LIMIT:
        return share, None
    return share, (f"short step: trainkit's own {overhead_us:.1f} µs per step is {share:.1%} of its "
                   f"{step_median_s * 1e6:,.0f} µs step (over {HARNESS_SHARE_LIMIT:.0%}): the figure measures "
                   "the harness as well as the model")


def merge_harness(ranks: list[RankReport], timed: TimedSteps) -> dict[str, Any]:
    """The harness's overhead per step: the largest of the ranks' (a step ends with its slowest rank),
    its share of the median step time, and the flag (harness_flag); null with the reason where a
    rank did not measure it."""
    missing = [r for r in ranks if r.harness_overhead_us is None]
    if not ranks or missing:
        note = missing[0].harness_overhead_note if missing else None
        return {"harness_overhead_per_step_us": None, "harness_overhead_share": None, "harness_overhead_flag": None,
                "harness_overhead_method": f"not measured: {note or 'the cell ended before its timed steps did'}"}
    overhead_us = max(r.harness_overhead_us for r in ranks)  # type: ignore[type-var]
    share, flag = harness_flag(overhead_us, statistics.median(timed.step_times_s) if timed.step_times_s else None)
    return {"harness_overhead_per_step_us": overhead_us, "harness_overhead_share": share,
            "harness_overhead_flag": flag, "harness_overhead_method": OVERHEAD_METHOD}


def check_replicas(ranks: list[RankReport], status: str, status_detail: str) -> tuple[str, str]:
    """The status of a cell whose ranks ended with different parameters: DDP keeps replicas identical
    only if every rank synced the same gradients; a wrong no_sync ends with ranks apart
    (modelscope/FunASR#3472)."""
    checksums = {r.param_checksum for r in ranks if r.param_checksum is not None}
    if status == "ok" and len(checksums) > 1:
        return "crashed", f"ranks ended with different parameters (checksums {sorted(checksums)})"
    return status, status_detail


def check_what_ran(ranks: list[RankReport], status: str, status_detail: str) -> tuple[str, str]:
    """The status of a cell whose step used other dtypes than its precision declares: its figures
    measure another configuration (TensorAuto/OpenTau#177), whatever they are."""
    mismatches = [(r.rank, r.what_ran["mismatch"]) for r in ranks if r.what_ran and r.what_ran.get("mismatch")]
    if status == "ok" and mismatches:
        rank, line = mismatches[0]
        return "precision-mismatch", line + (f" (rank {rank})" if len(ranks) > 1 else "")
    return status, status_detail


def merge_conditions_of(ranks: list[RankReport], launcher: LauncherReport, on_gpu: bool) -> dict[str, Any] | None:
    """The cell's conditions (trainkit.engine.measure.conditions): the worst rank's host, every rank's threads,
    the processes besides the cell's own on any of its GPUs."""
    note = ("NVML's compute processes on each rank's GPU at the start and end of its timed spans, besides the "
            "cell's own" if on_gpu else "not measured: a CPU cell has no GPU")
    if on_gpu and all(r.gpu_other_pids is None for r in ranks):
        note = "not measured: NVML unavailable, or its PIDs are not in this PID namespace (docker --pid=host)"
    return merge_conditions([r.conditions for r in ranks], [r.gpu_other_pids for r in ranks] if on_gpu else None,
                            note, launcher.worker_pids)


def merge_ranks(config: RunConfig, ranks: list[RankReport], status: str = "ok", status_detail: str = "",
                launcher: LauncherReport | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One record from the reports of the ranks that reported (possibly none)."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r} is not one of {STATUSES}")
    launcher = launcher or LauncherReport()
    ranks = sorted(ranks, key=lambda r: r.rank)
    lead = ranks[0] if ranks else RankReport(rank=0, pid=0)
    status, status_detail = check_replicas(ranks, status, status_detail)
    status, status_detail = check_what_ran(ranks, status, status_detail)
    timed = merge_timing(ranks)
    throughput, effective = throughputs(timed, lead.loss.skipped)
    env = lead.env or {}
    on_gpu = lead.derived.get("resolved_device", "").startswith("cuda")
    energy, energy_method, energy_window_s = merge_energy(ranks, launcher, on_gpu)
    peak, mfu_method = mfu_peak(env.get("gpu_name") if on_gpu else None, config.precision, lead.flops_per_sample,
                                lead.precision_details)
    # The worker's workload knows its tokens (a user's model, hf:); a cell no rank reported, its config.
    tokens = lead.derived.get("tokens_per_sample", config.tokens_per_sample)
    utilisation = mfu(lead.flops_per_sample, throughput, peak, config.world_size)
    cpu_times = [r.cpu_time_s for r in ranks]
    record = {
        "schema": SCHEMA, "cell_id": config.cell_id, "status": status, "status_detail": status_detail,
        "config": {**config.to_dict(), "effective_batch": config.effective_batch,
                   "resolved_adam_eps": config.resolved_adam_eps, "resolved_image_size": config.resolved_image_size,
                   "tokens_per_sample": tokens, **lead.derived},
        "throughput_samples_per_s": throughput,
        "effective_throughput_samples_per_s": effective,
        "tokens_per_s": throughput * tokens if throughput is not None and tokens else None,
        "step_time_s": summarize_s(timed.step_times_s),
        "noise": noise_of(timed.step_times_s),
        "conditions": merge_conditions_of(ranks, launcher, on_gpu),
        "warmup_time_s": _max_or_none([r.timing.warmup_time_s for r in ranks]),
        # What the cell cost the machine: its ranks' CPU time, added up (a loaded machine stretches
        # the wall clock, not this).
        "cpu_time_s": sum(cpu_times) if ranks and None not in cpu_times else None,  # type: ignore[arg-type]
        **merge_harness(ranks, timed),
        "fixed_cost_s": {**launcher.fixed_cost_s, **lead.fixed_cost_s},
        "memory": merge_memory(ranks, launcher), "loss": merge_loss(config, ranks),
        "scaler": merge_scaler(config, lead.loss, timed),
        "flops_per_sample": lead.flops_per_sample, "peak_flops_per_s": peak, "mfu": utilisation,
        "mfu_method": mfu_method,
        "mfu_note": None if utilisation is not None or throughput is None
        else peak_unknown_reason(env.get("gpu_name") if on_gpu else None, config.precision),
        "energy_j_per_sample": energy, "energy_method": energy_method, "energy_window_s": energy_window_s,
        "timed_samples": sum(timed.samples), "compile": merge_compile(ranks),
        "precision_details": lead.precision_details, "profile": lead.profile, "diagnostics": lead.diagnostics,
        "what_ran": lead.what_ran,
        "gpu_samples": launcher.gpu_samples,
        "throttled": launcher.gpu_samples["throttled"] if launcher.gpu_samples else None,
        "env": env, "ranks_reported": len(ranks), "worker_pids": launcher.worker_pids, "finished_at": now_iso(),
    }
    if launcher.step_round_trip_s:
        record["step_round_trip_s"] = launcher.step_round_trip_s
    return {**record, **(extra or {})}
