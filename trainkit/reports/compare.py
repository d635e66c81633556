"""`python -m reports compare BASELINE CANDIDATE`: per-cell verdicts as a page, Markdown and CSV.

BASELINE and CANDIDATE are each a result file or a directory of them (repeated runs of a cell are
combined; see verdict.py for the rule). The decision itself lives in verdict.py, free of pandas,
for a regression gate to reuse:

    from trainkit.reports.records import read_runs, all_records
    from trainkit.reports.verdict import Thresholds, compare_records
    result = compare_records(all_records(read_runs([base])), all_records(read_runs([cand])), Thresholds())
    result.outcome, result.regressions, result.unknown, result.env_difference()
"""

from __future__ import annotations

import csv
import io
import math

from trainkit.engine.spec.schema import MEMORY_NAMES

from . import html
from .records import all_records, read_runs
from .verdict import (
    DRIFTED,
    FAILED,
    INCONCLUSIVE,
    METRICS,
    NOT_MEASURED,
    REGRESSED,
    REGRESSION,
    REMOVED,
    SEVERITY,
    UNCHANGED,
    UNKNOWN,
    CellVerdict,
    Comparison,
    MetricVerdict,
    Thresholds,
    compare_records,
)

UNITS = {"throughput": "samples/s", "memory": "MiB", "loss": ""}
TITLES = {"throughput": "throughput (samples/s)", "memory": "peak memory (MiB)", "loss": "final loss"}


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric == "memory":
        return f"{value / 2**20:,.1f}"
    if metric == "loss":
        return f"{value:.4f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _change(v: MetricVerdict) -> str:
    if v.change is None:
        return "–"
    if math.isinf(v.change):
        return "from 0"
    return f"{v.change:+.1%}"


def _sorted(result: Comparison) -> list[CellVerdict]:
    """Worst first, so a reader meets the regressions before the rows that did not move."""
    return sorted(result.cells, key=lambda c: (SEVERITY.index(c.verdict), c.cell))


def rows(result: Comparison) -> list[dict[str, object]]:
    """One flat row per cell with raw numbers, for the CSV: statuses, verdicts and, per metric,
    baseline and candidate medians (memory in MiB) and how many repeats each is over, relative
    change, spread and threshold (fractions)."""
    out = []
    for cell in result.cells:
        row: dict[str, object] = {"cell": cell.cell, "verdict": cell.verdict, "gated": cell.gated,
                                  "baseline_status": cell.baseline_status, "candidate_status": cell.candidate_status}
        for metric in METRICS:
            v = cell.metrics.get(metric)
            scale = 2**20 if metric == "memory" else 1
            row[f"{metric}_baseline"] = v.baseline / scale if v and v.baseline is not None else None
            row[f"{metric}_candidate"] = v.candidate / scale if v and v.candidate is not None else None
            row[f"{metric}_baseline_n"] = v.baseline_n if v else None
            row[f"{metric}_candidate_n"] = v.candidate_n if v else None
            row[f"{metric}_change"] = v.change if v else None
            row[f"{metric}_spread"] = v.spread if v else None
            row[f"{metric}_threshold"] = v.threshold if v else None
            row[f"{metric}_verdict"] = v.verdict if v else None
            row[f"{metric}_gated"] = bool(v and metric in cell.gate_metrics)
        row["memory_measure"] = cell.memory_measure
        row["note"] = cell.note
        out.append(row)
    return out


def _metric_text(metric: str, v: MetricVerdict | None) -> str:
    """"13.4 → 6.68 (−50.0 %, threshold ±8.4 %)" for a page or Markdown cell."""
    if v is None:
        return "–"
    if v.baseline is None or v.candidate is None:
        return f"{v.verdict} ({v.note})" if v.note else v.verdict
    change = f"{_change(v)}, ±{v.threshold:.1%}" if v.threshold is not None else _change(v)
    if v.note:  # why it is unknown (too few repeats, too wide a spread) or not gated
        change += f"; {v.note}"
    return f"{_value(metric, v.baseline)} → {_value(metric, v.candidate)} ({change})"


