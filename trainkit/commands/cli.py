"""`python -m trainkit` (the `trainkit` console script): the parser of every command, and the door to
each command's work.

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

The parser is built from the commands' option modules alone (config_options, parity_options,
plan_options, recommend_options, workloads_options: the torch-free spec room and the analyses'
documents); a command's work module (WORK), and torch with it, is imported only when that command
runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..engine.spec import config as cfg
from ..engine.spec.options import CELL_TIMEOUT, MEMORY_LIMIT_GB, OUTPUT, QUIET, Parser, UsageError, integer, output_dir
from .config_options import add_config_options
from .parity_options import add_arguments as add_parity_arguments
from .plan_options import add_parser as add_plan_parser
from .recommend_options import add_parser as add_recommend_parser
from .workloads_options import add_parsers as add_workload_parsers

WORK = {"run": ("run", "main"), "repro": ("run", "main"), "env": ("run", "main"), "parity": ("parity", "main"),
        "plan": ("plan", "cmd_plan"), "recommend": ("recommend", "main"), "workloads": ("workloads", "cmd_workloads"),
        "check-workload": ("workloads", "cmd_check")}
"""Each command's work: (module of trainkit.commands, function taking the parsed arguments)."""


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("trainkit: choose a command: run, repro, env, recommend, parity, plan, workloads or "
                             "check-workload (see --help)")
        module, function = WORK[args.command]
        work = getattr(importlib.import_module(f"{__package__}.{module}"), function)
        return work(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
