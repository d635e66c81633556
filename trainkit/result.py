"""The result record: one JSON object per cell, the contract between trainkit, bench and reports.

Each rank produces a partial result; `merge_ranks` turns them into one record (memory is the max
over ranks, never a sum; throughput is global; the loss of a step is the sum of the ranks' shares).
A record is written whatever the status, so a failed cell is a result too.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from .config import RunConfig
from .flops import mfu, peak_flops_per_s
from .precision_facts import facts_of

# The contract itself lives in schema.py (no torch), re-exported here for the library's users.
from .schema import (  # noqa: F401
    MEMORY_KEYS,
    RECORD_KEYS,
    SCHEMA,
    STATUSES,
    append_jsonl,
    check_record,
    read_jsonl,
    write_json,
)
from .timing import summarize_s


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


def merge_ranks(config: RunConfig, partials: list[dict[str, Any]], status: str = "ok",
                status_detail: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One record from the partial results of the ranks that reported (possibly none)."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r} is not one of {STATUSES}")
    partials = sorted(partials, key=lambda p: p.get("rank", 0))
    lead = partials[0] if partials else {}
    checksums = {p["param_checksum"] for p in partials if p.get("param_checksum") is not None}
    if status == "ok" and len(checksums) > 1:
        status, status_detail = "crashed", f"ranks ended with different parameters (checksums {sorted(checksums)})"

    # A step ends when its slowest rank ends.
    per_rank_times = [p.get("step_times_s", []) for p in partials]
    n_timed = min((len(t) for t in per_rank_times), default=0)
    step_times = [max(t[i] for t in per_rank_times) for i in range(n_timed)]
    timed_samples = lead.get("timed_samples", [])[:n_timed]
    throughput = sum(timed_samples) / sum(step_times) if step_times and sum(step_times) > 0 else None

    curves = [p.get("loss_curve", []) for p in partials]
    n_curve = min((len(c) for c in curves), default=0)
    curve = [sum(c[i] for c in curves) for i in range(n_curve)]
    skipped_flags = lead.get("skipped", [])[:n_curve]
    first_timed = lead.get("first_timed_step", 0)
    timed_skips = skipped_flags[first_timed:first_timed + n_timed]
    timed_skips += [False] * (n_timed - len(timed_skips))
    kept_samples = sum(n for n, skipped in zip(timed_samples, timed_skips) if not skipped)
    effective = kept_samples / sum(step_times) if step_times and sum(step_times) > 0 else None

    epoch_means = None
    steps_per_epoch = lead.get("derived", {}).get("steps_per_epoch")
    if config.epochs is not None and steps_per_epoch and curve:
        # Sample-weighted, so the short last window of an epoch counts for what it holds.
        samples = lead.get("step_samples", [])
        weights = samples if len(samples) == len(curve) else [1] * len(curve)
        epoch_means = []
        for start in range(0, len(curve), steps_per_epoch):
            pairs = list(zip(curve[start:start + steps_per_epoch], weights[start:start + steps_per_epoch]))
            epoch_means.append(sum(c * w for c, w in pairs) / sum(w for _, w in pairs))

    memory: dict[str, Any] = {k: _max_or_none([p.get("memory", {}).get(k) for p in partials]) for k in MEMORY_KEYS}
    memory["data_device_bytes"] = lead.get("memory", {}).get("data_device_bytes")
    memory["nvml_method"] = lead.get("memory", {}).get("nvml_method", "not measured")
    memory["per_rank"] = [dict(p.get("memory", {}), rank=p.get("rank")) for p in partials]

    energies = [p.get("energy_j") for p in partials]
    energy_per_sample, energy_method = None, None
    if partials and all(e is not None for e in energies) and timed_samples:
        energy_per_sample = sum(energies) / sum(timed_samples)  # energy adds up over GPUs
        energy_method = "NVML energy counter over the timed steps"

    derived = lead.get("derived", {})
    flops = lead.get("flops_per_sample")
    env = lead.get("env", {})
    on_gpu = derived.get("resolved_device", "").startswith("cuda")
    peak = peak_flops_per_s(env.get("gpu_name"), config.precision) if on_gpu else None
    tokens = config.tokens_per_sample
    dynamic_scaling = facts_of(config.precision).loss_scaling == "dynamic"

    record = {
        "schema": SCHEMA,
        "cell_id": config.cell_id,
        "status": status,
        "status_detail": status_detail,
        "config": {**config.to_dict(), "effective_batch": config.effective_batch,
                   "resolved_adam_eps": config.resolved_adam_eps, "resolved_image_size": config.resolved_image_size,
                   "tokens_per_sample": tokens, **derived},
        "throughput_samples_per_s": throughput,
        "effective_throughput_samples_per_s": effective,
        "tokens_per_s": throughput * tokens if throughput is not None and tokens else None,
        "step_time_s": summarize_s(step_times),
        "warmup_time_s": _max_or_none([p.get("warmup_time_s") for p in partials]),
        "fixed_cost_s": lead.get("fixed_cost_s", {}),
        "memory": memory,
        "loss": {"final": _finite_or_none(curve[-1]) if curve else None,
                 "initial": _finite_or_none(curve[0]) if curve else None,
                 "eval": _finite_or_none(lead.get("eval_loss")),
                 "curve": [c if math.isfinite(c) else None for c in curve],
                 "epoch_means": epoch_means,
                 "resumed_from_step": lead.get("resumed_from_step")},
        "scaler": {"enabled": dynamic_scaling,
                   "init_scale": config.init_scale if dynamic_scaling else None,
                   "final_scale": lead.get("final_scale"),
                   "skipped_steps": sum(timed_skips),
                   "skipped_steps_total": sum(1 for s in skipped_flags if s),
                   "scale_curve": scale_curve(skipped_flags, config.init_scale, config.growth_interval)
                   if dynamic_scaling and not lead.get("resumed_from_step") else None},
        "flops_per_sample": flops,
        "peak_flops_per_s": peak,
        "mfu": mfu(flops, throughput, peak, config.world_size),
        "energy_j_per_sample": energy_per_sample,
        "energy_method": energy_method,
        "timed_samples": sum(timed_samples),
        "profile": lead.get("profile"),
        "env": env,
        "ranks_reported": len(partials),
        "finished_at": now_iso(),
    }
    if extra:
        record.update(extra)
    return record
