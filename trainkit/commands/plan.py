"""The memory planner: `python -m trainkit plan`. Plan before you run.

    python -m trainkit plan --model resnet50 --precision fp32,amp-bf16,half-bf16 --target-batch 1024 \\
        [--gpus 1] [--device auto] [--memory-limit-gb G] [--safety 0.9] --output plan.json [--report plan.html]

For each precision it answers three questions, in order:

1. What will a step take? `trainkit.engine.estimate.estimate` predicts one rank's peak and its terms on fake
   tensors, before any cell runs.
2. What is the largest micro-batch that runs? trainkit.analysis.plan.search's search, over real
   cells, each in fresh worker processes (trainkit.engine.cell.launch.run_cell), where an out-of-memory
   is a status, never the planner's crash. The first probe is the largest power of two whose
   estimate fits.
3. How to reach the target batch fastest? The most promising candidates (plan_search) are measured
   as ordinary cells, and the fastest is recommended with its throughput, peak memory and headroom.

This module runs the cells and the estimate and writes the document
(trainkit.analysis.plan.document); the search, the candidates and the plan's types are pure and
live in trainkit.analysis. Its options are plan_options.py: `python -m trainkit` imports this module
(and torch with it) only when a plan runs. The planner's own process never initialises CUDA: the
estimate runs in a fresh worker on the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable
from typing import Any

from ..analysis.plan.document import (
    PEAK_MEASURE_NOTE,
    CandidateCells,
    EstimateSummary,
    Plan,
    PrecisionPlan,
    ProbeCells,
    fastest_of,
    precision_plan,
)
from ..analysis.plan.file import ADDRESS_SPACE, MEMORY_FIELDS, NOT_PLANNED, PEAK_NAMES, PLAN_AXES, SCHEMA
from ..analysis.plan.search import (
    FAILED,
    Candidate,
    Probe,
    Search,
    candidates,
    most_promising,
    outcome_of,
    search_max_batch,
)
from ..engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, call_in_fresh_process, probe, run_cell
from ..engine.cell.worker import serve_estimates
from ..engine.estimate.estimate import PEAK_FORMULA
from ..engine.measure.conditions import condition_flags
from ..engine.spec.config import RunConfig
from ..engine.spec.options import MEMORY_LIMIT_ON_GPU, UsageError
from ..engine.spec.precision_facts import precision_names
from ..engine.spec.schema import headline_memory, write_json
from ..engine.train.precision import policy_class
from .plan_options import PROBE_WARMUP_STEPS, PlanOptions, options_from_args

PROBE_GRAD_ACCUM = 2
"""Probes accumulate two micro-batches: from the second on a step holds the first one's gradients
beside its own activations, the highest a micro-batch's memory gets at any accumulation (without
accumulation the gradients are freed before the next forward)."""
Say = Callable[[str], None]
Predicted = dict[tuple[str, int, int, int], dict[str, Any]]
"""Estimates by (precision, ranks, micro-batch, accumulation): trainkit.engine.estimate.estimate's Estimate as data."""


def mib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB"


def memory_limit(options: PlanOptions, hardware: dict[str, Any]) -> tuple[int, str]:
    """The bytes the search fits batches into and what they are; UsageError where there are none."""
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
"""Answers estimate requests (trainkit.engine.estimate.estimate.estimate_request), in a worker on the device."""
UNBOUNDED_FIRST_PROBE = 2**24
"""Highest first probe without a search limit: 16 M samples per micro-batch."""


def probe_config(base: RunConfig, precision: str, batch: int, ranks: int, steps: int) -> RunConfig:
    """The cell that probes a micro-batch: accumulating (PROBE_GRAD_ACCUM), one warmup step to
    create the optimizer's state, then `steps` timed steps, whose peak the record reports."""
    return base.replace(precision=precision, batch_size=batch, grad_accum=PROBE_GRAD_ACCUM, world_size=ranks,
                        steps=steps, warmup_steps=PROBE_WARMUP_STEPS)


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


