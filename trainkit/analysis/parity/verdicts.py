"""Loss parity, the analysis: result records of every (precision, seed) cell in, a typed verdict per
precision out (trainkit.analysis.parity.document). No torch; `python -m trainkit parity` runs the cells.

- **Pairs.** Every cell of a model learns one synthetic task (`task_seed`: the teacher and the
  held-out set); seed s sets the initial weights and the samples drawn, the same in every
  precision. So a precision's eval loss on seed s and fp32's on seed s are a pair.
- **Verdict.** The per-seed differences of eval loss from fp32 (this minus fp32) give a mean and a
  Student t interval (trainkit.analysis.parity.stats says why not a bootstrap). Against an
  equivalence margin (default 0.5% of fp32's seed-mean eval loss): the interval inside +- margin is
  `equivalent`, entirely above it `worse`, entirely below it `better` (the numerics changed: never a
  win), else `inconclusive`, with the seeds that would decide it if the differences keep their mean
  and spread. A set of seeds with fewer than two fp32 twins is judged as an independent set
  (Welch's t); seeds fp32 did not run beside paired ones are judged as an independent set too, and
  the verdict is the more cautious of the two. An ok cell without an eval loss leaves the precision
  without a verdict, with the reason; a non-finite one is a divergence.
  The estimand is the typical seed's difference: where a seed stands apart from the others (the
  generalized ESD test, trainkit.analysis.parity.stats.seeds_apart) no t interval can cover it, and
  the precision gets no verdict, with a reason naming the seed (rerun it or add seeds).
  A diverged seed makes a precision `worse`; a crashed, out-of-memory or timed-out one leaves it
  without a verdict.
- **Time to target.** Per seed, the target is its fp32 twin's smoothed training loss at
  TARGET_FRACTION of the run (or one loss, given); steps to target is the first step at which the
  seed's smoothed curve reaches it, time to target those steps x the cell's median step time. Over
  seeds: the geometric means of the steps and of the times with the t interval of their logarithms
  (an arithmetic interval of steps 4, 5 and 36 went to -29), and the geometric mean of fp32's over this
  precision's (effective speedup) and of fp32's step time over this one's (throughput speedup), each
  with its interval. A seed that never reaches the target leaves those null, saying how many did.
- **Diagnostics.** trainkit.analysis.parity.diagnostics names what stands out under a `better` or
  `worse`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...engine.spec.precision_facts import display_rank
from ...engine.spec.schema import MEMORY_NAMES, headline_memory
from .diagnostics import STANDS_OUT, flags, mean_diagnostics
from .document import (
    CONFIDENCE,
    NO_VERDICT,
    PARITY_SCHEMA,
    REFERENCE,
    REFERENCE_VERDICT,
    TARGET_FRACTION,
    TASK_SEED,
    Cell,
    CurveSpread,
    Flatness,
    Interval,
    LossTest,
    Margin,
    MarginUsed,
    MemoryFigures,
    ModelParity,
    ParityDocument,
    PrecisionParity,
    Reference,
    SeedTiming,
    Target,
    TimeToTarget,
)
from .stats import (
    WELCH_MIN_SEEDS,
    apart_reason,
    geometric_interval,
    paired_test,
    seeds_to_decide,
    t_interval,
    verdict,
    welch_interval,
)

SMOOTH_FRACTION = 0.05
"""Trailing window of the curve smoothing, as a share of the run's steps (at least 1 step)."""
SPREAD_SDS = 2.0
"""fp32's curve spread drawn under the curves: mean +- this many sample standard deviations."""
TIMING_NOTE = ("Step times are this machine's: on a CPU, half precision is emulated or slow, so a CPU "
               "parity run's times to target and speedups are not GPU claims; its verdicts are what carries over.")


# --- curves -----------------------------------------------------------------------------------------

