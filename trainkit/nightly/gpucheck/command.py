"""`python -m nightly gpu-check`, the command: probe the device, run the cells and probes the
chosen checks read, judge, write gpu-check.md / .json and the report, print the table."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.schema import append_jsonl, write_json, write_text

from .. import INFRASTRUCTURE, PASS, REGRESSION
from . import cells
from .cells import CELL_TIMEOUT_S, CPU_MATMUL_REPEATS, CPU_MATMUL_SIZE, GPU_MATMUL_REPEATS, GPU_MATMUL_SIZE, CellPlan
from .numerics import matmul_worker
from .registry import CHECKS, CheckSpec, skip_reason
from .render import closing_lines, device_line, markdown, table
from .results import (
    FAIL,
    OUTPUTS,
    PROFILES,
    REPORT,
    RESULTS,
    SKIP,
    SUMMARY_JSON,
    SUMMARY_MD,
    CellRun,
    Check,
    GpuCheckDocument,
    Observed,
    WindowClocks,
)
from .stepprobe import read_answers, step_probe_worker

FAILED = REGRESSION
"""Exit 1, as for a regression: a figure trainkit reports disagrees with its independent measure."""
DEFAULT_OUT = os.path.join("reports", "out", "gpu-check")


def progress(line: str) -> None:
    print(f"gpu-check: {line}", file=sys.stderr, flush=True)


def _clean(out: str) -> None:
    """Remove what an earlier gpu-check left in `out` (its files only), so nothing stale is read."""
    os.makedirs(out, exist_ok=True)
    for name in OUTPUTS:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    shutil.rmtree(os.path.join(out, PROFILES), ignore_errors=True)


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What the run does on this device: the chosen checks, why some cannot run, the cells to run."""

    chosen: tuple[CheckSpec, ...]
    skips: Mapping[str, str]
    """Check name -> why it cannot run on this device."""
    roles: Mapping[CellPlan, tuple[str, ...]]
    """Each cell to run, once, with the roles it serves for the runnable checks."""
    matmul: bool
    """A runnable check reads the matmul probe."""
    step_cells: tuple[CellPlan, ...]
    """The cells whose step the step probe counts (memory.floor's)."""


def plan_run(hw: Mapping[str, Any], only: Sequence[str]) -> RunPlan:
    """The run's plan from the device probe's answer and --only."""
    capability, gpu_name = hw.get("capability"), hw.get("gpu_name")
    plans = cells.plan_cells(hw["device"], capability, gpu_name)
    chosen = tuple(spec for spec in CHECKS if not only or spec.name in only)
    skips = {spec.name: reason for spec in chosen
             if (reason := skip_reason(spec, hw["device"], capability, gpu_name))}
    runnable = [spec for spec in chosen if spec.name not in skips]
    roles: dict[CellPlan, list[str]] = {}
    for spec in runnable:
        for role in spec.roles:
            if role in plans and role not in roles.setdefault(plans[role], []):
                roles[plans[role]].append(role)
    counted = {plans[role]: None for spec in runnable if spec.step_probe for role in spec.roles if role in plans}
    return RunPlan(chosen=chosen, skips=skips, roles={plan: tuple(r) for plan, r in roles.items()},
                   matmul=any(spec.matmul for spec in runnable), step_cells=tuple(counted))


def run_cells(plan: RunPlan, out: str) -> tuple[dict[str, dict[str, Any]], dict[str, WindowClocks],
                                                list[CellRun]]:
    """Run every planned cell in fresh workers, appending its record to results.jsonl: the records
    and clocks by role, and each cell as it went."""
    records: dict[str, dict[str, Any]] = {}
    walls: dict[str, WindowClocks] = {}
    runs: list[CellRun] = []
    for n, (cell, roles) in enumerate(plan.roles.items(), 1):
        steps = cell.config.steps
        progress(f"cell {n}/{len(plan.roles)} {cell.config.cell_id} ({steps} timed step{'s' if steps > 1 else ''}) "
                 f"for {', '.join(roles)}")
        started = time.perf_counter()
        record, clocks = cells.run_cell_with_clock(cell, os.path.join(out, PROFILES))
        append_jsonl(record, os.path.join(out, RESULTS))
        for role in roles:
            records[role], walls[role] = record, clocks
        window = f", timed window {clocks.worker_s:.2f} s" if clocks.worker_s is not None else ""
        detail = f": {record['status_detail']}" if record["status"] != "ok" else ""
        progress(f"  {record['status']}{detail} in {time.perf_counter() - started:.1f} s{window}")
        runs.append(CellRun(cell_id=record["cell_id"], roles=roles, status=record["status"],
                            status_detail=record["status_detail"], wall_s=clocks.worker_s))
    return records, walls, runs


