"""The report stage: the run's self-contained HTML report (trainkit.reports.build), with its CSV and Markdown.

Built from the results file, which holds every cell of any status (pytest-benchmark's JSON holds
only the cells that finished). The report needs the `reports` extra; without it, or when it fails,
the stage says why and the gate still runs: the comparison does not need pandas.
"""

from __future__ import annotations

from . import INFRASTRUCTURE, PASS
from .rundir import REPORT, RESULTS, RunDir, Stage


def run_report(run: RunDir, title: str = "trainkit nightly") -> Stage:
    if not run.exists(RESULTS):
        return Stage("report", INFRASTRUCTURE, f"no {RESULTS} in {run.root}: the matrix wrote no results")
    try:
        from trainkit.reports.build import build_report  # pandas/plotly: the reports extra, only for a page
    except ImportError as exc:
        return Stage("report", INFRASTRUCTURE, f"no report: {exc} (install trainkit[reports])")
    try:
        paths = build_report([run.path(RESULTS)], run.path(REPORT), title=title)
    except Exception as exc:  # the records are safe in the results file; say why there is no page
        return Stage("report", INFRASTRUCTURE, f"no report: {type(exc).__name__}: {exc}")
    return Stage("report", PASS, "wrote " + ", ".join(sorted(paths.values())), {"paths": paths})
