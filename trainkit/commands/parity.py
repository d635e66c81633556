"""`python -m trainkit parity`: run every (model, precision, seed) as a real cell in fresh workers, judge
the records (trainkit.analysis.parity.verdicts: paired eval-loss differences from fp32, an equivalence margin,
time to target) and write the document, a table on stderr and, with --report, the page.

    python -m trainkit parity --model gpt,mlp --seeds 5 --output parity.json --report parity.html
    python -m trainkit parity --from-records parity.records.jsonl --output parity.json   # judge again

CPU step times say nothing about a GPU (half precision is emulated on most CPUs): a CPU parity
run's times to target are this machine's, and its verdicts are the part that carries over.

scipy (the `analysis` extra) and torch are imported inside the functions that need them: this
module is imported whenever `python -m trainkit` builds its parser, and neither may cost the other
commands their import time, nor fail them when absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..analysis.parity.document import (
    CONFIDENCE,
    DEFAULT_MARGIN_RELATIVE,
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
from ..engine.spec.config import MODELS, ProfileConfig, RunConfig
from ..engine.spec.options import (
    CELL_TIMEOUT,
    DEVICE,
    LR,
    MODELS_LIST,
    OUTPUT,
    PRECISIONS_LIST,
    QUIET,
    REPORT,
    STEPS,
    WARMUP_STEPS,
    UsageError,
    fraction,
    integer,
    number,
    output_file,
)
from ..engine.spec.precision_facts import precision_names
from ..engine.spec.schema import ResultsFileError, append_jsonl, read_jsonl, write_json
from .config_options import model_fields

DEFAULT_SEEDS = 5


@dataclass(frozen=True)
class ParitySetup:
    """One model's parity recipe on one kind of device: the run options and the length."""

    options: dict[str, Any]
    steps: int
    """Timed optimizer steps after `warmup_steps`; the curve holds warmup + steps steps."""
    warmup_steps: int = 2
    why: str = ""


# Measured on a 2-core CPU so that gpt and mlp x 6 precisions x 5 seeds stay within 10 minutes
# and fp32's loss has flattened (README, "Loss parity"): the GPT is the test suite's smallest,
# since pure fp16 and bf16 matmuls are emulated on a CPU without AVX-512 FP16/BF16 (~5x slower).
CPU_SETUPS = {
    "gpt": ParitySetup({"gpt_layers": 1, "gpt_width": 32, "gpt_heads": 2, "seq_len": 16, "vocab_size": 64,
                        "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "batch_size": 16}, steps=298,
                       why="AdamW at 3e-3: the loss flattens in 300 steps"),
    "mlp": ParitySetup({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 32}, steps=348,
                       why="the seeds' SGD recipe; by 350 steps its held-out loss has flattened (the training "
                           "loss keeps falling slowly as it memorises the 4,096-sample pool)"),
}
# On a GPU: bench's recipes and its smaller GPU GPT; their lengths are first guesses, and every
# parity document says how flat fp32's loss got (`reference.flatness`).
GPU_SETUPS = {
    "gpt": ParitySetup({"gpt_layers": 6, "gpt_width": 512, "gpt_heads": 8, "seq_len": 512, "vocab_size": 32768,
                        "optimizer": "adamw", "lr": 6e-4, "weight_decay": 0.1, "batch_size": 16}, steps=1000,
                       warmup_steps=5),
    "mlp": ParitySetup({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 256}, steps=500, warmup_steps=5),
    "resnet50": ParitySetup({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 64, "image_size": 64},
                            steps=1000, warmup_steps=5),
}
WORKLOAD_SETUP = ParitySetup({"optimizer": "adamw", "lr": 1e-3, "batch_size": 16}, steps=200,
                             why="a first guess for a model trainkit has no recipe for (--model SPEC): give "
                                 "--steps, --batch-size and --lr of your own recipe")
"""The recipe of a workload that is not built in, on any device (the options override it)."""
DEFAULT_MODELS = {"cpu": ("gpt", "mlp"), "cuda": ("gpt", "resnet50")}
CPU_PRECISIONS = ("fp32", "amp-bf16", "half-fp16", "half-bf16", "half-fp16-master", "half-bf16-master")
"""The CPU default: amp-fp16's autocast is slow and adds nothing a CPU can say that these do not."""


def default_precisions(device_type: str) -> tuple[str, ...]:
    return CPU_PRECISIONS if device_type == "cpu" else precision_names()


def setups_for(device_type: str) -> dict[str, ParitySetup]:
    """The models with a parity recipe on this kind of device, and their recipes."""
    return CPU_SETUPS if device_type == "cpu" else GPU_SETUPS



# --- the run: every (model, precision, seed) a cell in fresh workers ----------------------------------

def cell_configs(model: str, precisions: Sequence[str], seeds: Sequence[int], device: str, device_type: str,
                 steps: int | None = None, warmup_steps: int | None = None,
                 overrides: dict[str, Any] | None = None) -> list[RunConfig]:
    """Every cell of one model's parity run, seed-major: each seed runs every precision in turn, so a
    machine whose speed drifts slows every precision alike."""
    from ..engine.workloads.resolve import model_choice  # torch: see the module docstring

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
    from ..engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, run_cell  # torch: see the module docstring

    profile = ProfileConfig(phase_steps=0, diagnostics=True)
    lock = threading.Lock()
    started, done = time.monotonic(), 0

    def one(item: tuple[str, RunConfig]) -> dict[str, Any]:
        nonlocal done
        model, config = item
        record = run_cell(config, timeout_s=timeout_s or DEFAULT_CELL_TIMEOUT_S, profile=profile)
        with lock:  # one writer of the records file and of the progress lines
            if records_path:
                append_jsonl(record, records_path)
            done += 1
            if show is not None:
                elapsed = time.monotonic() - started
                left = elapsed / done * (len(plan) - done)
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
    from ..analysis.parity.verdicts import judge_model, no_verdict  # scipy: see the module docstring

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
    from ..analysis.parity.verdicts import document  # scipy: see the module docstring
    from ..engine.cell.launch import probe  # torch: see the module docstring
    from ..engine.train.precision import policy_class  # torch: see the module docstring

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
    return (f"  {e.precision:18} {e.verdict:12} diff {_interval(test.difference, '+.5f')} "
            f"({test.test}), margin +-{test.margin_loss:.5f}{more}; steps to target {steps}; effective {effective}"
            + (f"  [{e.named}]" if e.named else ""))


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

def margin_option(text: str) -> Margin:
    """`--margin`: `0.5%` (of fp32's seed-mean eval loss) or a loss (`0.01`), above 0."""
    relative = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a share of fp32's eval loss above 0 (e.g. 0.5%) "
                                         "or a loss above 0 (e.g. 0.01)")
    return Margin(relative=value / 100) if relative else Margin(relative=None, absolute_loss=value)


