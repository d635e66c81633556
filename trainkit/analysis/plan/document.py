"""The plan `python -m trainkit plan` writes, as typed documents: one frozen dataclass per part,
each written out under the keys of the plan file (schema trainkit.plan/1, read by
trainkit.analysis.plan.file, bench's --batch-size max and reports/plan.py).

Sizes are in bytes (`_bytes`), micro-batches in samples per rank; the searches and candidates
they are made of are trainkit.analysis.plan.search's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .search import Candidate, Probe, Search, recommend

PEAK_MEASURE_NOTE = (
    "a cell's measured peak is what the limit bounds: on a CPU the worker's address-space growth over "
    "the whole cell, from the worker's start (host_vm_growth_bytes: VmPeak has no reset, so data "
    "generation and the model's build count too, and a micro-batch whose steps fit in address space "
    "mapped before them shows the same peak as a smaller one), on a GPU PyTorch's reserved peak over "
    "the timed steps; headroom is the limit minus it (minus the CUDA context on a GPU). The estimate "
    "counts tensor bytes, of torch_max_allocated_bytes.")
FASTEST_NOTE = "Precisions differ in numerics as well as speed: compare their loss (bench) before switching"


def _plain(value: Any) -> Any:
    """A document's value as JSON data: documents by their to_dict, tuples as lists."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Document:
    def to_dict(self) -> dict[str, Any]:
        """The document under its plan-file keys, in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class EstimateSummary(_Document):
    """What trainkit.engine.estimate.estimate said of a precision before any cell ran."""

    terms_before_the_step: dict[str, int]
    """The persistent terms of one rank's peak (parameters, buffers, master copies, optimizer state,
    data, DDP buckets, cuBLAS workspaces), in bytes."""
    weights_bytes: int
    """Parameters, buffers and master copies: the floor no batch gets under."""
    activations_per_sample_bytes: int
    activations_constant_bytes: int
    first_probe: int
    """The micro-batch the search starts from: the largest power of two whose estimate fits."""


@dataclass(frozen=True, kw_only=True)
class PrecisionPlan(_Document):
    """One precision's estimate, search, candidates and recommendation."""

    estimate: EstimateSummary
    estimate_bytes: dict[str, dict[str, Any]]
    """Per probed micro-batch (its decimal text), the estimate of its probe cell: trainkit.engine.estimate.estimate's
    Estimate as data (total_bytes and its terms)."""
    max_batch: int | None
    """The planned maximum: the largest micro-batch that ran times the safety factor."""
    largest_ran_batch: int | None
    smallest_oom_batch: int | None
    bounded_by: str
    probes: tuple[Probe, ...]
    candidates: tuple[Candidate, ...]
    recommendation: Candidate | None
    recommendation_note: str | None
    """Why there is no recommendation, or None."""


@dataclass(frozen=True, kw_only=True)
class ProbeCells(_Document):
    """How every probe cell ran."""

    grad_accum: int
    world_size: int
    warmup_steps: int
    steps: int


@dataclass(frozen=True, kw_only=True)
class CandidateCells(_Document):
    """How the measured candidates ran."""

    steps: int
    warmup_steps: int
    measured_per_gpu_count: int
    memory_capped: bool = False
    """Whether the candidates ran under the probes' memory cap: they do not (an address-space cap
    roughly halves a CPU cell's throughput: fp32 at 256 x 2, 2,382 samples/s uncapped, 1,245 capped),
    so their speeds are the speeds every other command measures. On a CPU their peaks and headroom
    are a short run's of the same cell under the cap (the probes' steps): what the cap bounds."""


@dataclass(frozen=True, kw_only=True)
class Fastest:
    """The fastest recommendation over the precisions."""

    precision: str
    candidate: Candidate
    ranked: bool = True
    """False where the speeds do not separate it from the runner-up (their intervals overlap, one has
    none, or a flag speaks against one): the plan then names no fastest precision, and `note` says why."""
    note: str = FASTEST_NOTE

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, **self.candidate.to_dict(), "ranked": self.ranked, "note": self.note}


