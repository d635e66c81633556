"""The profile section: where each cell's step time goes, how well it used the GPU, and the files
to open for the rest.

Per (model, hardware) pair: the phase bars (figures.phase_bars), then one table row per record
that has anything to show: its phases, MFU, energy per sample, the share of operator time spent
in fp16/bf16, the GPU's clocks and whether it throttled, its top operators, and links to its
Chrome trace (Perfetto, chrome://tracing) and CUDA allocator snapshot (pytorch.org/memory_viz).

Links are relative to the report when the file lies under the report's directory, so the
directory keeps working when moved or archived, and absolute (file://) otherwise. A record holds
absolute paths; a relative one is read against the current directory, then against the
directory of the results file that holds the record.
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd

from trainkit.engine.spec.precision_facts import display_rank
from trainkit.engine.spec.schema import DATA_BOUND_SHARE

from .. import figures, html
from ..load import PHASES
from ..summary import TEXT_HEADERS, mfu_text

TOP_OPS = 10  # operators listed per record (the record keeps up to 15)
INLINE_OPS = 3  # of them in view before a click
OP_NAME_CHARS = 40  # of an operator's name in that line (the whole name on hover)
VIEWERS = ('Open a trace in <a href="https://ui.perfetto.dev">Perfetto</a> ("Open trace file") or '
           "chrome://tracing, and an allocator snapshot at "
           '<a href="https://pytorch.org/memory_viz">pytorch.org/memory_viz</a> (drag the file in): '
           "both load the file into the page, nothing is uploaded.")
PHASES_NOTE = ("Each profiled cell ran a few extra optimizer steps after its timed ones (so profiling never "
               "slows the figures above) and timed their phases: data = getting the step's micro-batches; "
               "forward; backward (with DDP's gradient all-reduce); optimizer = unscale, clip, step, zero_grad. "
               f"A cell is data-bound when data takes more than {DATA_BOUND_SHARE:.0%} of the step.")
NOT_PROFILED = ("No cell was profiled. The phase breakdown is on by default (--phase-steps N, 0 turns it "
                "off); --profile adds a torch.profiler trace and top operators per cell, --memory-snapshot "
                "a CUDA allocator snapshot.")


def _number(value: Any) -> float | None:
    """A finite float, or None for a value that is missing, null or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def resolve(path: str, source: str | None) -> str:
    """The file a record's path names: absolute as recorded; a relative path (a run given a
    relative output) against the current directory, else against the results file's directory."""
    if os.path.isabs(path):
        return path
    here = os.path.abspath(path)
    if os.path.exists(here) or not source:
        return here
    beside = os.path.join(os.path.dirname(os.path.abspath(source)), path)
    return beside if os.path.exists(beside) else here


def href(path: str, base_dir: str) -> str:
    """A link to `path` from a page in `base_dir`: relative when the file lies under base_dir (the
    artifact directory stays self-contained when moved), else an absolute file:// URL."""
    target, base = os.path.realpath(path), os.path.realpath(base_dir)
    if os.path.commonpath([target, base]) == base:
        return urllib.parse.quote(Path(os.path.relpath(target, base)).as_posix())
    return Path(target).as_uri()


def _size(path: str) -> str:
    try:
        size = os.path.getsize(path)
    except OSError:
        return "not found when the report was built"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def _file_link(label: str, path: str, base_dir: str, size: bool = True) -> str:
    link = f'<a href="{html.esc(href(path, base_dir))}" title="{html.esc(path)}">{html.esc(label)}</a>'
    return link + (f' <span class="note">({html.esc(_size(path))})</span>' if size else "")


def _rank_files(path: str) -> list[tuple[str, str]]:
    """(label, path) of a rank-0 trace and its siblings from the other ranks, when they exist
    (the record names rank 0's file; every rank writes its own)."""
    match = re.fullmatch(r"rank(\d+)(\..+)", os.path.basename(path))
    if not match:
        return [("trace", path)]
    folder, suffix = os.path.dirname(path), match.group(2)
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    ranks = sorted({int(m.group(1)) for n in names if (m := re.fullmatch(r"rank(\d+)" + re.escape(suffix), n))}
                   | {int(match.group(1))})
    if len(ranks) == 1:
        return [("trace", path)]
    return [(f"rank {r}" if i == 0 else str(r), os.path.join(folder, f"rank{r}{suffix}")) for i, r in enumerate(ranks)]


def files_cell(row: dict[str, Any], base_dir: str) -> str:
    """Links to the record's trace and memory snapshot (HTML)."""
    parts = []
    source = row.get("source") if isinstance(row.get("source"), str) else None
    trace = row.get("profile.trace_file")
    if isinstance(trace, str) and trace:
        files = _rank_files(resolve(trace, source))
        if len(files) == 1:
            parts.append(_file_link(*files[0], base_dir))
        else:  # one trace per rank, found beside each other: their sizes would crowd the row
            parts.append("trace: " + " · ".join(_file_link(label, p, base_dir, size=False) for label, p in files))
    snapshot = row.get("profile.memory_snapshot_file")
    if isinstance(snapshot, str) and snapshot:
        parts.append(_file_link("memory snapshot", resolve(snapshot, source), base_dir))
    return "<br>".join(parts)


