"""`python -m reports compare BASELINE CANDIDATE`: per-cell verdicts as a page, Markdown and CSV.

BASELINE and CANDIDATE are each a result file or a directory of them (repeated runs of a cell are
combined; see verdict.py for the rule). The decision itself lives in verdict.py, free of pandas,
for a regression gate to reuse:

    from reports.records import read_runs, all_records
    from reports.verdict import Thresholds, compare_records
    result = compare_records(all_records(read_runs([base])), all_records(read_runs([cand])), Thresholds())
    result.passed, result.regressions, result.env_difference()
"""

from __future__ import annotations

import csv
import io
import math
import os

from . import html
from .records import InputError, all_records, read_runs
from .verdict import FAILED, METRICS, Comparison, MetricVerdict, Thresholds, compare_records

UNITS = {"throughput": "samples/s", "memory": "MiB", "loss": ""}


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


def rows(result: Comparison) -> list[dict[str, str]]:
    """One flat row per cell: status, verdict, and per metric baseline, candidate, change, threshold."""
    out = []
    for cell in result.cells:
        row = {"cell": cell.cell, "verdict": cell.verdict, "gated": "yes" if cell.gated else "no",
               "baseline status": cell.baseline_status or "–", "candidate status": cell.candidate_status or "–"}
        for metric in METRICS:
            v = cell.metrics.get(metric)
            unit = f" ({UNITS[metric]})" if UNITS[metric] else ""
            row[f"{metric} baseline{unit}"] = _value(metric, v.baseline) if v else "–"
            row[f"{metric} candidate{unit}"] = _value(metric, v.candidate) if v else "–"
            row[f"{metric} change"] = _change(v) if v else "–"
            row[f"{metric} threshold"] = f"±{v.threshold:.1%}" if v and v.threshold is not None else "–"
            row[f"{metric} verdict"] = v.verdict if v else "–"
        row["note"] = cell.note
        out.append(row)
    return out


def headline(result: Comparison) -> str:
    """One line: pass/fail and the verdict counts."""
    counts = ", ".join(f"{n} {v}" for v, n in result.counts().items())
    state = "FAIL" if not result.passed else "PASS"
    return f"{state}: {len(result.regressions)} gated cell(s) regressed or failed of {len(result.cells)} ({counts})"


def thresholds_line(t: Thresholds) -> str:
    overrides = "".join(f", {m} {r:.0%}" for m, r in t.per_metric.items())
    return (f"regressed = worse by more than max({t.relative:.0%}{overrides}, {t.k:g} × {t.spread.upper()} spread); "
            f"gated metrics: {', '.join(t.gate_metrics) or 'none'}; gated cells: {' '.join(t.gate_cells)}")


def to_markdown(result: Comparison) -> str:
    lines = [f"**{headline(result)}**", ""]
    if result.env_differs:
        lines += [f"> ⚠ {result.env_difference()}", ""]
    lines += [thresholds_line(result.thresholds), ""]
    table = [r for r in rows(result) if r["verdict"] not in ("unchanged", "n/a")] or rows(result)
    columns = ["cell", "verdict", "baseline status", "candidate status", "throughput change", "memory change",
               "loss change", "note"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|") for c in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def to_csv(result: Comparison) -> str:
    table = rows(result)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(table[0]) if table else ["cell"])
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def to_html(result: Comparison, baseline: list[str], candidate: list[str]) -> str:
    table = rows(result)
    columns = list(table[0]) if table else ["cell"]
    classes = {c: [f"v-{r[c].replace(' ', '-')}" for r in table] for c in columns if c.endswith("verdict")}
    status = "bad" if not result.passed else "note"
    header = (f'<p class="{status}"><b>{html.esc(headline(result))}</b></p>'
              + (f'<p class="warn"><b>{html.esc(result.env_difference())}</b></p>' if result.env_differs else "")
              + f'<p class="note">baseline: {html.esc(", ".join(baseline))}<br>'
              f'candidate: {html.esc(", ".join(candidate))}<br>{html.esc(thresholds_line(result.thresholds))}</p>')
    text = ("cell", "verdict", "gated", "baseline status", "candidate status", "note")
    body = html.table(columns, [[r[c] for c in columns] for r in table],
                      text_columns=[c for c in columns if c in text or c.endswith("verdict")], cell_classes=classes)
    return html.page("trainkit comparison", header, f"<section>{body}</section>", with_plotly=False)


def compare_files(baseline: str, candidate: str, output_html: str,
                  thresholds: Thresholds = Thresholds()) -> tuple[Comparison, dict[str, str]]:
    """Compare two runs (files or directories), write the page, Markdown and CSV (same stem) and
    return the comparison and the paths written. Raises InputError on bad input."""
    base_runs, cand_runs = read_runs([baseline]), read_runs([candidate])
    result = compare_records(all_records(base_runs), all_records(cand_runs), thresholds)
    stem = os.path.splitext(output_html)[0]
    paths = {"html": output_html, "markdown": stem + ".md", "csv": stem + ".csv"}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output_html)), exist_ok=True)
        texts = {"html": to_html(result, [r.source for r in base_runs], [r.source for r in cand_runs]),
                 "markdown": to_markdown(result), "csv": to_csv(result)}
        for key, path in paths.items():
            with open(path, "w", encoding="utf-8") as f:
                f.write(texts[key])
    except OSError as e:
        raise InputError(f"{output_html}: cannot write the comparison: {e.strerror or e}") from None
    return result, paths


def regressions_text(result: Comparison) -> list[str]:
    """A line per gated cell that regressed or failed, naming the metric and the change."""
    lines = []
    for cell in result.regressions:
        if cell.verdict == FAILED:
            lines.append(f"  {cell.cell}: failed ({cell.note})")
            continue
        worse = [f"{m} {_change(v)} (threshold ±{v.threshold:.1%})" for m, v in cell.metrics.items()
                 if v.verdict == "regressed" and m in result.thresholds.gate_metrics]
        lines.append(f"  {cell.cell}: regressed: {', '.join(worse)}")
    return lines
