"""`build_report`: result files -> one self-contained HTML page, plus the summary as CSV and Markdown.

    from trainkit.reports.build import build_report
    paths = build_report(["results.jsonl", "bench.json"], "reports/out/report.html")
    # {"html": ".../report.html", "csv": ".../report.csv", "markdown": ".../report.md"}

The page answers, per model and hardware: what each precision does to throughput, loss and
memory (summary), how throughput and memory grow with batch size, what accumulation costs at a
fixed effective batch, how the loss curves of the precisions compare, what the fp16 loss scaler
did, how throughput scales across GPUs, what torch.compile gains per precision and what it costs
to compile, which cells fit in the least memory for their speed (activation checkpointing,
accumulation, precision), which layers FP8 converted, where each cell's step time goes (the profile: phases,
top operators, MFU, energy, links to traces and memory snapshots), which cells did not finish and
why, and on what environment each run was measured. Given a `trainkit parity` document, it adds
the loss-parity section (trainkit.reports.parity); given only parity documents, the page is that section.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import pandas as pd

from trainkit.analysis.answer_records import answers_from_records
from trainkit.engine.spec.precision_facts import display_rank

from . import figures, html, parity
from .answer.card import card as answer_card
from .flags import flag_share_sentence
from .load import pooling, to_frame
from .plan import read_plans
from .plan import section as plan_section
from .records import Run, all_records, fingerprint, read_runs
from .sections import frontier, profiles
from .summary import (
    FLAG_LEGEND,
    FLAG_MARK,
    PARITY_POINTER,
    TEXT_HEADERS,
    formatted,
    group_title,
    groups,
    summary,
    to_markdown,
)

SECTIONS = (("summary", "Summary"), ("throughput", "Throughput vs batch size"), ("memory", "Peak memory"),
            ("accumulation", "Accumulation"), ("loss", "Loss curves"), ("scaler", "Loss scaling"),
            ("scaling", "Scaling"), *frontier.SECTIONS, ("profile", "Profile"),
            ("failures", "Cells that did not finish"), ("environment", "Environment"))
PARITY_SECTION = ("parity", "Loss parity")  # present when a `trainkit parity` document is among the inputs
OPEN_ROWS = 120  # past this many summary rows the tables start folded, so they do not bury the charts


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, hardware) pairs, each one block of every chart section."""
    return sorted({(str(m), str(h)) for m, h in zip(frame["model"], frame["hardware"]) if isinstance(m, str)})


PLANNER_SECTION = ("planner", "Memory planner")
"""Shown when the report is given plans (python -m trainkit plan's files)."""


def _header(runs: list[Run], frame: pd.DataFrame, sections: list[tuple[str, str]]) -> str:
    statuses = frame["status"].value_counts()
    not_ok = ", ".join(f"{n} {s}" for s, n in statuses.items() if s != "ok")
    counts = (f"{len(frame)} records of {frame['cell'].nunique()} cells from {len(runs)} "
              f"file{'s' if len(runs) != 1 else ''}: {statuses.get('ok', 0)} ok" + (f", {not_ok}" if not_ok else ""))
    models = sorted(frame["model"].dropna().astype(str).unique())
    hardware = sorted(frame["hardware"].astype(str).unique())
    precisions = sorted(frame["precision"].dropna().astype(str).unique(), key=display_rank)
    filters = "".join([html.select("model", "model", models), html.select("hardware", "hardware", hardware),
                       html.select("precision", "precision", precisions)])
    nav = "".join(f'<a href="#{key}">{html.esc(title)}</a>' for key, title in sections)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    pooled = pooling(frame)
    if pooled:
        counts += f". Pooled: {pooled}"
    return (f'<p class="note">{html.esc(counts)}. Generated {generated}.</p>'
            f'<div class="filters">{filters}</div><nav>{nav}</nav>')


