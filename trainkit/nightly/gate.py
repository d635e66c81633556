"""The gate: tonight's run against the baseline of the same environment.

The decision itself is trainkit.reports.verdict's (see its docstring for the rule); the nightly's defaults
make it stricter about noise and about numerics than a one-off `python -m reports compare`:

    throughput  regressed when lower by more than max(7 %, 3 x spread)       TorchBench's 7 %
    peak memory regressed when higher by more than max(7 %, 3 x spread)      the headline measure: reserved
                                                                             on a GPU, RSS growth on a CPU
    final loss  drifted when it moves either way by more than max(2 %, 3 x spread)
    status      failed when ok in the baseline and oom, diverged, crashed or timeout now

    spread      IQR / median over tonight's repeats of a cell (at least 3, in separate worker
                processes), against the history's night-to-night spread of the (cell, metric) when
                a run store is given, else the baseline's repeats; the larger sets the threshold
    judged      a change beyond its threshold, however noisy either side was
    unknown     a worse change within the threshold but beyond 7 % (2 % for the loss), a spread
                above 10 %, fewer than 3 repeats, a baseline cell that failed a repeat, a cell
                with no record tonight or refused by the code at collection: the gate could not
                see it, and the run is inconclusive (exit 4), naming each such cell

The only silent outcome is "seen and unchanged": the summary lists every gated cell's outcome and
the smallest regression it could have caught (its threshold); the gate section of
trainkit.reports.calibration simulates the false-alarm rate and the detection power the rule gives.

Cells bench could not run on this runner (more GPUs or CPU ranks than it has) are left out of both
sides and listed: the runner's shape is not the code's doing. A cell refused at collection for any
other reason (a precision the code now calls unsupported) is unknown. Cells unsupported on both
sides (FP8 cells on a runner without torchao, or without an FP8 GPU) are `unsupported`: neither
failing nor gated, and listed as a warning with their reason, so a matrix that silently lost a
precision shows it.

With a run store (--history, reports/history), the gate also reads each series' latest nights
(trainkit.reports.history.latest): a series whose last two nights or more all fall past the threshold is a
regression (exit 1), even with no baseline; a single bad night is `unknown`: it asks for a re-run,
not a bisect (exit 4), and turns a baseline regression of the same (cell, metric) into unknown too
(a throughput outlier never excuses a loss regression). The night must be in the store already
(`python -m reports history ingest` before the gate).

Each cell is compared only with a baseline of its own record's fingerprint. A run whose cells
landed on different machines (cluster nodes of different GPU models) is gated part by part, each
against the baseline of its environment; its cells are then named `cell @ GPU` in the verdicts.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, replace
from typing import Any

from trainkit.reports import verdict
from trainkit.reports.compare import headline, regressions_text, unknown_text, write_comparison
from trainkit.reports.history.latest import REGRESSION as HISTORY_REGRESSION
from trainkit.reports.history.latest import UNKNOWN, HistoryCheck, check_night
from trainkit.reports.records import all_records, read_runs
from trainkit.reports.verdict import (
    DRIFTED,
    FAILED,
    REGRESSED,
    Comparison,
    Samples,
    Thresholds,
    cell_data,
    compare_records,
)

from . import INCONCLUSIVE, NO_BASELINE, PASS, REGRESSION
from .baselines import (
    DEFAULT_ROOT,
    MANIFEST,
    NIGHTLY_THRESHOLDS,
    Baseline,
    describe_fingerprint,
    find,
    load,
    load_all,
    slug,
    split_by_fingerprint,
)
from .rundir import COMPARE, RESULTS, RunDir, Stage

RUNNER_SHAPE = re.compile(r"^needs \d+ (GPUs, \d+ visible|CPU ranks, \d+ cores)$")
"""bench's reason for a cell that needs more ranks than the runner has (trainkit.engine.spec.axes): the
runner's shape, not the code's doing. Any other refusal at collection is the code's."""
EXIT_STATUS = {verdict.PASS: PASS, verdict.REGRESSION: REGRESSION, verdict.INCONCLUSIVE: INCONCLUSIVE}
"""The gate's outcome as the nightly's exit status (trainkit/nightly/__init__.py)."""


