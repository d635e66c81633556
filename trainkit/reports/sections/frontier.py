"""The report's sections for the axes beyond precision and accumulation: torch.compile, activation
checkpointing with the memory it buys, FP8's conversion, and the allocator's setting.

    compile   per model and hardware: compiled over eager throughput per precision (each compiled
              cell against its eager twin: same model, shape, precision and other axes) and the
              compile time of every compiled cell, with a table of both
    pareto    per model and hardware: peak memory against throughput, one point per cell on the
              fewest GPUs (precision x checkpointing x accumulation x batch size x compile), the
              Pareto front of what fits against how fast it runs; the allocator's figures below
    fp8       per FP8 cell: the recipe, the converted and skipped linear layers and the converted
              share of linear FLOPs; and why FP8 cells did not run where they did not

Every function takes the tidy records of load.to_frame; cells are combined over their ok repeats
(medians), as in the summary.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from trainkit.engine.spec.precision_facts import color_of, display_rank

from .. import html
from ..figures import Chart, _figure
from ..flags import NOISE_COLUMNS, cell_noise, compare
from ..summary import MIB, ranks_label

SECTIONS = (("compile", "torch.compile"), ("pareto", "Memory vs throughput"), ("fp8", "FP8"))
PAIR = ["model", "hardware", "gpus", "batch_size", "grad_accum", "precision", "precision_variant", "eager_variant"]
"""What a compiled cell shares with its eager twin."""
CELL = ["cell", *PAIR, "variant", "compiled", "activation_checkpointing", "effective_batch"]
# Marker per checkpointing mode; compiled cells get the open variant of it.
SYMBOLS = {"none": "circle", "full": "diamond"}


def cells(records: pd.DataFrame) -> pd.DataFrame:
    """One row per cell over its ok records: the throughput at the median step time with its interval
    (flags.cell_noise: the figure and its interval rest on the same median), medians of peak memory
    (the headline measure), final loss and compile time; the most recompiles and graphs of any repeat; the loss
    curves of its repeats (for a loss at a chosen step)."""
    ok = records[(records["status"] == "ok") & records["throughput_samples_per_s"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=[*CELL, "repeats", "throughput", "peak_mib", "memory_measure", "final_loss",
                                     "compile_s", "recompiles", "graphs", "curves", *NOISE_COLUMNS])
    per_cell = ok.groupby(CELL, dropna=False, sort=False).agg(
        repeats=("status", "size"),
        peak_mib=("peak_memory_bytes", lambda s: s.median() / MIB), memory_measure=("memory_measure", "first"),
        final_loss=("loss.final", "median"), compile_s=("compile.compile_time_s", "median"),
        recompiles=("compile.recompiles", "max"), graphs=("compile.graphs", "max"),
        curves=("loss.curve", lambda s: [c for c in s if isinstance(c, list)]),
    ).join(cell_noise(ok, CELL)).reset_index()
    per_cell["throughput"] = per_cell["throughput_median"]
    return per_cell


def loss_at(curves: object, steps: int) -> float:
    """The median over repeats of the loss after `steps` optimizer steps (NaN where a curve is shorter
    or the loss there is not finite)."""
    values = [c[steps - 1] for c in curves if steps >= 1 and len(c) >= steps and c[steps - 1] is not None] \
        if isinstance(curves, list) else []
    return float(pd.Series(values, dtype=float).median()) if values else float("nan")


def _shape(rows: pd.DataFrame) -> list[str]:
    hardware = rows["hardware"].astype(str)
    return [f"bs{b} ga{a} · {ranks_label(g, h)}" + (f" · {v}" if v else "")
            for b, a, g, h, v in zip(rows["batch_size"], rows["grad_accum"], rows["gpus"], hardware,
                                     rows["eager_variant"])]


def compile_pairs(per_cell: pd.DataFrame) -> pd.DataFrame:
    """Compiled cells with their eager twin's throughput and the speedup (NaN without a twin)."""
    compiled = per_cell[per_cell["compiled"]]
    eager = per_cell[~per_cell["compiled"]][[*PAIR, "throughput", "final_loss", "curves", "cell", *NOISE_COLUMNS]]
    pairs = compiled.merge(eager.drop_duplicates(subset=PAIR), on=PAIR, how="left", suffixes=("", "_eager"))
    # Paired by round where both ran in rounds (bench --repeats N), else the ratio of the medians.
    ratio = compare(pairs, "_eager") if len(pairs) else pd.DataFrame(columns=["ratio", "low", "high", "rounds"])
    pairs["speedup"], pairs["speedup_low"], pairs["speedup_high"] = ratio["ratio"], ratio["low"], ratio["high"]
    pairs["speedup_rounds"] = ratio["rounds"]
    # A compiled run is longer than its twin by the warmup steps compilation took to settle, so its
    # final loss is a later step's: compare the loss at the twin's last step.
    pairs["eager_steps"] = [max((len(c) for c in curves), default=0) if isinstance(curves, list) else 0
                            for curves in pairs["curves_eager"]]
    pairs["loss_at_eager_steps"] = [loss_at(curves, n) for curves, n in zip(pairs["curves"], pairs["eager_steps"])]
    pairs = pairs.assign(shape=_shape(pairs), _rank=pairs["precision"].map(display_rank))
    return pairs.sort_values(["gpus", "batch_size", "grad_accum", "eager_variant", "_rank"]).reset_index(drop=True)