def _summary_section(table: pd.DataFrame, frame: pd.DataFrame) -> str:
    parts = []
    if frame["hardware"].astype(str).str.startswith("CPU").any():
        parts.append(f'<p class="warn">{html.esc(cpu_banner(table, frame))}</p>')
    parts.append(_flag_summary(table))
    parts.append(f'<p class="note">{html.esc(PARITY_POINTER)}</p><p class="note">{html.esc(FLAG_LEGEND)}</p>')
    state = " open" if len(table) <= OPEN_ROWS else ""
    for group, rows in groups(table):
        shown = formatted(rows)
        classes = [status_class(s) for s in rows["status"]]
        doubted = {h: ["suspect" if v.endswith(FLAG_MARK) else "" for v in shown[h]] for h in shown.columns}
        parts.append(f'<div{html.attrs({"model": group["model"], "hardware": group["hardware"]})}>'
                     f"<details{state}><summary><h3>{html.esc(group_title(group))} "
                     f'<span class="note">({len(rows)} cells)</span></h3></summary>'
                     + html.frame_table(shown, text_columns=TEXT_HEADERS, row_classes=classes, cell_classes=doubted,
                                        wrap_columns=("flags",),
                                        row_attrs=[{"precision": p} for p in rows["precision"]])
                     + "</details></div>")
    return "".join(parts)


HALF_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16")
"""CPU instructions that run bf16 or fp16 math natively (oneDNN uses them); without them it is emulated."""


def cpu_banner(table: pd.DataFrame, frame: pd.DataFrame) -> str:
    """The CPU rows' banner, each clause from the data it speaks of: per CPU, whether it has native
    half-precision instructions (the records' env.cpu_flags) and which precision was fastest in how
    many of its shapes (the summary's throughput), so it never says "emulated or slow" above a table
    where bf16 is the fastest row on a CPU with avx512_bf16."""
    text = ("CPU rows are correctness and smoke rows, not speed claims: a CPU's speedups say nothing about a "
            "GPU's.")
    cpu = frame[frame["hardware"].astype(str).str.startswith("CPU")]
    ok = table[(table["status"] == "ok") & table["hardware"].astype(str).str.startswith("CPU")
               & table["throughput_samples_per_s"].notna()]
    for hardware, records in cpu.groupby("hardware", sort=False):
        flags = sorted({f for value in records.get("env.cpu_flags", pd.Series(dtype=object))
                        if isinstance(value, list) for f in value if f in HALF_CPU_FLAGS})
        known = records.get("env.cpu_flags", pd.Series(dtype=object)).map(lambda v: isinstance(v, list)).any()
        if flags:
            native = f"{hardware} has {', '.join(flags)}: its half-precision math runs natively"
        elif known:
            native = (f"{hardware} has none of {', '.join(HALF_CPU_FLAGS)}: its half-precision math is emulated "
                      "in fp32 instructions")
        else:
            native = f"{hardware}: its records do not say which instructions it has"
        mine = ok[ok["hardware"] == hardware]
        shapes = mine.groupby(["model", "gpus", "batch_size", "grad_accum", "variant"], dropna=False, sort=False)
        fastest = [str(g.loc[g["throughput_samples_per_s"].idxmax(), "precision"]) for _, g in shapes if len(g) > 1]
        if fastest:
            counts = pd.Series(fastest).value_counts()
            native += "; fastest per shape: " + ", ".join(f"{p} in {n} of {len(fastest)}" for p, n in counts.items())
        text += f" {native}."
    return text


def _flag_summary(table: pd.DataFrame) -> str:
    """A box above the tables counting the rows whose figures cannot be right or were measured on a
    loaded host (they must not be read plainly), and the share of rows carrying each flag."""
    flags = table["flags"].fillna("").astype(str)
    implausible = int(flags.str.contains("implausible").sum())
    doubted = int(table["flagged_figures"].fillna("").astype(bool).sum())
    shares = f'<p class="note">{html.esc(flag_share_sentence(table))}</p>'
    if not doubted:
        return shares
    what = f"{doubted} row{'s' if doubted != 1 else ''} hold figures in doubt ({FLAG_MARK})"
    if implausible:
        what += f", {implausible} of them physically implausible"
    return f'<p class="bad">{html.esc(what)}: read their flags before their numbers.</p>' + shares


