"""summary.md: the run on one page of Markdown, for a person and for GitHub's job summary.

Its first line says what happened and whose problem it is: a regression (the code), an
infrastructure failure (the runner: retry, do not bisect), an inconclusive gate (the runner was
too noisy to tell: quiet it and retry, do not bisect), bad input (the job's options), a pass, or
no comparable baseline. Then each stage's line, the gate's table, every cell of the run with its
median and spread over the repeats, what the pre-flight saw, and the artifacts.
"""

from __future__ import annotations

import os
from typing import Any

from trainkit.engine.spec.schema import MEMORY_NAMES, ResultsFileError, read_json, read_jsonl, write_text
from trainkit.reports.records import InputError, all_records, read_runs

from . import BAD_INPUT, INCONCLUSIVE, INFRASTRUCTURE, NO_BASELINE, PASS, REGRESSION
from .gate import NIGHTLY_THRESHOLDS, cell_rows
from .rundir import ARTIFACTS, PREFLIGHT, RESULTS, STAGES, SUMMARY, TITLES, RunDir

GiB, MiB = 2**30, 2**20
ICONS = {PASS: "✅", REGRESSION: "❌", BAD_INPUT: "⛔", INFRASTRUCTURE: "⚠️", INCONCLUSIVE: "❔"}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(columns: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)]


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _next_step(run: RunDir, status: int, label: str) -> str:
    if status == INFRASTRUCTURE:
        return ("An infrastructure failure is not a regression: the runner was unfit or the matrix could not run. "
                "Fix or drain the runner and re-run the job; do not bisect the code.")
    if status == INCONCLUSIVE:
        return ("Inconclusive is neither a pass nor a regression: nothing failed the gate, but it could not see "
                "every gated cell (each is named below with its reason: too noisy at its size, a baseline that "
                "cannot judge it, no record tonight, refused by the code), so it cannot say whether the code got "
                "slower, bigger or changed its numerics. When the runner was too noisy to gate on, look at the "
                "cells' spreads and throttling below and at the pre-flight's load, quiet the runner (nothing else "
                "running, persistence mode and locked clocks) and re-run the job; when a baseline cannot judge a "
                "cell, promote a clean one; do not bisect the code. An inconclusive run cannot be promoted.")
    if status == REGRESSION:
        return ("Open compare.html in the artifact. If the change is intended, review it and make this run the "
                f"baseline: `python -m nightly promote {run.root} --force`, then commit reports/baselines/.")
    if status == BAD_INPUT:
        return "The job's options or files cannot be used here; fix the workflow inputs or the command line."
    if label == NO_BASELINE:
        return (f"To make this run the baseline of its environment: `python -m nightly promote {run.root}` "
                "(from a green run on main), then commit reports/baselines/.")
    return ""


def _cells_section(run: RunDir, max_spread: float | None, candidate: str | None) -> list[str]:
    """The run's cells, or those of the results `compare --candidate` gated."""
    try:
        if run.exists(RESULTS):
            records = read_jsonl(run.path(RESULTS))
        elif candidate and os.path.exists(candidate):
            records = all_records(read_runs([candidate]))
        else:
            return []
    except (ResultsFileError, InputError) as exc:  # the verdict above already says it is bad input
        return ["## Cells of this run", "", f"The results cannot be read: {exc}", ""]
    rows = cell_rows(records, max_spread)
    if not rows:
        return []
    measures = {r["memory_measure"] for r in rows if r["memory_measure"]}
    measure = ""
    if len(measures) == 1:  # one measure for every cell: name it once, in the header
        (name,) = measures
        measure = f" ({MEMORY_NAMES.get(name, name)})"
    limit = (f"; noisy: a spread above {max_spread:.0%}, where the gate judges only a change beyond its threshold"
             if max_spread is not None else "")
    steps = {len(r["loss"]["curve"]) for r in records if r.get("status") == "ok" and (r.get("loss") or {}).get("curve")}
    loss = f"final loss after {steps.pop()} steps" if len(steps) == 1 else "final loss (after each cell's steps)"
    table = [[r["cell"], r["status"], f"{r['ok']}/{r['repeats']}", _num(r["throughput_median"], ",.1f"),
              _num(r["throughput_spread"], ".1%"), _num(r["memory_median"] and r["memory_median"] / MiB, ",.1f"),
              _num(r["memory_spread"], ".1%"), _num(r["loss_median"], ".4f"), _num(r["loss_spread"], ".2%"),
              " ".join(filter(None, ["noisy" if r["noisy"] else "",
                                     f"throttled x{r['throttled']}" if r["throttled"] else ""]))]
             for r in rows]
    return ["## Cells of this run", "",
            f"Median over the repeats; spread = IQR / median across them{limit}. The gate compares each cell's "
            "loss with the same cell's in the baseline (a drift check, one seed); whether a precision reaches "
            "fp32's loss is not judged here: see `python -m trainkit parity` (README, \"Loss parity\").", "",
            *_table(["cell", "status", "ok/runs", "samples/s", "spread", f"peak MiB{measure}", "spread",
                     loss, "spread", "flags"], table), ""]


