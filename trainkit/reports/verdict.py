"""Noise-aware verdicts: did a cell get better, worse, or is the difference within its noise?

Pure Python (no pandas, no torch) so a regression gate can import it cheaply and feed it any
per-cell numbers. The rule, per cell and metric:

    change    = (candidate - baseline) / |baseline|           medians over repeats
    spread    = the larger relative spread of the two sides   (see `Samples.spread`)
    threshold = max(relative, k * spread)                     defaults 7 % and k = 3

    worse by more than threshold       -> regressed
    better by more than threshold      -> improved
    within relative                    -> unchanged
    beyond relative but within k*spread -> noisy (a real change cannot be told from the noise)

A metric is also noisy, whatever its change, when a side has fewer than `min_repeats` values or its
spread exceeds `max_spread` (the cell's own runs disagree too much to gate on): it is reported, not
gated. A metric named in `two_sided` (the final loss, for a nightly gate) fails the gate when it
moves beyond the threshold in either direction: `drifted`. With a fixed seed and the same
environment, a lower loss is as much a sign of changed numerics as a higher one.

7 % is TorchBench's DEFAULT_REGRESSION_DELTA_THRESHOLD (pytorch/benchmark regression_detector.py);
k = 3 spreads keeps a cell whose steps vary by 10 % from flagging a 20 % wobble.

A cell's spread: across repeated records (several runs of one cell), the IQR (or MAD) of the
metric relative to its median; with a single record, the record's own step-time IQR relative to
its median for throughput, and zero for memory and loss (a single value carries no spread).

Cells: `new` (only in the candidate), `removed` (only in the baseline; fails the gate only with
`fail_on_removed`), `failed` (ok in the baseline, a non-ok status in the candidate: oom, diverged,
crashed, timeout, unsupported; this counts as a regression), `fixed` (the reverse), `still failing`
(non-ok on both sides). A metric missing on one side is `n/a`.

The run: a `regression` when a gated cell regressed, drifted or failed (however noisy the others);
else `inconclusive` when more than `max_noisy_share` (25 %) of the gated cells compared (ok on
both sides) are noisy: the gate could not see enough of the run to pass it, and a machine too
busy to measure must not pass a candidate at half the speed; else a `pass`.
"""

from __future__ import annotations

import fnmatch
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainkit.engine.spec.schema import headline_memory

from .records import OK, fingerprint, get

# Metrics: record key, and whether a larger value is better.
METRICS = {
    "throughput": ("throughput_samples_per_s", True),
    "memory": (None, False),  # the headline memory measure: trainkit.engine.spec.schema.headline_memory
    "loss": ("loss.final", False),
}

