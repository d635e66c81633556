"""The loss-parity section: a `python -m trainkit parity` document as charts and a table.

Per model: the seed-mean training-loss curve of every precision over fp32's band (shaded), the
target loss as a line, and one row per precision: its verdict, eval loss +- its seeds' spread
against fp32's band, how far past the band it lies, steps and time to the target, throughput and
effective speedup, the memory its weights, master copy and optimizer state take, and the
diagnostics beside fp32's, with the one that stands out named under a `better` or `worse` row.

`python -m reports build parity.json` renders a page of this section alone; given result files
too, it adds the section to their report. No torch here.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from trainkit.engine.precision_facts import color_of, display_rank
from trainkit.engine.schema import MEMORY_NAMES, JsonFileError, read_json

from . import figures, html
from .figures import Chart
from .records import InputError, expand

PARITY_SCHEMA = "trainkit.parity/1"  # the parity command's PARITY_SCHEMA, without importing its run code
MIB = 2**20
VERDICT_CLASS = {"within-noise": "v-fixed", "better": "v-noisy", "worse": "v-regressed", "no-verdict": "v-failed"}
NOTE = ("Each precision trained every seed fp32 did, on one synthetic task, until fp32's loss flattened. The band "
        "is fp32's seed noise; a loss below it is `better`, which means the numerics changed (the optimizer no "
        "longer computes what fp32's does), never a win: the diagnostic that stands out is named under the row.")


def is_parity(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("schema") == PARITY_SCHEMA and isinstance(doc.get("models"), dict)


def split(paths: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(parity documents, the other files) among the files and directories named."""
    docs, others = [], []
    for path in expand(paths):
        doc = None
        if path.endswith(".json") and os.path.isfile(path):
            try:
                doc = read_json(path, "parity document")
            except JsonFileError:
                doc = None  # not a parity document: the results reader says what is wrong with it
        if is_parity(doc):
            docs.append({**doc, "source": path})  # type: ignore[dict-item]
        else:
            others.append(path)
    return docs, others


def _num(value: Any, fmt: str, missing: str = "–") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return missing
    return format(value, fmt)


def _share(value: Any) -> str:
    return _num(value, ".1%") if isinstance(value, (int, float)) and (value == 0 or value >= 0.001) else \
        _num(value, ".2%")


