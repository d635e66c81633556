"""`python -m reports`: build a report from result files, or compare two runs.

    python -m reports build results.jsonl bench.json -o reports/out/report.html [--plan plan.json]
    python -m reports compare baseline/ candidate/ -o reports/out/compare.html [--relative 0.07 --k 3]
    python -m reports plan plan.json -o reports/out/plan.html      # a plan (trainkit plan) as its own page
    python -m reports history ingest|changes|trend|show|ack ...     # the run store across nights (reports/history)
    python -m reports calibration [--results results.jsonl]         # intervals' coverage and A/A rates

Exit status:

    0  done (compare: pass, every gated cell seen, none regressed or failed)
    1  compare: regression, a gated cell regressed, drifted or failed (whatever else was unknown);
       calibration: an interval covered outside 93-97 %, an A/A rate fell below 95 %, or the
       nightly gate's simulated false-alarm or unseen rate past its bound
    2  bad input: an option, or a missing, malformed or empty result file, printed as one line
    3  compare: inconclusive, nothing regressed but the gate could not see a gated cell (unknown:
       too noisy at its size, a baseline that cannot judge it, no record); named, and not a pass
"""

from __future__ import annotations

import argparse
import sys

from trainkit.engine.spec.options import HTML_OUTPUT, Parser, UsageError, fraction, integer, number
from trainkit.engine.spec.schema import cut_off_lines_on_stderr

from . import verdict
from .compare import compare_files, headline, regressions_text, unknown_text
from .history import cli as history_cli
from .records import InputError
from .verdict import Thresholds

# Exit statuses (the module docstring); compare maps its outcome (trainkit.reports.verdict) to one.
PASS, REGRESSION, BAD_INPUT, INCONCLUSIVE = 0, 1, 2, 3
OUTCOME_EXIT = {verdict.PASS: PASS, verdict.REGRESSION: REGRESSION, verdict.INCONCLUSIVE: INCONCLUSIVE}


def metric_threshold(text: str) -> tuple[str, float]:
    """METRIC=FRACTION (an argparse type; the nightly gate's options use it too)."""
    metric, _, value = text.partition("=")
    if not value:
        raise argparse.ArgumentTypeError(f"expected METRIC=FRACTION, e.g. memory=0.03: {text!r}")
    return metric, fraction(value)


