"""The loss-parity section: a `python -m trainkit parity` document (trainkit.parity/2) as charts and a table.

Per model: every precision's eval-loss difference from fp32, seed by seed paired, as its mean and
confidence interval against +- the equivalence margin (the verdict's picture); the seed-mean
training-loss curves over fp32's seed spread; and one row per precision: its verdict, the mean
difference and its interval, the margin, the test, the seeds that would decide an `inconclusive`,
steps and time to the target and the speedups with their intervals, the memory its weights, master
copy and optimizer state take, and the diagnostics beside fp32's, with the one that stands out named
under a `better` or `worse` row.

`python -m reports build parity.json` renders a page of this section alone; given result files
too, it adds the section to their report. No torch and no statistics library here: the document's
types are trainkit.analysis.parity.document.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from trainkit.analysis.parity.document import NO_VERDICT, OLD_SCHEMAS, PARITY_SCHEMA
from trainkit.engine.spec.precision_facts import color_of, display_rank
from trainkit.engine.spec.schema import MEMORY_NAMES, JsonFileError, read_json

from . import figures, html
from .figures import Chart
from .records import InputError, expand

MIB = 2**20
VERDICT_CLASS = {"equivalent": "v-fixed", "reference": "", "better": "v-noisy", "inconclusive": "v-noisy",
                 "worse": "v-regressed", NO_VERDICT: "v-failed"}
NOTE = ("Each precision trained every seed fp32 did (same initial weights, same samples), on one synthetic task, "
        "for its model's recipe of optimizer steps (whether fp32's loss had flattened by then is said per model). "
        "The verdict is on the per-seed differences of eval loss from fp32: their mean "
        "and confidence interval against ± the equivalence margin. Equivalent: the interval inside the margin; "
        "worse or better: entirely beyond it; inconclusive: it straddles the margin. `better` means the numerics "
        "changed (the optimizer no longer computes what fp32's does), never a win: the diagnostic that stands out is "
        "named under the row.")
DIAGNOSTIC_COLUMNS = ("second_moment_zero_share", "grad_underflow_share", "grad_nonfinite_count", "skipped_share",
                      "unchanged_share", "update_to_weight_p90", "update_over_lr_p90")


def is_parity(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("schema") == PARITY_SCHEMA and isinstance(doc.get("models"), dict)


def _load(path: str) -> Any:
    try:
        return read_json(path, "parity document")
    except JsonFileError:
        return None  # not a parity document: the results reader says what is wrong with it


def split(paths: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """(parity documents, the other files) among the files and directories named; a document of an
    older parity schema is refused with what to do (its verdicts came from another test)."""
    docs, others = [], []
    for path in expand(paths):
        doc = _load(path) if path.endswith(".json") and os.path.isfile(path) else None
        if isinstance(doc, dict) and doc.get("schema") in OLD_SCHEMAS:
            raise InputError(f"{path}: a {doc['schema']} parity document (verdicts from fp32's +-2 sd band); this "
                             f"reader takes {PARITY_SCHEMA}: judge its records again with `python -m trainkit parity "
                             f"--from-records {doc.get('records_file') or 'FILE.records.jsonl'} -o NEW.json`")
        if is_parity(doc):
            docs.append({**doc, "source": path})
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


def _iv(prefix: str, interval: dict[str, Any] | None) -> dict[str, Any]:
    """An interval's figures as flat columns `prefix`, `prefix_low`, `prefix_high`, `prefix_note`."""
    iv = interval or {}
    return {prefix: iv.get("mean"), f"{prefix}_low": iv.get("low"), f"{prefix}_high": iv.get("high"),
            f"{prefix}_note": iv.get("note")}