def _chart_sections(table: pd.DataFrame, frame: pd.DataFrame) -> dict[str, str]:
    keys = ["throughput", "memory", "accumulation", "loss", "scaler", "scaling"]
    out = {k: [] for k in keys}
    for n, (model, hardware) in enumerate(_pairs(frame)):
        cells = table[(table["model"] == model) & (table["hardware"] == hardware)]
        records = frame[(frame["model"] == model) & (frame["hardware"] == hardware)]
        for key, chart in zip(keys, figures.charts_for(cells, records)):
            out[key].append(f'<div{html.attrs({"model": model, "hardware": hardware})}>'
                            f"<h3>{html.esc(model)} · {html.esc(hardware)}</h3>"
                            + html.chart(chart, div_id=f"{key}-{n}") + "</div>")
    return {k: "".join(v) for k, v in out.items()}


MISMATCH = "precision-mismatch"


def status_class(status: object) -> str:
    """A row's colour by its cell's status: amber for a cell that ran another precision than it
    declares (its figures are of another configuration), red for one that did not finish."""
    return "" if status == "ok" else "status-mismatch" if status == MISMATCH else "status-failed"


def _failures_section(frame: pd.DataFrame) -> str:
    failed = frame[frame["status"] != "ok"].sort_values(["model", "cell"])
    if failed.empty:
        return '<p class="note">Every cell finished.</p>'
    shown = pd.DataFrame({"cell": failed["cell"], "status": failed["status"],
                          "reason": failed["status_detail"].fillna("").astype(str),
                          "run": failed["run"], "finished": failed["finished_at"].fillna("")})
    rows = [{"model": m, "hardware": h, "precision": p}
            for m, h, p in zip(failed["model"], failed["hardware"], failed["precision"])]
    parts = [html.frame_table(shown, text_columns=shown.columns, wrap_columns=("reason",), row_attrs=rows,
                              row_classes=[status_class(s) for s in failed["status"]])]
    for (_, record), attrs in zip(failed.iterrows(), rows):
        observed = record.get("what_ran.rows")
        if record["status"] == MISMATCH and isinstance(observed, list) and observed:
            parts.append(_what_ran_table(str(record["cell"]), observed, attrs))
    return "".join(parts)


def _what_ran_table(cell: str, observed: list[dict[str, Any]], attrs: dict[str, Any]) -> str:
    """The dtypes a precision-mismatch cell's observed step used, against the declared ones."""
    verdicts = {True: "ok", False: "MISMATCH", None: "not observed"}
    table = pd.DataFrame({"tensor": [r.get("tensor") for r in observed],
                          "declared": [r.get("declared") for r in observed],
                          "observed": [r.get("observed") for r in observed],
                          "verdict": [verdicts.get(r.get("matches"), "") for r in observed],
                          "detail": [r.get("detail") or "" for r in observed]})
    classes = ["status-mismatch" if r.get("matches") is False else "" for r in observed]
    return (f'<div{html.attrs(attrs)}><h3>What ran in {html.esc(cell)}</h3>'
            + html.frame_table(table, text_columns=table.columns, wrap_columns=("detail",), row_classes=classes)
            + "</div>")


ENV_KEYS = ("gpu_name", "gpu_count", "driver", "cuda", "cudnn", "torch", "cpu", "cpu_count", "python",
            "hostname", "git_commit", "git_dirty")


NOT_RECORDED = "not recorded"


def environments(runs: list[Run]) -> pd.DataFrame:
    """One row per input file and distinct environment fingerprint in it, with the fuller environment
    and how many of the file's records were measured there."""
    rows = []
    for run in runs:
        seen: dict[str, dict[str, Any]] = {}
        for env in run.envs:
            env = env or run.machine_info.get("trainkit_env") or {}
            if not env:
                continue  # a cell refused before its worker reported an environment
            key = repr(sorted(fingerprint(env).items()))
            entry = seen.setdefault(key, {"run": run.label, "kind": run.kind, "records": 0,
                                          "fingerprint": ", ".join(f"{k}={v}" for k, v in fingerprint(env).items()),
                                          **{k: env.get(k) for k in ENV_KEYS}})
            entry["records"] += 1
        rows.extend(seen.values() or [{"run": run.label, "kind": run.kind, "records": len(run.envs),
                                       "fingerprint": NOT_RECORDED}])
    frame = pd.DataFrame(rows)
    if "git_commit" in frame:
        frame["git_commit"] = frame["git_commit"].map(lambda c: str(c)[:12] if isinstance(c, str) else c)
    return frame