def measured(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of cells that ran (bench records cells it skipped at collection as unsupported)."""
    return [r for r in records if not r.get("skipped_at_collection")]


def runner_shape(record: dict[str, Any]) -> bool:
    """A cell bench skipped at collection because this runner has too few GPUs or cores."""
    return bool(record.get("skipped_at_collection")) and bool(RUNNER_SHAPE.match(record.get("status_detail") or ""))


def gateable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records the gate judges: those of cells that ran, and refusals at collection that are the
    code's (a precision now called unsupported), never the runner's shape."""
    return [r for r in records if not runner_shape(r)]


def _read(path: str) -> list[dict[str, Any]]:
    return all_records(read_runs([path]))


def _explicit(path: str) -> list[tuple[Baseline, list[dict[str, Any]]]]:
    """A baseline named on the command line, with its records: a baseline directory, or any results
    file or directory (one baseline per environment its records were measured in)."""
    if os.path.isfile(os.path.join(path, MANIFEST)):
        chosen = load(path)
        return [(chosen, _read(chosen.results if os.path.isfile(chosen.results) else path))]
    records = _read(path)
    return [(Baseline(path, {"fingerprint": fp, "source": path}), [records[i] for i in indices])
            for fp, indices in split_by_fingerprint(records, path)]


def _label(fp: dict[str, Any], others: list[dict[str, Any]]) -> str:
    """A short name for an environment among the run's others: the GPU (or CPU) model, or the full
    slug when two environments share a model (a driver update on some nodes)."""
    name = fp.get("gpu_name") or f"CPU {fp.get('cpu')}"
    return name if sum((o.get("gpu_name") or f"CPU {o.get('cpu')}") == name for o in others) == 1 else slug(fp)


def unsupported_on_both_sides(base_records: list[dict[str, Any]],
                               cand_records: list[dict[str, Any]]) -> list[str]:
    """One warning line per reason for the cells every record of which is unsupported in the
    baseline and in the candidate (skipped at collection or refused by the worker): never gated."""
    def unsupported(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        by_cell: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_cell.setdefault(record["cell_id"], []).append(record)
        return {cell: group[0] for cell, group in by_cell.items()
                if all(r.get("status") == "unsupported" for r in group)}

    base, cand = unsupported(base_records), unsupported(cand_records)
    by_reason: dict[str, list[str]] = {}
    for cell in sorted(set(base) & set(cand)):
        by_reason.setdefault(cand[cell].get("status_detail") or "no reason recorded", []).append(cell)
    return [f"{len(cells)} cell(s) were unsupported in the baseline and again now, so nothing gated them "
            f"({reason}): {', '.join(cells[:5])}{' ...' if len(cells) > 5 else ''}"
            for reason, cells in by_reason.items()]


def _gate_part(base_records: list[dict[str, Any]], cand_records: list[dict[str, Any]],
               thresholds: Thresholds, spreads: dict[tuple[str, str], float] | None = None) -> Comparison:
    """One environment's cells against their baseline, with the warnings a reader must see."""
    shape = {r["cell_id"] for r in cand_records if runner_shape(r)}
    # A runner too small for a cell leaves it out of both sides; a refusal that is the code's is judged.
    result = compare_records([r for r in gateable(base_records) if r["cell_id"] not in shape],
                             gateable(cand_records), thresholds, spreads)
    ran_before = {r["cell_id"] for r in measured(base_records)}
    not_run = sorted(shape & ran_before)
    if not_run:
        reason = next(r["status_detail"] for r in cand_records if r["cell_id"] == not_run[0] and runner_shape(r))
        result.warnings.append(f"{len(not_run)} cell(s) of the baseline could not run on this runner "
                               f"({reason}): {', '.join(not_run[:5])}{' ...' if len(not_run) > 5 else ''}")
    result.warnings += unsupported_on_both_sides(base_records, cand_records)
    throttled = sorted({r["cell_id"] for r in cand_records if r.get("throttled")}
                       & {c.cell for c in result.regressions})
    if throttled:
        result.warnings.append(f"{len(throttled)} failing cell(s) ran throttled (NVML clock-event reasons): "
                               f"{', '.join(throttled)}; check the runner's cooling and clocks before the code")
    return result


def regressed_pairs(result: Comparison) -> set[tuple[str, str]]:
    """(cell, metric) of every gated regression or drift, and (cell, "status") of every failed cell:
    what a history's unknown of the same pair may excuse."""
    pairs = set()
    for cell in result.regressions:
        name = cell.cell.split(" @ ")[0]
        if cell.verdict == FAILED or not cell.metrics:
            pairs.add((name, "status"))
        pairs |= {(name, m) for m, v in cell.metrics.items()
                  if m in cell.gate_metrics and v.verdict in (REGRESSED, DRIFTED)}
    return pairs


def history_spreads(check: HistoryCheck) -> dict[tuple[str, str], float]:
    """The night-to-night spread of each (cell, metric) the store knows enough nights of."""
    return {(v.cell_id, v.metric): v.noise for v in check.verdicts if v.noise is not None}


def consult_history(stage: Stage, check: HistoryCheck, store: str, regressed: set[tuple[str, str]]) -> Stage:
    """The stage as the run store's latest nights amend it (see the module docstring); `regressed`:
    the (cell, metric) pairs the baseline comparison found regressed (regressed_pairs)."""
    confirmed = [v for v in check.verdicts if v.verdict == HISTORY_REGRESSION]
    unknown = [v for v in check.verdicts if v.verdict == UNKNOWN]
    details = {**stage.details, "history": {"store": store, "warning": check.warning,
                                            "regressions": [v.line() for v in confirmed],
                                            "unknown": [v.line() for v in unknown]}}
    if check.warning:
        details["warnings"] = [*details.get("warnings", []), check.warning]
    if confirmed:
        line = f"{stage.line}; history: {len(confirmed)} series regressed on 2 or more nights running"
        details["regressions"] = [*details.get("regressions", []), *(f"history: {v.line()}" for v in confirmed)]
        return Stage(stage.name, REGRESSION, line, details)
    if check.warning and not unknown:  # no history consulted: the line says so, not only the details
        return Stage(stage.name, stage.exit_status, f"{stage.line}; history: {check.warning}", details)
    # A single bad night excuses a baseline regression of the same (cell, metric) only: a throughput
    # outlier says nothing about the loss.
    unknown_pairs = {(v.cell_id, v.metric) for v in unknown}
    if unknown and (stage.exit_status == PASS or (stage.exit_status == REGRESSION and regressed <= unknown_pairs)):
        line = (f"{stage.line}; history: {len(unknown)} series bad on the last night only: unknown, "
                "re-run the night (do not bisect)")
        details["unjudged"] = [*details.get("unjudged", []), *(f"history: {v.line()}" for v in unknown)]
        return Stage(stage.name, INCONCLUSIVE, line, details)
    return Stage(stage.name, stage.exit_status, stage.line, details)


def run_compare(run: RunDir, thresholds: Thresholds = NIGHTLY_THRESHOLDS, candidate: str | None = None,
                baselines_root: str | None = None, baseline: str | None = None, history: str | None = None) -> Stage:
    """Compare the run's results (or `candidate`), environment by environment, with the baseline of
    each from baselines_root (or from the results named by `baseline`); write compare.html, .md and
    .csv. With `history` (a run store), the store's night-to-night spreads are the reference noise
    and consult_history amends the verdict."""
    cand_records = _read(candidate or run.path(RESULTS))
    check = (check_night(history, measured(cand_records), tuple(thresholds.gate_metrics), thresholds.gated)
             if history else None)
    stage, regressed = _compare(run, thresholds, candidate, cand_records, baselines_root, baseline,
                                history_spreads(check) if check else None)
    return consult_history(stage, check, history, regressed) if check and history else stage


def _compare(run: RunDir, thresholds: Thresholds, candidate: str | None, cand_records: list[dict[str, Any]],
             baselines_root: str | None, baseline: str | None,
             spreads: dict[tuple[str, str], float] | None) -> tuple[Stage, set[tuple[str, str]]]:
    """run_compare without the history's verdicts: the stage and the regressed (cell, metric) pairs."""
    root = baselines_root or DEFAULT_ROOT
    candidate = candidate or run.path(RESULTS)
    parts = split_by_fingerprint(cand_records, candidate)
    fps = [fp for fp, _ in parts]
    explicit = _explicit(baseline) if baseline else None
    details: dict[str, Any] = {"fingerprint": fps[0] if len(fps) == 1 else fps,
                               "slug": slug(fps[0]) if len(fps) == 1 else [slug(fp) for fp in fps],
                               "candidate": candidate, "thresholds": asdict(thresholds)}
    compared, missing = [], []
    for fp, indices in parts:
        if explicit is not None:
            chosen = next(((b, records) for b, records in explicit if b.fingerprint == fp), None)
        else:
            found = find(root, fp)
            chosen = (found, _read(found.results if os.path.isfile(found.results) else found.path)) if found else None
        if chosen is None:
            missing.append(fp)
        else:
            compared.append((fp, chosen[0], chosen[1], [cand_records[i] for i in indices]))
    if not compared:
        others = [b for b, _ in explicit] if explicit is not None else load_all(root)
        line = f"{NO_BASELINE} for {' | '.join(describe_fingerprint(fp) for fp in fps)}"
        if others:
            line += "; baselines exist for: " + " | ".join(describe_fingerprint(b.fingerprint) for b in others)
        details.update(outcome=NO_BASELINE, baselines=[b.describe() for b in others])
        return Stage("compare", PASS, line, details), set()

    results = []
    for fp, _, base_records, mine in compared:
        result = _gate_part(base_records, mine, thresholds, spreads)
        if len(parts) > 1:  # several environments: say which each verdict and warning is about
            label = _label(fp, fps)
            result = Comparison([replace(c, cell=f"{c.cell} @ {label}") for c in result.cells],
                                result.baseline_fingerprints, result.candidate_fingerprints, thresholds,
                                [f"{label}: {w}" for w in result.warnings])
        results.append(result)
    result = results[0] if len(results) == 1 else Comparison(
        [c for r in results for c in r.cells], [fp for r in results for fp in r.baseline_fingerprints],
        [fp for r in results for fp in r.candidate_fingerprints], thresholds, [w for r in results for w in r.warnings])
    for fp in missing:
        cells = {cand_records[i]["cell_id"] for f, idx in parts if f == fp for i in idx}
        result.warnings.append(f"{NO_BASELINE} for {describe_fingerprint(fp)}: its {len(cells)} cell(s) are not gated")
    chosen_baselines = [b for _, b, _, _ in compared]
    write_comparison(result, run.path(COMPARE), [b.results for b in chosen_baselines], [candidate])
    described = "; ".join(b.describe() for b in chosen_baselines)
    for b in chosen_baselines:
        for cell, why in b.manifest.get("cannot_judge", {}).items():
            result.warnings.append(f"the baseline was forced with a cell it cannot judge: {cell}: {why}")
    details.update(outcome=result.outcome, baseline=described, counts=result.counts(),
                   regressions=[line.strip() for line in regressions_text(result)],
                   unknown=[c.cell for c in result.unknown], compared_cells=len(result.compared),
                   warnings=result.warnings, gated=gated_cells(result),
                   unjudged=[line.strip() for line in unknown_text(result, most=len(result.unknown))])
    return (Stage("compare", EXIT_STATUS[result.outcome], f"{headline(result)} against {described}", details),
            regressed_pairs(result))


def gated_cells(result: Comparison) -> list[dict[str, Any]]:
    """Every gated cell's outcome and the smallest regression it could have caught, per metric
    judged (its threshold: a change beyond it is judged, whatever the noise), for the summary."""
    return [{"cell": c.cell, "verdict": c.verdict, "catches": c.catches(), "note": c.note,
             "metrics": {m: {"verdict": v.verdict, "change": v.change, "note": v.note}
                         for m, v in c.metrics.items() if m in c.gate_metrics}}
            for c in result.cells if c.gated]


def _spread(samples: Samples) -> float | None:
    return samples.spread() if len(samples.values) >= 2 else None


def cell_rows(records: list[dict[str, Any]], max_spread: float | None) -> list[dict[str, Any]]:
    """Per cell of a run: status, repeats, and median and spread (IQR / median over the repeats)
    of throughput, peak memory and final loss; noisy when a spread exceeds max_spread."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for record in measured(records):
        by_cell.setdefault(record["cell_id"], []).append(record)
    rows = []
    for cell, group in by_cell.items():
        data = cell_data(group)
        row: dict[str, Any] = {"cell": cell, "status": data.status, "repeats": len(group),
                               "ok": sum(s == "ok" for s in data.statuses), "memory_measure": data.memory_measure,
                               "throttled": sum(bool(r.get("throttled")) for r in group)}
        for metric, samples in data.metrics.items():
            row[f"{metric}_median"] = samples.median() if samples.values else None
            row[f"{metric}_spread"] = _spread(samples)
        spreads = [row[f"{m}_spread"] for m in data.metrics if row[f"{m}_spread"] is not None]
        row["noisy"] = max_spread is not None and any(s > max_spread for s in spreads)
        rows.append(row)
    return rows

