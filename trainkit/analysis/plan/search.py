"""The planner's search and its recommendation, pure: no cell runs here.

The search is written against an oracle (batch -> Probe), so a test's fake oracle and the
planner's real cells (trainkit.commands.plan) share it:

1. The largest micro-batch that runs: from a first probe (the largest power of two whose estimate
   fits), the batch doubles until a probe runs out of memory (or reaches the search limit), then
   the gap between the last success and the first out-of-memory is bisected. Every probe is kept.
   The planned maximum is the largest batch that ran times the safety factor.
2. The fastest way to the target batch: every micro-batch up to that maximum that divides the
   target per rank is a candidate (accumulation = target / (micro-batch x GPUs)); the largest few
   per GPU count are measured, and the fastest that ran is recommended.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

OK, OOM, FAILED = "ok", "oom", "failed"
"""A probe's outcome: it ran, it ran out of memory, or it ended otherwise (which stops the search)."""
SIGKILL_IS_OOM = "SIGKILL"
OOM_MARKERS = ("std::bad_alloc", "Cannot allocate memory", "can't allocate memory")


@dataclass(frozen=True)
class Probe:
    """One probe of the search: a batch size and how its cell ended."""

    batch: int
    """Micro-batch size per rank, in samples."""
    outcome: str
    """ok, oom or failed."""
    status: str = ""
    """The cell's status (oom also for a worker the kernel's OOM killer ended, see outcome_of)."""
    detail: str = ""
    peak_bytes: int | None = None
    """What the plan's limit bounds: on a CPU the worker's address-space growth over the whole
    cell, on a GPU the headline peak over the timed steps; `peak_measure` names it."""
    peak_measure: str | None = None
    estimate_bytes: int | None = None
    """The estimate's total for this probe's cell (trainkit.engine.estimate.estimate)."""
    seconds: float | None = None
    """Wall time of the probe's cell."""
    cell_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def outcome_of(record: dict[str, Any]) -> str:
    """A cell record's outcome for the search. Out of memory is status `oom` (an allocation past the
    worker's cap or the GPU's memory), and also a worker killed by SIGKILL (on a host without a cap
    the kernel's OOM killer ends a process that way, and the launcher reports it as crashed) or
    one whose allocator threw std::bad_alloc. Anything else that is not ok (a crash, a timeout, a
    divergence) is a failure: it says nothing about memory."""
    status, detail = record.get("status"), str(record.get("status_detail") or "")
    if status == "ok":
        return OK
    if status == "oom" or (status == "crashed" and (SIGKILL_IS_OOM in detail or any(m in detail for m in OOM_MARKERS))):
        return OOM
    return FAILED


@dataclass(frozen=True)
class Search:
    """The result of a search for the largest micro-batch that runs."""

    probes: tuple[Probe, ...]
    """Every probe, in the order it ran."""
    largest_ok: int | None
    """The largest micro-batch that ran, in samples per rank."""
    smallest_oom: int | None
    """The smallest micro-batch that ran out of memory."""
    bounded_by: str
    """oom (the boundary was found), search limit (everything up to the limit ran), failure (a probe
    ended neither ok nor oom) or no batch fits (batch 1 ran out of memory)."""
    search_limit: int | None

    def max_batch(self, safety: float) -> int | None:
        """The planned maximum: the largest batch that ran, times the safety factor (None when
        nothing ran, or nothing is left of batch 1 after the margin)."""
        if self.largest_ok is None:
            return None
        return math.floor(self.largest_ok * safety + 1e-9) or None


class _Oracle:
    """The probes asked of an oracle, each batch once."""

    def __init__(self, probe: Callable[[int], Probe]) -> None:
        self.probe = probe
        self.probes: list[Probe] = []
        self.outcomes: dict[int, str] = {}
        self.failed = False

    def __call__(self, batch: int) -> str:
        if batch not in self.outcomes:
            result = self.probe(batch)
            self.probes.append(result)
            self.outcomes[batch] = result.outcome
            self.failed = self.failed or result.outcome == FAILED
        return self.outcomes[batch]


def _bracket(run: _Oracle, batch: int, search_limit: int | None) -> tuple[int | None, int | None]:
    """(largest that ran, smallest out of memory) from doubling while the batch runs (up to the
    limit) or halving while it runs out of memory."""
    low: int | None = None
    high: int | None = None
    outcome = run(batch)
    if outcome == OK:
        low = batch
        while not run.failed and (search_limit is None or low < search_limit):
            nxt = low * 2 if search_limit is None else min(low * 2, search_limit)
            if run(nxt) == OK:
                low = nxt
            elif run.outcomes[nxt] == OOM:
                high = nxt
                break
    elif outcome == OOM:
        high = batch
        while not run.failed and high > 1:
            nxt = high // 2
            if run(nxt) == OOM:
                high = nxt
            elif run.outcomes[nxt] == OK:
                low = nxt
                break
    return low, high