def top_ops_html(ops: Any) -> str:
    """The record's top operators (HTML): the first few in a line, the top TOP_OPS on a click."""
    listed = ops if isinstance(ops, list) else []
    rows = [op for op in listed if isinstance(op, dict) and isinstance(op.get("name"), str)]
    if not rows:
        return ""

    def line(op: dict[str, Any], width: int = 200) -> str:
        seconds, calls = _number(op.get("self_time_s")), _number(op.get("calls"))
        spent = f"{seconds * 1e3:.3g} ms" if seconds is not None else "–"
        name = op["name"] if len(op["name"]) <= width else op["name"][:width - 1] + "…"
        return (f'<code title="{html.esc(op["name"])}">{html.esc(name)}</code> {spent}'
                + (f' <span class="note">×{calls:g}</span>' if calls is not None else ""))

    inline = " · ".join(line(op, OP_NAME_CHARS) for op in rows[:INLINE_OPS])
    items = "".join(f"<li>{line(op)}</li>" for op in rows[:TOP_OPS])
    return f'<details class="ops"><summary>top operators: {inline}</summary><ol>{items}</ol></details>'


def _percent(value: Any, digits: int = 0) -> str:
    """A share as a percentage; a small nonzero one keeps a digit, so it does not read as none."""
    number = _number(value)
    if number is None:
        return "–"
    return f"{number:.{max(digits, 1) if 0 < abs(number) < 0.095 else digits}%}"


def _ms(value: Any) -> str:
    number = _number(value)
    return f"{number * 1e3:.3g}" if number is not None else "–"


def _clocks(row: dict[str, Any]) -> str:
    values = [_number(row.get(f"gpu_samples.sm_clock_mhz.{s}")) for s in ("min", "median", "max")]
    return " / ".join(f"{v:,.0f}" for v in values) if all(v is not None for v in values) else "–"


def _row_note(row: dict[str, Any]) -> str:
    """The line under a record's row (HTML): its top operators and what went wrong or stands out."""
    flags = []
    if isinstance(row.get("profile.error"), str):
        flags.append(f"profiling failed: {row['profile.error']}")
    if row.get("profile.data_bound") is True:
        flags.append(f"data-bound: waiting for data {_percent(row.get('profile.data_share'))} of the step")
    reasons = row.get("gpu_samples.throttle_reasons")
    if isinstance(reasons, list) and reasons:
        flags.append(("throttled" if row.get("throttled") is True else "clock event reasons")
                     + ": " + ", ".join(map(str, reasons)))
    flagged = f'<span class="flag">{html.esc("; ".join(flags))}</span>' if flags else ""
    return top_ops_html(row.get("profile.top_ops")) + flagged


def _profiled(rows: pd.DataFrame) -> pd.Series:
    """Records with anything for this section: a profile (even a failed one) or GPU figures."""
    columns = ["profile.phase_total_s", "profile.error", "profile.trace_file", "profile.top_ops",
               "profile.memory_snapshot_file", "profile.memory_snapshot_note", "mfu", "energy_j_per_sample",
               "gpu_samples.sm_clock_mhz.median", "gpu_samples.power_w_mean", "throttled"]
    return rows[columns].notna().any(axis=1)


# The files come right after what names the cell: the numbers after them may run past a narrow window.
COLUMNS = ("precision", "batch", "accum", "ranks", "variant", "run", "files", "step ms", "data / fwd / bwd / opt ms",
           "data share", "MFU", "J/sample", "fp16/bf16 op time", "SM MHz min / median / max", "max °C", "mean W",
           "throttled")


