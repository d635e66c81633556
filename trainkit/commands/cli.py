"""`python -m trainkit`: run one cell from the command line and write its result record.

    python -m trainkit run --model gpt --precision amp-bf16 --batch-size 32 --grad-accum 4 \
        --world-size 2 --steps 50 --warmup-steps 5 --output gpt.json
    python -m trainkit repro gpt.json --output again.json     # rerun a record's exact config
    python -m trainkit env                                    # the environment fingerprint
    python -m trainkit plan --model mlp --precision fp32,amp-bf16 --target-batch 4096 --device cpu \
        --memory-limit-gb 2 --output plan.json                # largest micro-batches, fastest split (commands.plan)
    python -m trainkit recommend --model mlp --target-batch 256 --device cpu --output answer/   # the answer

Every RunConfig field is an option (--batch-size for batch_size; --flag/--no-flag for booleans),
with the field's docstring as its help. Exit status: 0 when the record's status is ok, 1 for any
other status (the record is still written), 2 for bad input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..engine.spec import config as cfg
from ..engine.spec.config import ConfigError, ProfileConfig, RunConfig
from ..engine.spec.options import CELL_TIMEOUT, MEMORY_LIMIT_GB, OUTPUT, QUIET, Parser, UsageError, integer, output_dir
from ..engine.spec.schema import MEMORY_NAMES, headline_memory, read_json, write_json
from .config_options import MEMORY_LIMIT_ON_GPU, add_config_options, check_paths, config_from_args
from .parity import add_arguments as add_parity_arguments
from .parity import main as cmd_parity
from .plan import cmd_plan
from .plan_options import add_parser as add_plan_parser
from .recommend import add_parser as add_recommend_parser
from .recommend import main as cmd_recommend
from .workloads import add_parsers as add_workload_parsers
from .workloads import cmd_check, cmd_workloads


def build_parser() -> Parser:
    parser = Parser(prog="trainkit", description="Measure what precision and gradient accumulation do to "
                                                 "PyTorch training, one cell at a time.")
    sub = parser.add_subparsers(dest="command",
                                metavar="{run,repro,env,recommend,parity,plan,workloads,check-workload}",
                                parser_class=Parser)
    run = sub.add_parser("run", help="run one cell and write its result record")
    repro = sub.add_parser("repro", help="rerun the config of a result record (options override it)")
    repro.add_argument("record", help="a result record (JSON) written by `trainkit run` or the bench")
    for p in (run, repro):
        add_config_options(p)
        out = p.add_argument_group("output and limits")
        OUTPUT.add(out, help="write the result record here (default: print it to stdout)")
        CELL_TIMEOUT.add(out, help="end the cell as 'timeout' after this many seconds (default: 900)")
        MEMORY_LIMIT_GB.add(out)
        QUIET.add(out)
        prof = p.add_argument_group("profiling (a separate pass after the timed steps; never in them)")
        prof.add_argument("--phase-steps", type=integer(0), default=3, metavar="N",
                          help="optimizer steps timed phase by phase: data, forward, backward, optimizer "
                               "(default: 3; 0 turns it off)")
        prof.add_argument("--profile", action="store_true",
                          help=f"record {cfg.TRACE_STEPS} steps with torch.profiler: a Chrome trace (Perfetto, "
                               "chrome://tracing), the top operators and the share of time in reduced precision")
        prof.add_argument("--memory-snapshot", action="store_true",
                          help=f"record {cfg.SNAPSHOT_STEPS} steps of CUDA allocator history for "
                               "pytorch.org/memory_viz (CUDA only)")
        prof.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=True,
                          help="one extra optimizer step that records why the loss moved: gradient underflow, "
                               "zero optimizer second moments, inf/NaN gradients, update sizes (default: on)")
        prof.add_argument("--profile-dir", type=output_dir, metavar="DIR", default=None,
                          help="where traces and snapshots go (default: OUTPUT.profile/, or ./trainkit-profiles/)")
    sub.add_parser("env", help="print the environment fingerprint as JSON")

    add_parity_arguments(sub.add_parser("parity", help="judge each precision's eval loss against fp32's, seed by "
                                                       "seed, with time to target and diagnostics (see --help)"))
    add_plan_parser(sub)
    add_recommend_parser(sub)
    add_workload_parsers(sub)
    return parser


def profile_config(args: argparse.Namespace) -> ProfileConfig:
    """The profiling passes the options ask for."""
    directory = args.profile_dir or (f"{args.output}.profile" if args.output else "trainkit-profiles")
    return ProfileConfig.from_options(args.phase_steps, args.profile, args.memory_snapshot, directory,
                                      args.diagnostics)


def _load_record_config(path: str) -> RunConfig:
    record = read_json(path, "result record")
    try:
        return RunConfig.from_dict(record["config"])
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a readable result record ({type(exc).__name__}: {exc})") from None
    except ConfigError as exc:
        raise UsageError(f"{path}: its config is not valid here: {exc}") from None


def _progress_printer(config: RunConfig, quiet: bool):  # noqa: ANN202
    if quiet:
        return None

    started = time.monotonic()

    def show(phase: str, step: int, total: int) -> None:
        # The step count is the host's: the device may be a few steps behind, and reading a loss
        # here would make the timed window wait for it.
        elapsed = time.monotonic() - started
        rate = step / elapsed if elapsed > 0 else 0.0
        left = (total - step) / rate if rate > 0 else float("nan")
        print(f"[trainkit] {config.cell_id}: step {step}/{total}  "
              f"{elapsed:.0f}s elapsed, ~{left:.0f}s left", file=sys.stderr, flush=True)

    return show


def cmd_run(args: argparse.Namespace, base: RunConfig | None) -> int:
    config = config_from_args(args, base)
    check_paths(config, args.output)
    if args.memory_limit_gb and config.device == "cuda":
        raise UsageError(f"--memory-limit-gb {MEMORY_LIMIT_ON_GPU}; use it with --device cpu")
    # torch is imported only now: bad input is refused in a fraction of a second.
    from ..engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, launched_by_torchrun, run_cell, run_under_torchrun
    if launched_by_torchrun():
        record = run_under_torchrun(config, profile_config(args))
        if record is None:
            return 0  # not rank 0: rank 0 writes the record
    else:
        if not args.quiet:
            print(f"[trainkit] {config.cell_id}: starting {config.world_size} rank(s)", file=sys.stderr, flush=True)
        memory_limit = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else None
        record = run_cell(config, timeout_s=args.cell_timeout or DEFAULT_CELL_TIMEOUT_S,
                          memory_limit_bytes=memory_limit, progress=_progress_printer(config, args.quiet),
                          profile=profile_config(args))
    if args.output:
        write_json(args.output, record)
    else:
        print(json.dumps(record, indent=2))
    if not args.quiet:
        print(summary_line(record), file=sys.stderr, flush=True)
    return 0 if record["status"] == "ok" else 1


def summary_line(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"[trainkit] {record['cell_id']}: {record['status']}: {record['status_detail']}"
    measure = headline_memory([record["memory"]])  # the measure the report and the gate show too
    peak = f"peak {MEMORY_NAMES[measure]} {record['memory'][measure] / 2**20:.1f} MiB" if measure else "peak memory n/a"
    return (f"[trainkit] {record['cell_id']}: {record['throughput_samples_per_s']:.1f} samples/s, "
            f"step {record['step_time_s']['median'] * 1e3:.2f} ms (median of {record['step_time_s']['n']}), "
            f"{peak}, final loss {record['loss']['final']}")


def cmd_env() -> int:
    # torch (and the engine's env module, which imports it): kept out of `python -m trainkit`'s import path
    import torch

    from ..engine.measure.env import collect_env

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    print(json.dumps(collect_env(device), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("trainkit: choose a command: run, repro, env, recommend, parity, plan, workloads or "
                             "check-workload (see --help)")
        if args.command == "env":
            return cmd_env()
        if args.command == "parity":
            return cmd_parity(args)
        if args.command == "workloads":
            return cmd_workloads(args)
        if args.command == "check-workload":
            return cmd_check(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "recommend":
            return cmd_recommend(args)
        base = _load_record_config(args.record) if args.command == "repro" else None
        return cmd_run(args, base)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