def _first_estimates(options: PlanOptions, hardware: dict[str, Any], estimate: EstimateService,
                     limit_bytes: int, limit_source: str) -> dict[str, dict[str, Any]]:
    """Each precision's estimate before anything runs: its first probe, and the floor no batch gets
    under (UsageError when the model's own weights do not fit)."""
    ranks = options.gpus[-1]
    answers = estimate(_estimate_requests(options, hardware, {(p, ranks): [] for p in options.precisions},
                                          fit=True, first_probe_limit=limit_bytes))
    before = dict(zip(options.precisions, answers))
    for precision, answer in before.items():
        if answer["weights_bytes"] > limit_bytes:
            given = "--memory-limit-gb" if options.memory_limit_bytes else limit_source
            raise UsageError(f"{given} ({mib(limit_bytes)}) is below {options.base.model}'s own weights in "
                             f"{precision} ({mib(answer['weights_bytes'])}: parameters, buffers, master copies)")
    return before


def _search(options: PlanOptions, hardware: dict[str, Any], run: CellRunner, precision: str, start: int,
            say: Say) -> Search:
    """The search for one precision's largest micro-batch, each probe a real cell."""
    base, ranks = options.base, options.gpus[-1]

    def probe(batch: int) -> Probe:
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

    return search_max_batch(probe, start, options.search_limit, options.resolution)


def _predict(options: PlanOptions, hardware: dict[str, Any], estimate: EstimateService,
             searches: dict[str, Search], chosen: dict[str, list[Candidate]]) -> Predicted:
    """The estimate at every probe and every candidate to be measured, in one request per
    (precision, ranks)."""
    ranks = options.gpus[-1]
    points: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for precision, search in searches.items():
        points.setdefault((precision, ranks), []).extend((p.batch, PROBE_GRAD_ACCUM) for p in search.probes)
        for c in chosen[precision]:
            points.setdefault((precision, c.gpus), []).append((c.micro_batch, c.grad_accum))
    predicted: Predicted = {}
    for (precision, world), answer in zip(points, estimate(_estimate_requests(options, hardware, points))):
        for e in answer["estimates"]:
            predicted[(precision, world, e["batch_size"], e["grad_accum"])] = e
    return predicted


def _throughput_interval(record: dict[str, Any]) -> tuple[float | None, float | None]:
    """A cell's throughput interval from its median step time's (throughput goes as 1 / step time)."""
    noise, median = record.get("noise") or {}, (record.get("step_time_s") or {}).get("median")
    low_s, high_s, throughput = noise.get("median_ci_low_s"), noise.get("median_ci_high_s"), \
        record.get("throughput_samples_per_s")
    if not (low_s and high_s and median and throughput):
        return None, None
    return throughput * median / high_s, throughput * median / low_s


def _measure(options: PlanOptions, hardware: dict[str, Any], run: CellRunner, precision: str, c: Candidate,
             limit_bytes: int, estimate_bytes: int, say: Say, memory_run: CellRunner | None = None) -> Candidate:
    """A candidate measured as an ordinary cell: its throughput, peak and headroom. With
    `memory_run` (a CPU plan whose candidates run uncapped), the peak is a short run's under the cap."""
    base = options.base
    config = base.replace(precision=precision, batch_size=c.micro_batch, grad_accum=c.grad_accum, world_size=c.gpus)
    say(f"{base.model} {precision}: measuring micro-batch {c.micro_batch} x accumulation {c.grad_accum} x "
        f"{c.gpus} rank{'s' if c.gpus > 1 else ''} ({config.warmup_steps} + {config.steps} steps)")
    record = run(config)
    peak, measure = _peak(record, hardware["device"])
    if memory_run is not None and record.get("status") == "ok":
        # Uncapped, glibc's adaptive malloc keeps freed blocks in the heap (a small GPT's 4 x 2 cell:
        # 100 MiB of address-space growth uncapped, 43 MiB capped): not what the cap bounds. The peak
        # that the headroom is taken from is the same cell's under the cap, as long as a probe's run.
        capped = memory_run(config.replace(steps=options.probe_steps, warmup_steps=PROBE_WARMUP_STEPS))
        peak, measure = _peak(capped, hardware["device"]) if capped.get("status") == "ok" else (None, None)
    headroom = None
    if peak is not None:
        # On a GPU the CUDA context takes its share of the device's memory too.
        context = (record.get("memory") or {}).get("nvml_context_baseline_bytes") or 0
        headroom = limit_bytes - peak - (context if hardware["device"] == "cuda" else 0)
    low, high = _throughput_interval(record)
    done = dataclasses.replace(
        c, measured=True, cell_id=config.cell_id, status=record.get("status"),
        throughput_low_samples_per_s=low, throughput_high_samples_per_s=high,
        flags=tuple(condition_flags(record.get("conditions"))),
        status_detail=str(record.get("status_detail") or ""),
        throughput_samples_per_s=record.get("throughput_samples_per_s"), peak_bytes=peak, peak_measure=measure,
        step_time_s=(record.get("step_time_s") or {}).get("median"), estimate_bytes=estimate_bytes,
        headroom_bytes=headroom, headroom_fraction=round(headroom / limit_bytes, 4) if headroom is not None else None)
    say(f"{base.model} {precision}: {done.status}"
        + (f", {done.throughput_samples_per_s:,.1f} samples/s, peak {mib(done.peak_bytes)}"
           if done.throughput_samples_per_s is not None else f" ({done.status_detail[:120]})"))
    return done