def table(rows: pd.DataFrame, base_dir: str) -> str:
    """One row per record of one (model, hardware) pair, with its top operators and flags on a
    line under it; columns with nothing to say are left out."""
    rows = rows.assign(_rank=rows["precision"].map(display_rank))
    rows = rows.sort_values(["gpus", "grad_accum", "batch_size", "variant", "_rank", "precision_variant", "run"])
    hardware = str(rows["hardware"].iloc[0])
    shown: dict[str, list[str]] = {c: [] for c in COLUMNS}
    notes = []
    for row in rows.to_dict("records"):
        phases = [row.get(f"profile.phases_s.{p}") for p in PHASES]
        throttled = row.get("throttled")
        values = {
            "precision": row["precision"], "batch": row["batch_size"], "accum": row["grad_accum"],
            "ranks": row["gpus"],
            "variant": (f"{row['variant']} {row['precision_variant']}").strip(), "run": row["run"],
            "step ms": _ms(row.get("profile.phase_total_s")),
            "data / fwd / bwd / opt ms": " / ".join(_ms(v) for v in phases) if any(
                _number(v) is not None for v in phases) else "–",
            "data share": _percent(row.get("profile.data_share")),
            "MFU": mfu_text(row["mfu"]) if _number(row.get("mfu")) is not None else "–",
            "J/sample": f"{row['energy_j_per_sample']:.3g}" if _number(row.get("energy_j_per_sample")) is not None
            else "–",
            "fp16/bf16 op time": _percent(row.get("profile.reduced_precision_share")),
            "SM MHz min / median / max": _clocks(row),
            "max °C": f"{row['gpu_samples.temperature_c_max']:.0f}"
            if _number(row.get("gpu_samples.temperature_c_max")) is not None else "–",
            "mean W": f"{row['gpu_samples.power_w_mean']:.0f}"
            if _number(row.get("gpu_samples.power_w_mean")) is not None else "–",
            "throttled": {True: "yes", False: "no"}[throttled] if isinstance(throttled, bool) else "–",
            "files": files_cell(row, base_dir),
        }
        for column in COLUMNS:
            shown[column].append("" if values[column] is None else str(values[column]))
        notes.append(_row_note(row))
    always = ("precision", "batch", "accum", "ranks")
    keep = [c for c in COLUMNS if c in always or any(v not in ("", "–") for v in shown[c])]
    if rows["run"].nunique() < 2 and "run" in keep:  # one input file: the column would repeat its name
        keep.remove("run")
    header = {"ranks": "GPUs" if not hardware.startswith("CPU") else "ranks"}
    body = html.table([header.get(c, c) for c in keep], [[shown[c][i] for c in keep] for i in range(len(rows))],
                      text_columns=(*TEXT_HEADERS, "run", "files"), raw_columns=("files",),
                      row_attrs=[{"precision": p} for p in rows["precision"]], row_notes=notes, css_class="compact")
    return f'<div class="wide">{body}</div>'


def _group_notes(rows: pd.DataFrame) -> str:
    """What the table's figures rest on, said once per table instead of once per row."""
    notes = []
    peaks = sorted({float(v) for v in rows["peak_flops_per_s"].dropna()})
    if rows["mfu"].notna().any() and peaks:
        notes.append("MFU = achieved model FLOP/s ÷ the device's peak for the precision ("
                     + ", ".join(f"{p / 1e12:,.0f} TFLOP/s" for p in peaks) + ").")
    methods = sorted({str(m) for m in rows["energy_method"].dropna()})
    if rows["energy_j_per_sample"].notna().any() and methods:
        notes.append(f"Energy: {'; '.join(methods)}.")
    bases = sorted({str(b) for b in rows["profile.time_basis"].dropna()})
    if bases:
        notes.append(f"Top operators by self {' / '.join(bases)} per optimizer step (× calls per step); "
                     "fp16/bf16 op time is the share of operator time whose floating-point inputs were fp16 "
                     "or bf16: what autocast or half precision really changed.")
    missing = sorted({str(n) for n in rows["profile.memory_snapshot_note"].dropna()})
    if missing:
        notes.append(f"No memory snapshot: {'; '.join(missing)}.")
    return f'<p class="note">{html.esc(" ".join(notes))}</p>' if notes else ""


def section(frame: pd.DataFrame, pairs: list[tuple[str, str]], base_dir: str, open_rows: int) -> str:
    """The profile section of the page: per (model, hardware) pair, the phase chart and the table."""
    profiled = frame[_profiled(frame)]
    if profiled.empty:
        return f'<p class="note">{html.esc(NOT_PROFILED)}</p>'
    parts = [f'<p class="note">{html.esc(PHASES_NOTE)} {VIEWERS}</p>']
    failed = int(profiled["profile.error"].notna().sum())
    if failed:
        parts.append(f'<p class="warn">The profiling pass failed in {failed} record{"s" if failed > 1 else ""} '
                     "(the line under its row says why); its timed figures stand: profiling runs after them.</p>")
    state = " open" if len(profiled) <= open_rows else ""
    for n, (model, hardware) in enumerate(pairs):
        rows = profiled[(profiled["model"] == model) & (profiled["hardware"] == hardware)]
        if rows.empty:
            continue
        chart = figures.phase_bars(rows)
        parts.append(f'<div{html.attrs({"model": model, "hardware": hardware})}>'
                     f"<h3>{html.esc(model)} · {html.esc(hardware)}</h3>"
                     + html.chart(chart, div_id=f"profile-{n}")
                     + f"<details{state}><summary><h3>Per record "
                     f'<span class="note">({len(rows)} record{"s" if len(rows) > 1 else ""})</span></h3></summary>'
                     + _group_notes(rows) + table(rows, base_dir) + "</details></div>")
    return "".join(parts)