def compile_chart(pairs: pd.DataFrame) -> Chart:
    """Compiled over eager throughput per precision and shape, and the compile time of each cell."""
    title = "torch.compile: speedup and compile time"
    if pairs.empty:
        return Chart(title, None, "No compiled cell finished here.")
    fig = _figure(cols=2, titles=["compiled ÷ eager throughput", "compile time (s)"])
    for precision in sorted(pairs["precision"].unique(), key=display_rank):
        part = pairs[pairs["precision"] == precision]
        common = dict(name=precision, legendgroup=precision, meta=precision, marker_color=color_of(precision),
                      hovertext=part["cell"].astype(str))
        whiskers = dict(type="data", symmetric=False, array=(part["speedup_high"] - part["speedup"]).tolist(),
                        arrayminus=(part["speedup"] - part["speedup_low"]).tolist(), color="#444", thickness=1)
        fig.add_trace(go.Bar(x=part["shape"], y=part["speedup"], error_y=whiskers, **common,
                             hovertemplate="%{y:.2f}×<br>%{hovertext}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Bar(x=part["shape"], y=part["compile_s"], showlegend=False, **common,
                             hovertemplate="%{y:.1f} s<br>%{hovertext}<extra></extra>"), row=1, col=2)
    fig.add_hline(y=1.0, line=dict(color="grey", dash="dot"), row=1, col=1)
    fig.update_layout(barmode="group")
    fig.update_yaxes(rangemode="tozero")
    missing = int(pairs["speedup"].isna().sum())
    note = ("Each compiled cell over its eager twin (same model, shape, precision and other axes): the median of "
            "the per-round ratios where both ran in rounds (--repeats N), else the ratio of their median step "
            "times; above 1 compile is faster. Compile time: the warmup steps that compiled, less what they take "
            "at the steady speed; it is never part of a timed step. A compiled run is longer by the warmup steps "
            "compilation took to settle, so the table sets its loss after as many steps as the eager twin took "
            "beside the twin's final loss. Whiskers: the speedup's 95 % interval (trainkit.reports.flags).")
    unresolved = int(((pairs["speedup_low"] <= 1) & (pairs["speedup_high"] >= 1)).sum())
    if unresolved:
        note += (f" {unresolved} speedup{'s' if unresolved > 1 else ''} within noise: the interval holds 1, so "
                 "compiled and eager are not told apart there.")
    if missing:
        note += f" {missing} compiled cell{'s have' if missing > 1 else ' has'} no eager twin here: no speedup."
    return Chart(title, fig, note)


