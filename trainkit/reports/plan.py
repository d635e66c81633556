"""The memory planner's section: what `python -m trainkit plan` found, for a report or a page of its own.

    python -m trainkit plan ... --output plan.json --report plan.html   # the plan as a page
    python -m reports build results.jsonl --plan plan.json -o report.html  # the section in a report

Per plan (one model on one device): a table per precision (planned maximum, the largest batch that
ran, the smallest that ran out of memory, the recommendation), the estimated peak against the
measured one for every probe, the planned maximum per precision, the throughput of each measured
candidate against its micro-batch size, and the probe log.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from trainkit.analysis.plan.file import PEAK_NAMES, PlanError, read_plan
from trainkit.engine.spec.precision_facts import color_of, display_rank
from trainkit.engine.spec.schema import write_text

from . import html
from .figures import Chart, _figure
from .records import InputError

MIB = 2**20


def read_plans(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Plans written by `python -m trainkit plan`; InputError (one line) for anything else."""
    plans = []
    for path in paths:
        try:
            plans.append(read_plan(path))
        except PlanError as exc:  # the same check as bench's --plan, as the reports' input error
            raise InputError(str(exc)) from None
    return plans


def _mib(value: Any) -> str:
    return f"{value / MIB:,.1f}" if isinstance(value, (int, float)) else ""


def _batch_axis(fig: go.Figure, batches: Sequence[int], title: str) -> None:
    """A log axis whose ticks are the batch sizes drawn (at most a dozen of them)."""
    ticks = sorted(set(batches))
    if len(ticks) > 12:
        ticks = ticks[::math.ceil(len(ticks) / 12)]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[str(t) for t in ticks], title_text=title)


def _where(plan: dict[str, Any]) -> str:
    return plan.get("gpu_name") or f"CPU ({plan.get('fit_source', '')}: {_mib(plan.get('fit_bytes'))} MiB)"


