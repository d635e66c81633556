"""`python -m trainkit parity`: run every (model, precision, seed) as a real cell in fresh workers, judge
the records (trainkit.analysis.parity.verdicts: paired eval-loss differences from fp32, an equivalence margin,
time to target) and write the document, a table on stderr and, with --report, the page.

    python -m trainkit parity --model gpt,mlp --seeds 5 --output parity.json --report parity.html
    python -m trainkit parity --from-records parity.records.jsonl --output parity.json   # judge again

CPU step times say nothing about a GPU (half precision is emulated on most CPUs): a CPU parity
run's times to target are this machine's, and its verdicts are the part that carries over.

Its options and the models' recipes are parity_options.py: `python -m trainkit` imports this module
only when parity runs. scipy (the `analysis` extra) is still imported inside the functions that need
it, so that its absence is one line naming the extra (`_check`), not an import error.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..analysis.parity.document import (
    CONFIDENCE,
    REFERENCE,
    REFERENCE_VERDICT,
    TARGET_FRACTION,
    TASK_SEED,
    VERDICTS,
    Margin,
    ModelParity,
    ParityDocument,
    PrecisionParity,
)
from ..engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, probe, run_cell, time_left
from ..engine.spec.config import MODELS, ProfileConfig, RunConfig
from ..engine.spec.options import (
    UsageError,
)
from ..engine.spec.schema import ResultsFileError, append_jsonl, read_jsonl, write_json
from ..engine.train.precision import policy_class
from ..engine.workloads.resolve import model_choice
from .config_options import model_fields
from .parity_options import (
    CPU_SETUPS,
    DEFAULT_MODELS,
    GPU_SETUPS,
    WORKLOAD_SETUP,
    ParitySetup,
    default_precisions,
    setups_for,
)

# Names the parity tests and the docs read here as well as in parity_options.
__all__ = ["CPU_SETUPS", "GPU_SETUPS", "WORKLOAD_SETUP", "ParitySetup", "cell_configs", "judge_records", "main", "run",
           "run_cells", "summary_lines"]

# --- the run: every (model, precision, seed) a cell in fresh workers ----------------------------------

def cell_configs(model: str, precisions: Sequence[str], seeds: Sequence[int], device: str, device_type: str,
                 steps: int | None = None, warmup_steps: int | None = None,
                 overrides: dict[str, Any] | None = None) -> list[RunConfig]:
    """Every cell of one model's parity run, seed-major: each seed runs every precision in turn, so a
    machine whose speed drifts slows every precision alike."""
    chosen = model_choice(model)  # a built-in, or a workload's spec (then its name and the spec)
    setup = setups_for(device_type)[model] if chosen.workload is None else WORKLOAD_SETUP
    options = {**setup.options, **(overrides or {})}
    base = RunConfig(model=chosen.model, workload=chosen.workload, device=device, task_seed=TASK_SEED,
                     steps=steps if steps is not None else setup.steps,
                     warmup_steps=warmup_steps if warmup_steps is not None else setup.warmup_steps, **options)
    return [base.replace(precision=p, seed=s) for s in seeds for p in precisions]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_cells(plan: list[tuple[str, RunConfig]], *, jobs: int = 1, timeout_s: float | None = None,
              records_path: str | None = None, show: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run each (model, config) cell in fresh workers, `jobs` at a time, with the diagnostics pass;
    append each record to `records_path` as it ends (so an interrupted run keeps the cells it ran)."""
    profile = ProfileConfig(phase_steps=0, diagnostics=True)
    lock = threading.Lock()
    started, done = time.monotonic(), 0
    timed: list[tuple[tuple[str, ...], float]] = []
    pending = [(model, config.precision) for model, config in plan]

    def one(item: tuple[str, RunConfig]) -> dict[str, Any]:
        nonlocal done
        model, config = item
        began = time.monotonic()
        record = run_cell(config, timeout_s=timeout_s or DEFAULT_CELL_TIMEOUT_S, profile=profile)
        with lock:  # one writer of the records file and of the progress lines
            if records_path:
                append_jsonl(record, records_path)
            done += 1
            # Learned from the cells run so far, by model and precision (a median: the first cells,
            # which start the fork server and load their kernels, do not stand for the rest).
            timed.append(((model, config.precision), time.monotonic() - began))
            pending.remove((model, config.precision))
            if show is not None:
                elapsed = time.monotonic() - started
                seconds, unknown = time_left(timed, pending)  # a model not yet run: any cell's median
                left = (seconds + unknown * statistics.median(t for _, t in timed)) / jobs
                what = (f"eval {record['loss']['eval']:.4f}, {record['step_time_s']['median'] * 1e3:.1f} ms/step"
                        if record["status"] == "ok" else f"{record['status']}: {record['status_detail']}")
                show(f"[parity] {done}/{len(plan)} {model} {config.precision} seed {config.seed}: {what} "
                     f"({_clock(elapsed)} elapsed, ~{_clock(left)} left)")
        return record

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each thread only waits on its cell's workers
        return list(pool.map(one, plan))