def _compile_table(pairs: pd.DataFrame) -> str:
    def fmt(value: object, spec: str) -> str:
        return "–" if pd.isna(value) else format(value, spec)

    shown = pd.DataFrame({
        "cell": pairs["cell"].astype(str), "precision": pairs["precision"].astype(str),
        "eager samples/s": [fmt(v, ",.4g") for v in pairs["throughput_eager"]],
        "compiled samples/s": [fmt(v, ",.4g") for v in pairs["throughput"]],
        "speedup": [fmt(v, ".2f") + ("×" if pd.notna(v) else "") + (
            f" ({low:.2f}–{high:.2f})" if pd.notna(low) and pd.notna(high) else "")
            for v, low, high in zip(pairs["speedup"], pairs["speedup_low"], pairs["speedup_high"])],
        "eager final loss": [fmt(v, ".4f") for v in pairs["final_loss_eager"]],
        "compiled loss, same step": [fmt(v, ".4f") for v in pairs["loss_at_eager_steps"]],
        "compile s": [fmt(v, ".1f") for v in pairs["compile_s"]],
        "recompiles": [fmt(v, ".0f") for v in pairs["recompiles"]],
        "graphs": [fmt(v, ".0f") for v in pairs["graphs"]],
    })
    return html.frame_table(shown, text_columns=("cell", "precision"),
                            row_attrs=[{"precision": p} for p in pairs["precision"]])


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point surely beats on both counts, by memory: a point is off the front only
    where another needs no more memory and its throughput interval lies wholly above this one's
    (throughput_low/high; a point without an interval is its own). A speed difference inside the
    noise never pushes a cell off the front."""
    low = points["throughput_low"].fillna(points["throughput"]).to_numpy(dtype=float)
    high = points["throughput_high"].fillna(points["throughput"]).to_numpy(dtype=float)
    memory = points["peak_mib"].to_numpy(dtype=float)
    beaten = ((memory[None, :] <= memory[:, None]) & (low[None, :] > high[:, None])).any(axis=1)
    return points[~beaten].sort_values(["peak_mib", "throughput"], ascending=[True, False])


def memory_throughput_chart(per_cell: pd.DataFrame) -> Chart:
    """Peak memory against throughput on the fewest GPUs measured, the Pareto front drawn through."""
    title = "Peak memory vs throughput"
    points = per_cell.dropna(subset=["throughput", "peak_mib"])
    if points.empty:
        return Chart(title, None, "No cell finished with both a throughput and a peak memory.")
    gpus = int(points["gpus"].min())
    points = points[points["gpus"] == gpus]
    hardware = str(points["hardware"].iloc[0])
    front = pareto_front(points)
    fig = _figure()
    fig.add_trace(go.Scatter(x=front["peak_mib"], y=front["throughput"], mode="lines", name="Pareto front",
                             showlegend=False, line=dict(color="#888", dash="dash", shape="hv"), hoverinfo="skip"))
    for precision in sorted(points["precision"].unique(), key=display_rank):
        part = points[points["precision"] == precision]
        symbols = [SYMBOLS.get(ac, "square") + ("-open" if compiled else "")
                   for ac, compiled in zip(part["activation_checkpointing"], part["compiled"])]
        fig.add_trace(go.Scatter(
            x=part["peak_mib"], y=part["throughput"], mode="markers+text", name=precision, meta=precision,
            text=[f"ga{a}" for a in part["grad_accum"]], textposition="top center", textfont=dict(size=9),
            marker=dict(color=color_of(precision), symbol=symbols, size=11,
                        line=dict(width=1.5, color=color_of(precision))),
            hovertext=part["cell"].astype(str),
            hovertemplate="%{x:,.1f} MiB, %{y:,.4~g} samples/s<br>%{hovertext}<extra></extra>"))
    measure = points["memory_measure"].dropna()
    label = {"torch_max_reserved_bytes": "PyTorch reserved", "torch_max_allocated_bytes": "PyTorch allocated",
             "host_rss_growth_bytes": "host RSS growth", "host_rss_peak_bytes": "host RSS",
             "nvml_process_peak_bytes": "NVML"}.get(measure.iloc[0] if len(measure) else "", "headline measure")
    fig.update_xaxes(title_text=f"peak memory, MiB ({label})")
    fig.update_yaxes(title_text="samples/s")
    note = (f"{ranks_label(gpus, hardware)}; one point per cell (median over repeats), labelled with its "
            "accumulation. Circles: no activation checkpointing, diamonds: checkpointing; open markers: "
            "compiled. The dashed line is the Pareto front: no cell on it is beaten on both memory and speed, "
            "a speed counting as beaten only where the intervals of the two cells' throughputs do not overlap.")
    if points["hardware"].astype(str).str.startswith("CPU").any():
        note += " On a CPU the memory is the worker's RSS growth, and the speed says nothing about a GPU."
    return Chart(title, fig, note)


def _allocator_table(records: pd.DataFrame) -> str:
    rows = records[records["alloc_conf"].notna() | records["memory.allocator.fragmentation_bytes"].notna()]
    if rows.empty:
        return ""

    def number(value: object, scale: float = 1.0, spec: str = ".0f") -> str:
        return "–" if pd.isna(value) else format(float(value) / scale, spec)

    shown = pd.DataFrame({
        "cell": rows["cell"].astype(str), "status": rows["status"].astype(str),
        "alloc_conf": rows["alloc_conf"].fillna("(environment's)").astype(str),
        "in effect": rows["memory.allocator.settings_in_effect"].fillna("–").astype(str),
        "reserved - allocated peak, MiB": [number(v, MIB, ",.1f")
                                           for v in rows["memory.allocator.fragmentation_bytes"]],
        "alloc retries": [number(v) for v in rows["memory.allocator.num_alloc_retries"]],
        "OOMs": [number(v) for v in rows["memory.allocator.num_ooms"]],
        "method": rows["memory.allocator.method"].fillna("–").astype(str),
    })
    return ("<h4>Allocator</h4>" + html.frame_table(shown, text_columns=("cell", "status", "alloc_conf", "in effect",
                                                                         "method"),
                                                    wrap_columns=("method",),
                                                    row_attrs=[{"precision": p} for p in rows["precision"]]))


def _block(model: str, hardware: str, content: str) -> str:
    return (f'<div{html.attrs({"model": model, "hardware": hardware})}>'
            f"<h3>{html.esc(model)} · {html.esc(hardware)}</h3>{content}</div>")


def compile_section(records: pd.DataFrame, pairs: list[tuple[str, str]]) -> str:
    compiled = records[records["compiled"]]
    if compiled.empty:
        return ('<p class="note">No compiled cell in these records (bench --compile off,on, or trainkit run '
                "--compile).</p>")
    parts = []
    for n, (model, hardware) in enumerate(pairs):
        rows = records[(records["model"] == model) & (records["hardware"] == hardware)]
        if not rows["compiled"].any():
            continue
        table = compile_pairs(cells(rows))
        content = html.chart(compile_chart(table), div_id=f"compile-{n}")
        if not table.empty:
            content += _compile_table(table)
        not_ok = rows[rows["compiled"] & (rows["status"] != "ok")]
        if not not_ok.empty:
            content += (f'<p class="note">{len(not_ok)} compiled record{"s" if len(not_ok) > 1 else ""} did not '
                        "finish: see “Cells that did not finish”.</p>")
        parts.append(_block(model, hardware, content))
    return "".join(parts)


def pareto_section(records: pd.DataFrame, pairs: list[tuple[str, str]]) -> str:
    parts = []
    for n, (model, hardware) in enumerate(pairs):
        rows = records[(records["model"] == model) & (records["hardware"] == hardware)]
        content = html.chart(memory_throughput_chart(cells(rows)), div_id=f"pareto-{n}") + _allocator_table(rows)
        parts.append(_block(model, hardware, content))
    return "".join(parts)


def fp8_section(records: pd.DataFrame) -> str:
    fp8 = records[records["precision"].astype(str).str.startswith("fp8")]
    if fp8.empty:
        return '<p class="note">No FP8 cell in these records.</p>'
    parts = []
    converted = fp8[fp8["precision_details.recipe"].notna()]
    if not converted.empty:
        def layers(value: object) -> str:
            return ", ".join(value) if isinstance(value, list) and value else "none"

        def skipped(value: object) -> str:
            if not isinstance(value, list) or not value:
                return "none"
            return "; ".join(f"{s.get('layer')} ({s.get('reason')})" for s in value if isinstance(s, dict))

        shown = pd.DataFrame({
            "cell": converted["cell"].astype(str), "status": converted["status"].astype(str),
            "recipe": converted["precision_details.recipe"].astype(str),
            "converted share of linear FLOPs": [f"{v:.1%}" if pd.notna(v) else "–"
                                                for v in converted["precision_details.converted_linear_flop_share"]],
            "converted layers": [str(len(v)) if isinstance(v, list) else "–"
                                 for v in converted["precision_details.converted_layers"]],
            "skipped layers": [skipped(v) for v in converted["precision_details.skipped_layers"]],
            "converted": [layers(v) for v in converted["precision_details.converted_layers"]],
        })
        parts.append(html.frame_table(shown, text_columns=("cell", "status", "recipe", "skipped layers", "converted"),
                                      wrap_columns=("skipped layers", "converted"),
                                      row_attrs=[{"model": m, "hardware": h, "precision": p} for m, h, p in zip(
                                          converted["model"], converted["hardware"], converted["precision"])]))
    refused = fp8[fp8["status"] == "unsupported"]
    if not refused.empty:
        reasons = refused.groupby(refused["status_detail"].fillna("").astype(str)).size()
        items = "".join(f"<li>{n} cell{'s' if n > 1 else ''}: {html.esc(reason)}</li>" for reason, n in reasons.items())
        parts.append(f'<p class="note">FP8 cells that could not run here:</p><ul class="note">{items}</ul>')
    return "".join(parts)


def sections(records: pd.DataFrame, pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The bodies of this module's sections of the page, by key (SECTIONS)."""
    return {"compile": compile_section(records, pairs), "pareto": pareto_section(records, pairs),
            "fp8": fp8_section(records)}
