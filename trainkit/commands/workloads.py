"""`python -m trainkit workloads` and `python -m trainkit check-workload --model SPEC`.

    python -m trainkit workloads                       # built-ins, installed plugins, adapters
    python -m trainkit check-workload --model mypkg.models:my_workload --device cpu

check-workload builds the workload, trains it a few steps here (CPU or GPU) and prints one table:
whether accumulation is exact, whether a run is deterministic, FLOPs per sample, the layers FP8
would convert, the planner's estimate against a real step, and what each precision mode does.
Exit status: 0 when nothing failed, 1 when a check failed (an invariant broken, a mode that
errors), 2 for bad input (a spec that cannot be resolved: one line).

Their options are workloads_options.py: `python -m trainkit` imports this module (and torch with
it) only when one of these two commands runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ..engine.estimate.check import run_checks
from ..engine.spec.config import ConfigError, RunConfig
from ..engine.spec.options import UsageError
from ..engine.workloads.adapters import ADAPTERS
from ..engine.workloads.models import BUILTINS
from ..engine.workloads.resolve import build_workload, model_choice, plugins
from ..engine.workloads.workload import WorkloadError


def cmd_workloads(_: argparse.Namespace) -> int:
    rows = [(name, "built-in", "trainkit.engine.workloads.models") for name in BUILTINS]
    for name, entry in sorted(plugins().items()):
        dist = entry.dist.name if entry.dist is not None else "?"
        clash = "  (error: a built-in's name)" if name in BUILTINS else ""
        rows.append((name, f"plugin ({dist})", entry.value + clash))
    for adapter in ADAPTERS.values():
        state = "installed" if adapter.available() else f"not installed: pip install 'trainkit[{adapter.extra}]'"
        rows.append((f"{adapter.prefix}:...", f"adapter ({adapter.module})", f"{state}; e.g. '{adapter.example}'"))
    rows.append(("MODULE:FUNCTION", "your code", "a function returning a Workload (or MODULE alone: build, loss, "
                 "batch); see docs/how-to/my-model.md"))
    print(format_table(("--model", "kind", "where"), rows))
    return 0


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain fixed-width table (a terminal's, and a Markdown code block's)."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def what_ran_table(tables: dict[str, dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """One row per mode, one column per observed tensor kind (trainkit.engine.measure.what_ran's rows)."""
    kinds = list(dict.fromkeys(row["tensor"] for table in tables.values() for row in table["rows"]))
    rows = []
    for mode, table in tables.items():
        cells = {r["tensor"]: r["observed"] + (f" [{r['declared']}]" if r["matches"] is False else "")
                 for r in table["rows"]}
        rows.append((mode, *(cells.get(kind, "") for kind in kinds)))
    return ("precision", *kinds), rows


def cmd_check(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    shapes = {k: v for k, v in (("seq_len", args.seq_len), ("image_size", args.image_size)) if v is not None}
    try:
        chosen = model_choice(args.model)
        config = RunConfig(model=chosen.model, workload=chosen.workload, device=device.type, batch_size=args.batch_size,
                           steps=args.steps, warmup_steps=0, **shapes)
        workload = build_workload(config)
    except (WorkloadError, ConfigError) as exc:
        raise UsageError(str(exc)) from None

    def progress(name: str) -> None:
        print(f"[check-workload] {workload.name}: {name}", file=sys.stderr, flush=True)

    report = run_checks(args.model, workload, config, device, args.precision, progress)
    print(f"workload {report.name} ({report.source}) from --model {report.spec!r} on {report.device}")
    print(format_table(("check", "verdict", "detail"), [(c.check, c.verdict, c.detail) for c in report.checks]))
    if report.what_ran:
        print("\nwhat ran: the dtypes of one observed step (a mismatch shows the declared dtype in brackets)")
        print(format_table(*what_ran_table(report.what_ran)))
    return 1 if report.failed else 0