def _row(model: str, block: dict[str, Any], e: dict[str, Any]) -> dict[str, Any]:
    loss, timing = e.get("loss") or {}, e.get("timing") or {}
    diag, memory = e.get("diagnostics") or {}, e.get("memory") or {}
    return {
        "model": model, "precision": e["precision"], "verdict": e["verdict"], "decided_by": e.get("decided_by"),
        "eval_loss": e.get("eval_loss_mean"), "eval_loss_sd": e.get("eval_loss_sd"),
        "test": loss.get("test"), "confidence": block.get("confidence"),
        **_iv("difference", loss.get("difference")), "difference_sd": loss.get("difference_sd"),
        "relative_difference": loss.get("relative_difference"), "t_statistic": loss.get("t_statistic"),
        "p_value": loss.get("p_value"), "margin_loss": (block.get("margin") or {}).get("loss"),
        "more_seeds_to_decide": loss.get("more_seeds_to_decide"), "more_seeds_note": loss.get("more_seeds_note"),
        "seeds": len(e.get("cells") or []), "seeds_reached": timing.get("seeds_reached"),
        **_iv("steps_to_target", timing.get("steps_to_target")),
        **_iv("time_to_target_s", timing.get("time_to_target_s")),
        **_iv("throughput_speedup", timing.get("throughput_speedup")),
        **_iv("effective_speedup", timing.get("effective_speedup")),
        "param_bytes": memory.get("param_bytes"), "master_bytes": memory.get("master_bytes"),
        "optimizer_state_bytes": memory.get("optimizer_state_bytes"), "peak_bytes": memory.get("peak_bytes"),
        "peak_measure": memory.get("peak_measure"),
        **{k: diag.get(k) for k in DIAGNOSTIC_COLUMNS},
        "unpaired": _unpaired_text(loss),
        "named": e.get("named") or e.get("reason") or "",
        "flags": [f["text"] for f in e.get("flags") or []],
    }


def _unpaired_text(loss: dict[str, Any]) -> str:
    """The seeds fp32 did not run and how they were judged (an independent set, Welch t), or ""."""
    seeds = loss.get("unpaired_seeds") or []
    if not seeds:
        return ""
    test = loss.get("unpaired") or {}
    iv = test.get("difference") or {}
    if not test or iv.get("mean") is None:
        return f"{', '.join(map(str, seeds))}: one seed, no test (no equivalence claimed over it)"
    return (f"{', '.join(map(str, seeds))}: {iv['mean']:+.5f} [{_num(iv.get('low'), '+.5f')}, "
            f"{_num(iv.get('high'), '+.5f')}] (Welch t) {test.get('verdict')}")


