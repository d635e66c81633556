"""Noise-aware verdicts: did a cell get better, worse, or stay the same, and could the gate see it?

Pure Python (no pandas, no torch) so a regression gate can import it cheaply and feed it any
per-cell numbers. The rule, per cell and metric:

    change    = (candidate - baseline) / |baseline|           medians over repeats
    spread    = the noise the change is judged against: the larger relative spread of tonight's
                repeats and of the reference, the reference being the history's night-to-night
                spread of this (cell, metric) when a run store knows it, else the baseline's repeats
    threshold = max(relative, k * spread)                     defaults 7 % and k = 3

    worse by more than threshold        -> regressed  (however noisy either side was)
    better by more than threshold       -> improved
    within relative                     -> unchanged  (when the gate could see: see below)
    worse beyond relative, within k*spread -> unknown: too noisy to tell at this size
    better beyond relative, within k*spread -> unchanged (better, within its noise: no regression hides there)

A change exactly at its threshold is not beyond it (a tolerance of 1e-9 keeps a float's last bit
from deciding). The gate can see a metric only when each side has `min_repeats` values and the
spread is within `max_spread`; otherwise a change within the threshold is `unknown` with the reason
(too few repeats, the spread above the noise limit, and whose spread it was). `threshold` is then
also the smallest regression the gate could have caught: anything beyond it is judged.

A metric named in `two_sided` (the final loss, for a nightly gate) fails the gate when it moves
beyond the threshold in either direction: `drifted`; either way within k*spread but beyond
relative is unknown. With a fixed seed and the same environment, a lower loss is as much a sign
of changed numerics as a higher one.

7 % is TorchBench's DEFAULT_REGRESSION_DELTA_THRESHOLD (pytorch/benchmark regression_detector.py);
k = 3 spreads keeps a cell whose steps vary by 10 % from flagging a 20 % wobble. The false-alarm
rate and the detection power this gives are simulated by the gate section of trainkit.reports.calibration.

A cell's spread: across repeated records (several runs of one cell), the IQR (or MAD) of the
metric relative to its median; with a single record, the record's own step-time IQR relative to
its median for throughput, and none for memory and loss (a single value carries no spread).

Metrics a cell gates: the thresholds' gate metrics, less those its figures cannot support. A CPU
cell's memory is its host RSS growth, which moves between identical runs (allocator and page
reuse): it is gated only over repeats on both sides, whose spread sets its tolerance; a compiled
cell's host RSS growth depends on the state of inductor's caches and is not gated (a GPU's
allocator peaks are reset after warm-up, compilation included, and are gated).

Cells: `new` (only in the candidate), `removed` (only in the baseline: no record tonight, so the
gate cannot see it: unknown, or a failure with `fail_on_removed`), `failed` (ok in the baseline, a
non-ok status in any repeat of the candidate: oom, diverged, crashed, timeout; a regression),
`fixed` (the reverse), `still failing` (failing in every repeat on both sides), `unsupported`
(unsupported by design on both sides: neither failing nor gated), and `unknown` when a baseline
cannot judge the cell (some of its repeats failed, or its records are not one cell) and nothing is
beyond a threshold. A cell's records that differ in a config field that changes a figure (steps,
seed, fp32_main_grads, ...; FIGURE_FIELDS) or in how they were timed are never pooled: the cell is
unknown, naming the field.

The run: a `regression` when a gated cell regressed, drifted or failed; else `inconclusive` when
any gated cell is unknown (named, with its reason): the gate passes only what it saw unchanged;
else a `pass`.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
IMPROVED, UNCHANGED, REGRESSED, DRIFTED, UNKNOWN = "improved", "unchanged", "regressed", "drifted", "unknown"
NEW, REMOVED, FAILED, FIXED, STILL_FAILING, NOT_MEASURED = "new", "removed", "failed", "fixed", "still failing", "n/a"
UNSUPPORTED = "unsupported"
# Worst first: a cell's verdict is the worst of its gated metrics.
SEVERITY = (FAILED, REGRESSED, DRIFTED, UNKNOWN, REMOVED, STILL_FAILING, IMPROVED, FIXED, UNCHANGED, UNSUPPORTED,
            NOT_MEASURED, NEW)
GATE_FAILS = (FAILED, REGRESSED, DRIFTED)
TIE = 1e-9
"""Relative tolerance of "beyond the threshold": a change equal to its threshold is not beyond it,
whichever way the last bit of a float falls."""
RSS_MEASURES = ("host_rss_growth_bytes", "host_rss_peak_bytes")


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
    """A cell of the baseline missing from the candidate fails the gate (a regression) rather than
    leaving it unknown (inconclusive). pytest-benchmark JSON leaves out cells that did not finish,
    so there a cell that starts to fail looks removed; results files keep every status."""
    max_spread: float | None = None
    """Noise limit: a metric whose relative spread exceeds it cannot be seen unless its change is
    beyond the threshold (then it is judged): unknown. None: no limit."""
    min_repeats: int = 1
    """Fewest values (repeated records) each side needs for the gate to see a metric; with fewer, a
    change within the threshold is unknown. A nightly gate asks for 3: one run of a cell cannot tell
    a change from its noise."""
    two_sided: tuple[str, ...] = ()
    """Metrics that fail the gate when they move beyond the threshold either way (`drifted`)."""

    def __post_init__(self) -> None:
        if not self.relative >= 0 or not self.k >= 0:
            raise ValueError(f"relative={self.relative} and k={self.k} must be >= 0")
        if self.spread not in ("iqr", "mad"):
            raise ValueError(f"spread={self.spread!r} is not valid; choose from iqr, mad")
        if self.max_spread is not None and not self.max_spread >= 0:
            raise ValueError(f"max_spread={self.max_spread} must be >= 0")
        if self.min_repeats < 1:
            raise ValueError(f"min_repeats={self.min_repeats} must be >= 1")
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


def beyond(change: float, threshold: float) -> bool:
    """Whether a change is beyond its threshold; equal is not, to within TIE of the threshold (or of
    0.1 % when the threshold is smaller, so a zero threshold ignores a float's rounding too)."""
    return change > threshold + TIE * max(threshold, 1e-3)


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
    """One metric of one cell: its verdict and the figures it was judged on."""

    metric: str
    verdict: str
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None
    """Relative change, (candidate - baseline) / |baseline|; positive means larger."""
    threshold: float | None = None
    """The relative change this metric had to exceed: max(relative, k * spread); also the smallest
    regression the gate could have caught here."""
    spread: float | None = None
    """The relative spread the change was judged against (see spread_source)."""
    note: str = ""
    baseline_n: int = 0
    """How many values (repeated records) each side's median is over."""
    candidate_n: int = 0
    spread_source: str = ""
    """Whose spread set the threshold: tonight's (the candidate's repeats), the baseline's or the
    history's (night to night)."""
    gated: bool = True
    """False when the cell's figures cannot support gating this metric (the note says why)."""


def decide_metric(metric: str, baseline: Samples | None, candidate: Samples | None,
                  thresholds: Thresholds = Thresholds(), history_spread: float | None = None,
                  run_spread: float | None = None) -> MetricVerdict:
    """Verdict for one metric of one cell; `metric` names the direction (see METRICS).
    history_spread: the run store's night-to-night relative spread of this (cell, metric), which
    replaces the baseline's repeats as the reference noise when given. run_spread: the two runs'
    run-to-run spread across their single-record cells (run_to_run_spread), a floor under a
    single record's step-to-step spread, which holds none of the drift between runs."""
    b_values = baseline.values if baseline is not None else ()
    c_values = candidate.values if candidate is not None else ()
    if not b_values and not c_values:
        return MetricVerdict(metric, NOT_MEASURED, note="not measured on either side")
    if not b_values or not c_values:
        missing = "baseline" if not b_values else "candidate"
        return MetricVerdict(metric, UNKNOWN, note=f"not measured in the {missing}")
    assert baseline is not None and candidate is not None
    higher_is_better = METRICS[metric][1]
    b, c = baseline.median(), candidate.median()
    reference = ((history_spread, "the history's") if history_spread is not None
                 else (baseline.spread(thresholds.spread), "the baseline's"))
    spreads = [(candidate.spread(thresholds.spread), "tonight's"), reference]
    if run_spread is not None and history_spread is None and min(len(b_values), len(c_values)) == 1:
        spreads.append((run_spread, "the run-to-run"))
    spread, whose = max(spreads, key=lambda s: s[0])
    relative = thresholds.relative_for(metric)
    threshold = max(relative, thresholds.k * spread)
    if b == c:
        change = 0.0
    elif b == 0:
        change = float("inf") if c > b else float("-inf")
    else:
        change = (c - b) / abs(b)

    def verdict(name: str, note: str = "") -> MetricVerdict:
        return MetricVerdict(metric, name, b, c, change, threshold, spread, note, len(b_values), len(c_values),
                             whose)

    # A change beyond its threshold is judged, however noisy either side was.
    two_sided = metric in thresholds.two_sided
    worse = abs(change) if two_sided else -change if higher_is_better else change
    if beyond(worse, threshold):
        return verdict(DRIFTED, "moved either way beyond the threshold") if two_sided else verdict(REGRESSED)
    if not two_sided and beyond(-worse, threshold):
        return verdict(IMPROVED)
    # Within it: could the gate have seen a regression of this size?
    fewest = min(len(b_values), len(c_values))
    if fewest < thresholds.min_repeats:
        return verdict(UNKNOWN, f"{fewest} repeat(s), {thresholds.min_repeats} needed to gate")
    if thresholds.max_spread is not None and beyond(spread, thresholds.max_spread):
        cannot = ": the baseline cannot judge this cell" if whose == "the baseline's" else ""
        return verdict(UNKNOWN, f"{whose} spread {spread:.1%} above the noise limit of "
                                f"{thresholds.max_spread:.1%}{cannot}")
    if not beyond(abs(change), relative):
        return verdict(UNCHANGED)
    if worse > 0:
        return verdict(UNKNOWN, f"within ±{threshold:.1%}, {thresholds.k:g} × {whose} spread: too noisy to tell "
                                "at this size")
    return verdict(UNCHANGED, f"better by {abs(change):.1%}, within its noise")


@dataclass(frozen=True)
class CellData:
    """One cell on one side: the statuses of its records and its metrics over the ok ones."""

    statuses: tuple[str, ...]
    metrics: Mapping[str, Samples]
    memory_measure: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    status_detail: str = ""
    compiled: bool = False
    """Ran under torch.compile (its host RSS growth depends on inductor's caches)."""
    unpoolable: str = ""
    """Why these records are not repeats of one cell (they differ in a field that changes a
    figure), or "" when they are."""
    refused_at_collection: bool = False
    """Every record is a refusal at collection (bench's skip), not a run."""

    @property
    def ok(self) -> bool:
        return OK in self.statuses and all(s == OK for s in self.statuses)

    @property
    def all_failed(self) -> bool:
        return OK not in self.statuses

    @property
    def status(self) -> str:
        """ok when every record is ok, else the first status that is not."""
        return next((s for s in self.statuses if s != OK), OK)

    def failures(self) -> str:
        """"1 of 3 repeats timeout" for the repeats that did not end ok."""
        bad = [s for s in self.statuses if s != OK]
        kinds = ", ".join(sorted(set(bad)))
        return f"{len(bad)} of {len(self.statuses)} repeat(s) {kinds}"


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
    gate_metrics: tuple[str, ...] = ()
    """The metrics of this cell the gate judged (its thresholds' less those its figures cannot support)."""

    @property
    def fails_gate(self) -> bool:
        return self.gated and self.verdict in self.failing_verdicts

    @property
    def unknown(self) -> bool:
        """A gated cell the gate could not see (and that did not fail it)."""
        return self.gated and not self.fails_gate and self.verdict in (UNKNOWN, REMOVED)

    def catches(self) -> dict[str, float]:
        """The smallest relative regression the gate would have caught, per gated metric judged."""
        return {m: v.threshold for m, v in self.metrics.items()
                if m in self.gate_metrics and v.threshold is not None}


def _memory_ungated(measure: str | None, baseline: CellData, candidate: CellData) -> str:
    """Why this cell's memory cannot be gated, or ""."""
    if measure not in RSS_MEASURES:
        return ""
    if baseline.compiled or candidate.compiled:
        return "not gated: a compiled cell's host RSS growth depends on the state of inductor's caches"
    fewest = min(len(baseline.metrics.get("memory", Samples(())).values),
                 len(candidate.metrics.get("memory", Samples(())).values))
    if fewest < 2:
        return ("not gated: host RSS moves between identical runs, and one run per side has no A/A spread to set "
                "its tolerance (repeat the cells)")
    return ""


def decide_cell(cell: str, baseline: CellData | None, candidate: CellData | None,
                thresholds: Thresholds = Thresholds(), history_spreads: Mapping[str, float] | None = None,
                run_spreads: Mapping[str, float] | None = None) -> CellVerdict:
    """Verdict for one cell: new, removed, failed, fixed, still failing, unsupported, unknown, or
    the worst verdict of its gated metrics (all metrics are reported either way). history_spreads:
    the run store's night-to-night spread of this cell's metrics, by metric."""
    gated, failing = thresholds.gated(cell), thresholds.failing_verdicts
    b_status = baseline.status if baseline else None
    c_status = candidate.status if candidate else None

    def out(verdict: str, note: str = "", metrics: dict[str, MetricVerdict] | None = None,
            measure: str | None = None, judged: tuple[str, ...] = ()) -> CellVerdict:
        return CellVerdict(cell, verdict, gated, b_status, c_status, metrics or {}, note, failing, measure, judged)

    if baseline is None:
        return out(NEW)
    if candidate is None:
        return out(REMOVED, "no record in the candidate: the gate cannot see this cell")
    for side, data in (("baseline", baseline), ("candidate", candidate)):
        if data.unpoolable:
            return out(UNKNOWN, f"the {side}'s records are not one cell: {data.unpoolable}")
    if all(s == UNSUPPORTED for s in baseline.statuses + candidate.statuses):
        return out(UNSUPPORTED, candidate.status_detail or "unsupported on both sides")
    if candidate.refused_at_collection and not baseline.all_failed:
        return out(UNKNOWN, f"refused at collection: {candidate.status_detail or c_status}")
    if not candidate.ok:
        detail = candidate.status_detail or c_status or ""
        if baseline.all_failed and candidate.all_failed:
            return out(STILL_FAILING, detail)
        if baseline.ok or candidate.all_failed:
            now = c_status if candidate.all_failed and len(set(candidate.statuses)) == 1 else candidate.failures()
            was = "" if baseline.ok else f"; the baseline: {baseline.failures()}"
            return out(FAILED, f"now {now}: {detail}{was}")
        return out(UNKNOWN, f"{candidate.failures()}, and the baseline {baseline.failures()}: flaky on both sides")
    spreads = history_spreads or {}
    floors = run_spreads or {}
    metrics = {m: decide_metric(m, baseline.metrics.get(m), candidate.metrics.get(m), thresholds, spreads.get(m),
                                floors.get(m))
               for m in METRICS}
    measure = candidate.memory_measure or baseline.memory_measure
    notes = []
    if baseline.all_failed:
        verdict = FIXED
        notes.append(f"was {b_status}")
        judged: tuple[str, ...] = ()
    else:
        ungated = _memory_ungated(measure, baseline, candidate)
        if ungated and "memory" in metrics:
            metrics["memory"] = replace(metrics["memory"], gated=False, note=ungated)
        judged = tuple(m for m in thresholds.gate_metrics if metrics[m].gated and metrics[m].verdict != NOT_MEASURED)
        verdict = min((metrics[m].verdict for m in judged), key=SEVERITY.index, default=UNCHANGED)
        if not baseline.ok:
            notes.append(f"the baseline failed {baseline.failures()}: it judges over its ok repeats only")
    if baseline.memory_measure and candidate.memory_measure and baseline.memory_measure != candidate.memory_measure:
        notes.append(f"memory measured as {baseline.memory_measure} vs {candidate.memory_measure}")
    changed = {k: (v, candidate.config.get(k)) for k, v in baseline.config.items() if candidate.config.get(k) != v}
    if changed:
        notes.append("config changed: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())))
    return out(verdict, "; ".join(notes), metrics, measure, judged)


# --- from records --------------------------------------------------------------------------

# Config fields that change the work a cell does besides its id's axes: a cell whose value of one
# of these differs between baseline and candidate is compared anyway, with a note saying so.
WORK_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "adam_eps", "schedule", "clip_grad_norm",
               "init_scale", "static_loss_scale", "data", "resolved_image_size", "seq_len", "vocab_size",
               "gpt_layers", "gpt_heads", "gpt_width")
# Config fields that change a figure besides the id's axes and the work: records of one cell that
# differ in one of these (or in WORK_FIELDS) are not repeats of it and are never pooled. steps moves
# the final loss, seed the loss and data, fp32_main_grads memory and speed, cudnn_benchmark the
# kernels, cpu_threads a CPU cell's speed, warmup_steps what the timed steps find settled.
FIGURE_FIELDS = (*WORK_FIELDS, "steps", "warmup_steps", "seed", "task_seed", "fp32_main_grads", "cudnn_benchmark",
                 "cpu_threads", "compile_mode", "epochs", "dataset_size", "num_workers", "workload")


def timing_method(record: dict[str, Any]) -> str:
    """How a record's steps were timed: bench's rounds (one optimizer step per command, the
    launcher's round trip recorded beside each) or `trainkit run`'s windows of back-to-back steps."""
    return "rounds" if record.get("step_round_trip_s") else "window"


def unpoolable(records: list[dict[str, Any]]) -> str:
    """Why these records (of one cell id) are not repeats of one cell: the first field that changes
    a figure whose values differ among them, with the values; "" when they agree."""
    ran = [r for r in records if not r.get("skipped_at_collection")]
    for name in FIGURE_FIELDS:
        values = {repr((r.get("config") or {}).get(name)) for r in ran}
        if len(values) > 1:
            return f"they differ in {name} ({', '.join(sorted(values))})"
    methods = {timing_method(r) for r in ran if r.get("status") == OK}
    if len(methods) > 1:
        return "they were timed differently (bench rounds and trainkit run windows)"
    return ""


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
        config={k: config.get(k) for k in FIGURE_FIELDS if k in config},
        status_detail=(failed or {}).get("status_detail") or "",
        compiled=any(bool((r.get("config") or {}).get("compile")) for r in records),
        unpoolable=unpoolable(records),
        refused_at_collection=all(r.get("skipped_at_collection") for r in records),
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
    def unknown(self) -> list[CellVerdict]:
        """Gated cells the gate could not see (too noisy at this size, a baseline that cannot judge
        them, no record tonight, refused): each makes a run without a regression inconclusive."""
        return [c for c in self.cells if c.unknown]

    @property
    def compared(self) -> list[CellVerdict]:
        """Gated cells ok on both sides: those whose measurements the gate compares."""
        return [c for c in self.cells if c.gated and c.baseline_status == OK and c.candidate_status == OK]

    @property
    def inconclusive(self) -> bool:
        """Nothing failed, but the gate could not see every gated cell: not a pass."""
        return not self.regressions and bool(self.unknown)

    @property
    def outcome(self) -> str:
        """regression, inconclusive or pass (see the module docstring)."""
        return REGRESSION if self.regressions else INCONCLUSIVE if self.inconclusive else PASS

    @property
    def passed(self) -> bool:
        """No gated cell regressed or failed, and the gate saw every one of them."""
        return self.outcome == PASS

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cell in self.cells:
            out[cell.verdict] = out.get(cell.verdict, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: SEVERITY.index(kv[0])))