def _ordered(plan: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(plan["precisions"].items(), key=lambda item: display_rank(item[0]))


def _measure_name(plan: dict[str, Any]) -> str:
    measures = {p.get("peak_measure") for _, entry in _ordered(plan) for p in entry["probes"] if p.get("peak_measure")}
    return ", ".join(PEAK_NAMES.get(m, m) for m in sorted(measures)) or "peak"


def estimate_vs_measured(plan: dict[str, Any]) -> Chart:
    """Per probe: the estimated peak (dashed) and the measured one (solid); probes that ran out of
    memory are crosses at their estimate; the memory the search fits into is a line."""
    title = "Estimated vs measured peak per probe"
    fig = _figure()
    for precision, entry in _ordered(plan):
        probes = sorted(entry["probes"], key=lambda p: p["batch"])
        if not probes:
            continue
        color = color_of(precision)
        fig.add_trace(go.Scatter(x=[p["batch"] for p in probes], y=[p["estimate_bytes"] / MIB for p in probes],
                                 mode="lines+markers", name=f"{precision} estimate", meta=precision,
                                 line=dict(color=color, dash="dash"), marker=dict(symbol="circle-open", size=9),
                                 hovertemplate="micro-batch %{x}: estimate %{y:,.1f} MiB<extra></extra>"))
        ran = [p for p in probes if p.get("peak_bytes") is not None and p["outcome"] == "ok"]
        fig.add_trace(go.Scatter(x=[p["batch"] for p in ran], y=[p["peak_bytes"] / MIB for p in ran],
                                 mode="lines+markers", name=f"{precision} measured", meta=precision,
                                 line=dict(color=color), marker=dict(size=9),
                                 hovertemplate="micro-batch %{x}: measured %{y:,.1f} MiB<extra></extra>"))
        failed = [p for p in probes if p["outcome"] != "ok"]
        if failed:
            outcomes = "/".join(sorted({p["outcome"] for p in failed}))
            fig.add_trace(go.Scatter(x=[p["batch"] for p in failed], y=[p["estimate_bytes"] / MIB for p in failed],
                                     mode="markers", name=f"{precision} {outcomes}",
                                     meta=precision, marker=dict(symbol="x", size=12, color=color),
                                     text=[p["detail"][:160] for p in failed],
                                     hovertemplate="micro-batch %{x}: %{text}<extra></extra>"))
    top = max([p.get("estimate_bytes") or 0 for _, e in _ordered(plan) for p in e["probes"]]
              + [p.get("peak_bytes") or 0 for _, e in _ordered(plan) for p in e["probes"]])
    limit = f"the limit, {plan['fit_source']}: {_mib(plan['fit_bytes'])} MiB"
    if plan["fit_bytes"] <= 3 * top:  # a line far above the probes would flatten them
        fig.add_hline(y=plan["fit_bytes"] / MIB, line=dict(color="#a8322d", dash="dot"),
                      annotation_text=limit, annotation_position="top left")
    _batch_axis(fig, [p["batch"] for _, e in _ordered(plan) for p in e["probes"]],
                f"micro-batch per rank (probes accumulate {plan['probe']['grad_accum']})")
    fig.update_yaxes(title_text="MiB", rangemode="tozero")
    note = (f"Measured: each probe's {_measure_name(plan)}. The estimate counts tensor bytes (engine.estimate); "
            "a CPU worker's address space also holds thread stacks, the allocator's and the libraries' own memory, "
            "so there the probes, not the estimate, find the boundary.")
    if plan["fit_bytes"] > 3 * top:
        note += f" Off the chart: {limit}."
    return Chart(title, fig, note)


def max_batch_chart(plan: dict[str, Any]) -> Chart:
    """The planned maximum per precision beside the largest batch that ran and the smallest that did not."""
    title = "Largest micro-batch per precision"
    rows = _ordered(plan)
    fig = _figure()
    names = [p for p, _ in rows]
    for key, label, opacity in (("max_batch", f"planned (x {plan['safety']:g} safety)", 1.0),
                                ("largest_ran_batch", "largest that ran", 0.55),
                                ("smallest_oom_batch", "smallest out of memory", 0.25)):
        fig.add_trace(go.Bar(x=names, y=[entry.get(key) for _, entry in rows], name=label, opacity=opacity,
                             marker_color=[color_of(p) for p in names], text=[entry.get(key) for _, entry in rows],
                             hovertemplate="%{x}: %{y}<extra>" + label + "</extra>"))
    fig.update_layout(barmode="group", legend=dict(title_text=""))
    fig.update_yaxes(title_text="micro-batch per rank", rangemode="tozero")
    bounded = "; ".join(f"{p}: {entry['bounded_by']}" for p, entry in rows)
    return Chart(title, fig, f"What bounded each search: {bounded}.")


def candidates_chart(plan: dict[str, Any]) -> Chart:
    """Throughput of each measured candidate against its micro-batch, a line per precision and GPU
    count; the recommendation of each precision is a star."""
    title = f"Throughput to an effective batch of {plan.get('target_batch')}"
    fig = _figure()
    drawn = False
    for precision, entry in _ordered(plan):
        measured = [c for c in entry["candidates"] if c.get("measured")]
        for gpus in sorted({c["gpus"] for c in measured}):
            points = sorted((c for c in measured if c["gpus"] == gpus and c.get("throughput_samples_per_s")),
                            key=lambda c: c["micro_batch"])
            if not points:
                continue
            drawn = True
            fig.add_trace(go.Scatter(
                x=[c["micro_batch"] for c in points], y=[c["throughput_samples_per_s"] for c in points],
                mode="lines+markers", name=f"{precision} x{gpus}", meta=precision,
                line=dict(color=color_of(precision), dash="solid" if gpus == 1 else "dot"),
                text=[f"accumulation {c['grad_accum']}, peak {_mib(c['peak_bytes'])} MiB" for c in points],
                hovertemplate="micro-batch %{x}: %{y:,.1f} samples/s<br>%{text}<extra></extra>"))
        best = entry.get("recommendation")
        if best:
            fig.add_trace(go.Scatter(x=[best["micro_batch"]], y=[best["throughput_samples_per_s"]], mode="markers",
                                     name=f"{precision} recommended", meta=precision,
                                     marker=dict(symbol="star", size=16, color=color_of(precision),
                                                 line=dict(color="#222", width=1)),
                                     hovertemplate="recommended: micro-batch %{x}, %{y:,.1f} samples/s<extra></extra>"))
    if not drawn:
        why = "no --target-batch was given" if plan.get("target_batch") is None else "no candidate ran"
        return Chart(title, None, f"No candidate throughput to draw: {why}.")
    _batch_axis(fig, [c["micro_batch"] for _, e in _ordered(plan) for c in e["candidates"] if c.get("measured")],
                "micro-batch per rank (accumulation = target / micro-batch / GPUs)")
    fig.update_yaxes(title_text="samples/s", rangemode="tozero")
    return Chart(title, fig, "Global samples per second over each candidate's timed steps; every candidate reaches "
                             "the same effective batch.")


def _summary_table(plan: dict[str, Any]) -> str:
    columns = ["precision", "max micro-batch", "largest ran", "smallest OOM", "bounded by", "recommended",
               "samples/s", "peak MiB", "headroom MiB", "note"]
    rows, attrs = [], []
    for precision, entry in _ordered(plan):
        best = entry.get("recommendation") or {}
        rows.append([precision, str(entry.get("max_batch") or ""), str(entry.get("largest_ran_batch") or ""),
                     str(entry.get("smallest_oom_batch") or ""), entry["bounded_by"],
                     f"{best['micro_batch']} x {best['grad_accum']} x {best['gpus']}" if best else "",
                     f"{best['throughput_samples_per_s']:,.1f}" if best else "", _mib(best.get("peak_bytes")),
                     _mib(best.get("headroom_bytes")), entry.get("recommendation_note") or ""])
        attrs.append({"precision": precision})
    return html.table(columns, rows, text_columns=("precision", "bounded by", "recommended", "note"),
                      wrap_columns=("note",), row_attrs=attrs)


def _probe_table(plan: dict[str, Any]) -> str:
    columns = ["precision", "#", "micro-batch", "outcome", "estimate MiB", "measured MiB", "seconds", "detail"]
    rows, attrs = [], []
    for precision, entry in _ordered(plan):
        for n, p in enumerate(entry["probes"], 1):
            rows.append([precision, str(n), str(p["batch"]), p["outcome"], _mib(p.get("estimate_bytes")),
                         _mib(p.get("peak_bytes")), f"{p['seconds']:.1f}" if p.get("seconds") is not None else "",
                         p.get("detail", "")])
            attrs.append({"precision": precision})
    return html.table(columns, rows, text_columns=("precision", "outcome", "detail"), wrap_columns=("detail",),
                      row_attrs=attrs)


def _candidate_table(plan: dict[str, Any]) -> str:
    columns = ["precision", "micro-batch", "accumulation", "GPUs", "status", "samples/s", "peak MiB",
               "estimate MiB", "headroom MiB"]
    rows, attrs = [], []
    for precision, entry in _ordered(plan):
        for c in entry["candidates"]:
            if not c.get("measured"):
                continue
            rows.append([precision, str(c["micro_batch"]), str(c["grad_accum"]), str(c["gpus"]), c.get("status") or "",
                         f"{c['throughput_samples_per_s']:,.1f}" if c.get("throughput_samples_per_s") else "",
                         _mib(c.get("peak_bytes")), _mib(c.get("estimate_bytes")), _mib(c.get("headroom_bytes"))])
            attrs.append({"precision": precision})
    if not rows:
        return ""
    unmeasured = sum(1 for _, e in _ordered(plan) for c in e["candidates"] if not c.get("measured"))
    note = (f'<p class="note">{unmeasured} smaller micro-batches also reach the target (more accumulation); '
            "they were not measured.</p>") if unmeasured else ""
    return html.table(columns, rows, text_columns=("precision", "status"), row_attrs=attrs) + note


def section(plans: Sequence[dict[str, Any]], start: int = 0) -> str:
    """The memory planner's section body: one block per plan."""
    parts = []
    for n, plan in enumerate(plans, start):
        where = _where(plan)
        target = f", target batch {plan['target_batch']}" if plan.get("target_batch") else ""
        blocks = [f"<h3>{html.esc(plan['model'])} · {html.esc(where)}</h3>",
                  f'<p class="note">Planned {html.esc(plan.get("created_at", ""))} in {plan.get("elapsed_s")} s'
                  f"{html.esc(target)}, GPU counts {html.esc(plan.get('gpus'))}, safety {plan['safety']:g}. "
                  f"{html.esc(plan.get('estimate_method', ''))}.</p>",
                  _summary_table(plan)]
        fastest = plan.get("fastest")
        if fastest and fastest.get("ranked") is False:
            blocks.append(f'<p class="note">Fastest: {html.esc(fastest["note"])}. No precision is named '
                          "fastest.</p>")
        elif fastest:
            blocks.append(f'<p class="note">Fastest: {html.esc(fastest["precision"])}, micro-batch '
                          f'{fastest["micro_batch"]} x accumulation {fastest["grad_accum"]} x {fastest["gpus"]}, '
                          f'{fastest["throughput_samples_per_s"]:,.1f} samples/s. {html.esc(fastest["note"])}.</p>')
        for key, chart in (("estimate", estimate_vs_measured(plan)), ("max", max_batch_chart(plan)),
                           ("candidates", candidates_chart(plan))):
            blocks.append(f"<h4>{html.esc(chart.title)}</h4>" + html.chart(chart, div_id=f"plan-{key}-{n}"))
        blocks.append("<h4>Measured candidates</h4>" + (_candidate_table(plan) or '<p class="note">None.</p>'))
        blocks.append("<details><summary><h4 style=\"display:inline\">Probe log</h4></summary>"
                      + _probe_table(plan) + "</details>")
        parts.append(f"<div{html.attrs({'model': plan['model']})}>{''.join(blocks)}</div>")
    return "".join(parts)


def page(plan: dict[str, Any], title: str | None = None) -> str:
    """A self-contained page of one plan."""
    title = title or f"trainkit plan: {plan['model']}"
    precisions = [p for p, _ in _ordered(plan)]
    header = f'<div class="filters">{html.select("precision", "precision", precisions)}</div>'
    body = f'<section id="planner"><h2>Memory planner</h2>{section([plan])}</section>'
    return html.page(title, header, body)


def write_page(plan: dict[str, Any], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, page(plan))
    return path