def judge_records(records: list[dict[str, Any]], models: Sequence[str], *, margin: Margin,
                  confidence: float = CONFIDENCE, target_fraction: float = TARGET_FRACTION,
                  target_loss: float | None = None,
                  unsupported: dict[str, str] | None = None) -> dict[str, ModelParity]:
    """Each model's parity from its cells' records, with the run options its cells share; a precision
    this device cannot run (`unsupported`: precision -> why) gets no verdict, with the reason."""
    from ..analysis.parity.verdicts import (  # scipy: see the module docstring (the analysis extra)
        judge_model,
        no_verdict,
    )

    blocks = {}
    for model in models:
        mine = [r for r in records if r["config"]["model"] == model]
        block = judge_model(mine, margin=margin, confidence=confidence, target_fraction=target_fraction,
                            target_loss=target_loss)
        extra = {p: no_verdict(p, f"unsupported: {why}", []) for p, why in (unsupported or {}).items()}
        common = dict(mine[0]["config"]) if mine else {}
        for key in ("precision", "seed"):
            common.pop(key, None)
        blocks[model] = dataclasses.replace(block, precisions={**block.precisions, **extra}, config=common)
    return blocks


def run(models: Sequence[str], precisions: Sequence[str] | None, seeds: int, *, device: str = "auto",
        steps: int | None = None, warmup_steps: int | None = None, overrides: dict[str, Any] | None = None,
        margin: Margin | None = None, confidence: float = CONFIDENCE, target_fraction: float = TARGET_FRACTION,
        target_loss: float | None = None, records_path: str | None = None, timeout_s: float | None = None,
        jobs: int = 1, show: Callable[[str], None] | None = None,
        hw: dict[str, Any] | None = None) -> ParityDocument:
    """Run the cells of every model (fresh workers each; `jobs` at a time on a CPU, each with its
    share of the cores), write each record to `records_path` as it ends, and return the parity
    document. `hw` is the device probe's answer (asked here if None)."""
    from ..analysis.parity.verdicts import document  # scipy: see the module docstring (the analysis extra)
    started = time.monotonic()
    hw = hw or probe(device)
    device_type = hw["device"]
    if jobs > 1 and device_type != "cpu":
        raise ValueError(f"jobs={jobs}: cells run side by side only on a CPU (each would share the GPU)")
    chosen = tuple(precisions) if precisions else default_precisions(device_type)
    if REFERENCE not in chosen:
        chosen = (REFERENCE, *chosen)
    capability = tuple(hw["capability"]) if hw["capability"] else None
    reasons = {p: policy_class(p).unsupported_on(device_type, capability, hw["gpu_name"]) for p in chosen}
    runnable = [p for p in chosen if reasons[p] is None]
    overrides = dict(overrides or {})
    if jobs > 1:  # side by side, each cell takes its share of the cores instead of all of them
        overrides.setdefault("cpu_threads", max(1, hw["cpu_count"] // jobs))
    plan = [(c.model, c) for m in models
            for c in cell_configs(m, runnable, range(seeds), device_type, device_type, steps, warmup_steps, overrides)]
    records = run_cells(plan, jobs=jobs, timeout_s=timeout_s, records_path=records_path, show=show)
    margin = margin or Margin()
    names = list(dict.fromkeys(config.model for _, config in plan))  # records name a workload, not its spec
    blocks = judge_records(records, names, margin=margin, confidence=confidence, target_fraction=target_fraction,
                           target_loss=target_loss, unsupported={p: r for p, r in reasons.items() if r})
    return document(blocks, seeds=list(range(seeds)), device=device_type, env=hw.get("env"), margin=margin,
                    confidence=confidence, elapsed_s=time.monotonic() - started,
                    cells_cpu_s=sum(r.get("cpu_time_s") or 0.0 for r in records),
                    records_file=os.path.abspath(records_path) if records_path else None)


# --- the table on stderr --------------------------------------------------------------------------------

def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _interval(iv: Any, fmt: str, unit: str = "") -> str:
    """`mean [low, high]unit`, or what stands in for a missing figure."""
    if iv is None or iv.mean is None:
        return iv.note if iv is not None and iv.note else "-"
    if iv.low is None:
        return f"{iv.mean:{fmt}}{unit}"
    return f"{iv.mean:{fmt}}{unit} [{iv.low:{fmt}}, {iv.high:{fmt}}]"


def _row(e: PrecisionParity) -> str:
    if e.loss is None:
        return f"  {e.precision:18} {e.verdict:12} {e.reason or ''}"
    test = e.loss
    more = (f"; {test.more_seeds_to_decide} more seeds would decide" if test.more_seeds_to_decide
            else f"; {test.more_seeds_note}" if test.more_seeds_note else "")
    timing = e.timing
    effective = (_interval(timing.effective_speedup, ".2f", "x") if timing else "-")
    steps = (_interval(timing.steps_to_target, ".0f") if timing else "-")
    unpaired = ""
    if test.unpaired_seeds:
        seeds = ", ".join(map(str, test.unpaired_seeds))
        unpaired = (f"; seed{'s' if len(test.unpaired_seeds) > 1 else ''} {seeds} fp32 did not run: "
                    + (f"diff {_interval(test.unpaired.difference, '+.5f')} (Welch t) {test.unpaired.verdict}"
                       if test.unpaired else "one seed, no test: no equivalence claimed over it"))
    return (f"  {e.precision:18} {e.verdict:12} diff {_interval(test.difference, '+.5f')} "
            f"({test.test}), margin +-{test.margin_loss:.5f}{more}{unpaired}; steps to target {steps}; "
            f"effective {effective}" + (f"  [{e.named}]" if e.named else ""))


def summary_lines(doc: ParityDocument) -> list[str]:
    """The parity table in plain text: per model fp32's loss and the margin, then a line per precision
    with its mean paired difference from fp32, the interval, the margin and the verdict."""
    lines = []
    for model, block in doc.models.items():
        ref = block.reference
        if ref.error:
            lines.append(f"{model}: no verdicts: {ref.error}")
            continue
        lines.append(f"{model}: fp32 eval {ref.eval_loss_mean:.4f} +- {ref.eval_loss_sd:.4f} (sd of {ref.seeds} "
                     f"seeds); margin +-{block.margin.loss:.5f} ({block.margin.described}); "
                     f"{block.confidence:.0%} intervals; eval loss minus fp32's, seed by seed:")
        lines += [_row(e) for e in block.precisions.values()]
    return lines


# --- `python -m trainkit parity` ------------------------------------------------------------------

def _check(args: Any) -> None:
    """Bad input, before anything runs: one line (UsageError), exit 2."""
    if not 0 < args.target_fraction <= 1:
        raise UsageError(f"--target-fraction {args.target_fraction:g} must be in (0, 1]")
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence {args.confidence:g} must be in (0, 1), e.g. 0.95")
    for path, what in ((args.output, "--output"), (args.report, "--report"), (args.records, "--records")):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"{what} {path!r}: directory {os.path.dirname(os.path.abspath(path))!r} does not exist")
    if args.from_records and not os.path.isfile(args.from_records):
        raise UsageError(f"--from-records {args.from_records!r}: no such file")
    run_only = [name for name, value in (("--precision", args.precision), ("--steps", args.steps),
                                         ("--warmup-steps", args.warmup_steps), ("--batch-size", args.batch_size),
                                         ("--lr", args.lr), ("--cell-timeout", args.cell_timeout),
                                         ("--records", args.records)) if value is not None]
    if args.from_records and (run_only or args.jobs != 1):
        raise UsageError(f"--from-records runs no cell: {', '.join(run_only or ['--jobs'])} cannot apply; "
                         "judging takes --model, --margin, --confidence and the target options")
    needs = [("scipy", "analysis", "the statistics")] + ([("pandas", "reports", "--report"),
                                                          ("plotly", "reports", "--report")] if args.report else [])
    for module, extra, what in needs:
        try:
            __import__(module)
        except ImportError as exc:
            raise UsageError(f"{what} needs the {extra} extra (pip install 'trainkit[{extra}]'): {exc}") from None


def _rejudge(args: Any) -> ParityDocument:
    """`--from-records`: the document of an earlier run's records, no cell run."""
    from ..analysis.parity.verdicts import document  # scipy: see the module docstring (the analysis extra)

    try:
        records = [r for r in read_jsonl(args.from_records) if isinstance(r, dict) and r.get("config")]
    except (ResultsFileError, UnicodeDecodeError) as exc:
        raise UsageError(f"--from-records {args.from_records!r}: {exc}") from None
    found = list(dict.fromkeys(r["config"]["model"] for r in records))
    models = [model_fields(m)["model"] for m in args.model] if args.model else found  # records name workloads
    missing = [m for m in models if m not in found]
    if missing or not records:
        raise UsageError(f"--from-records {args.from_records!r}: no records of {', '.join(missing) or 'any model'}; "
                         f"it holds {', '.join(found) or 'none'}")
    blocks = judge_records(records, models, margin=args.margin, confidence=args.confidence,
                           target_fraction=args.target_fraction, target_loss=args.target_loss)
    seeds = sorted({int(r["config"]["seed"]) for r in records})
    return document(blocks, seeds=seeds, device=str(records[0]["config"].get("device")), env=records[0].get("env"),
                    margin=args.margin, confidence=args.confidence, records_file=os.path.abspath(args.from_records))


def _run(args: Any) -> tuple[ParityDocument, str]:
    """The cells of the options' models, run, and their document; the records file they went to."""
    # On a CPU the options are checked before anything starts; elsewhere the probe says which device.
    try:
        hw = None if args.device == "cpu" else probe(args.device)
    except RuntimeError as exc:  # no such device here: the probe says why
        raise UsageError(f"--device {args.device}: {exc}") from None
    device_type = hw["device"] if hw else "cpu"
    models = args.model or DEFAULT_MODELS[device_type]
    if args.jobs > 1 and device_type != "cpu":
        raise UsageError(f"--jobs {args.jobs}: cells run side by side only on a CPU (the device is {device_type})")
    for spec in (m for m in models if m not in MODELS):
        model_fields(spec)  # resolved here: a bad spec is one line, before any cell starts
    missing = [m for m in models if m in MODELS and m not in setups_for(device_type)]
    if missing:
        raise UsageError(f"--model: no parity recipe for {', '.join(missing)} on {device_type}; choose from "
                         f"{', '.join(setups_for(device_type))}, or a workload's spec")
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    records = args.records or os.path.splitext(args.output)[0] + ".records.jsonl"
    kept = keep_earlier(records)
    if kept and not args.quiet:
        print(f"[parity] {records} held an earlier run's records: kept as {kept}", file=sys.stderr, flush=True)
    open(records, "w").close()  # this run's records, appended as each cell ends
    show = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    doc = run(models, args.precision, args.seeds, device=args.device, steps=args.steps,
              warmup_steps=args.warmup_steps, overrides=overrides, margin=args.margin, confidence=args.confidence,
              target_fraction=args.target_fraction, target_loss=args.target_loss, records_path=records,
              timeout_s=args.cell_timeout, jobs=args.jobs, show=show, hw=hw)
    return doc, records


def keep_earlier(path: str) -> str | None:
    """Move an earlier run's records at `path` aside (PATH.1.jsonl, .2, ... the first free name) so
    this run starts its own file and never loses them; the name it got, or None (nothing there)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(f"{stem}.{n}{ext}"):
        n += 1
    os.replace(path, f"{stem}.{n}{ext}")
    return f"{stem}.{n}{ext}"


def main(args: Any) -> int:
    """`python -m trainkit parity`: exit 0 when every precision got a verdict, 1 when one did not
    (the document is still written), 2 for bad input."""
    _check(args)
    doc, records = (_rejudge(args), args.from_records) if args.from_records else _run(args)
    if doc.records_file:  # beside the document, as the document finds it: no machine's own path in a shared file
        doc = dataclasses.replace(doc, records_file=os.path.relpath(
            doc.records_file, os.path.dirname(os.path.abspath(args.output))))
    write_json(args.output, doc.to_dict())
    written = [args.output] + ([] if args.from_records else [records])
    if args.report:
        from trainkit.reports.build import build_report  # pandas/plotly: the reports extra, only for a page

        written += list(build_report([args.output], args.report, title="trainkit loss parity").values())
    if not args.quiet:
        for line in summary_lines(doc):
            print(line, file=sys.stderr, flush=True)
        elapsed = f"{_clock(doc.elapsed_s)} elapsed; the cells used {doc.cells_cpu_s:.1f} CPU seconds; " \
            if doc.elapsed_s is not None else ""
        print(f"[parity] {elapsed}wrote {', '.join(written)}", file=sys.stderr, flush=True)
    judged = VERDICTS + (REFERENCE_VERDICT,)
    return 0 if all(e.verdict in judged for b in doc.models.values() for e in b.precisions.values()) else 1