def make_plan(options: PlanOptions, hardware: dict[str, Any], run: CellRunner, estimate: EstimateService,
              say: Say = lambda line: None, measure_run: CellRunner | None = None) -> dict[str, Any]:
    """The plan as the file holds it: estimates, searches and candidates for every precision (see
    the module's docstring). `run` runs a probe cell (under the memory cap), `measure_run` a
    candidate (uncapped, as speeds are measured everywhere; `run` where not given; on a CPU its peak
    is then a short run's under the cap, with `run`), `estimate` answers estimate requests."""
    started = time.monotonic()
    ranks = options.gpus[-1]
    limit_bytes, limit_source = memory_limit(options, hardware)
    # A CPU's cap bounds address space, which an uncapped run's malloc spends differently.
    memory_run = run if measure_run is not None and hardware["device"] == "cpu" and options.memory_limit_bytes \
        else None
    check_hardware(options, hardware)
    before = _first_estimates(options, hardware, estimate, limit_bytes, limit_source)
    say(f"device: {hardware.get('gpu_name') or 'cpu'} ({hardware.get('gpu_count') or hardware.get('cpu_count')} "
        f"{'GPUs' if hardware['device'] == 'cuda' else 'cores'}); fitting into {limit_source}, {mib(limit_bytes)}")
    searches: dict[str, Search] = {}
    for precision in options.precisions:
        say(f"{options.base.model} {precision}: first probe at {before[precision]['first_probe']} "
            f"(the largest power of two whose estimate fits {mib(limit_bytes)})")
        searches[precision] = _search(options, hardware, run, precision, before[precision]["first_probe"], say)
    found = {p: candidates(options.target_batch, s.max_batch(options.safety), options.gpus)
             if options.target_batch else [] for p, s in searches.items()}
    chosen = {p: most_promising(found[p], options.measure) for p in options.precisions}
    predicted = _predict(options, hardware, estimate, searches, chosen)
    precisions: dict[str, PrecisionPlan] = {}
    for precision, search in searches.items():
        probe_estimates = {p.batch: predicted[(precision, ranks, p.batch, PROBE_GRAD_ACCUM)] for p in search.probes}
        search = dataclasses.replace(search, probes=tuple(
            dataclasses.replace(p, estimate_bytes=probe_estimates[p.batch]["total_bytes"]) for p in search.probes))
        measured = {id(c): _measure(options, hardware, measure_run or run, precision, c, limit_bytes,
                                    predicted[(precision, c.gpus, c.micro_batch, c.grad_accum)]["total_bytes"], say,
                                    memory_run=memory_run)
                    for c in chosen[precision]}
        answer = before[precision]
        summary = EstimateSummary(terms_before_the_step=answer["state"], weights_bytes=answer["weights_bytes"],
                                  activations_per_sample_bytes=answer["activations_per_sample_bytes"],
                                  activations_constant_bytes=answer["activations_constant_bytes"],
                                  first_probe=answer["first_probe"])
        precisions[precision] = precision_plan(summary, search, [measured.get(id(c), c) for c in found[precision]],
                                               probe_estimates, options.safety, options.target_batch)
    return _plan_document(options, hardware, limit_bytes, limit_source, precisions,
                          time.monotonic() - started, capped=measure_run is None).to_dict()