def search_max_batch(probe: Callable[[int], Probe], start: int, search_limit: int | None = None,
                     resolution: float = 0.0) -> Search:
    """The largest batch the oracle `probe` says runs: from `start`, double while it runs (up to
    `search_limit`) or halve while it runs out of memory, then bisect between the last success and
    the first out-of-memory until they are 1 apart, or `resolution` of the success apart. No batch
    is probed twice. O(log) probes: the doubling or halving takes log2 of the distance from start to
    the boundary, the bisection log2 of the gap it leaves."""
    if search_limit is not None and search_limit < 1:
        raise ValueError(f"search_limit={search_limit} must be >= 1")
    run = _Oracle(probe)
    low, high = _bracket(run, max(1, min(start, search_limit) if search_limit is not None else start), search_limit)
    while not run.failed and low is not None and high is not None and high - low > max(1, math.floor(low * resolution)):
        mid = (low + high) // 2
        if run(mid) == OK:
            low = mid
        elif run.outcomes[mid] == OOM:
            high = mid
    if run.failed:
        bounded_by = "failure"
    elif low is None:
        bounded_by = "no batch fits"
    elif high is None:
        bounded_by = "search limit"
    else:
        bounded_by = "oom"
    return Search(tuple(run.probes), low, high, bounded_by, search_limit)


@dataclass(frozen=True)
class Candidate:
    """A way to reach the target batch: micro-batch x accumulation x GPUs, and what it measured."""

    micro_batch: int
    """Samples per rank per micro-batch."""
    grad_accum: int
    gpus: int
    measured: bool = False
    status: str | None = None
    status_detail: str = ""
    throughput_samples_per_s: float | None = None
    peak_bytes: int | None = None
    peak_measure: str | None = None
    headroom_bytes: int | None = None
    """The memory limit minus the measured peak (minus the CUDA context on a GPU)."""
    headroom_fraction: float | None = None
    """headroom_bytes as a share of the limit."""
    estimate_bytes: int | None = None
    step_time_s: float | None = None
    """Median time of a timed optimizer step."""
    cell_id: str = ""
    throughput_low_samples_per_s: float | None = None
    throughput_high_samples_per_s: float | None = None
    """The throughput's 95 % interval, from the cell's interval of its median step time
    (trainkit.engine.measure.conditions.noise_of); None where the cell has none."""
    flags: tuple[str, ...] = ()
    """What its conditions say against its speed (trainkit.engine.measure.conditions.condition_flags)."""

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "flags": list(self.flags)}  # JSON data: a list, as it reads back


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def candidates(target_batch: int, max_batch: int | None, gpus: Sequence[int]) -> list[Candidate]:
    """Every (micro-batch, accumulation, GPUs) with micro-batch x accumulation x GPUs = target and
    micro-batch <= max_batch, largest micro-batch first within each GPU count."""
    if not max_batch:
        return []
    found = []
    for count in gpus:
        if target_batch % count:
            continue
        per_rank = target_batch // count
        found += [Candidate(micro, per_rank // micro, count) for micro in reversed(divisors(per_rank))
                  if micro <= max_batch]
    return found


def most_promising(found: Sequence[Candidate], per_gpu_count: int) -> list[Candidate]:
    """The largest `per_gpu_count` micro-batches of each GPU count: the fewest accumulation steps,
    which is where the throughput is (each micro-batch pays a forward and a backward launch)."""
    chosen, seen = [], {}
    for candidate in found:
        if seen.get(candidate.gpus, 0) < per_gpu_count:
            chosen.append(candidate)
            seen[candidate.gpus] = seen.get(candidate.gpus, 0) + 1
    return chosen


def recommend(measured: Iterable[Candidate]) -> Candidate | None:
    """The fastest candidate that ran (global samples per second); a tie goes to fewer GPUs, then to
    more headroom."""
    ran = [c for c in measured if c.status == "ok" and c.throughput_samples_per_s is not None]
    if not ran:
        return None
    return max(ran, key=lambda c: (c.throughput_samples_per_s, -c.gpus, c.headroom_bytes or 0))