@dataclass(frozen=True, kw_only=True)
class Plan(_Document):
    """A whole plan: one model on one device, every precision asked for."""

    schema: str
    model: str
    config: dict[str, Any]
    """The RunConfig fields the plan holds for (its memory-shaping ones among them)."""
    device: str
    gpu_name: str | None
    gpu_count: int | None
    capability: list[int] | None
    memory_limit_bytes: int | None
    """Each CPU worker's address-space cap; None on a GPU."""
    fit_bytes: int
    """The memory the search fits micro-batches into."""
    fit_source: str
    safety: float
    target_batch: int | None
    gpus: tuple[int, ...]
    search_limit: int | None
    resolution: float
    probe: ProbeCells
    candidate_cells: CandidateCells
    estimate_method: str
    peak_measure_note: str
    precisions: dict[str, PrecisionPlan]
    fastest: Fastest | None
    env: dict[str, Any] | None
    created_at: str
    elapsed_s: float


def precision_plan(estimate: EstimateSummary, search: Search, found: Sequence[Candidate],
                   probe_estimates: Mapping[int, dict[str, Any]], safety: float,
                   target_batch: int | None) -> PrecisionPlan:
    """A precision's part of the plan from its search, its candidates (measured or not) and the
    estimate of each probe's cell, by micro-batch."""
    best = recommend(found)
    note = None
    if target_batch is None:
        note = "no --target-batch: nothing to recommend"
    elif best is None:
        note = "no candidate ran" if any(c.measured for c in found) else "no micro-batch fits, so there is no candidate"
    return PrecisionPlan(
        estimate=estimate,
        estimate_bytes={str(p.batch): probe_estimates[p.batch] for p in sorted(search.probes, key=lambda p: p.batch)},
        max_batch=search.max_batch(safety), largest_ran_batch=search.largest_ok,
        smallest_oom_batch=search.smallest_oom, bounded_by=search.bounded_by, probes=search.probes,
        candidates=tuple(found), recommendation=best, recommendation_note=note)


def fastest_of(precisions: Mapping[str, PrecisionPlan]) -> Fastest | None:
    """The precision whose recommendation is fastest, or None when none has one."""
    ranked = [(name, entry.recommendation) for name, entry in precisions.items() if entry.recommendation]
    if not ranked:
        return None
    ranked.sort(key=lambda pair: pair[1].throughput_samples_per_s or 0.0, reverse=True)
    name, best = ranked[0]
    why = _unranked(ranked[:2])
    if why:
        return Fastest(precision=name, candidate=best, ranked=False, note=f"not ranked: {why}")
    return Fastest(precision=name, candidate=best)


def _speed(name: str, c: Candidate) -> str:
    interval = (f" ({c.throughput_low_samples_per_s:,.1f}–{c.throughput_high_samples_per_s:,.1f})"
                if c.throughput_low_samples_per_s is not None and c.throughput_high_samples_per_s is not None else "")
    return f"{name} {c.throughput_samples_per_s or 0.0:,.1f}{interval} samples/s"


def _unranked(top: list[tuple[str, Candidate]]) -> str | None:
    """Why the fastest and the runner-up are not told apart (None when they are): a flag on either, an
    interval missing, or intervals that overlap."""
    for name, c in top:
        if c.flags:
            return f"{name}'s speed is flagged: {c.flags[0]}"
    if len(top) < 2:
        return None
    (first, a), (second, b) = top
    if None in (a.throughput_low_samples_per_s, b.throughput_high_samples_per_s):
        return f"{_speed(first, a)} and {_speed(second, b)}: no interval to tell them apart"
    if a.throughput_low_samples_per_s <= b.throughput_high_samples_per_s:  # type: ignore[operator]
        return f"the intervals of {_speed(first, a)} and {_speed(second, b)} overlap"
    return None