# Outcomes of a comparison as a whole (see the module docstring).
PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
IMPROVED, UNCHANGED, REGRESSED, DRIFTED, NOISY = "improved", "unchanged", "regressed", "drifted", "noisy"
NEW, REMOVED, FAILED, FIXED, STILL_FAILING, NOT_MEASURED = "new", "removed", "failed", "fixed", "still failing", "n/a"
# Worst first: a cell's verdict is the worst of its gated metrics.
SEVERITY = (FAILED, REGRESSED, DRIFTED, NOISY, STILL_FAILING, IMPROVED, FIXED, UNCHANGED, NOT_MEASURED, NEW, REMOVED)
GATE_FAILS = (FAILED, REGRESSED, DRIFTED)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a difference counts. Every field is an option of `python -m reports compare` and of
    `python -m nightly compare`."""

    relative: float = 0.07
    """Smallest relative change that counts (TorchBench's 7 %)."""
    k: float = 3.0
    """A change must also exceed k times the measured relative spread."""
    spread: str = "iqr"
    """Spread across repeated records: iqr (interquartile range) or mad (median absolute deviation)."""
    per_metric: Mapping[str, float] = field(default_factory=dict)
    """Relative threshold overrides by metric name (throughput, memory, loss)."""
    gate_metrics: tuple[str, ...] = ("throughput", "memory", "loss")
    """Metrics whose regression fails the gate; the others are reported only."""
    gate_cells: tuple[str, ...] = ("*",)
    """Glob patterns of the cell ids the gate covers."""
    fail_on_removed: bool = False
    """A cell of the baseline missing from the candidate fails the gate too. pytest-benchmark JSON
    leaves out cells that did not finish, so there a cell that starts to fail looks removed;
    results files keep every status and need no such rule."""
    max_spread: float | None = None
    """Noise limit: a metric whose relative spread (either side) exceeds it is noisy, reported and
    not gated, whatever its change. None: no limit."""
    min_repeats: int = 1
    """Fewest values (repeated records) each side needs for a metric to be gated; with fewer it is
    noisy. A nightly gate asks for 3: one run of a cell cannot tell a change from its noise."""
    two_sided: tuple[str, ...] = ()
    """Metrics that fail the gate when they move beyond the threshold either way (`drifted`)."""
    max_noisy_share: float = 0.25
    """Largest share of the gated cells compared (ok on both sides) that may be noisy in a run that
    passes; past it, and with no regression, the run is inconclusive. 1 never calls a run so."""

    def __post_init__(self) -> None:
        if not self.relative >= 0 or not self.k >= 0:
            raise ValueError(f"relative={self.relative} and k={self.k} must be >= 0")
        if self.spread not in ("iqr", "mad"):
            raise ValueError(f"spread={self.spread!r} is not valid; choose from iqr, mad")
        if self.max_spread is not None and not self.max_spread >= 0:
            raise ValueError(f"max_spread={self.max_spread} must be >= 0")
        if self.min_repeats < 1:
            raise ValueError(f"min_repeats={self.min_repeats} must be >= 1")
        if not 0 <= self.max_noisy_share <= 1:
            raise ValueError(f"max_noisy_share={self.max_noisy_share} must be between 0 and 1 (a share, e.g. 25%)")
        for name in (*self.per_metric, *self.gate_metrics, *self.two_sided):
            if name not in METRICS:
                raise ValueError(f"metric {name!r} is not valid; choose from {', '.join(METRICS)}")

    def relative_for(self, metric: str) -> float:
        return self.per_metric.get(metric, self.relative)

    def gated(self, cell: str) -> bool:
        return any(fnmatch.fnmatchcase(cell, pattern) for pattern in self.gate_cells)

    @property
    def failing_verdicts(self) -> tuple[str, ...]:
        """Cell verdicts that fail the gate."""
        return GATE_FAILS + ((REMOVED,) if self.fail_on_removed else ())


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def _mad(values: list[float]) -> float:
    center = statistics.median(values)
    return statistics.median(abs(v - center) for v in values)


@dataclass(frozen=True)
class Samples:
    """One metric of one cell on one side: its values over repeated records, and for a single
    record the relative spread the record itself measured (or None)."""

    values: tuple[float, ...]
    record_spread: float | None = None

    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self, how: str = "iqr") -> float:
        """Relative spread: across repeats when there are several, else the record's own."""
        if len(self.values) >= 2:
            absolute = _iqr(list(self.values)) if how == "iqr" else _mad(list(self.values))
            center = abs(self.median())
            return absolute / center if center else 0.0
        return self.record_spread or 0.0


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    verdict: str
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None
    """Relative change, (candidate - baseline) / |baseline|; positive means larger."""
    threshold: float | None = None
    """The relative change this metric had to exceed: max(relative, k * spread)."""
    spread: float | None = None
    """The larger relative spread of the two sides."""
    note: str = ""
    baseline_n: int = 0
    """How many values (repeated records) each side's median is over."""
    candidate_n: int = 0


def decide_metric(metric: str, baseline: Samples | None, candidate: Samples | None,
                  thresholds: Thresholds = Thresholds()) -> MetricVerdict:
    """Verdict for one metric of one cell; `metric` names the direction (see METRICS)."""
    if baseline is None or candidate is None or not baseline.values or not candidate.values:
        missing = "baseline" if baseline is None or not baseline.values else "candidate"
        return MetricVerdict(metric, NOT_MEASURED, note=f"not measured in the {missing}")
    higher_is_better = METRICS[metric][1]
    b, c = baseline.median(), candidate.median()
    spread = max(baseline.spread(thresholds.spread), candidate.spread(thresholds.spread))
    relative = thresholds.relative_for(metric)
    threshold = max(relative, thresholds.k * spread)
    if b == c:
        change = 0.0
    elif b == 0:
        change = float("inf") if c > b else float("-inf")
    else:
        change = (c - b) / abs(b)

    def verdict(name: str, note: str = "") -> MetricVerdict:
        return MetricVerdict(metric, name, b, c, change, threshold, spread, note, len(baseline.values),
                             len(candidate.values))

    fewest = min(len(baseline.values), len(candidate.values))
    if fewest < thresholds.min_repeats:
        return verdict(NOISY, f"{fewest} repeat(s), {thresholds.min_repeats} needed to gate")
    if thresholds.max_spread is not None and spread > thresholds.max_spread:
        return verdict(NOISY, f"spread {spread:.1%} above the noise limit of {thresholds.max_spread:.1%}")
    if metric in thresholds.two_sided:
        if abs(change) > threshold:
            return verdict(DRIFTED, "moved either way beyond the threshold")
        return verdict(UNCHANGED if abs(change) <= relative else NOISY)
    worse = -change if higher_is_better else change
    if worse > threshold:
        return verdict(REGRESSED)
    if -worse > threshold:
        return verdict(IMPROVED)
    return verdict(UNCHANGED if abs(change) <= relative else NOISY)


