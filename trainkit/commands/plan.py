"""The memory planner: `python -m trainkit plan`. Plan before you run.

    python -m trainkit plan --model resnet50 --precision fp32,amp-bf16,half-bf16 --target-batch 1024 \\
        [--gpus 1] [--device auto] [--memory-limit-gb G] [--safety 0.9] --output plan.json [--report plan.html]

For each precision it answers three questions, in order:

1. What will a step take? `trainkit.engine.estimate` predicts one rank's peak and its terms on fake
   tensors, before any cell runs.
2. What is the largest micro-batch that runs? A search over real cells, each in fresh worker
   processes (trainkit.engine.launch.run_cell), where an out-of-memory is a status, never the planner's
   crash: the first probe is the largest power of two whose estimate fits; the batch doubles until
   a probe runs out of memory (or reaches the search limit), then the gap between the last success
   and the first out-of-memory is bisected. Every probe is kept. The planned maximum is the largest
   batch that ran times `--safety`.
3. How to reach the target batch fastest? Every micro-batch up to that maximum that divides the
   target per rank is a candidate (accumulation = target / (micro-batch x GPUs)); the largest few
   per GPU count are measured as ordinary cells, and the fastest is recommended with its
   throughput, peak memory and headroom.

The search is written against an oracle (batch -> Probe), so a test's fake oracle and the real
cells share it. Importing this module costs no torch (bench reads plans at collection); the
planner's own process never initialises CUDA: the estimate runs in a fresh worker on the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.config import RunConfig
from ..engine.options import (
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
from ..engine.precision_facts import precision_names
from ..engine.schema import MEMORY_NAMES, headline_memory, write_json

SCHEMA = "trainkit.plan/1"
OK, OOM, FAILED = "ok", "oom", "failed"
"""A probe's outcome: it ran, it ran out of memory, or it ended otherwise (which stops the search)."""
PROBE_GRAD_ACCUM = 2
"""Probes accumulate two micro-batches: from the second on a step holds the first one's gradients
beside its own activations, the highest a micro-batch's memory gets at any accumulation (without
accumulation the gradients are freed before the next forward)."""
PROBE_WARMUP_STEPS = 1
DEFAULT_PROBE_STEPS = 2
DEFAULT_MEASURED = 3
DEFAULT_SAFETY = 0.9
DEFAULT_RESOLUTION = 0.02
PLAN_AXES = ("precision", "batch_size", "grad_accum", "world_size", "device")
"""RunConfig fields the planner sets itself (its own options stand for them)."""
NOT_PLANNED = ("epochs", "data", "data_root", "shuffle", "num_workers", "pin_memory", "prefetch_factor",
               "persistent_workers", "drop_last", "checkpoint_dir", "checkpoint_every", "resume_from")
"""RunConfig fields of what the planner does not plan: real data, epochs and checkpoints."""
MEMORY_FIELDS = ("model", "optimizer", "momentum", "data", "dataset_size", "image_size", "seq_len", "vocab_size",
                 "gpt_layers", "gpt_heads", "gpt_width", "activation_checkpointing", "compile", "compile_mode",
                 "alloc_conf")
"""RunConfig fields that change a step's memory: a plan holds for a cell only where these agree."""
SIGKILL_IS_OOM = "SIGKILL"
OOM_MARKERS = ("std::bad_alloc", "Cannot allocate memory", "can't allocate memory")


# --- the search ---------------------------------------------------------------------------------
@dataclass
class Probe:
    """One probe of the search: a batch size and how its cell ended."""

    batch: int
    outcome: str
    """ok, oom or failed."""
    status: str = ""
    """The cell's status (oom also for a worker the kernel's OOM killer ended, see outcome_of)."""
    detail: str = ""
    peak_bytes: int | None = None
    """What the plan's limit bounds (_peak): on a CPU the worker's address-space growth over the
    whole cell, on a GPU the headline peak over the timed steps; `peak_measure` names it."""
    peak_measure: str | None = None
    estimate_bytes: int | None = None
    seconds: float | None = None
    cell_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def outcome_of(record: dict[str, Any]) -> str:
    """A cell record's outcome for the search. Out of memory is status `oom` (an allocation past the
    worker's cap or the GPU's memory), and also a worker killed by SIGKILL (on a host without a cap
    the kernel's OOM killer ends a process that way, and the launcher reports it as crashed) or
    one whose allocator threw std::bad_alloc. Anything else that is not ok (a crash, a timeout, a
    divergence) is a failure: it says nothing about memory."""
    status, detail = record.get("status"), str(record.get("status_detail") or "")
    if status == "ok":
        return OK
    if status == "oom" or (status == "crashed" and (SIGKILL_IS_OOM in detail or any(m in detail for m in OOM_MARKERS))):
        return OOM
    return FAILED