def _plan_document(options: PlanOptions, hardware: dict[str, Any], limit_bytes: int, limit_source: str,
                   precisions: dict[str, PrecisionPlan], elapsed_s: float, capped: bool = True) -> Plan:
    base = options.base
    return Plan(
        schema=SCHEMA, model=base.model,
        # data is not an option of the planner (it plans synthetic data), but a cell's plan must match it.
        config={k: v for k, v in base.to_dict().items() if k not in PLAN_AXES + NOT_PLANNED or k in MEMORY_FIELDS},
        device=hardware["device"], gpu_name=hardware.get("gpu_name"), gpu_count=hardware.get("gpu_count"),
        capability=hardware.get("capability"),
        memory_limit_bytes=limit_bytes if hardware["device"] == "cpu" else None,
        fit_bytes=limit_bytes, fit_source=limit_source, safety=options.safety, target_batch=options.target_batch,
        gpus=options.gpus, search_limit=options.search_limit, resolution=options.resolution,
        probe=ProbeCells(grad_accum=PROBE_GRAD_ACCUM, world_size=options.gpus[-1], warmup_steps=PROBE_WARMUP_STEPS,
                         steps=options.probe_steps),
        candidate_cells=CandidateCells(steps=base.steps, warmup_steps=base.warmup_steps,
                                       measured_per_gpu_count=options.measure,
                                       memory_capped=capped and hardware["device"] == "cpu"
                                       and bool(options.memory_limit_bytes)),
        estimate_method=PEAK_FORMULA, peak_measure_note=PEAK_MEASURE_NOTE, precisions=precisions,
        fastest=fastest_of(precisions), env=hardware.get("env"),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), elapsed_s=round(elapsed_s, 1))


def cmd_plan(args: argparse.Namespace) -> int:
    """`python -m trainkit plan`: 0 when every precision got a recommendation (or none was asked
    for), 1 when one did not (the plan is written all the same), 2 for bad input."""
    options = options_from_args(args)
    # torch is imported only now: bad input is refused before it loads.

    def say(line: str) -> None:
        if not options.quiet:
            print(f"[plan] {line}", file=sys.stderr, flush=True)

    try:
        hardware = probe(options.device)
    except RuntimeError as exc:
        raise UsageError(f"plan: {exc}") from None

    timeout_s = options.cell_timeout_s or DEFAULT_CELL_TIMEOUT_S

    def run(config: RunConfig) -> dict[str, Any]:
        limit = options.memory_limit_bytes if hardware["device"] == "cpu" else None
        return run_cell(config, timeout_s=timeout_s, memory_limit_bytes=limit, evaluate=False)

    def run_uncapped(config: RunConfig) -> dict[str, Any]:
        # A candidate fits below the probes' boundary by the safety factor; its speed is measured without
        # the cap, which roughly halves a CPU cell's throughput (issue 24).
        return run_cell(config, timeout_s=timeout_s, memory_limit_bytes=None, evaluate=False)

    def estimate(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return call_in_fresh_process(serve_estimates, requests, timeout_s=timeout_s, what="the estimate")

    plan = make_plan(options, hardware, run, estimate, say, measure_run=run_uncapped)
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
            from trainkit.reports.plan import write_page  # pandas/plotly: the reports extra, only for a page
        except ImportError as exc:
            print(f"warning: no HTML report: {exc} (install trainkit[reports])", file=sys.stderr)
        else:
            write_page(plan, options.report)
            say(f"wrote {options.report}")
    complete = options.target_batch is None or all(e["recommendation"] for e in plan["precisions"].values())
    return 0 if complete else 1
