"""`python -m reports history ...`: the run store from the command line.

    history ingest RESULTS... --db FILE [--commit SHA --date ISO --branch B --preset P --report-url URL]
    history changes --db FILE [--since REF] [--cells GLOB] [--json]
    history trend --db FILE -o trend.html [--since REF]
    history show CELL --db FILE [--json]
    history quality [--repeats 20]      # the detector's precision and recall on generated series
    history ack CELL --db FILE --metric throughput --who NAME --why TEXT [--run REF] [--hardware TEXT]

REF is a commit (4+ characters) or an ISO date. Exit status: 0 done, 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import asdict
from typing import Any

from trainkit.engine.spec.options import HTML_OUTPUT, UsageError, choice, fraction, integer

from .ingest import RunMeta, ingest, iso_date
from .params import DetectorParams
from .series import METRICS, noise_text
from .store import Ack, add_ack, opened, record_rows, resolve, runs


def _add_detector(p: argparse.ArgumentParser) -> None:
    d = DetectorParams()
    p.add_argument("--max-pvalue", type=fraction, default=d.max_pvalue, metavar="P",
                   help="a statistical change point's t-test p must be below this (default %(default)s, Otava's)")
    p.add_argument("--min-magnitude", type=fraction, default=d.min_magnitude, metavar="F",
                   help="smallest relative change that counts (default 5%%, asv's)")
    p.add_argument("--loss-tolerance", type=fraction, default=d.loss_tolerance, metavar="F",
                   help="the final loss's exact rule: relative departure that counts (default %(default)s)")
    p.add_argument("--memory-tolerance", type=fraction, default=d.memory_tolerance, metavar="F",
                   help="allocator peaks' exact rule: relative departure that counts (default 0: exact)")
    p.add_argument("--drift-window", type=integer(2), default=d.drift_window, metavar="N",
                   help="nights averaged at the reference and at the end for --since (default %(default)s)")
    p.add_argument("--drift-threshold", type=fraction, default=d.drift_threshold, metavar="F",
                   help="relative drift since the reference that counts (default 5%%)")


def params_of(args: argparse.Namespace) -> DetectorParams:
    try:
        return _params(args)
    except ValueError as e:
        raise UsageError(f"python -m reports history {args.history_command}: {e}") from None


def _params(args: argparse.Namespace) -> DetectorParams:
    return DetectorParams(max_pvalue=args.max_pvalue, min_magnitude=args.min_magnitude,
                          loss_tolerance=args.loss_tolerance, memory_tolerance=args.memory_tolerance,
                          drift_window=args.drift_window, drift_threshold=args.drift_threshold)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `history` group under `python -m reports`."""
    group = sub.add_parser("history", help="the run store across nights: ingest, change points, trend page")
    commands = group.add_subparsers(dest="history_command", required=True, parser_class=type(group))
    db = {"required": True, "metavar": "FILE", "help": "the run store (SQLite; created by ingest)"}

    p = commands.add_parser("ingest", help="append result files to the store (a run already there is a no-op)")
    p.add_argument("inputs", nargs="+", metavar="RESULTS", help="results JSON lines, pytest-benchmark JSON "
                   "(old .benchmarks/ autosaves too), records, or directories of them")
    p.add_argument("--db", **db)
    p.add_argument("--commit", help="the commit the run measured (default: from the files)")
    p.add_argument("--date", type=_date, help="when the run ran, ISO 8601 (default: from the files)")
    p.add_argument("--branch", help="the branch (default: pytest-benchmark's commit_info)")
    p.add_argument("--preset", help="bench's preset, for the record")
    p.add_argument("--report-url", metavar="URL", help="that night's report; the trend page links each point to it")

    p = commands.add_parser("changes", help="the change points of every series (and drifts with --since)")
    p.add_argument("--db", **db)
    p.add_argument("--since", metavar="REF", help="only changes from this commit or date on, and the drift since")
    p.add_argument("--cells", default="*", metavar="GLOB", help="cell ids to analyse (default all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _add_detector(p)

    p = commands.add_parser("trend", help="the self-contained trend page (plotly)")
    p.add_argument("--db", **db)
    HTML_OUTPUT.add(p, default="reports/out/trend.html")
    p.add_argument("--since", metavar="REF", help="pin the drift check to this commit or date")
    p.add_argument("--cells", default="*", metavar="GLOB", help="cell ids to chart (default all)")
    p.add_argument("--title", default="trainkit history")
    _add_detector(p)

    p = commands.add_parser("show", help="one cell's nights, series by series")
    p.add_argument("cell", metavar="CELL", help="a cell id (or a glob)")
    p.add_argument("--db", **db)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    _add_detector(p)

    p = commands.add_parser("quality", help="the detector's precision and recall on generated series of known "
                                            "truth, at these parameters")
    p.add_argument("--repeats", type=integer(1), default=20, metavar="N", help="series per scenario and level "
                   "(default %(default)s)")
    p.add_argument("--seed", type=integer(0), default=0)
    _add_detector(p)

    p = commands.add_parser("ack", help="acknowledge an intended change: a new segment from that run on")
    p.add_argument("cell", metavar="CELL", help="the cell id")
    p.add_argument("--db", **db)
    p.add_argument("--metric", type=choice(METRICS), required=True, help=", ".join(METRICS))
    p.add_argument("--run", metavar="REF", help="the first run of the intended change (default: the latest)")
    p.add_argument("--hardware", default="", metavar="TEXT",
                   help="which environment, when the cell ran on several (a part of its GPU or CPU name)")
    p.add_argument("--who", required=True)
    p.add_argument("--why", required=True)


def _date(text: str) -> str:
    try:
        return iso_date(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ingest(args: argparse.Namespace) -> int:
    meta = RunMeta(commit=args.commit, date=args.date, branch=args.branch, preset=args.preset,
                   report_url=args.report_url)
    for result in ingest(args.db, args.inputs, meta):
        if result.run_id is None:
            print(f"{args.db}: already holds these {result.already} record(s); nothing added")
        else:
            print(f"{args.db}: run {result.run_id}, {result.added} record(s) added"
                  + (f", {result.already} already there" if result.already else ""))
    return 0


def _changes(args: argparse.Namespace) -> int:
    # Here, not at the top: the detector's scipy and ruptures take seconds to import, which every
    # other `python -m reports` command would pay.
    from .changes import change_rows, drift_rows, load, table

    history = load(args.db, params_of(args), args.since, args.cells)
    if args.json:
        print(json.dumps({"store": args.db, "nights": len(history.runs), "series": len(history.analyses),
                          "params": asdict(history.params), "change_points": change_rows(history),
                          "drifts": drift_rows(history)}, indent=2))
    else:
        print("\n".join(table(history)))
    return 0


def _trend(args: argparse.Namespace) -> int:
    from .changes import load  # the detector: see _changes
    from .trend import write_page  # plotly and the detector: see _changes

    history = load(args.db, params_of(args), args.since, args.cells)
    try:
        write_page(history, args.output, args.title)
    except OSError as e:
        raise UsageError(f"{args.output}: cannot write the page: {e.strerror or e}") from None
    print(f"wrote {args.output}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .changes import load  # the detector: see _changes

    history = load(args.db, params_of(args), cells=args.cell)
    if not history.analyses:
        raise UsageError(f"{args.cell!r}: no ok record of such a cell in {args.db}")
    out: list[dict[str, Any]] = []
    for analysis in history.analyses:
        s = analysis.series
        segment_of = {i: seg for seg in analysis.segments for i in range(seg.start, seg.stop)}
        nights = [{"night": history.night(p.run_id), "date": history.run(p.run_id).date,
                   "commit": history.run(p.run_id).commit, "value": p.value, "records": p.n,
                   "segment_mean": segment_of[i].mean} for i, p in enumerate(s.points)]
        out.append({"series": s.label, "metric": s.metric, "measure": s.measure, "method": s.method,
                    "noise": analysis.noise, "nights": nights,
                    "change_nights": [history.night(c.run_after) for c in analysis.change_points]})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for block in out:
        print(f"{block['series']}  {block['metric']} ({block['measure']}, {block['method']}, "
              f"noise {noise_text(block['noise'])})")
        for n in block["nights"]:
            mark = "  <- change" if n["night"] in block["change_nights"] else ""
            print(f"  night {n['night']:>3}  {n['date']}  {(n['commit'] or '?')[:12]:<12}  {n['value']:.6g}  "
                  f"(segment {n['segment_mean']:.6g}){mark}")
    return 0


def _ack(args: argparse.Namespace) -> int:
    with opened(args.db, existing=True) as conn:  # it names a cell the store holds: never a new store
        all_runs = runs(conn)
        run = resolve(args.run, all_runs) if args.run else (all_runs[-1] if all_runs else resolve("", all_runs))
        fps = {json.dumps(r.fingerprint, sort_keys=True): r.fingerprint for r in record_rows(conn, args.cell)
               if r.cell_id == args.cell}
        if not fps:
            raise UsageError(f"{args.db}: no record of cell {args.cell!r} (`history changes` lists the series)")
        chosen = [fp for fp in fps.values() if args.hardware.lower() in json.dumps(fp).lower()]
        if len(chosen) != 1:
            found = "; ".join(", ".join(f"{k} {v}" for k, v in fp.items()) for fp in fps.values())
            raise UsageError(f"{args.cell!r} with --hardware {args.hardware!r}: {len(chosen)} environments match "
                             f"(the cell's: {found})")
        add_ack(conn, Ack(args.cell, chosen[0], args.metric, run.run_id, args.who, args.why,
                          dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
    print(f"acknowledged {args.cell} {args.metric} from run {run.run_id} ({run.commit or run.date}) on: {args.why}")
    return 0


def _quality(args: argparse.Namespace) -> int:
    from .quality import LEVELS, score  # the detector: see _changes

    params = params_of(args)
    print("| noise | step | precision | recall | found / false / missed | drifts found | false drifts |")
    print("|---|---|---|---|---|---|---|")
    for noise, size in LEVELS:
        s = score(noise, size, repeats=args.repeats, seed=args.seed, params=params)
        precision, recall = ("n/a" if v is None else f"{v:.2f}" for v in (s.precision, s.recall))
        print(f"| {noise:.0%} | {size:.0%} | {precision} | {recall} | {s.true_positives} / "
              f"{s.false_positives} / {s.false_negatives} | {s.drifts_found}/{s.drifts} | "
              f"{s.false_drifts}/{2 * s.drifts} |")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"ingest": _ingest, "changes": _changes, "trend": _trend, "show": _show, "quality": _quality,
            "ack": _ack}[args.history_command](args)