def rows(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per (model, precision) with the raw figures (the CSV)."""
    return pd.DataFrame([_row(model, block, e) for model, block in doc["models"].items()
                         for _, e in sorted(block["precisions"].items(), key=lambda kv: display_rank(kv[0]))])


def _mib(value: Any) -> str:
    return _num(value / MIB if isinstance(value, (int, float)) else None, ",.2f")


def _weights_text(row: pd.Series) -> str:
    """Bytes the weights, their master copy and the optimizer state take: the floor of any peak."""
    if _num(row["param_bytes"], "g") == "–":
        return "–"
    parts = [f"{_mib(row['param_bytes'])} weights"]
    if isinstance(row["master_bytes"], (int, float)) and row["master_bytes"] > 0:
        parts.append(f"+ {_mib(row['master_bytes'])} fp32 masters")
    parts.append(f"+ {_mib(row['optimizer_state_bytes'])} optimizer")
    return " ".join(parts)


def _interval_text(row: pd.Series, prefix: str, fmt: str, unit: str = "") -> str:
    """`mean [low, high]`, the note where the figure is null (e.g. `not reached in 1 of 5 seeds`)."""
    mean, low, high, note = row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"], row[f"{prefix}_note"]
    if _num(mean, "g") == "–":
        return note if isinstance(note, str) and note else "–"
    if _num(low, "g") == "–":
        return f"{mean:{fmt}}{unit}"
    return f"{mean:{fmt}}{unit} [{low:{fmt}}, {high:{fmt}}]"


def _more_text(row: pd.Series) -> str:
    if row["verdict"] != "inconclusive":
        return ""
    more = row["more_seeds_to_decide"]
    return f"+{int(more)}" if _num(more, "g") != "–" else str(row["more_seeds_note"] or "–")


TABLE_TEXT = ("precision", "verdict", "test", "seeds fp32 did not run")


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """One model's rows as display strings."""
    confidence = next((c for c in frame["confidence"] if _num(c, "g") != "–"), 0.95)
    return pd.DataFrame({
        "precision": frame["precision"],
        "verdict": frame["verdict"],
        f"Δ eval loss vs fp32 [{confidence:.0%} CI]": [_interval_text(r, "difference", "+.5f")
                                                       for _, r in frame.iterrows()],
        "margin": [f"±{_num(m, '.5f')}" if _num(m, "g") != "–" else "–" for m in frame["margin_loss"]],
        "test": frame["test"].fillna("–"),
        # A shift can be detectable (p small) and still inside the margin: the verdict is the margin's.
        "p (no difference)": [_num(v, ".2g") for v in frame["p_value"]],
        "seeds to decide": [_more_text(r) for _, r in frame.iterrows()],
        "seeds fp32 did not run": [u or "–" for u in frame["unpaired"]],
        "eval loss ± sd": [f"{_num(m, '.4f')} ± {_num(s, '.4f')}" if _num(m, ".4f") != "–" else "–"
                           for m, s in zip(frame["eval_loss"], frame["eval_loss_sd"])],
        "steps to target": [_interval_text(r, "steps_to_target", ".0f") for _, r in frame.iterrows()],
        "time to target (s)": [_interval_text(r, "time_to_target_s", ".2f") for _, r in frame.iterrows()],
        "throughput vs fp32": [_interval_text(r, "throughput_speedup", ".2f", "×") for _, r in frame.iterrows()],
        "effective vs fp32": [_interval_text(r, "effective_speedup", ".2f", "×") for _, r in frame.iterrows()],
        "weights + masters + optimizer (MiB)": [_weights_text(r) for _, r in frame.iterrows()],
        "peak MiB": [f"{_mib(b)} ({MEMORY_NAMES.get(m, m)})" if _num(b, "g") != "–" else "–"
                     for b, m in zip(frame["peak_bytes"], frame["peak_measure"])],
        "zero 2nd moment": [_share(v) for v in frame["second_moment_zero_share"]],
        "grad underflow": [_share(v) for v in frame["grad_underflow_share"]],
        "unchanged weights": [_share(v) for v in frame["unchanged_share"]],
        "update/weight p90": [_num(v, ".3g") for v in frame["update_to_weight_p90"]],
        "update/lr p90": [_num(v, ".3g") for v in frame["update_over_lr_p90"]],
        "skipped steps": [_share(v) for v in frame["skipped_share"]],
    }, index=frame.index)


def differences_chart(model: str, block: dict[str, Any]) -> Chart:
    """Each precision's mean eval-loss difference from fp32 with its interval, against +- margin."""
    title = f"{model}: eval loss minus fp32's, seed-paired, against the margin"
    margin = (block.get("margin") or {}).get("loss")
    judged = [(p, e) for p, e in sorted(block["precisions"].items(), key=lambda kv: display_rank(kv[0]))
              if e.get("loss") and e["verdict"] != "reference" and e["loss"]["difference"]["mean"] is not None]
    if not judged or margin is None:
        return Chart(title, None, "No precision has an eval-loss difference to show.")
    fig = figures._figure()
    for precision, e in judged:
        iv = e["loss"]["difference"]
        has_ci = iv["low"] is not None
        fig.add_trace(go.Scatter(
            x=[iv["mean"]], y=[precision], mode="markers", name=f"{precision} ({e['verdict']})", meta=precision,
            marker=dict(color=color_of(precision), size=10),
            error_x=dict(type="data", symmetric=False, array=[iv["high"] - iv["mean"]] if has_ci else [0],
                         arrayminus=[iv["mean"] - iv["low"]] if has_ci else [0]),
            hovertemplate=f"{precision}: %{{x:+.5f}} ({e['verdict']})<extra></extra>"))
    for x, dash in ((-margin, "dash"), (0.0, "dot"), (margin, "dash")):
        fig.add_vline(x=x, line=dict(color="#555", dash=dash, width=1))
    fig.update_xaxes(title_text="eval loss − fp32's eval loss (same seed), mean and interval")
    fig.update_yaxes(autorange="reversed")
    # Room for the longest precision name on the y axis (half-bf16-master).
    fig.update_layout(legend=dict(title_text="precision (verdict)"), margin=dict(l=130))
    confidence = block.get("confidence") or 0.95
    note = (f"Dots: mean over seeds of this precision's eval loss minus fp32's on the same seed; bars: the "
            f"{confidence:.0%} interval; dashed lines: ± the margin ({block['margin'].get('described')}).")
    return Chart(title, fig, note)


def curves_chart(model: str, block: dict[str, Any]) -> Chart:
    """Seed-mean smoothed training loss per precision over fp32's seed spread, and the target."""
    title = f"{model}: loss curves over fp32's seed spread"
    ref = block["reference"]
    if ref.get("error"):
        return Chart(title, None, f"No verdicts: {ref['error']}.")
    band = ref["curve_band"]
    steps = list(range(1, len(band["low"]) + 1))
    fig = figures._figure()
    # The spread has no `meta`: the page's precision filter keeps it beside whichever curve it shows.
    fig.add_trace(go.Scatter(x=steps, y=band["high"], mode="lines", line=dict(width=0), hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(x=steps, y=band["low"], mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(76, 114, 176, 0.22)", name="fp32 seeds: mean ± 2 sd (spread)",
                             hoverinfo="skip"))
    for precision, entry in sorted(block["precisions"].items(), key=lambda kv: display_rank(kv[0])):
        curve = entry.get("curve")
        if not curve:
            continue
        fig.add_trace(go.Scatter(x=steps[:len(curve)], y=curve, mode="lines", name=f"{precision} ({entry['verdict']})",
                                 meta=precision, line=dict(color=color_of(precision), width=2 if precision == "fp32"
                                                           else 1.5),
                                 hovertemplate=f"{precision} step %{{x}}: %{{y:.4f}}<extra></extra>"))
    targets = [t for t in ((block.get("target") or {}).get("loss_per_seed") or {}).values() if t is not None]
    if targets:
        mean_target = sum(targets) / len(targets)
        fig.add_hline(y=mean_target, line=dict(color="#555", dash="dot", width=1),
                      annotation_text=f"target (seed mean) {mean_target:.4f}", annotation_position="top right")
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(title_text="training loss (seed mean, smoothed)")
    fig.update_layout(legend=dict(title_text="precision (verdict)", traceorder="normal"))
    target = block.get("target") or {}
    where = (f"per seed, its fp32 twin's at {target['fraction']:.0%} of the run" if target.get("fraction")
             else "given")
    note = (f"{ref['seeds']} fp32 seeds; curves are each step's training loss, a trailing mean over "
            f"{block['smoothing_steps']} steps, averaged over seeds. Target loss: {where}. The spread is a picture "
            "of fp32's seeds, not the test: the verdict is on the paired eval-loss differences above.")
    return Chart(title, fig, note)


def _named_notes(frame: pd.DataFrame) -> list[str]:
    """Under a better or worse row, the diagnostic named; under an inconclusive one, what would decide
    it; under an equivalent one, what stands out all the same (numerics that changed without moving
    this loss beyond the margin)."""
    notes = []
    for _, row in frame.iterrows():
        verdict, named, standing_out = row["verdict"], row["named"], row["flags"]
        if verdict in ("better", "worse"):
            notes.append(f"<span class=\"flag\">{html.esc(verdict)}</span>: {html.esc(named)}")
        elif verdict == NO_VERDICT:
            notes.append(html.esc(named))
        elif verdict == "inconclusive":
            more = _more_text(row)
            notes.append(html.esc(f"inconclusive: the interval straddles the margin; {more} seeds would decide it "
                                  "if the differences keep their mean and sd" if more.startswith("+")
                                  else f"inconclusive: {more}"))
        elif standing_out:
            notes.append(f"{html.esc(verdict)}, though it stands out: " + html.esc("; ".join(standing_out)))
        else:
            notes.append("")
    return notes


def _head(block: dict[str, Any]) -> str:
    """fp32's loss, the margin and the length of the run, in one sentence."""
    ref = block["reference"]
    if ref.get("error"):
        return f"No verdicts: {ref['error']}."
    margin = block.get("margin") or {}
    return (f"fp32 eval loss {ref['eval_loss_mean']:.4f} ± {ref['eval_loss_sd']:.4f} (sd over {ref['seeds']} seeds); "
            f"margin ±{_num(margin.get('loss'), '.5f')} ({margin.get('described')}); {run_length_sentence(block)}.")


FLAT_SHARE = 0.05
"""fp32's loss has flattened when its last quarter holds at most this share of its total drop."""


def run_length_sentence(block: dict[str, Any]) -> str:
    """How long the cells trained and whether fp32's loss had flattened by then, from its seed-mean
    curve (the last quarter's share of the total drop): a fixed recipe may stop while it still falls."""
    share = ((block.get("reference") or {}).get("flatness") or {}).get("last_quarter_share")
    steps = f"{block['steps']} optimizer steps per cell"
    if share is None:
        return steps
    drop = f"{share * 100:.1f} % of its total drop in the last quarter of the run"
    if share <= FLAT_SHARE:
        return f"{steps}, by when fp32's loss had flattened ({drop})"
    return (f"{steps}, a fixed recipe: fp32's loss was still falling ({drop}), so the verdicts are on a model "
            "still learning")


def _model_block(doc: dict[str, Any], model: str, n: int) -> str:
    block = doc["models"][model]
    frame = rows({**doc, "models": {model: block}})
    parts = [f"<h3>{html.esc(model)}</h3>", f'<p class="note">{html.esc(_head(block))}</p>']
    for chart, div_id in ((differences_chart(model, block), f"parity-diff-{n}"),
                          (curves_chart(model, block), f"parity-{n}")):
        parts.append(f"<h4>{html.esc(chart.title)}</h4>" + html.chart(chart, div_id=div_id))
    classes = {"verdict": [VERDICT_CLASS.get(v, "") for v in frame["verdict"]]}
    parts.append('<div class="wide">' + html.frame_table(
        table(frame), text_columns=TABLE_TEXT, cell_classes=classes, row_notes=_named_notes(frame),
        row_attrs=[{"precision": p} for p in frame["precision"]], css_class="compact") + "</div>")
    return f'<div{html.attrs({"model": model})}>' + "".join(parts) + "</div>"


def section(docs: list[dict[str, Any]]) -> str:
    """The parity section of a page: one block per model of every document."""
    parts = [f'<p class="note">{html.esc(NOTE)}</p>']
    n = 0
    for doc in docs:
        if str(doc.get("device", "")).startswith("cpu"):
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


MARKDOWN_COLUMNS = ("precision", "verdict", "margin", "test", "p (no difference)", "seeds to decide", "steps to target",
                    "time to target (s)", "throughput vs fp32", "effective vs fp32")


def to_markdown(docs: list[dict[str, Any]]) -> str:
    lines = ["# trainkit loss parity", ""]
    for doc in docs:
        for model, block in doc["models"].items():
            frame = rows({**doc, "models": {model: block}})
            full = table(frame)
            difference = next(c for c in full.columns if c.startswith("Δ eval loss"))
            shown = full[[MARKDOWN_COLUMNS[0], MARKDOWN_COLUMNS[1], difference, *MARKDOWN_COLUMNS[2:]]]
            shown = shown.assign(**{"diagnostic named": [n if v in ("better", "worse", NO_VERDICT) else ""
                                                         for v, n in zip(frame["verdict"], frame["named"])]})
            lines += [f"## {model}", "", _head(block), "", "| " + " | ".join(shown.columns) + " |",
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
