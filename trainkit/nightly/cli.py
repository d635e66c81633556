"""`python -m nightly`: the nightly job as commands over one run directory (--out).

    python -m nightly run --out DIR [--preset nightly --repeats 3 --device cuda] [-- BENCH OPTIONS]
    python -m nightly preflight --out DIR [--device cuda --min-free-fraction 0.9 --min-gpus 8]
    python -m nightly matrix --out DIR [--preset nightly --repeats 3] [-- --model gpt --cell-timeout 600]
    python -m nightly report --out DIR
    python -m nightly compare --out DIR [--baselines reports/baselines | --baseline PATH] [--candidate FILE]
                              [--history history.db]
    python -m nightly history --out DIR --history history.db [--report-url URL]
    python -m nightly status --out DIR
    python -m nightly promote DIR [--baselines reports/baselines] [--force]
    python -m nightly gpu-check --out DIR [--device auto|cuda|cpu] [--only CHECK[,CHECK]]

`run` is preflight, matrix, report and compare in a row, stopping at a failed pre-flight or matrix;
with --history it ingests the night into that run store before the gate reads it (`compare
--history` reads the store only: ingest first, `python -m reports history ingest`).
`history` appends the run's results to a run store (reports/history) and writes trend.html, the
store's trend page, into the run directory beside report.html.
`gpu-check` stands apart: a few cells whose every figure is checked against an independent measure
(trainkit/nightly/gpucheck/); it exits 1 when a check fails.
`run` and `preflight` begin a new run in --out (an earlier run's artifacts there are removed); the
other commands add to the run they find.

Exit status: 0 pass or no comparable baseline, 1 regression, 2 bad input, 3 infrastructure failure,
4 inconclusive (the gate could not see a gated cell; see trainkit/nightly/__init__.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from trainkit.engine import cluster
from trainkit.engine.cluster import from_namespace
from trainkit.engine.spec.options import (
    DEVICE,
    REPEATS,
    Parser,
    UsageError,
    choice,
    fraction,
    integer,
    number,
    optional,
    output_dir,
    output_file,
)
from trainkit.engine.spec.presets import PRESET_NAMES
from trainkit.engine.spec.schema import ResultsFileError, cut_off_lines_on_stderr
from trainkit.reports.cli import metric_threshold
from trainkit.reports.history.ingest import RunMeta, ingest
from trainkit.reports.records import InputError
from trainkit.reports.verdict import Thresholds

from . import BAD_INPUT, INCONCLUSIVE, INFRASTRUCTURE, LABELS, NO_BASELINE, PASS, REGRESSION, summary
from .baselines import DEFAULT_ROOT, promote, shown
from .gate import NIGHTLY_THRESHOLDS, run_compare
from .gpucheck import CHECK_NAMES, GROUPS, parse_only, run_gpu_check
from .gpucheck import DEFAULT_OUT as GPU_CHECK_OUT
from .matrix import MatrixOptions, run_matrix
from .preflight import PreflightLimits, run_preflight
from .report import run_report
from .rundir import RESULTS, TITLES, Outcome, RunDir, Stage

DEFAULT_OUT = os.path.join("reports", "out", "nightly")
TREND = "trend.html"  # the run store's trend page, written into the run directory by `history`
ANNOTATIONS = {REGRESSION: "Performance regression", BAD_INPUT: "Bad input",
               INFRASTRUCTURE: "Infrastructure failure (not a regression)",
               INCONCLUSIVE: "Inconclusive: the gate could not see every cell (not a regression)"}


def _names(text: str) -> tuple[str, ...]:
    return () if text == "none" else tuple(n for n in text.split(",") if n)


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=output_dir, default=DEFAULT_OUT, metavar="DIR",
                   help=f"the run directory: every artifact and nightly.json (default {DEFAULT_OUT})")


def _add_device(p: argparse.ArgumentParser) -> None:
    DEVICE.add(p, help="auto: the GPUs if torch sees one, else the CPU; cuda: no GPU is an infrastructure "
                       "failure (use it on GPU runners)")


def _add_preflight(p: argparse.ArgumentParser) -> None:
    L = PreflightLimits  # the defaults

    p.add_argument("--min-free-fraction", type=fraction, default=L.min_free_fraction, metavar="F",
                   help="each GPU needs this share of its memory free (default %(default)s)")
    p.add_argument("--min-gpus", type=integer(1), default=L.min_gpus, metavar="N",
                   help="fewest GPUs torch must see; the runner's count catches a lost GPU (default: no check)")
    p.add_argument("--allow-foreign-processes", action="store_true",
                   help="let other processes compute on the GPUs (default: that is an infrastructure failure)")
    p.add_argument("--fail-on-slowdown", action="store_true",
                   help="a GPU throttled while idle fails the pre-flight (default: a warning)")


def _add_matrix(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", type=choice(PRESET_NAMES), default="nightly",
                   help="bench's matrix (default nightly: the GPU matrix, 1-8 GPUs; on a CPU use tiny)")
    REPEATS.add(p, default=3, help="runs of every cell in fresh workers (default 3; fewer are reported, not gated)")
    p.add_argument("bench_args", nargs="*", metavar="-- BENCH_OPTIONS",
                   help="further bench options after --, e.g. -- --model gpt --cell-timeout 600")

    cluster.add_options(p.add_argument_group("where the cells run (see README, 'Running on a SLURM cluster')")
                        .add_argument)


def _add_gate(p: argparse.ArgumentParser) -> None:
    T = NIGHTLY_THRESHOLDS  # the defaults

    p.add_argument("--baselines", default=None, metavar="DIR",
                   help="where baselines live, one directory per fingerprint (default reports/baselines)")
    p.add_argument("--baseline", default=None, metavar="PATH",
                   help="compare with this baseline directory or results file instead (still like with like)")
    p.add_argument("--relative", type=fraction, default=T.relative, help="smallest relative change that counts "
                   "(default 7%%, TorchBench's)")
    p.add_argument("--k", type=number(), default=T.k, help="a change must also exceed k x the spread (default 3)")
    p.add_argument("--spread", choices=("iqr", "mad"), default=T.spread, help="spread over repeats (default iqr)")
    p.add_argument("--threshold", type=metric_threshold, action="append", default=[], metavar="METRIC=FRACTION",
                   help="relative threshold for one metric, repeatable (default loss=2%%)")
    p.add_argument("--two-sided", type=_names, default=T.two_sided, metavar="METRICS",
                   help="metrics gated in both directions, as drift (default loss; none for none)")
    p.add_argument("--max-spread", type=optional(fraction), default=T.max_spread, metavar="F",
                   help="noise limit: a cell metric spread wider than this cannot be seen; a change within its "
                        "threshold is unknown, one beyond it is judged (default 10%%)")
    p.add_argument("--min-repeats", type=integer(1), default=T.min_repeats, metavar="N",
                   help="repeats a side needs for the gate to see a metric (default 3)")
    p.add_argument("--gate-metrics", type=_names, default=T.gate_metrics, metavar="METRICS",
                   help="metrics whose regression fails the run (default throughput,memory,loss)")
    p.add_argument("--gate-cells", nargs="+", default=list(T.gate_cells), metavar="GLOB",
                   help="cell ids the gate covers, as glob patterns (default all)")
    p.add_argument("--fail-on-removed", action="store_true",
                   help="a baseline cell missing from the run fails it (default: unknown, the run inconclusive)")
    p.add_argument("--history", type=output_file, default=None, metavar="FILE",
                   help="a run store (python -m reports history): 2+ bad nights running are a regression, one "
                        "bad night is unknown (re-run, do not bisect)")


def _add_gpu_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gpu-check", help="a few cells, each figure checked against an independent measure "
                                         "(exit 1 when a check fails)")
    p.add_argument("--out", type=output_dir, default=GPU_CHECK_OUT, metavar="DIR",
                   help="where gpu-check.md, gpu-check.json, results.jsonl and report.html go "
                        f"(default {GPU_CHECK_OUT})")
    _add_device(p)
    p.add_argument("--only", type=parse_only, default=(), metavar="CHECK[,CHECK]",
                   help=f"run only these checks or groups ({', '.join(GROUPS)}): {', '.join(CHECK_NAMES)}")


def parser() -> Parser:
    top = Parser(prog="python -m nightly", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser("run", help="pre-flight, matrix, report and comparison in a row")
    for add in (_add_out, _add_device, _add_preflight, _add_gate, _add_matrix):
        add(run)
    preflight = sub.add_parser("preflight", help="is the machine fit to measure? (exit 3 when not)")
    for add in (_add_out, _add_device, _add_preflight):
        add(preflight)
    matrix = sub.add_parser("matrix", help="bench's matrix, every cell repeated (exit 3 when it cannot run)")
    for add in (_add_out, _add_device, _add_matrix):
        add(matrix)
    report = sub.add_parser("report", help="the HTML report of the run")
    _add_out(report)
    compare = sub.add_parser("compare", help="the gate: the run against the baseline of its environment")
    _add_out(compare)
    compare.add_argument("--candidate", default=None, metavar="PATH",
                         help="results to gate instead of the run's results.jsonl (a file or directory)")
    _add_gate(compare)
    history = sub.add_parser("history", help="append the run to a run store and write trend.html beside its report")
    _add_out(history)
    history.add_argument("--history", type=output_file, required=True, metavar="FILE",
                         help="the run store (created if missing)")
    history.add_argument("--report-url", default=None, metavar="URL",
                         help="where this night's report will be; the trend page links the night to it")
    status = sub.add_parser("status", help="the run's verdict as an exit status, label and summary")
    _add_out(status)
    promote = sub.add_parser("promote", help="make a green run the baseline of its environment")
    promote.add_argument("run_dir", metavar="DIR", help="the run directory (a downloaded nightly artifact)")
    promote.add_argument("--baselines", type=output_dir, default=None, metavar="DIR", help="default reports/baselines")
    promote.add_argument("--force", action="store_true",
                         help="promote a run that is not green, not from main, or of uncommitted code")
    _add_gpu_check(sub)
    return top


# --- commands ---------------------------------------------------------------------------------

def _limits(args: argparse.Namespace):
    return PreflightLimits(device=args.device, min_free_fraction=args.min_free_fraction, min_gpus=args.min_gpus,
                           allow_foreign_processes=args.allow_foreign_processes,
                           fail_on_slowdown=args.fail_on_slowdown)


def _matrix_options(args: argparse.Namespace):
    return MatrixOptions(preset=args.preset, repeats=args.repeats, device=args.device,
                         bench_args=tuple(args.bench_args), executor=from_namespace(args))


def _thresholds(args: argparse.Namespace):
    return Thresholds(relative=args.relative, k=args.k, spread=args.spread,
                      per_metric={**NIGHTLY_THRESHOLDS.per_metric, **dict(args.threshold)},
                      gate_metrics=args.gate_metrics, gate_cells=tuple(args.gate_cells),
                      fail_on_removed=args.fail_on_removed, max_spread=args.max_spread,
                      min_repeats=args.min_repeats, two_sided=args.two_sided)


def _finish(run: RunDir, stage: Stage) -> int:
    """Record the stage, refresh summary.md, print the stage's line."""
    run.record(stage)
    summary.write(run)
    label = "" if stage.exit_status == PASS else f"{LABELS[stage.exit_status]}: "
    print(f"nightly {TITLES[stage.name]}: {label}{stage.line}", flush=True)
    for line in stage.details.get("regressions", []) + stage.details.get("unjudged", []):
        print(f"  {line}", flush=True)
    return stage.exit_status


