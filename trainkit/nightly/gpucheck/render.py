"""gpu-check's words: the text table it prints, gpu-check.md, and the machine in one line."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .registry import CHECKS
from .results import FAIL, OK, RESULTS, SKIP, Check, GpuCheckDocument


def table(checks: Sequence[Check]) -> str:
    """The checks as an aligned text table: check | expected | measured | result."""
    rows = [("check", "expected", "measured", "result")] + [
        (c.name, c.expected or "-", c.measured or "-", c.status) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _cells_table(document: GpuCheckDocument) -> list[str]:
    lines = ["", "## Cells", "", "| cell | roles | status | timed window (launcher clock) |", "|---|---|---|---|"]
    for cell in document.cells:
        wall = f"{cell.wall_s:.2f} s" if cell.wall_s is not None else "-"
        lines.append(f"| {cell.cell_id} | {', '.join(cell.roles)} | {cell.status} | {wall} |")
    return lines


def markdown(document: GpuCheckDocument) -> str:
    """gpu-check.md: the verdict, the table, every reason, what each check proves, the cells."""
    checks, counts = document.checks, document.counts()
    lines = [f"# trainkit gpu-check: {document.verdict}", "",
             f"{document.device_line}. {len(checks)} checks: {counts[OK]} pass, {counts[FAIL]} fail, "
             f"{counts[SKIP]} skipped; {document.duration_s:.0f} s ({document.started_at}).", ""]
    if document.error:
        lines += [document.error, ""]
    lines += ["| check | expected | measured | result |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {_md(c.expected or '-')} | {_md(c.measured or '-')} | {c.status} |" for c in checks]
    lines += ["", "## Why", ""]
    lines += [f"- **{c.name}** ({c.status}): {c.reason}" for c in checks]
    proves = {spec.name: spec.proves for spec in CHECKS}
    lines += ["", "## What a pass proves", ""] + [f"- **{c.name}**: {proves[c.name]}" for c in checks]
    if document.cells:
        lines += _cells_table(document)
    report = f"`{os.path.basename(document.report)}`" if document.report else document.report_problem
    lines += ["", f"Records: `{RESULTS}`; report: {report}. The cells are sized for their checks, not for "
              "comparison: they run different numbers of steps, so the report's loss and speed columns across "
              "precisions do not compare like with like."]
    return "\n".join(lines) + "\n"


def device_line(hw: Mapping[str, Any]) -> str:
    """The device probe's answer in one line: GPU, driver, CUDA and torch, or the CPU."""
    env = hw.get("env") or {}
    if hw["device"] == "cuda":
        capability = ".".join(str(v) for v in hw.get("capability") or ())
        return (f"{hw['gpu_name']} (compute capability {capability}), driver {env.get('driver')}, "
                f"CUDA {env.get('cuda')}, torch {env.get('torch')}")
    return f"CPU {env.get('cpu')} ({hw.get('cpu_count')} cores), torch {env.get('torch')}"


def closing_lines(document: GpuCheckDocument, summary_path: str) -> list[str]:
    """What the command prints after the table: every reason, then the verdict in one line."""
    counts = document.counts()
    where = document.report_problem if document.report_problem else document.report
    return ([""] + [f"{c.name} ({c.status}): {c.reason}" for c in document.checks] +
            [f"\ngpu-check: {document.verdict} (exit {document.exit_status}): {counts[OK]} pass, {counts[FAIL]} "
             f"fail, {counts[SKIP]} skipped in {document.duration_s:.0f} s; {summary_path}; {where}"])