def smooth(curve: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing mean over `window` steps (fewer at the start); None from the first missing value on
    (a diverged cell's curve ends there)."""
    out: list[float | None] = []
    total, values = 0.0, []
    for value in curve:
        if value is None or not math.isfinite(value) or (out and out[-1] is None):
            out.append(None)
            continue
        values.append(value)
        total += value
        if len(values) > window:
            total -= values[-window - 1]
        out.append(total / min(len(values), window))
    return out


def window_of(steps: int) -> int:
    return max(1, round(steps * SMOOTH_FRACTION))


def _per_step(curves: list[list[float | None]]) -> list[list[float]]:
    """Per step, the values the curves have there (a curve that ended gives none)."""
    length = max((len(c) for c in curves), default=0)
    return [[c[t] for c in curves if t < len(c) and c[t] is not None] for t in range(length)]  # type: ignore[misc]


def mean_curve(curves: list[list[float | None]]) -> list[float | None]:
    """Seed mean per step, None where any seed has no value (a diverged seed ends the mean)."""
    n = len(curves)
    return [statistics.fmean(v) if len(v) == n and n else None for v in _per_step(curves)]


def curve_band(curves: list[list[float | None]]) -> CurveSpread:
    """Per step: the seeds' mean and mean +- SPREAD_SDS sample standard deviations."""
    low: list[float | None] = []
    high: list[float | None] = []
    mean: list[float | None] = []
    for values in _per_step(curves):
        if len(values) < len(curves) or len(values) < 2:
            low.append(None), high.append(None), mean.append(None)
            continue
        m, sd = statistics.fmean(values), statistics.stdev(values)
        low.append(m - SPREAD_SDS * sd), high.append(m + SPREAD_SDS * sd), mean.append(m)
    return CurveSpread(mean=mean, low=low, high=high)


def steps_to(curve: Sequence[float | None], target: float) -> int | None:
    """1-based count of optimizer steps until the curve first reaches the target, or None."""
    for t, value in enumerate(curve):
        if value is not None and value <= target:
            return t + 1
    return None


# --- the reference and the per-precision figures ---------------------------------------------------------

@dataclass(frozen=True)
class _Basis:
    """What every precision is judged against: fp32's seeds, their targets and the margin."""

    window: int
    evals: dict[int, float]
    timings: dict[int, SeedTiming]
    targets: dict[int, float | None]
    diagnostics: dict[str, Any]
    margin_loss: float
    confidence: float


def _seed(record: dict[str, Any]) -> int:
    return int(record["config"]["seed"])


def _eval(record: dict[str, Any]) -> float | None:
    """The record's eval loss; None where it wrote none (or wrote a non-number)."""
    value = (record.get("loss") or {}).get("eval")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _seed_timing(record: dict[str, Any], target: float | None, window: int) -> SeedTiming:
    steps = steps_to(smooth(record["loss"]["curve"], window), target) if target is not None else None
    step_s = (record.get("step_time_s") or {}).get("median")
    return SeedTiming(seed=_seed(record), target_loss=target, steps_to_target=steps, step_time_s=step_s,
                      time_to_target_s=steps * step_s if steps and step_s else None)


def _null(n: int, confidence: float, note: str) -> Interval:
    return Interval(None, None, None, n, confidence, "none", note)


CAUTION = ("worse", "inconclusive", "better", "equivalent")
"""Verdicts from the most cautious: two tests of one precision give the first of theirs in this order."""


def _loss_test(evals: dict[int, float], basis: _Basis) -> LossTest | None:
    """The eval-loss test against fp32: paired over the seeds both ran (two or more), Welch's over all
    of this precision's seeds when fewer are shared (one shared seed is no pair test: the sets are
    judged as independent); seeds fp32 did not run are judged too, as an independent set beside the
    pairs (LossTest.unpaired). None with fewer than 2 values to compare."""
    shared = sorted(s for s in evals if s in basis.evals)
    unshared = sorted(s for s in evals if s not in basis.evals)
    if len(shared) >= 2:
        test = _one_test(evals, basis, shared, paired=True)
        if len(unshared) >= WELCH_MIN_SEEDS:
            unpaired = _one_test(evals, basis, unshared, paired=False)
            judged = min(test.verdict, unpaired.verdict, key=CAUTION.index)
            return dataclasses.replace(test, unpaired_seeds=tuple(unshared), unpaired=unpaired, verdict=judged)
        if unshared:  # too few lone seeds for a test (WELCH_MIN_SEEDS): no claim of equivalence over them
            reference = statistics.fmean(basis.evals.values())
            inside = all(abs(evals[s] - reference) <= basis.margin_loss for s in unshared)
            judged = test.verdict if test.verdict != "equivalent" or inside else "inconclusive"
            return dataclasses.replace(test, unpaired_seeds=tuple(unshared), verdict=judged)
        return test
    if len(evals) >= 2:
        return _one_test(evals, basis, sorted(evals), paired=False)
    return None


def _one_test(evals: dict[int, float], basis: _Basis, seeds: list[int], *, paired: bool) -> LossTest:
    """The paired t test over `seeds` (each has an fp32 twin), or Welch's over them against every
    fp32 seed."""
    ref_mean = statistics.fmean(basis.evals.values())
    if paired:
        diffs = [evals[s] - basis.evals[s] for s in seeds]
        interval, sd = t_interval(diffs, basis.confidence), statistics.stdev(diffs)
        (t, p), test = paired_test(diffs), "paired t"
    else:
        diffs, sd, test = [], None, "Welch t"
        interval, t, p = welch_interval([evals[s] for s in seeds], list(basis.evals.values()), basis.confidence)
    judged = verdict(interval, basis.margin_loss)
    more, why = None, None
    if judged == "inconclusive" and sd is not None:
        more, why = seeds_to_decide(interval.mean, sd, len(diffs), basis.margin_loss, basis.confidence)
    elif judged == "inconclusive":
        why = "independent sets: run the seeds fp32 ran, whose pairs decide with far fewer seeds"
    return LossTest(test=test, seeds=tuple(seeds), differences=tuple(diffs), difference=interval, difference_sd=sd,
                    relative_difference=interval.mean / ref_mean if ref_mean else None, t_statistic=t, p_value=p,
                    margin_loss=basis.margin_loss, verdict=judged, more_seeds_to_decide=more, more_seeds_note=why)


def _too_few_independent(evals: dict[int, float], basis: _Basis) -> str | None:
    """Why Welch's test of independent sets gives no interval (fewer than WELCH_MIN_SEEDS a set),
    where the sets share fewer than 2 seeds; else None."""
    if sum(1 for s in evals if s in basis.evals) >= 2:
        return None
    fewest = min(len(evals), len(basis.evals))
    if fewest >= WELCH_MIN_SEEDS:
        return None
    return (f"independent sets of {len(evals)} and {len(basis.evals)} seeds: Welch's interval needs "
            f"{WELCH_MIN_SEEDS} a set (in fewer a far-off seed cannot be told apart and widens it past its "
            "95 % claim); run the seeds fp32 ran, whose pairs need no such floor")


def _seeds_apart(evals: dict[int, float], basis: _Basis) -> str | None:
    """Why no interval fits when a seed stands apart (trainkit.analysis.parity.stats.seeds_apart): in
    the paired differences, or, for independent sets, in either set's eval losses; else None."""
    shared = sorted(s for s in evals if s in basis.evals)
    if len(shared) >= 2:
        return apart_reason({s: evals[s] - basis.evals[s] for s in shared}, "eval-loss difference from fp32")
    if not shared:
        return (apart_reason(evals, "eval loss")
                or apart_reason(basis.evals, f"{REFERENCE}'s eval loss"))
    return None


def _timing(ok: list[dict[str, Any]], basis: _Basis) -> TimeToTarget:
    """Steps and time to target per seed, and over seeds with the speedups against fp32's twins."""
    mean_target = _finite_mean(list(basis.targets.values()))
    per_seed = tuple(_seed_timing(r, basis.targets.get(_seed(r), mean_target), basis.window) for r in ok)
    n, c = len(per_seed), basis.confidence
    reached = [t for t in per_seed if t.steps_to_target is not None]
    missing = f"not reached in {n - len(reached)} of {n} seeds" if len(reached) < n else None
    # Counts are positive and skewed (one slow seed takes many times the others' steps): the geometric
    # mean with the t interval of the logarithms never gives a negative count, as the arithmetic one did.
    steps = geometric_interval([t.steps_to_target for t in reached], c) if not missing else _null(n, c, missing)
    times = [t.time_to_target_s for t in reached if t.time_to_target_s is not None]
    # Times are positive and a loaded machine stretches them by factors: a geometric mean keeps their
    # interval positive (an arithmetic t interval of 5 CPU timings went below 0 s).
    time_s = geometric_interval(times, c) if not missing and len(times) == n else _null(n, c, missing or "no step time")
    pairs = [(basis.timings[t.seed], t) for t in per_seed if t.seed in basis.timings]
    throughput = [ref.step_time_s / mine.step_time_s for ref, mine in pairs if ref.step_time_s and mine.step_time_s]
    both = [(ref.time_to_target_s, mine.time_to_target_s) for ref, mine in pairs]
    note = missing
    if not pairs:
        note = "no fp32 seed shares these seeds: no speedup"
        effective = _null(0, c, note)
    elif any(mine is None for _, mine in both):
        effective = _null(len(pairs), c, missing or "no step time")
    elif any(ref is None for ref, _ in both):
        fp32_missing = sum(1 for ref, _ in both if ref is None)
        effective = _null(len(pairs), c, f"fp32 did not reach the target in {fp32_missing} of these seeds")
    else:
        effective = geometric_interval([ref / mine for ref, mine in both], c)  # type: ignore[operator]
    throughput_iv = geometric_interval(throughput, c) if throughput else _null(0, c, "no step times to compare")
    return TimeToTarget(seeds=n, seeds_reached=len(reached), steps_to_target=steps, time_to_target_s=time_s,
                        throughput_speedup=throughput_iv, effective_speedup=effective, per_seed=per_seed, note=note)


def _finite_mean(values: list[Any]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _memory(records: list[dict[str, Any]]) -> MemoryFigures:
    config = records[0]["config"]
    memories = [r.get("memory") for r in records]
    measure = headline_memory(memories)
    peaks = [m[measure] for m in memories if m and m.get(measure) is not None] if measure else []
    return MemoryFigures(param_bytes=config.get("param_bytes"), master_bytes=config.get("master_bytes"),
                         optimizer_state_bytes=config.get("optimizer_state_bytes"),
                         param_dtype=config.get("param_dtype"), master_dtype=config.get("master_dtype"),
                         optimizer_state_dtype=config.get("optimizer_state_dtype"),
                         peak_bytes=statistics.median(peaks) if peaks else None, peak_measure=measure,
                         peak_measure_name=MEMORY_NAMES.get(measure or ""))


def _cells(records: list[dict[str, Any]]) -> tuple[Cell, ...]:
    return tuple(Cell(seed=_seed(r), status=r["status"], status_detail=r["status_detail"],
                      eval_loss=(r.get("loss") or {}).get("eval"), final_loss=(r.get("loss") or {}).get("final"),
                      step_time_s=(r.get("step_time_s") or {}).get("median"), cell_id=r["cell_id"])
                 for r in sorted(records, key=_seed))


def no_verdict(precision: str, reason: str, records: list[dict[str, Any]]) -> PrecisionParity:
    """A precision left without a verdict, with the reason."""
    return PrecisionParity(precision=precision, verdict=NO_VERDICT, decided_by=None, reason=reason,
                           eval_loss_mean=None, eval_loss_sd=None, eval_losses=(), loss=None, timing=None, curve=(),
                           diagnostics={}, flags=(), named=None, memory=None, cells=_cells(records))


def _entry(precision: str, records: list[dict[str, Any]], basis: _Basis) -> PrecisionParity:
    """One precision's verdict and figures (module docstring)."""
    ok = sorted((r for r in records if r["status"] == "ok"), key=_seed)
    failed = [r for r in records if r["status"] != "ok"]
    diverged = [r for r in failed if r["status"] == "diverged"]
    if not records:
        return no_verdict(precision, "no cells", records)
    if len(diverged) < len(failed):  # a crash, an out-of-memory or a timeout says nothing of the numerics
        first = next(r for r in failed if r["status"] != "diverged")
        return no_verdict(precision, f"{len(failed) - len(diverged)} of {len(records)} seeds ended "
                                     f"{first['status']}: {first['status_detail']}", records)
    unmeasured = [r for r in ok if _eval(r) is None]
    if unmeasured:  # an ok cell that wrote no eval loss: nothing to compare, and no sign of divergence
        return no_verdict(precision, f"seed {', '.join(str(_seed(r)) for r in unmeasured)} finished without an eval "
                                     "loss (null in its record): nothing to compare with fp32's", records)
    blown = [r for r in ok if not math.isfinite(_eval(r))]  # type: ignore[arg-type]
    ok = [r for r in ok if r not in blown]
    evals = {_seed(r): float(r["loss"]["eval"]) for r in ok}
    loss = _loss_test(evals, basis) if ok else None
    reason = None
    if diverged or blown:
        judged, decided_by = "worse", "divergence"
        reason = (f"diverged in {len(diverged)} of {len(records)} seeds: {diverged[0]['status_detail']}" if diverged
                  else f"seed {', '.join(str(_seed(r)) for r in blown)}: the eval loss is not finite "
                       f"({_eval(blown[0])})")
    elif loss is None:
        return no_verdict(precision, f"{len(ok)} seed(s) to compare with fp32's; a test needs at least 2", records)
    elif (apart := _seeds_apart(evals, basis)) is not None:
        return no_verdict(precision, apart, records)
    elif (few := _too_few_independent(evals, basis)) is not None:
        return no_verdict(precision, few, records)
    elif precision == REFERENCE and loss.test == "paired t" and not any(loss.differences):
        judged, decided_by = REFERENCE_VERDICT, None
    else:
        judged = loss.verdict
        decided_by = "paired eval-loss differences" if loss.test == "paired t" else \
            "eval-loss difference of independent sets"
        shared = sum(1 for s in evals if s in basis.evals)
        if loss.test == "Welch t" and shared == 1:
            decided_by += " (1 seed shared with fp32: no pairs to test)"
        if loss.unpaired_seeds:
            decided_by += (f", with seed{'s' if len(loss.unpaired_seeds) > 1 else ''} "
                           f"{', '.join(map(str, loss.unpaired_seeds))} that fp32 did not run")
    diag = mean_diagnostics(ok) if ok else {}
    standing_out = flags(diag, basis.diagnostics) if precision != REFERENCE else ()
    named = None
    if judged in ("better", "worse"):
        named = standing_out[0].text if standing_out else "none of the diagnostics stands out against fp32's"
    values = list(evals.values())
    return PrecisionParity(
        precision=precision, verdict=judged, decided_by=decided_by, reason=reason,
        eval_loss_mean=statistics.fmean(values) if values else None,
        eval_loss_sd=statistics.stdev(values) if len(values) > 1 else None, eval_losses=tuple(values),
        loss=loss, timing=_timing(ok, basis) if ok else None,
        curve=tuple(mean_curve([smooth(r["loss"]["curve"], basis.window) for r in ok])),
        diagnostics=diag, flags=standing_out, named=named, memory=_memory(ok) if ok else None, cells=_cells(records))


# --- judging a model ----------------------------------------------------------------------------------

def _flatness(curve: list[float | None]) -> Flatness | None:
    steps = len(curve)
    quarter = steps - max(1, steps // 4)
    if not steps or None in (curve[0], curve[quarter], curve[-1]):
        return None
    total, last = curve[0] - curve[-1], curve[quarter] - curve[-1]  # type: ignore[operator]
    return Flatness(drop_total=total, drop_last_quarter=last, last_quarter_share=last / total if total > 0 else None)


def judge(reference_records: list[dict[str, Any]], candidates: dict[str, list[dict[str, Any]]], *,
          margin: Margin | None = None, confidence: float = CONFIDENCE, target_fraction: float = TARGET_FRACTION,
          target_loss: float | None = None) -> ModelParity:
    """fp32's seeds from `reference_records`, and a verdict for each named set of candidate records
    (a precision's seeds, or any variant judged against the same reference)."""
    margin = margin or Margin()
    finished = [r for r in reference_records if r["status"] == "ok"]
    # fp32's seeds are the yardstick: one without a finite eval loss measures nothing, and is said.
    refs = sorted((r for r in finished if _eval(r) is not None and math.isfinite(_eval(r))),  # type: ignore[arg-type]
                  key=_seed)
    asked = dict(relative=margin.relative if margin.absolute_loss is None else None,
                 absolute_loss=margin.absolute_loss, described=margin.describe())
    if len(refs) < 2:
        unmeasured = len(finished) - len(refs)
        reason = (f"{len(refs)} {REFERENCE} seed(s) finished" + (f" with a finite eval loss ({unmeasured} without)"
                                                                   if unmeasured else "")
                  + "; a comparison needs at least 2")
        reference = Reference(REFERENCE, len(refs), None, None, None, None, {}, error=reason)
        return ModelParity(steps=None, smoothing_steps=None, margin=MarginUsed(**asked, loss=None),
                           confidence=confidence, reference=reference, target=None,
                           precisions={p: no_verdict(p, reason, rs) for p, rs in candidates.items()})
    steps = len(refs[0]["loss"]["curve"])
    window = window_of(steps)
    curves = {_seed(r): smooth(r["loss"]["curve"], window) for r in refs}
    at = min(steps, max(1, math.ceil(target_fraction * steps))) - 1
    targets = {s: target_loss if target_loss is not None else c[at] for s, c in curves.items()}
    evals = {_seed(r): float(r["loss"]["eval"]) for r in refs}
    ref_mean = statistics.fmean(evals.values())
    basis = _Basis(window=window, evals=evals, targets=targets, margin_loss=margin.loss(ref_mean),
                   timings={_seed(r): _seed_timing(r, targets[_seed(r)], window) for r in refs},
                   diagnostics=mean_diagnostics(refs), confidence=confidence)
    reference = Reference(REFERENCE, len(refs), ref_mean, statistics.stdev(evals.values()),
                          curve_band(list(curves.values())), _flatness(mean_curve(list(curves.values()))),
                          basis.diagnostics)
    basis_text = (f"training loss curve (each step's mean loss over the effective batch), trailing mean over "
                  f"{window} steps, per seed")
    target = Target(loss_per_seed={str(s): v for s, v in targets.items()},
                    fraction=None if target_loss is not None else target_fraction, given=target_loss is not None,
                    basis=basis_text)
    return ModelParity(steps=steps, smoothing_steps=window, margin=MarginUsed(**asked, loss=basis.margin_loss),
                       confidence=confidence, reference=reference, target=target,
                       precisions={p: _entry(p, rs, basis) for p, rs in candidates.items()})


def judge_model(records: list[dict[str, Any]], **options: Any) -> ModelParity:
    """The parity of one model: its cells' records (every precision and seed) grouped by precision,
    fp32 first, and judged (`options` as judge's)."""
    by_precision: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: display_rank(r["config"]["precision"])):
        by_precision.setdefault(record["config"]["precision"], []).append(record)
    return judge(by_precision.get(REFERENCE, []), by_precision, **options)


def rules(margin: Margin, confidence: float) -> dict[str, str]:
    """Each rule of the verdicts in words, for the document and the page."""
    return {
        "test": (f"per seed, this precision's eval loss minus fp32's on the same seed (same initial weights and "
                 f"samples); their mean with a {confidence:.0%} Student t interval (paired t). A set with no seed "
                 "in common with fp32's is compared as an independent set (Welch t). The estimand is the typical "
                 "seed's difference: a seed standing apart from the others (generalized ESD test) leaves no interval "
                 "and no verdict, with the seed named"),
        "margin": f"equivalence margin: {margin.describe()}",
        "verdict": ("equivalent: the interval inside +- margin; worse / better: entirely beyond it (better means "
                    "the numerics changed, never a win); inconclusive: it straddles the margin, with the seeds "
                    "that would decide it if the differences keep their mean and sd. A diverged seed makes it "
                    "worse; a seed that crashed, ran out of memory or timed out leaves it without a verdict"),
        "target": ("per seed, its fp32 twin's smoothed training loss at target.fraction of the run (trailing "
                   f"mean over {SMOOTH_FRACTION:.0%} of the steps), unless one loss is given"),
        "time_to_target": ("per seed, steps to target x the cell's median step time; over seeds, the geometric "
                           "means of the steps and the times with the t interval of their logarithms (a count "
                           "and a time are positive: their interval is too)"),
        "speedups": ("geometric mean over seed pairs of fp32's step time (throughput) or time to target "
                     "(effective) over this precision's, with the t interval of the logarithms; null, with how "
                     "many seeds reached the target, when one did not"),
        "diagnostics": (f"seed means of trainkit.engine.cell.diagnostics beside fp32's; a share stands out "
                        f"{STANDS_OUT:.0%} above fp32's, an update size at 2x or 0.5x; the first, in causal order, "
                        "is named under a better or worse verdict"),
    }


def document(models: dict[str, ModelParity], *, seeds: list[int], device: str, env: dict[str, Any] | None,
             margin: Margin, confidence: float = CONFIDENCE, elapsed_s: float | None = None,
             cells_cpu_s: float | None = None, records_file: str | None = None) -> ParityDocument:
    """The parity document: one block per model, with how it was made."""
    return ParityDocument(schema=PARITY_SCHEMA,
                          created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          device=device, env=env, seeds=seeds, task_seed=TASK_SEED, timing_note=TIMING_NOTE,
                          rules=rules(margin, confidence), elapsed_s=elapsed_s, cells_cpu_s=cells_cpu_s,
                          models=models, records_file=records_file)
