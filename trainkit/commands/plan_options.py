"""The `plan` subcommand's options, checked as far as they can be without the hardware. Torch-free:
`python -m trainkit` builds its parser from this on every start."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from ..analysis.plan.file import NOT_PLANNED, PLAN_AXES
from ..engine.spec.config import RunConfig
from ..engine.spec.options import (
    CELL_TIMEOUT,
    DEVICE,
    GPUS_LIST,
    MEMORY_LIMIT_GB,
    OUTPUT,
    PRECISIONS_LIST,
    QUIET,
    REPORT,
    UsageError,
    integer,
    number,
    optional,
)
from .config_options import add_config_options, check_paths, config_from_args

PROBE_WARMUP_STEPS = 1
"""One warmup step before a probe's timed steps: it creates the optimizer's state."""
DEFAULT_PROBE_STEPS = 2
DEFAULT_MEASURED = 3
DEFAULT_SAFETY = 0.9
DEFAULT_RESOLUTION = 0.02
AUTO = "auto"


def safety_factor(text: str) -> float:
    value = number(0, above=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be <= 1 (a share of the largest batch that ran), got {text!r}")
    return value


def search_limit_value(text: str) -> int | str | None:
    """N, none (search until out of memory) or auto."""
    return text if text == AUTO else optional(integer(1))(text)


def add_parser(sub: Any) -> None:
    """The `plan` subcommand and its options (trainkit.commands.cli calls this)."""
    plan = sub.add_parser("plan", help="predict memory, find the largest micro-batch per precision and the "
                                       "fastest micro-batch x accumulation (x GPUs) to a target batch")
    group = plan.add_argument_group("what to plan")
    PRECISIONS_LIST.add(group, dest="precisions", required=True, metavar="P,P",
                        help="precision modes to plan, e.g. fp32,amp-bf16,half-bf16")
    group.add_argument("--target-batch", type=integer(1), default=None, metavar="N",
                       help="effective batch to reach (micro-batch x accumulation x GPUs); without it the "
                            "planner finds the largest micro-batches and recommends nothing")
    GPUS_LIST.add(group, default=(1,),
                  help="GPU counts (CPU ranks on a CPU) the candidates may use; the search probes with the "
                       "largest (default 1)")
    DEVICE.add(group, help="where the cells run (default auto)")
    MEMORY_LIMIT_GB.add(group, help="each CPU worker's address-space cap, the memory the search fits batches into "
                                    "(required on a CPU; on a GPU the GPU's memory is the limit)")
    group.add_argument("--safety", type=safety_factor, default=DEFAULT_SAFETY, metavar="F",
                       help=f"the planned maximum is the largest batch that ran times this (default {DEFAULT_SAFETY})")
    search = plan.add_argument_group("the search")
    search.add_argument("--search-limit", type=search_limit_value, default=None, metavar="N",
                        help="largest micro-batch to probe; none (default): search until out of memory, so the "
                             "maximum is each precision's own; auto: the target per rank / safety, which covers "
                             "the target with its margin and probes no further (cheaper, but every precision's "
                             "maximum is then the target's)")
    search.add_argument("--resolution", type=number(0), default=DEFAULT_RESOLUTION, metavar="F",
                        help="stop bisecting when the gap is at most this share of the last success "
                             f"(default {DEFAULT_RESOLUTION}; 0: to the exact batch)")
    search.add_argument("--probe-steps", type=integer(1), default=DEFAULT_PROBE_STEPS, metavar="N",
                        help=f"timed steps of a probe after its {PROBE_WARMUP_STEPS} warmup step (default "
                             f"{DEFAULT_PROBE_STEPS}; the peak includes the optimizer's state)")
    search.add_argument("--measure", type=integer(1), default=DEFAULT_MEASURED, metavar="N",
                        help="candidates measured per GPU count: the N largest micro-batches "
                             f"(default {DEFAULT_MEASURED})")
    CELL_TIMEOUT.add(search, help="end a probe or a candidate as 'timeout' after this many seconds (default 900)")
    out = plan.add_argument_group("output")
    OUTPUT.add(out, required=True, metavar="PLAN.json", help="write the plan here")
    REPORT.add(out, metavar="PLAN.html", help="also write the plan as an HTML page (needs trainkit[reports])")
    QUIET.add(out)
    add_config_options(plan, exclude=PLAN_AXES + NOT_PLANNED)


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    """What to plan, checked as far as it can be without the hardware."""

    base: RunConfig
    """Every run option but the planner's axes; world_size is the probes' rank count."""
    precisions: tuple[str, ...]
    target_batch: int | None
    gpus: tuple[int, ...]
    """GPU counts the candidates may use, ascending; probes run with the last."""
    device: str
    memory_limit_bytes: int | None
    safety: float
    search_limit: int | None
    """Largest micro-batch a probe may have; None: until out of memory."""
    resolution: float
    probe_steps: int
    measure: int
    cell_timeout_s: float | None
    """A probe's or a candidate's time limit; None: the launcher's default."""
    output: str
    report: str | None = None
    quiet: bool = False


def options_from_args(args: argparse.Namespace) -> PlanOptions:
    """The plan the parsed options ask for; UsageError (one line) for a target no split reaches."""
    gpus = tuple(sorted(args.gpus))
    args.world_size = gpus[-1]
    base = config_from_args(args)
    check_paths(base, args.output)
    if args.report:
        check_paths(base, args.report, "--report")
    target = args.target_batch
    if target is not None:
        bad = [g for g in gpus if target % g]
        if bad:
            raise UsageError(f"--target-batch {target}: no micro-batch x accumulation x {bad[0]} GPUs makes it "
                             f"(it is not a multiple of {bad[0]}); choose a multiple of {math.lcm(*gpus)}, or "
                             "drop that GPU count from --gpus")
    search_limit = args.search_limit
    if search_limit == AUTO:
        # The target per rank, with room for the margin: floor(limit * safety) is at least the target.
        search_limit = math.ceil(target // gpus[0] / args.safety) if target is not None else None
    return PlanOptions(base=base, precisions=tuple(args.precisions), target_batch=target, gpus=gpus,
                       device=args.device,
                       memory_limit_bytes=int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else None,
                       safety=args.safety, search_limit=search_limit, resolution=args.resolution,
                       probe_steps=args.probe_steps, measure=args.measure,
                       cell_timeout_s=args.cell_timeout, output=args.output,
                       report=args.report, quiet=args.quiet)