def _gated_section(compare: dict[str, Any]) -> list[str]:
    """Every gated cell's outcome and, per metric judged, the smallest regression the gate could
    have caught (its threshold: a change beyond it is judged whatever the noise)."""
    cells = compare.get("gated") or []
    if not cells:
        return []
    metrics = ("throughput", "memory", "loss")
    worse = {"throughput": "−", "memory": "+", "loss": "±"}
    rows = []
    for cell in sorted(cells, key=lambda c: c["cell"]):
        per_metric = []
        for metric in metrics:
            judged = (cell.get("metrics") or {}).get(metric)
            catches = (cell.get("catches") or {}).get(metric)
            if judged is None:
                per_metric.append("not gated")
                continue
            change = "–" if judged["change"] is None else f"{judged['change']:+.1%}"
            bound = f", catches {worse[metric]}{catches:.1%}" if catches is not None else ""
            per_metric.append(f"{judged['verdict']} ({change}{bound})")
        rows.append([cell["cell"], cell["verdict"], *per_metric, cell.get("note") or ""])
    return ["## Every gated cell", "",
            "Each cell's outcome, and per metric its change and the smallest regression the gate could have caught "
            "(its threshold, max(relative, k × spread)): a change beyond it is judged, however noisy; one within it "
            "but past the relative floor is unknown. The only silent outcome is seen and unchanged.", "",
            *_table(["cell", "outcome", *metrics, "note"], rows), ""]


def _preflight_section(run: RunDir) -> list[str]:
    if not run.exists(PREFLIGHT):
        return []
    facts = read_json(run.path(PREFLIGHT), "pre-flight record")
    lines = ["## Pre-flight", ""]
    lines += [f"- ✗ {p}" for p in facts["problems"]] + [f"- ⚠ {w}" for w in facts["warnings"]]
    host = facts["host"]
    lines += [f"- host {host['hostname']}: {host['cpu_count']} CPUs, load {_num(host['load_1m'], '.2f')} (1 min)"]
    if facts.get("fingerprint"):
        lines += [f"- fingerprint: {', '.join(f'{k} {v}' for k, v in facts['fingerprint'].items())} "
                  f"(baseline directory `{facts['baseline_slug']}`)"]
    if facts["gpus"]:
        rows = [[g["id"], g["name"], f"{_num(g['memory_free_bytes'] and g['memory_free_bytes'] / GiB, '.1f')} / "
                 f"{_num(g['memory_total_bytes'] and g['memory_total_bytes'] / GiB, '.1f')}",
                 "unknown" if g["foreign_pids"] is None else (", ".join(map(str, g["foreign_pids"])) or "none"),
                 f"{g['sm_clock_mhz']} / {g['max_sm_clock_mhz']}", g["temperature_c"],
                 f"{_num(g['power_w'], '.0f')} / {_num(g['power_limit_w'], '.0f')}",
                 ", ".join(g["throttle_reasons"] or []) or "none", g["ecc"], g["mig"]] for g in facts["gpus"]]
        lines += ["", *_table(["GPU", "name", "free / total GiB", "foreign pids", "SM MHz / max", "°C",
                               "power W / limit", "throttle reasons", "ECC", "MIG"], rows)]
    return lines + [""]


def render(run: RunDir) -> str:
    outcome, stages = run.outcome(), run.stages()
    icon = "ℹ️" if outcome.label == NO_BASELINE else ICONS.get(outcome.exit_status, "")
    lines = [f"# trainkit nightly: {icon} {outcome.label} (exit {outcome.exit_status})", "", outcome.line, ""]
    step = _next_step(run, outcome.exit_status, outcome.label)
    lines += [step, ""] if step else []
    lines += _table(["stage", "exit", "result"],
                    [[TITLES[name], stages[name]["exit_status"] if name in stages else "–",
                      stages[name]["line"] if name in stages else "did not run"] for name in STAGES])
    lines.append("")
    compare = stages.get("compare", {})
    for warning in compare.get("warnings", []):
        lines += [f"> ⚠ {warning}", ""]
    unjudged = compare.get("unjudged", [])
    for line in unjudged[:10]:
        lines += [f"> ❔ {line}", ""]
    if len(unjudged) > 10:
        lines += [f"> ❔ ... and {len(unjudged) - 10} more: see every gated cell below", ""]
    if compare.get("outcome") not in (None, NO_BASELINE) and run.exists("compare.md"):
        with open(run.path("compare.md"), encoding="utf-8") as f:
            lines += ["## Gate", "", f.read().strip(), ""]
        lines += _gated_section(compare)
    thresholds: dict[str, Any] = compare.get("thresholds") or {"max_spread": NIGHTLY_THRESHOLDS.max_spread}
    lines += _cells_section(run, thresholds.get("max_spread"), compare.get("candidate"))
    lines += _preflight_section(run)
    present = [name for name in ARTIFACTS if run.exists(name) or name == SUMMARY]
    lines += ["## Artifacts", "", ", ".join(f"`{name}`" for name in present), ""]
    return "\n".join(lines)


def write(run: RunDir) -> str:
    """Write summary.md (every stage rewrites it, so it is current whichever stage ran last)."""
    path = run.path(SUMMARY)
    write_text(path, render(run))
    return path