def add_arguments(parser: Any) -> None:
    """The options of `python -m trainkit parity` (validated where they are parsed)."""
    MODELS_LIST.add(parser, help="models to judge (default: gpt,mlp on a CPU, gpt,resnet50 on a GPU): built-ins with "
                                 "a parity recipe (" + "; ".join(f"{d}: {', '.join(s)}" for d, s in
                                                                 (("cpu", CPU_SETUPS), ("cuda", GPU_SETUPS)))
                                 + ") or any --model SPEC of trainkit run (MODULE:FUNCTION, a plugin, hf:..., "
                                 f"timm:...), whose recipe is AdamW at {WORKLOAD_SETUP.options['lr']:g}, batch "
                                 f"{WORKLOAD_SETUP.options['batch_size']}, {WORKLOAD_SETUP.steps} steps unless given")
    PRECISIONS_LIST.add(parser, help=f"precisions to judge against fp32, which always runs (default on a CPU: "
                                     f"{','.join(CPU_PRECISIONS)}; on a GPU every mode it can run)")
    parser.add_argument("--seeds", type=integer(2), default=DEFAULT_SEEDS, metavar="S",
                        help=f"seeds per precision, 0..S-1, the same in every precision (default {DEFAULT_SEEDS})")
    STEPS.add(parser, help="timed optimizer steps per cell after the warmup (default: each model's recipe, "
                           "long enough for fp32's loss to flatten)")
    WARMUP_STEPS.add(parser, help="untimed optimizer steps first (default: the recipe's); they are in the loss curve")
    parser.add_argument("--batch-size", type=integer(1), default=None, metavar="N",
                        help="micro-batch size of every cell (default: each model's recipe)")
    LR.add(parser)
    DEVICE.add(parser, help="where the cells run (default: auto)")
    parser.add_argument("--jobs", "-j", type=integer(1), default=1, metavar="N",
                        help="cells run side by side on a CPU, each with its share of the cores (default 1; the "
                             "step times are then measured beside another cell)")
    CELL_TIMEOUT.add(parser)
    _judging_arguments(parser)


def _judging_arguments(parser: Any) -> None:
    parser.add_argument("--margin", type=margin_option, default=Margin(), metavar="M",
                        help=f"equivalence margin: a precision whose interval of eval-loss differences from fp32 "
                             f"lies within +-M is equivalent; M is a share of fp32's seed-mean eval loss (0.5%%) "
                             f"or a loss (0.01) (default {DEFAULT_MARGIN_RELATIVE * 100:g}%%)")
    parser.add_argument("--confidence", type=fraction, default=CONFIDENCE, metavar="C",
                        help=f"coverage of every interval, in (0, 1) (default {CONFIDENCE:g})")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-fraction", type=fraction, default=TARGET_FRACTION, metavar="F",
                        help=f"per seed, the target loss is its fp32 twin's smoothed training loss this far into "
                             f"the run (default {TARGET_FRACTION:g})")
    target.add_argument("--target-loss", type=number(0, above=True), default=None, metavar="X",
                        help="one target loss for every seed, given")
    parser.add_argument("--from-records", metavar="FILE.jsonl", default=None,
                        help="run no cell: judge the records of an earlier parity run (its OUTPUT.records.jsonl)")
    OUTPUT.add(parser, required=True, metavar="FILE.json", help="the parity document")
    parser.add_argument("--records", type=output_file, metavar="FILE.jsonl", default=None,
                        help="every cell's result record (default: beside the output, OUTPUT.records.jsonl)")
    REPORT.add(parser, help="also write the HTML report of the parity run (needs trainkit[reports])")
    QUIET.add(parser)


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
    from ..analysis.parity.verdicts import document  # scipy: see the module docstring

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
    from ..engine.cell.launch import probe  # torch: see the module docstring

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
    open(records, "w").close()  # this run's records, appended as each cell ends
    show = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    doc = run(models, args.precision, args.seeds, device=args.device, steps=args.steps,
              warmup_steps=args.warmup_steps, overrides=overrides, margin=args.margin, confidence=args.confidence,
              target_fraction=args.target_fraction, target_loss=args.target_loss, records_path=records,
              timeout_s=args.cell_timeout, jobs=args.jobs, show=show, hw=hw)
    return doc, records


def main(args: Any) -> int:
    """`python -m trainkit parity`: exit 0 when every precision got a verdict, 1 when one did not
    (the document is still written), 2 for bad input."""
    _check(args)
    doc, records = (_rejudge(args), args.from_records) if args.from_records else _run(args)
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