def _environment_section(runs: list[Run]) -> str:
    envs = environments(runs)
    parts = []
    if envs.loc[envs["fingerprint"] != NOT_RECORDED, "fingerprint"].nunique() > 1:
        parts.append('<p class="warn">The runs were measured on different environments (fingerprint = GPU, '
                     "driver, CUDA, torch; on a CPU, the CPU and torch): compare their numbers with care.</p>")
    shown = envs.dropna(axis=1, how="all").fillna("").astype(str)
    parts.append(html.frame_table(shown, text_columns=shown.columns, wrap_columns=("fingerprint", "cpu")))
    return "".join(parts)


def answer_cards(runs: list[Run], parity_docs: list[dict[str, Any]] | None, sources: list[str]) -> str:
    """The answer card of each model and device (trainkit.analysis.answer_records), the page's first thing:
    its figures link to the summary, which lists the cells."""
    cards = []
    for doc in answers_from_records(all_records(runs), parity_docs or [], sources):
        data = {**doc.to_dict(), "link_to": "#parity" if parity_docs else "#summary"}
        cards.append(answer_card(data))
    return "".join(cards)


def render(runs: list[Run], title: str = "trainkit report", base_dir: str = ".",
           parity_docs: list[dict[str, Any]] | None = None,
           plans: list[dict[str, Any]] | None = None, sources: list[str] | None = None) -> tuple[str, pd.DataFrame]:
    """The page and the summary table of some runs; links to profile files are made relative to
    base_dir, the page's directory, where they lie under it. The answer cards open it; parity
    documents add their section, plans the memory planner's. `sources` are the input files (named in
    the cards' commands)."""
    frame = to_frame(all_records(runs))
    table = summary(frame)
    charts = _chart_sections(table, frame)
    bodies = {"summary": _summary_section(table, frame), **charts,
              "profile": profiles.section(frame, _pairs(frame), base_dir, OPEN_ROWS),
              **frontier.sections(frame, _pairs(frame)),
              "failures": _failures_section(frame), "environment": _environment_section(runs)}
    sections = list(SECTIONS)
    if parity_docs:
        bodies["parity"] = parity.section(parity_docs)
        sections.insert(sections.index(("loss", "Loss curves")) + 1, PARITY_SECTION)
    if plans:
        bodies[PLANNER_SECTION[0]] = plan_section(plans)
        sections.insert(sections.index(("failures", "Cells that did not finish")), PLANNER_SECTION)
    body = "".join(f'<section id="{key}"><h2>{html.esc(name)}</h2>{bodies[key]}</section>' for key, name in sections)
    cards = answer_cards(runs, parity_docs, sources or [])
    return html.page(title, cards + _header(runs, frame, sections), body), table


def build_report(inputs: list[str], output_html: str, *, title: str = "trainkit report",
                 plans: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """Read result files (pytest-benchmark JSON, results JSON lines, single records, or directories
    of them), write the HTML report and, beside it, the summary as CSV and Markdown (same stem).
    `plans` (files `python -m trainkit plan` wrote) add the memory planner's section.
    Returns the paths written: {"html": ..., "csv": ..., "markdown": ...}. Raises records.InputError
    (one line) on a missing, malformed or empty input, or an output that cannot be written."""
    parity_docs, result_files = parity.split(list(inputs))
    if parity_docs and not result_files:  # a parity run on its own (`trainkit parity --report`)
        return html.write_page(output_html, parity.page(parity_docs, title), parity.to_markdown(parity_docs),
                               parity.to_csv(parity_docs), "report")
    runs = read_runs(result_files)
    read = None
    if plans:
        read = read_plans(plans)
    page, table = render(runs, title, base_dir=os.path.dirname(os.path.abspath(output_html)), parity_docs=parity_docs,
                         plans=read, sources=list(inputs))
    return html.write_page(output_html, page, to_markdown(table), table.to_csv(index=False), "report")