def _escape(text: str) -> str:
    """GitHub workflow-command data escaping (%, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _github(run: RunDir, outcome: Outcome) -> None:
    """Under GitHub Actions: the job summary, step outputs (exit_status, label) and an annotation
    whose title says whose problem it is. Elsewhere nothing: the same run works on any host."""
    if os.environ.get("GITHUB_ACTIONS") != "true":
        return

    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
            f.write(summary.render(run) + "\n")
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as f:
            f.write(f"exit_status={outcome.exit_status}\nlabel={outcome.label}\n")
    if outcome.exit_status in ANNOTATIONS:
        print(f"::error title={ANNOTATIONS[outcome.exit_status]}::{_escape(outcome.line)}", flush=True)
    elif outcome.label == NO_BASELINE:
        print(f"::notice title=No comparable baseline::{_escape(outcome.line)}", flush=True)


def _status(run: RunDir) -> int:
    if not run.state():
        raise InputError(f"{run.root}: no nightly run here (no nightly.json)")
    outcome = run.outcome()
    path = summary.write(run)
    print(f"trainkit nightly: {outcome.label} (exit {outcome.exit_status}): {outcome.line}")
    print(f"summary: {path}")
    _github(run, outcome)
    return outcome.exit_status


def _compare(args: argparse.Namespace, run: RunDir, thresholds: Thresholds, candidate: str | None = None) -> Stage:
    """The gate as a stage: results it cannot use (a run that mixes machines, a broken manifest)
    are recorded as bad input, so `status` and the summary say so."""
    try:
        return run_compare(run, thresholds, candidate=candidate, baselines_root=args.baselines,
                           baseline=args.baseline, history=args.history)
    except InputError as exc:
        return Stage("compare", BAD_INPUT, str(exc))


def _history(run: RunDir, store: str, report_url: str | None = None, preset: str | None = None) -> int:
    """The run's results into the store (its commit and branch as nightly.json records them), then the store's
    trend page into the run directory."""
    # numpy/scipy/ruptures (the detector) and plotly: kept out of `python -m nightly`'s import path
    from trainkit.reports.history.changes import load
    from trainkit.reports.history.trend import write_page

    state = run.state()
    meta = RunMeta(commit=state.get("commit"), branch=state.get("branch"), preset=preset, report_url=report_url)
    for result in ingest(store, [run.path(RESULTS)], meta):
        print(f"nightly history: {result.added} record(s) added to {store}"
              + (f" ({result.already} there already)" if result.already else ""), flush=True)
    page = run.path(TREND)
    write_page(load(store), page, "trainkit nightly history")
    print(f"nightly history: wrote {page}", flush=True)
    return PASS


def _run(args: argparse.Namespace, run: RunDir, configs: dict[str, object]) -> int:
    run.start()
    matrix_options = configs["matrix_options"]
    if matrix_options.executor.executor == "slurm":  # this machine is a login node, not where cells run
        preflight = Stage("preflight", PASS, "not run here: with --executor slurm the cells run on cluster "
                                             "nodes; each record names its node and environment")
    else:
        preflight = run_preflight(configs["limits"], run)
    if _finish(run, preflight) != PASS:
        return _status(run)
    if _finish(run, run_matrix(matrix_options, run)) != PASS:
        return _status(run)
    _finish(run, run_report(run))
    if args.history:  # tonight into the store first: the gate reads the latest nights from it
        _history(run, args.history, preset=args.preset)
    _finish(run, _compare(args, run, configs["thresholds"]))
    return _status(run)


def _configs(args: argparse.Namespace) -> dict[str, object]:
    """The command's limits, options and thresholds, validated before anything runs: a value their
    dataclasses refuse is bad input."""
    makers = {"limits": _limits, "matrix_options": _matrix_options, "thresholds": _thresholds}
    needs = {"run": ("limits", "matrix_options", "thresholds"), "preflight": ("limits",),
             "matrix": ("matrix_options",), "compare": ("thresholds",)}.get(args.command, ())
    try:
        return {name: makers[name](args) for name in needs}
    except ValueError as exc:
        raise InputError(f"python -m nightly {args.command}: {exc}") from None


def _dispatch(args: argparse.Namespace) -> int:
    configs = _configs(args)
    if args.command == "gpu-check":
        return run_gpu_check(args.out, args.device, args.only)
    if args.command == "promote":
        promoted = promote(RunDir(args.run_dir), args.baselines or DEFAULT_ROOT, force=args.force)
        for baseline in promoted:
            for cell, why in baseline.manifest.get("cannot_judge", {}).items():
                print(f"warning: forced: {baseline.describe()} cannot judge {cell}: {why}", file=sys.stderr)
        for baseline in promoted:  # one per environment the run's cells were measured in
            print(f"promoted {args.run_dir} to {baseline.describe()}")
        print(f"commit it: git add {' '.join(shown(b.path) for b in promoted)} && git commit")
        return PASS
    run = RunDir(args.out)
    if args.command == "status":
        return _status(run)
    if args.command == "history":
        return _history(run, args.history, args.report_url)
    if args.command == "run":
        return _run(args, run, configs)
    if args.command == "preflight":
        run.start()
        return _finish(run, run_preflight(configs["limits"], run))
    if args.command == "matrix":
        return _finish(run, run_matrix(configs["matrix_options"], run))
    if args.command == "report":
        return _finish(run, run_report(run))
    return _finish(run, _compare(args, run, configs["thresholds"], args.candidate))


def main(argv: list[str] | None = None) -> int:
    try:
        with cut_off_lines_on_stderr():  # every stage reads results.jsonl: a cut-off line is said once
            return _dispatch(parser().parse_args(argv))
    except (UsageError, ResultsFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
