"""`python -m trainkit workloads` and `python -m trainkit check-workload --model SPEC`.

    python -m trainkit workloads                       # built-ins, installed plugins, adapters
    python -m trainkit check-workload --model mypkg.models:my_workload --device cpu

check-workload builds the workload, trains it a few steps here (CPU or GPU) and prints one table:
whether accumulation is exact, whether a run is deterministic, FLOPs per sample, the layers FP8
would convert, the planner's estimate against a real step, and what each precision mode does.
Exit status: 0 when nothing failed, 1 when a check failed (an invariant broken, a mode that
errors), 2 for bad input (a spec that cannot be resolved: one line).

torch is imported inside the command functions, not at the top: `python -m trainkit --help` and
bad options stay fast (the CLI's rule).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..engine.spec.config import DEVICES
from ..engine.spec.options import UsageError, choice, comma_list, integer
from ..engine.spec.precision_facts import precision_names


def add_parsers(sub: Any) -> None:
    """The `workloads` and `check-workload` subcommands."""
    sub.add_parser("workloads", help="list the models --model takes: built-ins, installed plugins, adapters")
    check = sub.add_parser("check-workload", help="build a workload, train it a few steps here and report "
                                                  "whether trainkit's invariants hold (see --help)")
    check.add_argument("--model", required=True, metavar="SPEC",
                       help="a built-in model, MODULE:FUNCTION, MODULE, a plugin's name, hf:... or timm:...")
    check.add_argument("--device", type=choice(DEVICES), default="auto",
                       help="where to train: auto (a GPU if one is visible), cpu or cuda (default: auto)")
    check.add_argument("--batch-size", type=integer(1), default=4, metavar="N",
                       help="micro-batch of the checks (accumulation compares N x 2 with 2N x 1; default: 4)")
    check.add_argument("--steps", type=integer(1), default=3, metavar="N",
                       help="optimizer steps of the equivalence and determinism checks (default: 3)")
    check.add_argument("--precision", type=comma_list(choice(precision_names)), default=None, metavar="A,B",
                       help="the precision modes to try (default: every mode of trainkit's table)")
    check.add_argument("--seq-len", type=integer(1), default=None, metavar="N",
                       help="tokens per sample of gpt and hf: models (default: the run's default, 64)")
    check.add_argument("--image-size", type=integer(8), default=None, metavar="N",
                       help="image side of timm: models and the ResNets (default: the model's own)")


def cmd_workloads(_: argparse.Namespace) -> int:
    from ..engine.workloads.adapters import ADAPTERS
    from ..engine.workloads.models import BUILTINS  # torch: see the module docstring
    from ..engine.workloads.resolve import plugins

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


def cmd_check(args: argparse.Namespace) -> int:
    import torch  # torch: see the module docstring

    from ..engine.estimate.check import run_checks
    from ..engine.spec.config import ConfigError, RunConfig
    from ..engine.workloads.resolve import build_workload, model_choice
    from ..engine.workloads.workload import WorkloadError

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
    return 1 if report.failed else 0