def parser() -> Parser:
    top = Parser(prog="python -m reports", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)

    build = sub.add_parser("build", help="one self-contained HTML report (+ CSV and Markdown summary beside it)")
    build.add_argument("inputs", nargs="+", metavar="RESULTS",
                       help="pytest-benchmark JSON, results JSON lines, single records, or directories of them")
    HTML_OUTPUT.add(build, default="reports/out/report.html")
    build.add_argument("--title", default="trainkit report")
    build.add_argument("--plan", action="append", default=[], metavar="PLAN.json",
                       help="a plan from python -m trainkit plan: adds the memory planner section (repeatable)")

    plan = sub.add_parser("plan", help="a plan from python -m trainkit plan as a self-contained page")
    plan.add_argument("plan", metavar="PLAN.json")
    HTML_OUTPUT.add(plan, default="reports/out/plan.html")

    compare = sub.add_parser("compare", help="per-cell verdicts of a candidate run against a baseline")
    compare.add_argument("baseline", metavar="BASELINE", help="result file or directory (repeats are combined)")
    compare.add_argument("candidate", metavar="CANDIDATE", help="result file or directory")
    HTML_OUTPUT.add(compare, default="reports/out/compare.html")
    compare.add_argument("--relative", type=fraction, default=0.07,
                         help="smallest relative change that counts, e.g. 0.07 or 7%% (default 7%%, TorchBench's)")
    compare.add_argument("--k", type=number(), default=3.0,
                         help="a change must also exceed k times the measured relative spread (default 3)")
    compare.add_argument("--spread", choices=("iqr", "mad"), default="iqr",
                         help="spread across repeated records of a cell (default iqr)")
    compare.add_argument("--threshold", type=metric_threshold, action="append", default=[], metavar="METRIC=FRACTION",
                         help="relative threshold for one metric (throughput, memory, loss); repeatable")
    compare.add_argument("--gate-metrics", default="throughput,memory,loss",
                         help="comma-separated metrics whose regression fails the run (default all three)")
    compare.add_argument("--gate-cells", nargs="+", default=["*"], metavar="GLOB",
                         help="cell ids the gate covers, as glob patterns (default all)")
    compare.add_argument("--max-spread", type=fraction, default=None,
                         help="a metric whose relative spread exceeds this cannot be seen: a change within its "
                              "threshold is unknown, one beyond it is judged (default: no limit)")
    compare.add_argument("--min-repeats", type=integer(1), default=1,
                         help="a metric with fewer repeated records on either side cannot be seen: a change within its "
                              "threshold is unknown (default 1)")
    compare.add_argument("--two-sided", default="", metavar="METRICS",
                         help="comma-separated metrics that fail the gate when they move either way beyond "
                              "the threshold (verdict 'drifted'), e.g. loss for a fixed-seed nightly")
    compare.add_argument("--fail-on-removed", action="store_true",
                         help="a baseline cell missing from the candidate fails too (pytest-benchmark JSON "
                              "leaves out cells that did not finish)")
    calibration = sub.add_parser("calibration", help="the coverage of every 95 %% interval and the A/A rates, "
                                                      "simulated; and your machine's A/A from a results file")
    calibration.add_argument("--results", action="append", default=[], metavar="RESULTS",
                             help="a results file of a bench run with --repeats N (N >= 12): each cell against "
                                  "itself in neighbouring rounds (repeatable)")
    calibration.add_argument("--draws", type=integer(200), default=None,
                             help="simulated data sets per coverage cell (default 4000)")
    history_cli.add_parser(sub)
    return top


def _build(args: argparse.Namespace) -> int:
    from .build import build_report  # pandas/plotly: the reports extra, only when a page is built

    paths = build_report(args.inputs, args.output, title=args.title, plans=args.plan)
    print("wrote " + ", ".join(paths.values()))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .plan import read_plans, write_page  # pandas/plotly: the reports extra, only when a page is built

    (plan,) = read_plans([args.plan])
    try:
        write_page(plan, args.output)
    except OSError as e:
        raise InputError(f"{args.output}: cannot write the page: {e.strerror or e}") from None
    print(f"wrote {args.output}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    try:
        thresholds = Thresholds(relative=args.relative, k=args.k, spread=args.spread,
                                per_metric=dict(args.threshold),
                                gate_metrics=tuple(m for m in args.gate_metrics.split(",") if m),
                                gate_cells=tuple(args.gate_cells), fail_on_removed=args.fail_on_removed,
                                max_spread=args.max_spread, min_repeats=args.min_repeats,
                                two_sided=tuple(m for m in args.two_sided.split(",") if m))
    except ValueError as e:
        raise InputError(f"python -m reports compare: {e}") from None
    result, paths = compare_files(args.baseline, args.candidate, args.output, thresholds)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(headline(result))
    for line in regressions_text(result) + (unknown_text(result) if result.inconclusive else []):
        print(line)
    print("wrote " + ", ".join(paths.values()))
    return OUTCOME_EXIT[result.outcome]


def _calibration(args: argparse.Namespace) -> int:
    from . import calibration  # numpy/scipy: only when the simulations run

    options = calibration.Options.reading(tuple(args.results), **({"draws": args.draws} if args.draws else {}))
    lines, ok = calibration.report(options)
    print("\n".join(lines).rstrip())
    return PASS if ok else REGRESSION


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        with cut_off_lines_on_stderr():  # a results file a killed run left: said once, then read
            return {"build": _build, "plan": _plan, "compare": _compare, "history": history_cli.run,
                    "calibration": _calibration}[args.command](args)
    except UsageError as e:  # InputError (a file that cannot be read) is one too
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