@dataclass
class Search:
    """The result of a search for the largest micro-batch that runs."""

    probes: list[Probe]
    """Every probe, in the order it ran."""
    largest_ok: int | None
    smallest_oom: int | None
    bounded_by: str
    """oom (the boundary was found), search limit (everything up to the limit ran), failure (a probe
    ended neither ok nor oom) or no batch fits (batch 1 ran out of memory)."""
    search_limit: int | None

    def max_batch(self, safety: float) -> int | None:
        """The planned maximum: the largest batch that ran, times the safety factor (None when
        nothing ran, or nothing is left of batch 1 after the margin)."""
        if self.largest_ok is None:
            return None
        return math.floor(self.largest_ok * safety + 1e-9) or None


def search_max_batch(probe: Callable[[int], Probe], start: int, search_limit: int | None = None,
                     resolution: float = 0.0) -> Search:
    """The largest batch the oracle `probe` says runs: from `start`, double while it runs (up to
    `search_limit`) or halve while it runs out of memory, then bisect between the last success and
    the first out-of-memory until they are 1 apart, or `resolution` of the success apart. No batch
    is probed twice. O(log) probes: the doubling or halving takes log2 of the distance from start to
    the boundary, the bisection log2 of the gap it leaves."""
    if search_limit is not None and search_limit < 1:
        raise ValueError(f"search_limit={search_limit} must be >= 1")
    probes: list[Probe] = []
    outcomes: dict[int, str] = {}
    failed = False

    def run(batch: int) -> str:
        nonlocal failed
        if batch not in outcomes:
            result = probe(batch)
            probes.append(result)
            outcomes[batch] = result.outcome
            failed = failed or result.outcome == FAILED
        return outcomes[batch]

    batch = max(1, min(start, search_limit) if search_limit is not None else start)
    low: int | None = None  # largest that ran
    high: int | None = None  # smallest out of memory
    outcome = run(batch)
    if outcome == OK:
        low = batch
        while not failed and (search_limit is None or low < search_limit):
            nxt = low * 2 if search_limit is None else min(low * 2, search_limit)
            if run(nxt) == OK:
                low = nxt
            elif outcomes[nxt] == OOM:
                high = nxt
                break
    elif outcome == OOM:
        high = batch
        while not failed and high > 1:
            nxt = high // 2
            if run(nxt) == OOM:
                high = nxt
            elif outcomes[nxt] == OK:
                low = nxt
                break
    while not failed and low is not None and high is not None and high - low > max(1, math.floor(low * resolution)):
        mid = (low + high) // 2
        if run(mid) == OK:
            low = mid
        elif outcomes[mid] == OOM:
            high = mid
    if failed:
        bounded_by = "failure"
    elif low is None:
        bounded_by = "no batch fits"
    elif high is None:
        bounded_by = "search limit"
    else:
        bounded_by = "oom"
    return Search(probes, low, high, bounded_by, search_limit)