@dataclass(frozen=True)
class CellData:
    """One cell on one side: the statuses of its records and its metrics over the ok ones."""

    statuses: tuple[str, ...]
    metrics: Mapping[str, Samples]
    memory_measure: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    status_detail: str = ""

    @property
    def ok(self) -> bool:
        return OK in self.statuses and all(s == OK for s in self.statuses)

    @property
    def status(self) -> str:
        """ok when every record is ok, else the first status that is not."""
        return next((s for s in self.statuses if s != OK), OK)


@dataclass(frozen=True)
class CellVerdict:
    cell: str
    verdict: str
    gated: bool
    baseline_status: str | None
    candidate_status: str | None
    metrics: dict[str, MetricVerdict]
    note: str = ""
    failing_verdicts: tuple[str, ...] = GATE_FAILS
    memory_measure: str | None = None
    """The memory key compared (see trainkit.engine.spec.schema.HEADLINE_MEMORY)."""

    @property
    def fails_gate(self) -> bool:
        return self.gated and self.verdict in self.failing_verdicts


def decide_cell(cell: str, baseline: CellData | None, candidate: CellData | None,
                thresholds: Thresholds = Thresholds()) -> CellVerdict:
    """Verdict for one cell: new, removed, failed, fixed, still failing, or the worst verdict of
    its gated metrics (all metrics are reported either way)."""
    gated, failing = thresholds.gated(cell), thresholds.failing_verdicts
    b_status = baseline.status if baseline else None
    c_status = candidate.status if candidate else None
    if baseline is None or candidate is None:
        return CellVerdict(cell, NEW if baseline is None else REMOVED, gated, b_status, c_status, {},
                           failing_verdicts=failing)
    if not candidate.ok and baseline.ok:
        detail = candidate.status_detail or candidate.status
        return CellVerdict(cell, FAILED, gated, b_status, c_status, {}, f"now {c_status}: {detail}", failing)
    if not candidate.ok and not baseline.ok:
        return CellVerdict(cell, STILL_FAILING, gated, b_status, c_status, {},
                           candidate.status_detail or c_status or "", failing)
    metrics = {m: decide_metric(m, baseline.metrics.get(m), candidate.metrics.get(m), thresholds) for m in METRICS}
    notes = []
    if not baseline.ok:
        verdict = FIXED
        notes.append(f"was {b_status}")
    else:
        judged = [metrics[m].verdict for m in thresholds.gate_metrics] or [UNCHANGED]
        verdict = min(judged, key=SEVERITY.index)
    if baseline.memory_measure and candidate.memory_measure and baseline.memory_measure != candidate.memory_measure:
        notes.append(f"memory measured as {baseline.memory_measure} vs {candidate.memory_measure}")
    changed = {k: (v, candidate.config.get(k)) for k, v in baseline.config.items() if candidate.config.get(k) != v}
    if changed:
        notes.append("config changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())))
    return CellVerdict(cell, verdict, gated, b_status, c_status, metrics, "; ".join(notes), failing,
                       candidate.memory_measure or baseline.memory_measure)


# --- from records --------------------------------------------------------------------------

# Config fields that change the work a cell does besides its id's axes: a cell whose value of one
# of these differs between baseline and candidate is compared anyway, with a note saying so.
WORK_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "adam_eps", "schedule", "clip_grad_norm",
               "init_scale", "static_loss_scale", "data", "resolved_image_size", "seq_len", "vocab_size",
               "gpt_layers", "gpt_heads", "gpt_width")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def cell_data(records: list[dict[str, Any]], memory_measure: str | None = "auto") -> CellData:
    """Combine the repeated records of one cell (all with the same cell_id). memory_measure is a
    key of `memory` to compare, "auto" for the headline one of these records, None for none."""
    ok = [r for r in records if r.get("status") == OK]
    measure = headline_memory(r.get("memory") for r in ok) if memory_measure == "auto" else memory_measure

    def samples(key: str | None) -> Samples:
        values = tuple(v for v in (_number(get(r, key)) for r in ok) if v is not None) if key else ()
        return Samples(values)

    throughput = samples("throughput_samples_per_s")
    if len(throughput.values) == 1:
        steps = ok[0].get("step_time_s") or {}
        median, iqr = _number(steps.get("median")), _number(steps.get("iqr"))
        throughput = Samples(throughput.values, iqr / median if median and iqr is not None else None)
    failed = next((r for r in records if r.get("status") != OK), None)
    config = (ok or records)[0].get("config") or {}
    return CellData(
        statuses=tuple(r.get("status") or "crashed" for r in records),
        metrics={"throughput": throughput, "memory": samples(f"memory.{measure}" if measure else None),
                 "loss": samples("loss.final")},
        memory_measure=measure,
        config={k: config.get(k) for k in WORK_FIELDS if k in config},
        status_detail=(failed or {}).get("status_detail") or "",
    )


