"""Figure builders: one function per question the report answers, for one model on one hardware.

Each takes rows of one (model, hardware) pair, either the summary's per-cell rows (`cells`, from
summary.summary) or the tidy per-record rows (`records`, from load.to_frame), and returns a Chart:
a plotly figure, or None with a note saying why there is nothing to draw. Cells that did not
finish carry NaN and drop out of a chart instead of breaking it.

Every panel holds one trace per precision: all the lines of that precision joined with gaps
(None), so a matrix of 1,000 cells still makes a few dozen traces, not thousands. Colours are fixed
per precision across charts, and each trace carries its precision in `meta` for the page's filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trainkit.engine.spec.precision_facts import color_of, display_rank
from trainkit.engine.spec.schema import OPTIONAL_MEMORY_KEYS

from .flags import IMPLAUSIBLE_EFFICIENCY, IMPLAUSIBLE_SCALING, NOT_COPIES, SPLIT_THREADS_EFFICIENCY
from .load import PHASES
from .summary import MIB, ranks_label

MEMORY_LABELS = {"torch_max_allocated_bytes": "PyTorch allocator peak",
                 "torch_max_reserved_bytes": "PyTorch reserved peak",
                 "nvml_process_peak_bytes": "NVML process peak",
                 "host_rss_growth_bytes": "host RSS growth",
                 "host_rss_peak_bytes": "host RSS peak"}
# Compute phases in blues, darker as the step goes on; waiting for data stands out in amber.
PHASE_COLORS = {"data": "#e8a33d", "forward": "#9ecae1", "backward": "#4292c6", "optimizer": "#08519c"}
MAX_PANELS = 4  # small multiples side by side before a chart stops being readable
MAX_BARS = 40  # bars in one phase chart; the profile table below it holds every cell
HEIGHT_PX = 420
# A small template instead of a named one: plotly deep-copies named templates on every use,
# which costs seconds over a report of many charts.
TEMPLATE = {"layout": {"plot_bgcolor": "white", "paper_bgcolor": "white", "font": {"size": 12},
                       "xaxis": {"gridcolor": "#e8e8e8", "linecolor": "#999", "zeroline": False},
                       "yaxis": {"gridcolor": "#e8e8e8", "linecolor": "#999", "zeroline": False}}}


@dataclass
class Chart:
    title: str
    figure: go.Figure | None
    note: str = ""


def _figure(rows: int = 1, cols: int = 1, titles: Sequence[str] | None = None, height_px: int = HEIGHT_PX,
            **kwargs: object) -> go.Figure:
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        figure=go.Figure(layout={"template": TEMPLATE}), **kwargs)
    fig.update_layout(height=height_px, margin=dict(l=60, r=30, t=50, b=50), hovermode="closest",
                      legend=dict(title_text="precision"))
    return fig


def _lines(rows: pd.DataFrame, x: str, y: str, line_keys: Sequence[str], hover: pd.Series,
           seen: set[str], dash: str = "solid") -> list[go.Scatter]:
    """One trace per precision; the rows of each line (same `line_keys`) sorted by x, lines
    separated by a gap. Rows without a y value are left out."""
    rows = rows.assign(_hover=hover).dropna(subset=[x, y])
    traces = []
    for precision in sorted(rows["precision"].unique(), key=display_rank):
        part = rows[rows["precision"] == precision].sort_values([*line_keys, x])
        line_ids = part.groupby(list(line_keys), dropna=False, sort=False).ngroup() if line_keys else [0] * len(part)
        xs: list[object] = []
        ys: list[object] = []
        text: list[object] = []
        previous = None
        for line, xv, yv, tv in zip(line_ids, part[x].astype(float), part[y].astype(float), part["_hover"]):
            if previous is not None and line != previous:
                xs.append(None), ys.append(None), text.append(None)  # a gap between two lines
            xs.append(xv), ys.append(yv), text.append(tv)
            previous = line
        traces.append(go.Scatter(x=xs, y=ys, text=text, mode="lines+markers", name=precision, legendgroup=precision,
                                 showlegend=precision not in seen, meta=precision,
                                 line=dict(color=color_of(precision), dash=dash),
                                 hovertemplate="%{x}: %{y:,.4~g}<br>%{text}<extra></extra>"))
        seen.add(precision)
    return traces


def _log2_axis(fig: go.Figure, values: pd.Series, title: str, **where: int) -> None:
    ticks = sorted({int(v) for v in values.dropna()})
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[str(t) for t in ticks], title_text=title, **where)


def _cell_hover(rows: pd.DataFrame) -> pd.Series:
    label = rows["cell"] if "cell" in rows else (
        "bs" + rows["batch_size"].astype(str) + " ga" + rows["grad_accum"].astype(str)
        + " ×" + rows["gpus"].astype(str) + " " + rows["variant"])
    return label.astype(str)


def _top(keys: pd.Series, limit: int = MAX_PANELS) -> list[object]:
    """The `limit` most frequent values, in their natural order."""
    return sorted(keys.value_counts().index[:limit])


def throughput_vs_batch(cells: pd.DataFrame) -> Chart:
    """Throughput against micro-batch size, a line per precision, one panel per GPU count, at the
    smallest accumulation measured (accumulation has its own chart)."""
    title = "Throughput vs batch size"
    ok = cells[(cells["status"] == "ok") & cells["throughput_samples_per_s"].notna()]
    if ok.empty:
        return Chart(title, None, "No cell finished, so there is no throughput to plot.")
    accum = int(ok["grad_accum"].min())
    ok = ok[ok["grad_accum"] == accum]
    hardware = str(ok["hardware"].iloc[0])
    panels = _top(ok["gpus"])
    fig = _figure(cols=len(panels), titles=[ranks_label(g, hardware) for g in panels], shared_yaxes=True)
    seen: set[str] = set()
    for col, gpus in enumerate(panels, start=1):
        panel = ok[ok["gpus"] == gpus]
        hover = _cell_hover(panel) + panel["speedup_vs_fp32"].map(lambda v: f", {v:.2f}× fp32" if pd.notna(v) else "")
        fig.add_traces(_lines(panel, "batch_size", "throughput_samples_per_s", ["variant"], hover, seen),
                       rows=1, cols=col)
        _log2_axis(fig, panel["batch_size"], "batch size per rank", row=1, col=col)
    fig.update_yaxes(title_text="samples/s", row=1, col=1)
    note = f"Gradient accumulation {accum}; global samples/s over the timed optimizer steps, median over repeats."
    if ok["gpus"].nunique() > len(panels):
        note += f" Showing {len(panels)} of {ok['gpus'].nunique()} GPU counts."
    return Chart(title, fig, note)


def memory_vs_batch(records: pd.DataFrame) -> Chart:
    """Each peak-memory measure against micro-batch size, a line per precision, on the fewest GPUs
    at the smallest accumulation measured on that many; says which measures the records lack."""
    title = "Peak memory vs batch size"
    ok = records[records["status"] == "ok"]
    if ok.empty:
        return Chart(title, None, "No cell finished, so there is no memory to plot.")
    # The fewest GPUs, then the smallest accumulation measured on that many: the two minima taken
    # apart may never have been measured together (a fixed effective batch run as 1 rank x 2 and
    # 2 ranks x 1), which left no record to plot.
    fewest = ok[ok["gpus"] == ok["gpus"].min()] if ok["gpus"].notna().any() else ok
    ok = fewest[fewest["grad_accum"] == fewest["grad_accum"].min()] if fewest["grad_accum"].notna().any() else fewest
    present = [m for m in MEMORY_LABELS if ok[f"memory.{m}"].notna().any()]
    # A key older records lack is not news; say only what a record of today should have measured.
    missing = [MEMORY_LABELS[m] for m in MEMORY_LABELS if m not in present and m not in OPTIONAL_MEMORY_KEYS]
    reasons = sorted({str(r) for r in ok["memory.nvml_method"].dropna() if str(r).startswith("unavailable")})
    note = (f"Gradient accumulation {int(ok['grad_accum'].iloc[0])}, "
            f"{ranks_label(int(ok['gpus'].iloc[0]), ok['hardware'].iloc[0])}; the max over ranks, median over repeats.")
    if missing:
        note += f" Not measured in these cells: {', '.join(missing)}" + (
            f" (NVML {'; '.join(reasons)})." if reasons else ".")
    if not present:
        return Chart(title, None, note)
    keys = ["cell", "batch_size", "precision", "variant", "precision_variant"]
    per_cell = ok.groupby(keys, dropna=False)[[f"memory.{m}" for m in present]].median().reset_index()
    per_cell["variant"] = (per_cell["variant"] + " " + per_cell["precision_variant"]).str.strip()
    fig = _figure(cols=len(present), titles=[MEMORY_LABELS[m] for m in present], shared_yaxes=True)
    seen: set[str] = set()
    for col, measure in enumerate(present, start=1):
        per_cell["MiB"] = per_cell[f"memory.{measure}"] / MIB
        fig.add_traces(_lines(per_cell, "batch_size", "MiB", ["variant"], per_cell["cell"].astype(str), seen),
                       rows=1, cols=col)
        _log2_axis(fig, per_cell["batch_size"], "batch size per rank", row=1, col=col)
    fig.update_yaxes(title_text="MiB", row=1, col=1)
    return Chart(title, fig, note)


def no_accumulation_comparison(ok: pd.DataFrame) -> str:
    """Why the accumulation chart is empty, from the cells that ran: none accumulated, or those that did
    share no effective batch with a cell of another accumulation count (nothing to hold constant)."""
    accumulated = ok[ok["grad_accum"] >= 2]
    if accumulated.empty:
        return "No cell ran with two or more accumulation steps."

    def listed(rows: pd.DataFrame) -> str:
        return "; ".join(f"accumulation {int(a)}: effective batch "
                         + ", ".join(str(int(e)) for e in sorted(group["effective_batch"].unique()))
                         for a, group in rows.groupby("grad_accum"))

    counts = ", ".join(str(int(a)) for a in sorted(accumulated["grad_accum"].unique()))
    return (f"{len(accumulated)} cell(s) ran with accumulation {counts}, but no effective batch (with its variant "
            "and rank count) ran at two accumulation counts, so none compares accumulation at a fixed effective "
            f"batch ({listed(ok)}). Run a smaller micro-batch with more accumulation steps beside it to compare.")


def accumulation(cells: pd.DataFrame) -> Chart:
    """Throughput (top) and peak memory (bottom) against accumulation steps at a fixed effective batch."""
    title = "Gradient accumulation at a fixed effective batch"
    ok = cells[(cells["status"] == "ok") & cells["throughput_samples_per_s"].notna()]
    keys = ["variant", "gpus", "effective_batch"]
    spans = ok.groupby(keys, dropna=False)["grad_accum"].nunique()
    spans = spans[spans >= 2].sort_values(ascending=False, kind="stable")
    if spans.empty:
        return Chart(title, None, no_accumulation_comparison(ok))
    shown = list(spans.index[:MAX_PANELS])
    note = "Micro-batch × accumulation × ranks held constant; each point is one cell (median over repeats)."
    if len(spans) > MAX_PANELS:
        note += f" {len(spans) - MAX_PANELS} more effective batches are in the summary table."
    hardware = str(ok["hardware"].iloc[0])
    measure = ok["memory_measure"].dropna()
    memory_title = f"peak MiB ({MEMORY_LABELS.get(measure.iloc[0], '?')})" if len(measure) else "peak MiB"
    titles = [f"eff. batch {int(e)} · {ranks_label(g, hardware)}" + (f" · {v}" if v else "") for v, g, e in shown]
    fig = _figure(rows=2, cols=len(shown), titles=titles + [""] * len(shown), height_px=560,
                  shared_xaxes=True, vertical_spacing=0.08)
    seen: set[str] = set()
    for col, (variant, gpus, effective) in enumerate(shown, start=1):
        panel = ok[(ok["variant"] == variant) & (ok["gpus"] == gpus) & (ok["effective_batch"] == effective)]
        hover = _cell_hover(panel)
        fig.add_traces(_lines(panel, "grad_accum", "throughput_samples_per_s", [], hover, seen), rows=1, cols=col)
        fig.add_traces(_lines(panel, "grad_accum", "peak_memory_mib", [], hover, seen), rows=2, cols=col)
        _log2_axis(fig, panel["grad_accum"], "accumulation steps", row=2, col=col)
        _log2_axis(fig, panel["grad_accum"], "", row=1, col=col)
    fig.update_yaxes(title_text="samples/s", row=1, col=1)
    fig.update_yaxes(title_text=memory_title, row=2, col=1)
    return Chart(title, fig, note)


def loss_curves(records: pd.DataFrame) -> Chart:
    """Loss per optimizer step, a line per cell coloured by precision, one panel per effective
    batch (cells of one effective batch see the same number of samples per step)."""
    title = "Loss curves per precision"
    has_curve = records["loss.curve"].map(lambda c: isinstance(c, list) and any(v is not None for v in c))
    rows = records[has_curve]
    if rows.empty:
        return Chart(title, None, "No cell recorded a loss curve.")
    panels = rows.groupby(["effective_batch", "variant"], dropna=False)["precision"].nunique()
    shown = list(panels.sort_values(ascending=False, kind="stable").index[:MAX_PANELS])
    note = "Warmup steps included. Cells that diverged are drawn up to their last finite loss."
    if len(panels) > MAX_PANELS:
        note += f" Showing the {MAX_PANELS} effective batches with the most precisions, of {len(panels)}."
    titles = [f"eff. batch {int(e)}" + (f" · {v}" if v else "") for e, v in shown]
    fig = _figure(cols=len(shown), titles=titles, shared_yaxes=True, horizontal_spacing=0.04)
    seen: set[str] = set()
    for col, (effective, variant) in enumerate(shown, start=1):
        panel = rows[(rows["effective_batch"] == effective) & (rows["variant"] == variant)]
        steps = panel.assign(step=panel["loss.curve"].map(lambda c: list(range(1, len(c) + 1))))
        steps = steps[["step", "loss.curve", "precision", "cell", "status", "run"]].explode(["step", "loss.curve"])
        steps["line"] = steps.index  # one line per record
        hover = steps["cell"].astype(str) + " (" + steps["status"].astype(str) + ", " + steps["run"].astype(str) + ")"
        steps = steps.rename(columns={"loss.curve": "loss"}).astype({"step": float, "loss": float})
        traces = _lines(steps, "step", "loss", ["line"], hover, seen)
        for trace in traces:
            trace.update(mode="lines", line_width=1.5, hovertemplate="step %{x}: %{y:.4f}<br>%{text}<extra></extra>")
        fig.add_traces(traces, rows=1, cols=col)
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
    fig.update_yaxes(title_text="training loss", row=1, col=1)
    return Chart(title, fig, note)


def scaler(records: pd.DataFrame) -> Chart:
    """GradScaler per record of every mode that scales its loss dynamically: initial and final
    scale, and the optimizer steps it skipped."""
    title = "Loss scaling (GradScaler)"
    rows = records[records["scaler.enabled"].eq(True) & records["scaler.final_scale"].notna()]
    if rows.empty:
        return Chart(title, None, "No cell reported a loss scale (only modes with dynamic loss scaling, such as "
                                  "amp-fp16, use GradScaler).")
    rows = rows.assign(_rank=rows["precision"].map(display_rank))
    rows = rows.sort_values(["_rank", "gpus", "batch_size", "grad_accum"])
    repeat = rows.groupby("cell").cumcount() + 1
    repeats = rows.groupby("cell")["cell"].transform("size")
    several = rows["precision"].nunique() > 1
    variants = (rows["variant"] + " " + rows["precision_variant"]).str.strip()
    labels = [(f"{p} " if several else "") + f"bs{b} ga{a} ×{g}" + (f" {v}" if v else "") + (f" [{i}]" if n > 1 else "")
              for p, b, a, g, v, i, n in zip(rows["precision"], rows["batch_size"], rows["grad_accum"], rows["gpus"],
                                             variants, repeat, repeats)]
    hover = [f"{c} ({s}, {r})" for c, s, r in zip(rows["cell"], rows["status"], rows["run"])]
    rows = rows.assign(_label=labels, _hover=hover)
    fig = _figure(cols=2, titles=["scale (log)", "skipped optimizer steps"])
    for precision, group in rows.groupby("precision", sort=False):
        color = color_of(precision)
        suffix = f" ({precision})" if several else ""
        common = dict(x=group["_label"], hovertext=group["_hover"], meta=precision)
        fig.add_traces([go.Scatter(y=group["scaler.init_scale"], mode="markers", name="initial scale" + suffix,
                                   marker=dict(symbol="circle-open", size=10, color=color), **common),
                        go.Scatter(y=group["scaler.final_scale"], mode="markers", name="final scale" + suffix,
                                   marker=dict(size=10, color=color), **common)], rows=1, cols=1)
        fig.add_traces([go.Bar(y=group["scaler.skipped_steps_total"], name="skipped, all steps" + suffix,
                               marker_color=color, opacity=0.5, **common),
                        go.Bar(y=group["scaler.skipped_steps"], name="skipped, timed steps" + suffix,
                               marker_color=color, **common)], rows=1, cols=2)
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_layout(legend_title_text="", barmode="group")
    return Chart(title, fig, "A skipped step is one whose gradients overflowed: GradScaler lowers the scale "
                 "and drops the update. The record keeps the initial and final scale, not its history.")


def scaling(cells: pd.DataFrame) -> Chart:
    """Throughput and efficiency thr_N / (N * thr_1) against GPU count, for the same per-GPU batch
    and accumulation (weak scaling); a line per (batch, accumulation), coloured by precision."""
    title = "Scaling across GPUs"
    ok = cells[(cells["status"] == "ok") & cells["throughput_samples_per_s"].notna()]
    line_keys = ["variant", "batch_size", "grad_accum"]
    spans = ok.groupby(line_keys + ["precision"], dropna=False)["gpus"].transform("nunique")
    ok = ok[spans >= 2]
    if ok.empty:
        return Chart(title, None, "Every cell ran on one GPU count; nothing to scale.")
    hardware = str(ok["hardware"].iloc[0])
    ok = ok.assign(efficiency=ok["weak_scaling_efficiency"].where(ok["gpus"] > 1, 1.0))
    hover = _cell_hover(ok)
    fig = _figure(cols=2, titles=["samples/s", "efficiency thr_N / (N · thr_1)"])
    seen: set[str] = set()
    fig.add_traces(_lines(ok, "gpus", "throughput_samples_per_s", line_keys, hover, seen), rows=1, cols=1)
    fig.add_traces(_lines(ok, "gpus", "efficiency", line_keys, hover, seen), rows=1, cols=2)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"), row=1, col=2)
    for col in (1, 2):
        _log2_axis(fig, ok["gpus"], "ranks" if hardware.startswith("CPU") else "GPUs", row=1, col=col)
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    note = ("Weak scaling: the per-GPU batch and accumulation are fixed, so N GPUs do N times the work; 100 % "
            "efficiency is N times the 1-GPU throughput. One line per batch and accumulation.")
    # The summary's own judgement (trainkit.reports.flags.judge), so the chart and the table agree.
    flags = ok["flags"].fillna("").astype(str) if "flags" in ok else pd.Series("", index=ok.index)
    implausible = ok[flags.str.contains(IMPLAUSIBLE_SCALING, regex=False)]
    split = int(flags.str.contains(NOT_COPIES, regex=False).sum())
    if split:
        note += (f" {split} point{'s' if split > 1 else ''} above 100 %: there the ranks split the 1-rank cell's "
                 "CPU threads (N single-thread ranks against one rank of N threads), so N ranks are not N copies "
                 "of it and 100 % is no bound.")
    if not implausible.empty:
        worst = implausible["weak_scaling_efficiency"].max()
        note += (f" {len(implausible)} point{'s are' if len(implausible) > 1 else ' is'} implausible, above "
                 f"{IMPLAUSIBLE_EFFICIENCY:.0%} ({SPLIT_THREADS_EFFICIENCY:.0%} where the ranks split the threads; up "
                 f"to {worst:.0%}): N ranks cannot do more than N times one rank's work, so their 1-rank cells were "
                 "slowed (a loaded host?); see the summary's flags.")
    return Chart(title, fig, note)


def _bar_slices(per_cell: pd.DataFrame, limit: int = MAX_BARS) -> pd.DataFrame:
    """The cells to draw: whole (GPU count, accumulation) slices, fewest GPUs and least
    accumulation first, while they fit in `limit` bars (the first slice always, cut to `limit`)."""
    shown = []
    for _, rows in per_cell.groupby(["gpus", "grad_accum"], sort=True, dropna=False):
        if shown and sum(len(r) for r in shown) + len(rows) > limit:
            break
        shown.append(rows)
    return pd.concat(shown).head(limit)


def phase_bars(records: pd.DataFrame) -> Chart:
    """Where an optimizer step's time goes: a stacked bar per cell (data, forward, backward,
    optimizer; median over the cell's records), the data-bound cells flagged. One trace per phase
    and precision, so the precision filter hides bars like it hides lines elsewhere."""
    title = "Phases of an optimizer step"
    columns = [f"profile.phases_s.{p}" for p in PHASES]
    rows = records[records[columns].notna().all(axis=1)]
    if rows.empty:
        return Chart(title, None, "No cell here recorded a phase breakdown (profiling off, "
                     "--phase-steps 0, or the profiling pass failed).")
    keys = ["cell", "precision", "variant", "precision_variant", "gpus", "grad_accum", "batch_size"]
    per_cell = rows.groupby(keys, dropna=False, sort=False).agg(
        **{p: (c, "median") for p, c in zip(PHASES, columns)},
        data_bound=("profile.data_bound", lambda s: bool(s.eq(True).any()))).reset_index()
    per_cell = per_cell.assign(_rank=per_cell["precision"].map(display_rank)).sort_values(
        ["gpus", "grad_accum", "batch_size", "variant", "_rank", "precision_variant"])
    shown = _bar_slices(per_cell)
    total_s = shown[list(PHASES)].sum(axis=1)
    variant = (shown["variant"] + " " + shown["precision_variant"]).str.strip()
    labels = [f"bs{b} ga{a} ×{g} {p}" + (f" {v}" if v else "") + (
        " <span style='color:#c0392b'>data-bound</span>" if bound else "")
        for b, a, g, p, v, bound in zip(shown["batch_size"], shown["grad_accum"], shown["gpus"], shown["precision"],
                                        variant, shown["data_bound"])]
    shown = shown.assign(label=labels, total_ms=total_s * 1e3)

    fig = _figure(height_px=26 * len(shown) + 130)
    for phase in PHASES:  # legend entries with no precision, so the filter never hides them
        fig.add_trace(go.Bar(x=[None], y=[None], orientation="h", name=phase, legendgroup=phase,
                             marker_color=PHASE_COLORS[phase], hoverinfo="skip"))
    for precision in sorted(shown["precision"].unique(), key=display_rank):
        part = shown[shown["precision"] == precision]
        for phase in PHASES:
            ms = part[phase] * 1e3
            fig.add_trace(go.Bar(
                x=ms, y=part["label"], orientation="h", name=phase, legendgroup=phase, showlegend=False,
                meta=precision, marker_color=PHASE_COLORS[phase],
                customdata=list(zip(ms / part["total_ms"], part["total_ms"], part["cell"].astype(str))),
                hovertemplate=(f"{phase}: %{{x:.3~f}} ms (%{{customdata[0]:.0%}} of %{{customdata[1]:.3~f}} ms)"
                               "<br>%{customdata[2]}<extra></extra>")))
    fig.update_layout(barmode="stack", bargap=0.25, legend=dict(title_text="phase", traceorder="normal",
                                                                orientation="h", x=0, y=1, yanchor="bottom"))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(shown["label"]),
                     autorange="reversed", automargin=True)
    fig.update_xaxes(title_text="ms per optimizer step", rangemode="tozero")

    methods = ", ".join(sorted(rows["profile.phase_method"].dropna().astype(str).unique())) or "unknown method"
    steps = sorted({int(n) for n in rows["profile.phase_steps"].dropna()})
    note = f"Median over {' or '.join(map(str, steps)) or 'a few'} steps, timed with {methods}."
    if len(shown) < len(per_cell):
        note += (f" Showing {len(shown)} of {len(per_cell)} cells (the fewest GPUs and least accumulation "
                 "first); the table below has every cell.")
    return Chart(title, fig, note)


def charts_for(cells: pd.DataFrame, records: pd.DataFrame) -> list[Chart]:
    """Every chart of one (model, hardware) pair, in page order."""
    return [throughput_vs_batch(cells), memory_vs_batch(records), accumulation(cells),
            loss_curves(records), scaler(records), scaling(cells)]