def _display(result: Comparison) -> tuple[list[str], list[list[str]], list[CellVerdict]]:
    titles = dict(TITLES)
    measures = {c.memory_measure for c in result.cells if c.memory_measure}
    if len(measures) == 1:
        (measure,) = measures
        titles["memory"] = f"peak memory (MiB, {MEMORY_NAMES.get(measure, measure)})"
    columns = ["cell", "verdict", "status", *(titles[m] for m in METRICS), "note"]
    cells = _sorted(result)
    table = []
    for cell in cells:
        status = cell.baseline_status or "–"
        if cell.candidate_status != cell.baseline_status:
            status += f" → {cell.candidate_status or '–'}"
        verdict = cell.verdict + ("" if cell.gated else " (not gated)")
        table.append([cell.cell, verdict, status, *(_metric_text(m, cell.metrics.get(m)) for m in METRICS),
                      cell.note])
    return columns, table, cells


def headline(result: Comparison) -> str:
    """One line: FAIL, INCONCLUSIVE or PASS, why, and the verdict counts."""
    counts = ", ".join(f"{n} {v}" for v, n in result.counts().items())
    if result.outcome == INCONCLUSIVE:
        return (f"INCONCLUSIVE: the gate could not see {len(result.unknown)} gated cell(s) (unknown: too noisy at "
                f"this size, a baseline that cannot judge them, or no record); none regressed or failed, but this "
                f"is not a pass ({counts})")
    state = "FAIL" if result.outcome == REGRESSION else "PASS"
    return f"{state}: {len(result.regressions)} gated cell(s) regressed or failed of {len(result.cells)} ({counts})"


def thresholds_line(t: Thresholds) -> str:
    overrides = "".join(f", {m} {r:.0%}" for m, r in t.per_metric.items())
    line = (f"regressed = worse by more than max({t.relative:.0%}{overrides}, {t.k:g} × {t.spread.upper()} spread); "
            f"gated metrics: {', '.join(t.gate_metrics) or 'none'}; gated cells: {' '.join(t.gate_cells)}")
    if t.two_sided:
        line += f"; drifted = {', '.join(t.two_sided)} moved either way beyond the threshold"
    limits = ["worse beyond the relative threshold but within k × spread"]
    limits += [f"fewer than {t.min_repeats} repeats"] if t.min_repeats > 1 else []
    limits += [f"a spread above {t.max_spread:.0%}"] if t.max_spread is not None else []
    line += (f"; unknown (within the threshold, but the gate could not see): {' or '.join(limits)}; "
             "any unknown gated cell makes the run inconclusive")
    return line


def to_markdown(result: Comparison) -> str:
    """Headline, warnings, the rule, and the cells that moved (all of them when none did)."""
    lines = [f"**{headline(result)}**", ""]
    lines += [line for warning in result.warnings for line in (f"> ⚠ {warning}", "")]
    lines += [thresholds_line(result.thresholds), ""]
    columns, table, cells = _display(result)
    moved = [row for row, cell in zip(table, cells) if cell.verdict not in (UNCHANGED, NOT_MEASURED)]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in (moved or table)]
    return "\n".join(lines) + "\n"


def to_csv(result: Comparison) -> str:
    table = rows(result)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]) if table else ["cell"])
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def _css(verdict: str) -> str:
    """The verdict's CSS class; a drift fails the gate, so it is coloured as a regression."""
    name = f"v-{verdict.replace(' ', '-')}"
    return f"v-{REGRESSED} {name}" if verdict == DRIFTED else name