def run_probes(plan: RunPlan, device: str, runs: Sequence[CellRun]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The matmul probe's answer (None when no check reads it) and the step probe's answers by cell
    id (empty when none does), each from its own fresh process; a probe that fails is an answer
    saying why, so the checks that read it fail with that reason."""
    # trainkit.engine.cell.launch imports torch: kept out of `python -m nightly`'s import path.
    from trainkit.engine.cell.launch import call_in_fresh_process

    matmul: dict[str, Any] | None = None
    if plan.matmul:
        on_gpu = device == "cuda"
        size, repeats = (GPU_MATMUL_SIZE, GPU_MATMUL_REPEATS) if on_gpu else (CPU_MATMUL_SIZE, CPU_MATMUL_REPEATS)
        progress(f"matmul probe: {size} x {size}, fp32{' and tf32' if on_gpu else ''} against fp64")
        try:
            matmul = call_in_fresh_process(matmul_worker, device, size, repeats, timeout_s=CELL_TIMEOUT_S,
                                           what="the matmul probe")
        except RuntimeError as exc:
            matmul = {"error": str(exc)}
    ok = {run.cell_id for run in runs if run.status == "ok"}  # a failed cell fails its checks without a count
    counted = [cell.config for cell in plan.step_cells if cell.config.cell_id in ok]
    if not counted:
        return matmul, {}
    progress(f"step probe: one counted step of {', '.join(config.cell_id for config in counted)}")
    try:
        return matmul, call_in_fresh_process(step_probe_worker, [config.to_dict() for config in counted],
                                             timeout_s=CELL_TIMEOUT_S * len(counted), what="the step probe")
    except RuntimeError as exc:
        return matmul, {config.cell_id: {"error": str(exc)} for config in counted}


def judge(plan: RunPlan, observed: Observed) -> list[Check]:
    """Every chosen check's result, in CHECKS' order: skipped with its reason, or judged."""
    checks = []
    for spec in plan.chosen:
        if spec.name in plan.skips:
            checks.append(Check(name=spec.name, status=SKIP, reason=plan.skips[spec.name]))
            continue
        try:
            checks.append(spec.judge(observed))
        except Exception as exc:  # a record without a figure the check reads: a fail that says so
            checks.append(Check(name=spec.name, status=FAIL,
                                reason=f"the check could not read its cells: {type(exc).__name__}: {exc}"))
    return checks


def _build_report(out: str) -> tuple[str | None, str | None]:
    """The HTML report of the records: (its path, None) or (None, why there is none)."""
    if not os.path.isfile(os.path.join(out, RESULTS)):
        return None, "no cell ran, so there is no report"
    try:
        from trainkit.reports.build import build_report  # pandas and plotly: only when there are records to show

        paths = build_report([os.path.join(out, RESULTS)], os.path.join(out, REPORT), title="trainkit gpu-check")
    except Exception as exc:  # the checks stand without the page; say why it is missing
        return None, f"no report: {type(exc).__name__}: {exc}"
    return paths["html"], None


def _write(out: str, document: GpuCheckDocument) -> None:
    write_json(os.path.join(out, SUMMARY_JSON), document.to_json())
    write_text(os.path.join(out, SUMMARY_MD), markdown(document))


def _device_unusable(out: str, device: str, exc: RuntimeError, started: float, started_at: str) -> int:
    line = f"infrastructure failure: the device cannot be used: {exc}"
    print(f"gpu-check: {line}", flush=True)
    _write(out, GpuCheckDocument(verdict="infrastructure failure", exit_status=INFRASTRUCTURE, error=line,
                                 device_line=f"--device {device}", started_at=started_at,
                                 duration_s=time.perf_counter() - started, report_problem="no cell ran"))
    return INFRASTRUCTURE


def run_gpu_check(out: str, device: str = "auto", only: Sequence[str] = ()) -> int:
    """The command: probe the device, run the cells and probes the chosen checks read, judge, write,
    print. Returns the exit status (trainkit/nightly/__init__.py)."""
    from trainkit.engine.cell.launch import probe  # imports torch: kept out of `python -m nightly`'s import path

    started, started_at = time.perf_counter(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    _clean(out)
    progress(f"probing the device (--device {device}) in a fresh process")
    try:
        hw = probe(device)
    except RuntimeError as exc:
        return _device_unusable(out, device, exc, started, started_at)
    plan = plan_run(hw, only)
    probes = [name for name, needed in (("a matmul probe", plan.matmul), ("a step probe", plan.step_cells)) if needed]
    progress(f"{device_line(hw)}: {len(plan.chosen) - len(plan.skips)} checks to run, {len(plan.skips)} skipped "
             f"here; {' and '.join([f'{len(plan.roles)} cells', *probes])}")
    records, walls, runs = run_cells(plan, out)
    matmul, answers = run_probes(plan, hw["device"], runs)
    steps, step_errors = read_answers(answers)
    checks = judge(plan, Observed(records=records, clocks=walls, matmul=matmul, steps=steps, step_errors=step_errors))
    report, no_report = _build_report(out)
    failed = any(c.status == FAIL for c in checks)
    exit_status = FAILED if failed else (INFRASTRUCTURE if no_report and records else PASS)
    verdict = "fail" if failed else ("infrastructure failure" if exit_status == INFRASTRUCTURE else "pass")
    document = GpuCheckDocument(
        verdict=verdict, exit_status=exit_status, device=hw["device"], gpu_name=hw.get("gpu_name"),
        capability=tuple(hw["capability"]) if hw.get("capability") else None, device_line=device_line(hw),
        env=hw.get("env"), only=tuple(only), started_at=started_at, duration_s=time.perf_counter() - started,
        cells=tuple(runs), matmul=matmul, step_probe=answers or None, report=report, report_problem=no_report,
        checks=tuple(checks))
    _write(out, document)
    print(table(checks), flush=True)
    for line in closing_lines(document, os.path.join(out, SUMMARY_MD)):
        print(line, flush=True)
    return exit_status