def rows(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per (model, precision) with the raw figures (the CSV)."""
    out = []
    for model, block in doc["models"].items():
        ref = block["reference"]
        for precision, e in sorted(block["precisions"].items(), key=lambda kv: display_rank(kv[0])):
            diag, memory = e.get("diagnostics") or {}, e.get("memory") or {}
            out.append({
                "model": model, "precision": precision, "verdict": e["verdict"], "decided_by": e.get("decided_by"),
                "eval_loss": e.get("eval_loss"), "eval_loss_sd": e.get("eval_loss_sd"),
                "band_low": ref.get("band", [None, None])[0], "band_high": ref.get("band", [None, None])[1],
                "difference": e.get("difference"), "distance_band_widths": e.get("distance_band_widths"),
                "curve_below_band_share": e.get("curve_below_band_share"),
                "curve_above_band_share": e.get("curve_above_band_share"),
                "steps_to_target": e.get("steps_to_target"), "target_loss": (block.get("target") or {}).get("loss"),
                "step_time_s": e.get("step_time_s"), "time_to_target_s": e.get("time_to_target_s"),
                "throughput_speedup": e.get("throughput_speedup"), "effective_speedup": e.get("effective_speedup"),
                "param_bytes": memory.get("param_bytes"), "master_bytes": memory.get("master_bytes"),
                "optimizer_state_bytes": memory.get("optimizer_state_bytes"), "peak_bytes": memory.get("peak_bytes"),
                "peak_measure": memory.get("peak_measure"),
                **{k: diag.get(k) for k in ("second_moment_zero_share", "grad_underflow_share", "grad_nonfinite_count",
                                            "skipped_share", "unchanged_share", "update_to_weight_p90",
                                            "update_over_lr_p90")},
                "named": e.get("named") or e.get("reason") or "",
                "flags": [f["text"] for f in e.get("flags") or []],
                "seeds": len(e.get("cells") or []),
            })
    return pd.DataFrame(out)


def _mib(value: Any) -> str:
    return _num(value / MIB if isinstance(value, (int, float)) else None, ",.2f")


def _weights_text(row: pd.Series) -> str:
    """Bytes the weights, their master copy and the optimizer state take: the floor of any peak."""
    parts = [f"{_mib(row['param_bytes'])} weights"]
    if isinstance(row["master_bytes"], (int, float)) and row["master_bytes"] > 0:
        parts.append(f"+ {_mib(row['master_bytes'])} fp32 masters")
    parts.append(f"+ {_mib(row['optimizer_state_bytes'])} optimizer")
    return " ".join(parts)


TABLE_TEXT = ("precision", "verdict", "decided by")


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """One model's rows as display strings."""
    def speed(value: Any) -> str:
        return _num(value, ".2f") + "×" if _num(value, ".2f") != "–" else "–"

    return pd.DataFrame({
        "precision": frame["precision"],
        "verdict": frame["verdict"],
        "decided by": frame["decided_by"].fillna(""),
        "eval loss ± sd": [f"{_num(m, '.4f')} ± {_num(s, '.4f')}" if _num(m, ".4f") != "–" else "–"
                           for m, s in zip(frame["eval_loss"], frame["eval_loss_sd"])],
        "Δ vs fp32": [_num(v, "+.4f") for v in frame["difference"]],
        "past band (widths)": [_num(v, "+.1f") for v in frame["distance_band_widths"]],
        "curve below / above band": [f"{_share(b)} / {_share(a)}" if _num(b, "g") != "–" else "–"
                                     for b, a in zip(frame["curve_below_band_share"], frame["curve_above_band_share"])],
        "steps to target": [_num(v, ".0f", "not reached") if _num(frame["eval_loss"][i], "g") != "–" else "–"
                            for i, v in zip(frame.index, frame["steps_to_target"])],
        "time to target": [_num(v, ".2f") + " s" if _num(v, "g") != "–" else "–" for v in frame["time_to_target_s"]],
        "throughput vs fp32": [speed(v) for v in frame["throughput_speedup"]],
        "effective vs fp32": [speed(v) for v in frame["effective_speedup"]],
        "weights + masters + optimizer (MiB)": [_weights_text(r) if _num(r["param_bytes"], "g") != "–" else "–"
                                                for _, r in frame.iterrows()],
        "peak MiB": [f"{_mib(b)} ({MEMORY_NAMES.get(m, m)})" if _num(b, "g") != "–" else "–"
                     for b, m in zip(frame["peak_bytes"], frame["peak_measure"])],
        "zero 2nd moment": [_share(v) for v in frame["second_moment_zero_share"]],
        "grad underflow": [_share(v) for v in frame["grad_underflow_share"]],
        "unchanged weights": [_share(v) for v in frame["unchanged_share"]],
        "update/weight p90": [_num(v, ".3g") for v in frame["update_to_weight_p90"]],
        "update/lr p90": [_num(v, ".3g") for v in frame["update_over_lr_p90"]],
        "skipped steps": [_share(v) for v in frame["skipped_share"]],
    }, index=frame.index)


def curves_chart(model: str, block: dict[str, Any]) -> Chart:
    """Seed-mean smoothed training loss per precision over fp32's band, and the target."""
    title = f"{model}: loss curves against fp32's band"
    ref = block["reference"]
    if "error" in ref:
        return Chart(title, None, f"No verdicts: {ref['error']}.")
    band = ref["curve_band"]
    steps = list(range(1, len(band["low"]) + 1))
    fig = figures._figure()
    # The band has no `meta`: the page's precision filter keeps it beside whichever curve it shows.
    fig.add_trace(go.Scatter(x=steps, y=band["high"], mode="lines", line=dict(width=0), hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(x=steps, y=band["low"], mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(76, 114, 176, 0.22)", name="fp32 band (±2 sd of seeds)",
                             hoverinfo="skip"))
    for precision, entry in sorted(block["precisions"].items(), key=lambda kv: display_rank(kv[0])):
        curve = entry.get("curve")
        if not curve:
            continue
        fig.add_trace(go.Scatter(x=steps[:len(curve)], y=curve, mode="lines", name=f"{precision} ({entry['verdict']})",
                                 meta=precision, line=dict(color=color_of(precision), width=2 if precision == "fp32"
                                                           else 1.5),
                                 hovertemplate=f"{precision} step %{{x}}: %{{y:.4f}}<extra></extra>"))
    target = (block.get("target") or {}).get("loss")
    if isinstance(target, (int, float)):
        fig.add_hline(y=target, line=dict(color="#555", dash="dot", width=1),
                      annotation_text=f"target {target:.4f}", annotation_position="top right")
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="training loss (seed mean, smoothed)")
    fig.update_layout(legend=dict(title_text="precision (verdict)", traceorder="normal"))
    target_info = block.get("target") or {}
    where = (f"fp32's at {target_info['fraction']:.0%} of the run" if target_info.get("fraction")
             else "given")
    note = (f"{ref['seeds']} fp32 seeds; curves are each step's training loss, a trailing mean over "
            f"{block['smoothing_steps']} steps, averaged over seeds. Target loss: {where}. Verdicts compare the "
            f"curves from step {block['compared_from_step']} on.")
    return Chart(title, fig, note)


def _named_notes(frame: pd.DataFrame) -> list[str]:
    """Under a better or worse row, the diagnostic named; under a row within noise, what stands out
    all the same (numerics that changed without moving this loss beyond fp32's noise)."""
    notes = []
    for verdict, named, standing_out in zip(frame["verdict"], frame["named"], frame["flags"]):
        if verdict in ("better", "worse"):
            notes.append(f"<span class=\"flag\">{html.esc(verdict)}</span>: {html.esc(named)}")
        elif verdict == "no-verdict":
            notes.append(html.esc(named))
        elif standing_out:
            notes.append("within noise, though it stands out: " + html.esc("; ".join(standing_out)))
        else:
            notes.append("")
    return notes


def _model_block(doc: dict[str, Any], model: str, n: int) -> str:
    block = doc["models"][model]
    frame = rows({**doc, "models": {model: block}})
    ref = block["reference"]
    parts = [f"<h3>{html.esc(model)}</h3>"]
    if "error" not in ref:
        flat = ref.get("flatness") or {}
        share = flat.get("last_quarter_share")
        parts.append(
            f'<p class="note">fp32 eval loss {ref["eval_loss_mean"]:.4f} ± {ref["eval_loss_sd"]:.4f} over '
            f'{ref["seeds"]} seeds; band {ref["band"][0]:.4f} – {ref["band"][1]:.4f} (width '
            f'{ref["band_width"]:.4f}). {block["steps"]} optimizer steps per cell'
            + (f"; fp32's loss fell {share:.1%} of its total drop in the last quarter of the run" if share is not None
               else "") + ".</p>")
    parts.append(html.chart(curves_chart(model, block), div_id=f"parity-{n}"))
    shown = table(frame)
    classes = {"verdict": [VERDICT_CLASS.get(v, "") for v in frame["verdict"]]}
    parts.append('<div class="wide">' + html.frame_table(
        shown, text_columns=TABLE_TEXT, cell_classes=classes, row_notes=_named_notes(frame),
        row_attrs=[{"precision": p} for p in frame["precision"]], css_class="compact") + "</div>")
    return f'<div{html.attrs({"model": model})}>' + "".join(parts) + "</div>"


def section(docs: list[dict[str, Any]]) -> str:
    """The parity section of a page: one block per model of every document."""
    parts = [f'<p class="note">{html.esc(NOTE)}</p>']
    n = 0
    for doc in docs:
        if doc.get("device") == "cpu" or str(doc.get("device", "")).startswith("cpu"):
            parts.append(f'<p class="warn">{html.esc(doc.get("timing_note", ""))}</p>')
        if len(docs) > 1:
            parts.append(f'<p class="note">From {html.esc(doc.get("source", ""))} ({html.esc(doc["created_at"])}).</p>')
        for model in doc["models"]:
            parts.append(_model_block(doc, model, n))
            n += 1
        rules = doc.get("rules") or {}
        if rules:
            items = "".join(f"<li><b>{html.esc(k.replace('_', ' '))}</b>: {html.esc(v)}</li>" for k, v in rules.items())
            parts.append(f'<details><summary>How the verdicts are made</summary><ul class="note">{items}</ul>'
                         "</details>")
    return "".join(parts)


def to_markdown(docs: list[dict[str, Any]]) -> str:
    lines = ["# trainkit loss parity", ""]
    for doc in docs:
        for model in doc["models"]:
            block = doc["models"][model]
            frame = rows({**doc, "models": {model: block}})
            shown = table(frame)[["precision", "verdict", "eval loss ± sd", "past band (widths)", "steps to target",
                                  "time to target", "throughput vs fp32", "effective vs fp32"]]
            shown = shown.assign(**{"diagnostic named": [n if v in ("better", "worse", "no-verdict") else ""
                                                         for v, n in zip(frame["verdict"], frame["named"])]})
            ref, target = block["reference"], (block.get("target") or {}).get("loss")
            head = ([f"fp32 eval loss {ref['eval_loss_mean']:.4f} ± {ref['eval_loss_sd']:.4f} over {ref['seeds']} "
                     f"seeds, band {ref['band'][0]:.4f} – {ref['band'][1]:.4f}; target loss {_num(target, '.4f')}; "
                     f"{block['steps']} optimizer steps per cell.", ""] if "error" not in ref
                    else [f"No verdicts: {ref['error']}.", ""])
            lines += [f"## {model}", "", *head, "| " + " | ".join(shown.columns) + " |",
                      "|" + "|".join("---" for _ in shown.columns) + "|"]
            lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
                      for row in shown.itertuples(index=False)]
            lines.append("")
    return "\n".join(lines)


def to_csv(docs: list[dict[str, Any]]) -> str:
    return pd.concat([rows(doc) for doc in docs], ignore_index=True).to_csv(index=False)


def page(docs: list[dict[str, Any]], title: str) -> str:
    """A page of the parity section alone."""
    if not docs:
        raise InputError("no parity document given")
    models = sorted({m for doc in docs for m in doc["models"]})
    precisions = sorted({p for doc in docs for b in doc["models"].values() for p in b["precisions"]},
                        key=display_rank)
    filters = html.select("model", "model", models) + html.select("precision", "precision", precisions)
    created = ", ".join(doc.get("created_at", "") for doc in docs)
    header = (f'<p class="note">Loss parity of {len(models)} model(s) on {html.esc(docs[0].get("device"))}, '
              f'seeds {html.esc(docs[0].get("seeds"))}; run {html.esc(created)}. Peak memory and per-cell records: '
              f"the records file beside the document.</p><div class=\"filters\">{filters}</div>")
    body = f'<section id="parity"><h2>Loss parity</h2>{section(docs)}</section>'
    return html.page(title, header, body)