def _fingerprints(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unique: list[dict[str, Any]] = []
    for record in records:
        if not record.get("env") or record.get("skipped_at_collection"):
            continue  # a cell refused before its worker reported an environment
        fp = fingerprint(record.get("env"))
        if fp not in unique:
            unique.append(fp)
    return sorted(unique, key=lambda fp: sorted((k, str(v)) for k, v in fp.items()))


RUN_SPREAD_MIN_CELLS = 8
"""Single-record cells on both sides needed to measure the run-to-run spread across them."""


def run_to_run_spread(base: Mapping[str, list[dict[str, Any]]], cand: Mapping[str, list[dict[str, Any]]]
                      ) -> float | None:
    """The relative run-to-run spread of throughput between two runs, from the cells each holds one ok
    record of: 1.4826 x the median absolute deviation of their log ratios (a normal's sd, robust to
    the few cells that really changed). A single record's own spread is step to step within one
    process; two identical quick matrices on a quiet 2-core host differed by 15 % of this kind (and
    a step-to-step threshold of 7 % called 3 of 81 cells regressed). None with fewer than
    RUN_SPREAD_MIN_CELLS such cells, or no run-wide spread to measure."""
    logs = []
    for cell in base.keys() & cand.keys():
        pair = [[_number(r.get("throughput_samples_per_s")) for r in side[cell] if r.get("status") == OK]
                for side in (base, cand)]
        if all(len(values) == 1 and values[0] and values[0] > 0 for values in pair):
            logs.append(math.log(pair[1][0] / pair[0][0]))  # type: ignore[operator]
    if len(logs) < RUN_SPREAD_MIN_CELLS:
        return None
    center = statistics.median(logs)
    return 1.4826 * statistics.median(abs(v - center) for v in logs)


def compare_records(baseline: list[dict[str, Any]], candidate: list[dict[str, Any]],
                    thresholds: Thresholds = Thresholds(),
                    history_spreads: Mapping[tuple[str, str], float] | None = None) -> Comparison:
    """Verdicts for every cell in either list of records (repeats of a cell are combined).
    history_spreads: the run store's night-to-night relative spread by (cell id, metric)."""
    def by_cell(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        cells: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            cells.setdefault(record["cell_id"], []).append(record)
        return cells

    base, cand = by_cell(baseline), by_cell(candidate)
    spreads = history_spreads or {}
    floor = run_to_run_spread(base, cand)
    floors = {"throughput": floor} if floor is not None else {}
    verdicts = []
    for cell in sorted(set(base) | set(cand)):
        b_ok = [r for r in base.get(cell, []) if r.get("status") == OK]
        c_ok = [r for r in cand.get(cell, []) if r.get("status") == OK]
        measure = headline_memory(r.get("memory") for r in b_ok + c_ok)  # the same measure on both sides, or none
        b = cell_data(base[cell], measure) if cell in base else None
        c = cell_data(cand[cell], measure) if cell in cand else None
        mine = {metric: spread for (name, metric), spread in spreads.items() if name == cell}
        verdicts.append(decide_cell(cell, b, c, thresholds, mine, floors))
    result = Comparison(verdicts, _fingerprints(baseline), _fingerprints(candidate), thresholds)
    if result.env_differs:
        result.warnings.append(result.env_difference())
    return result