@dataclass
class Comparison:
    cells: list[CellVerdict]
    baseline_fingerprints: list[dict[str, Any]]
    candidate_fingerprints: list[dict[str, Any]]
    thresholds: Thresholds
    warnings: list[str] = field(default_factory=list)
    """Lines a reader must see beside the verdicts (the fingerprint mismatch among them)."""

    @property
    def env_differs(self) -> bool:
        return self.baseline_fingerprints != self.candidate_fingerprints

    def env_difference(self) -> str:
        """One readable line saying how the fingerprints differ ("" when they match)."""
        if not self.env_differs:
            return ""
        keys = sorted({k for fp in self.baseline_fingerprints + self.candidate_fingerprints for k in fp})
        parts = []
        for key in keys:
            before = sorted({str(fp.get(key)) for fp in self.baseline_fingerprints})
            after = sorted({str(fp.get(key)) for fp in self.candidate_fingerprints})
            if before != after:
                parts.append(f"{key} {' | '.join(before)} -> {' | '.join(after)}")
        return "environment fingerprints differ: " + "; ".join(parts)

    @property
    def regressions(self) -> list[CellVerdict]:
        return [c for c in self.cells if c.fails_gate]

    @property
    def noisy(self) -> list[CellVerdict]:
        """Cells whose worst gated metric could not be told from the noise: reported, not gated."""
        return [c for c in self.cells if c.verdict == NOISY]

    @property
    def compared(self) -> list[CellVerdict]:
        """Gated cells ok on both sides: those whose measurements the gate compares (new, removed and
        failing cells are judged by their presence and status, which noise cannot hide)."""
        return [c for c in self.cells if c.gated and c.baseline_status == OK and c.candidate_status == OK]

    @property
    def noisy_compared(self) -> list[CellVerdict]:
        return [c for c in self.compared if c.verdict == NOISY]

    @property
    def noisy_share(self) -> float | None:
        """The share of the compared cells that are noisy; None when no cell was compared."""
        compared = self.compared
        return len(self.noisy_compared) / len(compared) if compared else None

    @property
    def inconclusive(self) -> bool:
        """Nothing failed, but too much of the run was noise to pass it (Thresholds.max_noisy_share)."""
        share = self.noisy_share
        return not self.regressions and share is not None and share > self.thresholds.max_noisy_share

    @property
    def outcome(self) -> str:
        """regression, inconclusive or pass (see the module docstring)."""
        return REGRESSION if self.regressions else INCONCLUSIVE if self.inconclusive else PASS

    @property
    def passed(self) -> bool:
        """No gated cell regressed or failed, and the gate saw enough of the run to say so."""
        return self.outcome == PASS

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cell in self.cells:
            out[cell.verdict] = out.get(cell.verdict, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: SEVERITY.index(kv[0])))


def _fingerprints(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unique: list[dict[str, Any]] = []
    for record in records:
        if not record.get("env"):
            continue  # a cell refused before its worker reported an environment
        fp = fingerprint(record.get("env"))
        if fp not in unique:
            unique.append(fp)
    return sorted(unique, key=lambda fp: sorted((k, str(v)) for k, v in fp.items()))


def compare_records(baseline: list[dict[str, Any]], candidate: list[dict[str, Any]],
                    thresholds: Thresholds = Thresholds()) -> Comparison:
    """Verdicts for every cell in either list of records (repeats of a cell are combined)."""
    def by_cell(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        cells: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            cells.setdefault(record["cell_id"], []).append(record)
        return cells

    base, cand = by_cell(baseline), by_cell(candidate)
    verdicts = []
    for cell in sorted(set(base) | set(cand)):
        b_ok = [r for r in base.get(cell, []) if r.get("status") == OK]
        c_ok = [r for r in cand.get(cell, []) if r.get("status") == OK]
        measure = headline_memory(r.get("memory") for r in b_ok + c_ok)  # the same measure on both sides, or none
        b = cell_data(base[cell], measure) if cell in base else None
        c = cell_data(cand[cell], measure) if cell in cand else None
        verdicts.append(decide_cell(cell, b, c, thresholds))
    result = Comparison(verdicts, _fingerprints(baseline), _fingerprints(candidate), thresholds)
    if result.env_differs:
        result.warnings.append(result.env_difference())
    return result