def to_html(result: Comparison, baseline: list[str], candidate: list[str]) -> str:
    columns, table, cells = _display(result)
    classes = {"verdict": [_css(c.verdict) for c in cells]}
    for metric, title in zip(METRICS, columns[3:]):
        classes[title] = [_css(c.metrics[metric].verdict) if metric in c.metrics else "" for c in cells]
    status = {REGRESSION: "bad", INCONCLUSIVE: "warn"}.get(result.outcome, "note")
    header = (f'<p class="{status}"><b>{html.esc(headline(result))}</b></p>'
              + "".join(f'<p class="warn"><b>{html.esc(w)}</b></p>' for w in result.warnings)
              + f'<p class="note">baseline: {html.esc(", ".join(baseline))}<br>'
              f'candidate: {html.esc(", ".join(candidate))}<br>{html.esc(thresholds_line(result.thresholds))}</p>')
    body = html.table(columns, table, text_columns=("cell", "verdict", "status", "note"), wrap_columns=("note",),
                      cell_classes=classes)
    return html.page("trainkit comparison", header, f"<section>{body}</section>", with_plotly=False)


def write_comparison(result: Comparison, output_html: str, baseline: list[str],
                     candidate: list[str]) -> dict[str, str]:
    """Write the page, Markdown and CSV of a comparison (same stem); baseline and candidate name
    the inputs on the page. Returns the paths written; raises InputError when they cannot be."""
    return html.write_page(output_html, to_html(result, baseline, candidate), to_markdown(result), to_csv(result),
                           "comparison")


def compare_files(baseline: str, candidate: str, output_html: str,
                  thresholds: Thresholds = Thresholds()) -> tuple[Comparison, dict[str, str]]:
    """Compare two runs (files or directories), write the page, Markdown and CSV (same stem) and
    return the comparison and the paths written. Raises InputError on bad input."""
    base_runs, cand_runs = read_runs([baseline]), read_runs([candidate])
    result = compare_records(all_records(base_runs), all_records(cand_runs), thresholds)
    removed = sum(c.verdict == REMOVED for c in result.cells)
    if removed and any(r.kind == "pytest-benchmark" for r in cand_runs) and not thresholds.fail_on_removed:
        result.warnings.append(
            f"{removed} cell(s) of the baseline are missing from the candidate, which includes pytest-benchmark "
            "JSON: it leaves out cells that did not finish, so compare the results files (every status) or "
            "pass --fail-on-removed")
    paths = write_comparison(result, output_html, [r.source for r in base_runs], [r.source for r in cand_runs])
    return result, paths


def unknown_text(result: Comparison, most: int = 10) -> list[str]:
    """A line per gated cell the gate could not see (the first `most`), naming the metric, its
    change and why: what made a run inconclusive."""
    lines = []
    for cell in result.unknown[:most]:
        unseen = [(f"{m} {_change(v)}", v.note) for m, v in cell.metrics.items()
                  if v.verdict == UNKNOWN and m in cell.gate_metrics]
        whys = {why for _, why in unseen}
        if not unseen:
            text = cell.note or cell.verdict
        elif len(whys) == 1:  # one reason for all (too few repeats, say): said once
            text = f"{', '.join(change for change, _ in unseen)} ({whys.pop()})"
        else:
            text = ", ".join(f"{change} ({why})" for change, why in unseen)
        lines.append(f"  {cell.cell}: {cell.verdict}: {text}")
    left = len(result.unknown) - most
    return lines + ([f"  ... and {left} more unknown cell(s): see the comparison's table"] if left > 0 else [])


def regressions_text(result: Comparison) -> list[str]:
    """A line per gated cell that regressed, drifted or failed, naming the metric and the change."""
    lines = []
    for cell in result.regressions:
        if cell.verdict == FAILED:
            lines.append(f"  {cell.cell}: failed ({cell.note})")
            continue
        worse = [f"{m} {_change(v)} (threshold ±{v.threshold:.1%}{', drift' if v.verdict == DRIFTED else ''})"
                 for m, v in cell.metrics.items()
                 if v.verdict in (REGRESSED, DRIFTED) and m in result.thresholds.gate_metrics]
        lines.append(f"  {cell.cell}: {cell.verdict}: {', '.join(worse)}")
    return lines