# --- candidates and the recommendation -----------------------------------------------------------
@dataclass
class Candidate:
    """A way to reach the target batch: micro-batch x accumulation x GPUs, and what it measured."""

    micro_batch: int
    grad_accum: int
    gpus: int
    measured: bool = False
    status: str | None = None
    status_detail: str = ""
    throughput_samples_per_s: float | None = None
    peak_bytes: int | None = None
    peak_measure: str | None = None
    headroom_bytes: int | None = None
    """The memory limit minus the measured peak."""
    headroom_fraction: float | None = None
    estimate_bytes: int | None = None
    step_time_s: float | None = None
    cell_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def candidates(target_batch: int, max_batch: int | None, gpus: Sequence[int]) -> list[Candidate]:
    """Every (micro-batch, accumulation, GPUs) with micro-batch x accumulation x GPUs = target and
    micro-batch <= max_batch, largest micro-batch first within each GPU count."""
    if not max_batch:
        return []
    found = []
    for count in gpus:
        if target_batch % count:
            continue
        per_rank = target_batch // count
        found += [Candidate(micro, per_rank // micro, count) for micro in reversed(divisors(per_rank))
                  if micro <= max_batch]
    return found


def most_promising(found: Sequence[Candidate], per_gpu_count: int) -> list[Candidate]:
    """The largest `per_gpu_count` micro-batches of each GPU count: the fewest accumulation steps,
    which is where the throughput is (each micro-batch pays a forward and a backward launch)."""
    chosen, seen = [], {}
    for candidate in found:
        if seen.get(candidate.gpus, 0) < per_gpu_count:
            chosen.append(candidate)
            seen[candidate.gpus] = seen.get(candidate.gpus, 0) + 1
    return chosen


def recommend(measured: Iterable[Candidate]) -> Candidate | None:
    """The fastest candidate that ran (global samples per second); a tie goes to fewer GPUs, then to
    more headroom."""
    ran = [c for c in measured if c.status == "ok" and c.throughput_samples_per_s is not None]
    if not ran:
        return None
    return max(ran, key=lambda c: (c.throughput_samples_per_s, -c.gpus, c.headroom_bytes or 0))


# --- a plan file, read back (bench's --batch-size max) --------------------------------------------
class PlanError(ValueError):
    """A plan that cannot answer the question asked of it; the message is one line naming the fix."""


def read_plan(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: not a readable plan ({type(exc).__name__}: {exc})") from None
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        raise PlanError(f"{path}: not a plan (schema {plan.get('schema') if isinstance(plan, dict) else None!r}, "
                        f"expected {SCHEMA!r}; write one with python -m trainkit plan)")
    plan["path"] = path
    return plan


def _option(name: str, value: Any) -> str:
    """The plan command's option for a RunConfig field's value (booleans are --flag/--no-flag)."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag} " if value else f"--no-{flag} "
    return f"--{flag} {value} "


def planned_max_batch(plans: Sequence[dict[str, Any]], config: RunConfig, device: str,
                      memory_limit_bytes: int | None = None, gpu_name: str | None = None) -> int:
    """The planned maximum micro-batch for a cell's config (its batch size ignored) from the plan
    made for its model, precision and hardware; PlanError naming what to plan when none fits."""
    defaults = RunConfig()
    shaping = "".join(_option(name, getattr(config, name)) for name in MEMORY_FIELDS[1:]
                      if name not in NOT_PLANNED and getattr(config, name) != getattr(defaults, name))
    fix = (f"python -m trainkit plan --model {config.model} {shaping}--precision {config.precision} "
           f"--gpus {config.world_size} "
           + (f"--memory-limit-gb {memory_limit_bytes / 2**30:g} " if memory_limit_bytes else "")
           + "--output plan.json, then pass --plan plan.json")
    reasons = []
    for plan in plans:
        where = plan.get("path", "a plan")
        planned = plan.get("config") or {}
        differ = [f"{name} {planned.get(name)!r} (the cell's {getattr(config, name)!r})" for name in MEMORY_FIELDS
                  if planned.get(name) != getattr(config, name)]
        if planned.get("model") != config.model:
            reasons.append(f"{where} plans {planned.get('model')}")
            continue
        if config.precision not in (plan.get("precisions") or {}):
            reasons.append(f"{where} has no {config.precision}")
            continue
        if differ:
            reasons.append(f"{where} was made with {', '.join(differ)}")
            continue
        if plan.get("device") != device or (device == "cuda" and plan.get("gpu_name") != gpu_name):
            reasons.append(f"{where} was made on {plan.get('gpu_name') or plan.get('device')}, "
                           f"not {gpu_name or device}")
            continue
        if device == "cpu" and plan.get("memory_limit_bytes") != memory_limit_bytes:
            ours = f"{memory_limit_bytes / 2**30:g} GiB" if memory_limit_bytes else "none"
            reasons.append(f"{where} is for a {plan.get('memory_limit_bytes', 0) / 2**30:g} GiB memory cap, "
                           f"this run's is {ours}")
            continue
        ranks = (plan.get("probe") or {}).get("world_size", 1)
        if config.world_size > 1 and ranks == 1:
            reasons.append(f"{where} probed 1 rank; {config.world_size} ranks hold DDP's gradient buckets too")
            continue
        found = plan["precisions"][config.precision].get("max_batch")
        if not found:
            raise PlanError(f"{where}: no batch of {config.model} {config.precision} fits "
                            f"({plan['precisions'][config.precision].get('bounded_by')})")
        return int(found)
    raise PlanError(f"--batch-size max: no plan for {config.model} {config.precision} on {gpu_name or device}"
                    + (f" ({'; '.join(reasons)})" if reasons else " (no --plan given)") + f"; run {fix}")


# --- the command ------------------------------------------------------------------------------------
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
    from .cli import add_config_options

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
    cell_timeout_s: float
    output: str
    report: str | None = None
    quiet: bool = False


def options_from_args(args: argparse.Namespace) -> PlanOptions:
    from ..engine.launch import DEFAULT_CELL_TIMEOUT_S
    from .cli import check_paths, config_from_args

    gpus = tuple(sorted(args.gpus))
    args.world_size = gpus[-1]
    base = config_from_args(args)
    check_paths(base, args.output)
    if args.report:
        check_paths(base, args.report)
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
                       cell_timeout_s=args.cell_timeout or DEFAULT_CELL_TIMEOUT_S, output=args.output,
                       report=args.report, quiet=args.quiet)


def mib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB"


def memory_limit(options: PlanOptions, hardware: dict[str, Any]) -> tuple[int, str]:
    """The bytes the search fits batches into and what they are; UsageError where there are none."""
    from .cli import MEMORY_LIMIT_ON_GPU

    if hardware["device"] == "cuda":
        if options.memory_limit_bytes:
            raise UsageError(f"--memory-limit-gb {MEMORY_LIMIT_ON_GPU}; on a GPU the planner fits batches into "
                             "the GPU's memory")
        if not hardware.get("gpu_memory_bytes"):
            raise UsageError("plan: the device probe did not report the GPU's memory")
        return int(hardware["gpu_memory_bytes"]), f"the memory of {hardware.get('gpu_name') or 'the GPU'}"
    if not options.memory_limit_bytes:
        raise UsageError("plan on a CPU needs --memory-limit-gb: the search fits batches into each worker's "
                         "address-space cap (without one, a batch too large would exhaust the machine)")
    return options.memory_limit_bytes, "each worker's address-space cap (--memory-limit-gb)"


def check_hardware(options: PlanOptions, hardware: dict[str, Any]) -> None:
    """Precisions the device cannot run and GPU counts it does not have are bad input."""
    from ..engine.precision import policy_class

    device, capability = hardware["device"], hardware.get("capability")
    capability = tuple(capability) if capability else None
    runnable = [p for p in precision_names()
                if not policy_class(p).unsupported_on(device, capability, hardware.get("gpu_name"))]
    for precision in options.precisions:
        reason = policy_class(precision).unsupported_on(device, capability, hardware.get("gpu_name"))
        if reason:
            raise UsageError(f"--precision {precision}: {reason}; this device runs {', '.join(runnable)}")
    if device == "cuda" and options.gpus[-1] > hardware.get("gpu_count", 0):
        raise UsageError(f"--gpus {options.gpus[-1]}: only {hardware.get('gpu_count', 0)} GPU(s) are visible")


CellRunner = Callable[[RunConfig], dict[str, Any]]
"""Runs a cell and returns its record: launch.run_cell with the plan's limits, and without the
held-out loss, which the plan does not use (at a small batch its passes cost more than the steps)."""
EstimateService = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
"""Answers estimate requests (trainkit.engine.estimate.estimate_request), in a worker on the device."""
UNBOUNDED_FIRST_PROBE = 2**24
"""Highest first probe without a search limit: 16 M samples per micro-batch."""


def probe_config(base: RunConfig, precision: str, batch: int, ranks: int, steps: int) -> RunConfig:
    """The cell that probes a micro-batch: accumulating (PROBE_GRAD_ACCUM), one warmup step to
    create the optimizer's state, then `steps` timed steps, whose peak the record reports."""
    return base.replace(precision=precision, batch_size=batch, grad_accum=PROBE_GRAD_ACCUM, world_size=ranks,
                        steps=steps, warmup_steps=PROBE_WARMUP_STEPS)


ADDRESS_SPACE = "host_vm_growth_bytes"
PEAK_NAMES = {**MEMORY_NAMES, ADDRESS_SPACE: "address-space growth"}
"""Short names of the peaks a plan reports."""


def _peak(record: dict[str, Any], device: str) -> tuple[int | None, str | None]:
    """A cell's peak against the plan's limit: on a CPU the worker's address-space growth (what its
    cap limits: resident memory also counts pages inherited from the fork server, which the cap does
    not), on a GPU the record's headline measure (PyTorch's reserved peak)."""
    memory = record.get("memory") or {}
    if device == "cpu" and memory.get(ADDRESS_SPACE) is not None:
        return int(memory[ADDRESS_SPACE]), ADDRESS_SPACE
    measure = headline_memory([memory])
    return (int(memory[measure]), measure) if measure else (None, None)


def _estimate_requests(options: PlanOptions, hardware: dict[str, Any],
                       points: dict[tuple[str, int], list[tuple[int, int]]], fit: bool = False,
                       first_probe_limit: int | None = None) -> list[dict[str, Any]]:
    requests = []
    for (precision, ranks), wanted in points.items():
        request: dict[str, Any] = {"config": options.base.replace(precision=precision, world_size=ranks).to_dict(),
                                   "device": hardware["device"], "capability": hardware.get("capability"),
                                   "points": wanted, "fit": fit}
        if first_probe_limit is not None:
            request["first_probe"] = {"limit_bytes": first_probe_limit, "grad_accum": PROBE_GRAD_ACCUM,
                                      "search_limit": options.search_limit or UNBOUNDED_FIRST_PROBE}
        requests.append(request)
    return requests


def make_plan(options: PlanOptions, hardware: dict[str, Any], run: CellRunner, estimate: EstimateService,
              say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """The plan: estimates, searches and candidates for every precision (see the module's docstring)."""
    started = time.monotonic()
    base, ranks = options.base, options.gpus[-1]
    limit_bytes, limit_source = memory_limit(options, hardware)
    check_hardware(options, hardware)

    # 1. The estimate, before anything runs: the first probe, and the floor no batch gets under.
    first = estimate(_estimate_requests(options, hardware, {(p, ranks): [] for p in options.precisions},
                                        fit=True, first_probe_limit=limit_bytes))
    before = dict(zip(options.precisions, first))
    for precision, answer in before.items():
        if answer["weights_bytes"] > limit_bytes:
            given = "--memory-limit-gb" if options.memory_limit_bytes else limit_source
            raise UsageError(f"{given} ({mib(limit_bytes)}) is below {base.model}'s own weights in {precision} "
                             f"({mib(answer['weights_bytes'])}: parameters, buffers, master copies)")
    say(f"device: {hardware.get('gpu_name') or 'cpu'} ({hardware.get('gpu_count') or hardware.get('cpu_count')} "
        f"{'GPUs' if hardware['device'] == 'cuda' else 'cores'}); fitting into {limit_source}, {mib(limit_bytes)}")

    # 2. The search, per precision, over real cells.
    searches: dict[str, Search] = {}
    for precision in options.precisions:
        def probe(batch: int, precision: str = precision) -> Probe:
            config = probe_config(base, precision, batch, ranks, options.probe_steps)
            began = time.monotonic()
            record = run(config)
            peak, measure = _peak(record, hardware["device"])
            result = Probe(batch=batch, outcome=outcome_of(record), status=record.get("status", ""),
                           detail=str(record.get("status_detail") or ""), peak_bytes=peak, peak_measure=measure,
                           seconds=round(time.monotonic() - began, 3), cell_id=config.cell_id)
            shown = f"peak {mib(peak)} {PEAK_NAMES.get(measure or '', '')}".rstrip() if peak is not None else ""
            say(f"{base.model} {precision}: probe at micro-batch {batch} (accumulation {PROBE_GRAD_ACCUM}, "
                f"{ranks} rank{'s' if ranks > 1 else ''}): {result.outcome}"
                + (f", {shown}" if shown else "") + (f" ({result.detail[:160]})" if result.outcome == FAILED else "")
                + f", {result.seconds:.1f} s")
            return result

        say(f"{base.model} {precision}: first probe at {before[precision]['first_probe']} "
            f"(the largest power of two whose estimate fits {mib(limit_bytes)})")
        searches[precision] = search_max_batch(probe, before[precision]["first_probe"], options.search_limit,
                                               options.resolution)

    # 3. Candidates, and the estimates at every batch probed or measured.
    found: dict[str, list[Candidate]] = {}
    chosen: dict[str, list[Candidate]] = {}
    for precision, search in searches.items():
        found[precision] = (candidates(options.target_batch, search.max_batch(options.safety), options.gpus)
                            if options.target_batch else [])
        chosen[precision] = most_promising(found[precision], options.measure)
    points: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for precision, search in searches.items():
        points.setdefault((precision, ranks), []).extend((p.batch, PROBE_GRAD_ACCUM) for p in search.probes)
        for c in chosen[precision]:
            points.setdefault((precision, c.gpus), []).append((c.micro_batch, c.grad_accum))
    answers = estimate(_estimate_requests(options, hardware, points))
    predicted: dict[tuple[str, int, int, int], dict[str, Any]] = {}
    for (precision, world), answer in zip(points, answers):
        for e in answer["estimates"]:
            predicted[(precision, world, e["batch_size"], e["grad_accum"])] = e
    for precision, search in searches.items():
        for p in search.probes:
            p.estimate_bytes = predicted[(precision, ranks, p.batch, PROBE_GRAD_ACCUM)]["total_bytes"]

    # 4. Measure the most promising candidates as ordinary cells, and recommend.
    for precision in options.precisions:
        for c in chosen[precision]:
            config = base.replace(precision=precision, batch_size=c.micro_batch, grad_accum=c.grad_accum,
                                  world_size=c.gpus)
            say(f"{base.model} {precision}: measuring micro-batch {c.micro_batch} x accumulation {c.grad_accum} x "
                f"{c.gpus} rank{'s' if c.gpus > 1 else ''} ({config.warmup_steps} + {config.steps} steps)")
            record = run(config)
            c.measured, c.cell_id = True, config.cell_id
            c.status, c.status_detail = record.get("status"), str(record.get("status_detail") or "")
            c.throughput_samples_per_s = record.get("throughput_samples_per_s")
            c.peak_bytes, c.peak_measure = _peak(record, hardware["device"])
            c.step_time_s = (record.get("step_time_s") or {}).get("median")
            c.estimate_bytes = predicted[(precision, c.gpus, c.micro_batch, c.grad_accum)]["total_bytes"]
            if c.peak_bytes is not None:
                # On a GPU the CUDA context takes its share of the device's memory too.
                context = (record.get("memory") or {}).get("nvml_context_baseline_bytes") or 0
                c.headroom_bytes = limit_bytes - c.peak_bytes - (context if hardware["device"] == "cuda" else 0)
                c.headroom_fraction = round(c.headroom_bytes / limit_bytes, 4)
            say(f"{base.model} {precision}: {c.status}"
                + (f", {c.throughput_samples_per_s:,.1f} samples/s, peak {mib(c.peak_bytes)}"
                   if c.throughput_samples_per_s is not None else f" ({c.status_detail[:120]})"))

    return _plan_document(options, hardware, limit_bytes, limit_source, before, searches, found, predicted,
                          time.monotonic() - started)


def _plan_document(options: PlanOptions, hardware: dict[str, Any], limit_bytes: int, limit_source: str,
                   before: dict[str, dict[str, Any]], searches: dict[str, Search],
                   found: dict[str, list[Candidate]], predicted: dict[tuple[str, int, int, int], dict[str, Any]],
                   elapsed_s: float) -> dict[str, Any]:
    from ..engine.estimate import PEAK_FORMULA

    ranks = options.gpus[-1]
    precisions: dict[str, Any] = {}
    for precision, search in searches.items():
        answer = before[precision]
        best = recommend(found[precision])
        note = None
        if options.target_batch is None:
            note = "no --target-batch: nothing to recommend"
        elif best is None:
            note = ("no candidate ran" if any(c.measured for c in found[precision])
                    else "no micro-batch fits, so there is no candidate")
        precisions[precision] = {
            "estimate": {"terms_before_the_step": answer["state"], "weights_bytes": answer["weights_bytes"],
                         "activations_per_sample_bytes": answer["activations_per_sample_bytes"],
                         "activations_constant_bytes": answer["activations_constant_bytes"],
                         "first_probe": answer["first_probe"]},
            "estimate_bytes": {str(p.batch): predicted[(precision, ranks, p.batch, PROBE_GRAD_ACCUM)]
                               for p in sorted(search.probes, key=lambda p: p.batch)},
            "max_batch": search.max_batch(options.safety),
            "largest_ran_batch": search.largest_ok,
            "smallest_oom_batch": search.smallest_oom,
            "bounded_by": search.bounded_by,
            "probes": [p.to_dict() for p in search.probes],
            "candidates": [c.to_dict() for c in found[precision]],
            "recommendation": best.to_dict() if best is not None else None,
            "recommendation_note": note,
        }
    ranked = [(p, d["recommendation"]) for p, d in precisions.items() if d["recommendation"]]
    fastest = max(ranked, key=lambda pr: pr[1]["throughput_samples_per_s"]) if ranked else None
    return {
        "schema": SCHEMA,
        "model": options.base.model,
        # data is not an option of the planner (it plans synthetic data), but a cell's plan must match it.
        "config": {k: v for k, v in options.base.to_dict().items()
                   if k not in PLAN_AXES + NOT_PLANNED or k in MEMORY_FIELDS},
        "device": hardware["device"],
        "gpu_name": hardware.get("gpu_name"),
        "gpu_count": hardware.get("gpu_count"),
        "capability": hardware.get("capability"),
        "memory_limit_bytes": limit_bytes if hardware["device"] == "cpu" else None,
        "fit_bytes": limit_bytes,
        "fit_source": limit_source,
        "safety": options.safety,
        "target_batch": options.target_batch,
        "gpus": list(options.gpus),
        "search_limit": options.search_limit,
        "resolution": options.resolution,
        "probe": {"grad_accum": PROBE_GRAD_ACCUM, "world_size": ranks, "warmup_steps": PROBE_WARMUP_STEPS,
                  "steps": options.probe_steps},
        "candidate_cells": {"steps": options.base.steps, "warmup_steps": options.base.warmup_steps,
                            "measured_per_gpu_count": options.measure},
        "estimate_method": PEAK_FORMULA,
        "peak_measure_note": (
            "a cell's measured peak is what the limit bounds: on a CPU the worker's address-space growth over "
            "the whole cell, from the worker's start (host_vm_growth_bytes: VmPeak has no reset, so data "
            "generation and the model's build count too, and a micro-batch whose steps fit in address space "
            "mapped before them shows the same peak as a smaller one), on a GPU PyTorch's reserved peak over "
            "the timed steps; headroom is the limit minus it (minus the CUDA context on a GPU). The estimate "
            "counts tensor bytes, of torch_max_allocated_bytes."),
        "precisions": precisions,
        "fastest": {"precision": fastest[0], **fastest[1],
                    "note": "Precisions differ in numerics as well as speed: compare their loss (bench) before "
                            "switching"} if fastest else None,
        "env": hardware.get("env"),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 1),
    }


def cmd_plan(args: argparse.Namespace) -> int:
    """`python -m trainkit plan`: 0 when every precision got a recommendation (or none was asked
    for), 1 when one did not (the plan is written all the same), 2 for bad input."""
    options = options_from_args(args)
    from ..engine.estimate import serve_estimates
    from ..engine.launch import call_in_fresh_process, probe, run_cell

    def say(line: str) -> None:
        if not options.quiet:
            print(f"[plan] {line}", file=sys.stderr, flush=True)

    try:
        hardware = probe(options.device)
    except RuntimeError as exc:
        raise UsageError(f"plan: {exc}") from None

    def run(config: RunConfig) -> dict[str, Any]:
        limit = options.memory_limit_bytes if hardware["device"] == "cpu" else None
        return run_cell(config, timeout_s=options.cell_timeout_s, memory_limit_bytes=limit, evaluate=False)

    def estimate(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return call_in_fresh_process(serve_estimates, requests, timeout_s=options.cell_timeout_s,
                                     what="the estimate")

    plan = make_plan(options, hardware, run, estimate, say)
    write_json(options.output, plan)
    say(f"wrote {options.output}")
    for precision, entry in plan["precisions"].items():
        best = entry["recommendation"]
        say(f"{plan['model']} {precision}: max micro-batch {entry['max_batch']} (largest that ran "
            f"{entry['largest_ran_batch']} x safety {options.safety}; {entry['bounded_by']})"
            + (f"; fastest to {options.target_batch}: micro-batch {best['micro_batch']} x accumulation "
               f"{best['grad_accum']} x {best['gpus']}, {best['throughput_samples_per_s']:,.1f} samples/s, "
               f"peak {mib(best['peak_bytes'])}, headroom {mib(best['headroom_bytes'])}" if best else ""))
    if options.report:
        try:
            from reports.plan import write_page
        except ImportError as exc:
            print(f"warning: no HTML report: {exc} (install trainkit[reports])", file=sys.stderr)
        else:
            write_page(plan, options.report)
            say(f"wrote {options.report}")
    complete = options.target_batch is None or all(e["recommendation"] for e in plan["precisions"].values())
    return 0 if complete else 1
