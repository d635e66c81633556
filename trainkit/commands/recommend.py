"""`python -m trainkit recommend`: which precision, micro-batch and accumulation to train with, and why.

    python -m trainkit recommend --model mlp --target-batch 256 --device cpu --output answer/
    python -m trainkit recommend --model gpt --target-batch 64 --from answer/ --seeds 8 --output answer/

It runs only what the decision needs (trainkit.commands.recommend_run: the plan, interleaved paired
speed rounds, paired loss parity), within `--budget`, reusing what `--from` gives, and writes
answer.json (trainkit.analysis.answer.Answer), answer.md, answer.html (the card first), plan.json
and records.jsonl (every cell's record) into the output directory. The rule is
trainkit.analysis.answer's. Exit status: 0 with an answer (a recommendation, or stay with fp32), 1
when it cannot tell yet (the answer says what would decide it), 2 for bad input. Its parser is
trainkit.commands.recommend_options: this module, and torch with it, is imported only when the
command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any

from ..analysis.answer import CANT_TELL
from ..analysis.parity.document import TASK_SEED
from ..engine.spec.config import MODELS, ConfigError, ProfileConfig, RunConfig
from ..engine.spec.options import UsageError
from ..engine.spec.schema import write_json
from .config_options import model_fields
from .parity_options import WORKLOAD_SETUP, setups_for
from .recommend_options import HOST_MEMORY_SHARE
from .recommend_run import PLAN, Request, answer

MIN_PARITY_STEPS = 100
"""The fewest steps of a parity cell: a curve long enough to find the target loss on."""


def parity_steps(recipe_steps: int, recipe_batch: int, target_batch: int) -> int:
    """A parity cell's steps at the target batch: the recipe's samples (steps x its batch) at the target
    batch, at least MIN_PARITY_STEPS (a curve to find the target on) and at most the recipe's steps."""
    return min(recipe_steps, max(MIN_PARITY_STEPS, round(recipe_steps * recipe_batch / target_batch)))


def recipe(spec: str, device_type: str, steps: int | None, target_batch: int) -> RunConfig:
    """The run options every cell shares: the model's parity recipe on this kind of device (its
    optimizer, learning rate), or the first-guess recipe of a workload; the batch is the plan's, the
    steps parity_steps' unless given."""
    fields = model_fields(spec)
    setups = setups_for(device_type)
    setup = setups[spec] if fields["workload"] is None and spec in setups else WORKLOAD_SETUP
    options = {k: v for k, v in setup.options.items() if k != "batch_size"}
    steps = steps or parity_steps(setup.steps, setup.options["batch_size"], target_batch)
    try:
        return RunConfig(**fields, device=device_type, task_seed=TASK_SEED, steps=steps,
                         warmup_steps=setup.warmup_steps, **options)
    except ConfigError as exc:
        raise UsageError(f"invalid configuration: {exc}") from None


def load_sources(paths: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Records and a plan from `--from` paths (see --help); UsageError naming a path that is none of them."""
    records: list[dict[str, Any]] = []
    plan: dict[str, Any] | None = None

    def jsonl(path: str) -> None:
        with open(path, encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UsageError(f"--from {path!r}: line {n} is not JSON ({exc.msg})") from None

    for path in paths:
        if os.path.isdir(path):
            found = [os.path.join(path, n) for n in ("records.jsonl", PLAN) if os.path.isfile(os.path.join(path, n))]
            if not found:
                raise UsageError(f"--from {path!r}: no records.jsonl or {PLAN} in it (an answer's directory "
                                 "holds both)")
            for name in found:
                if name.endswith(".jsonl"):
                    jsonl(name)
                else:
                    plan = _read(name)
            continue
        if not os.path.isfile(path):
            raise UsageError(f"--from {path!r}: no such file or directory")
        if path.endswith(".jsonl"):
            jsonl(path)
            continue
        doc = _read(path)
        schema = str(doc.get("schema", "")) if isinstance(doc, dict) else ""
        if schema.startswith("trainkit.plan/"):
            plan = doc
        elif schema.startswith("trainkit.parity/"):
            source = doc.get("records_file")
            if not source or not os.path.isfile(source):
                raise UsageError(f"--from {path!r}: its records file {source!r} is not there (give it instead)")
            jsonl(source)
        elif isinstance(doc, dict) and "benchmarks" in doc:
            records += [b.get("extra_info") for b in doc["benchmarks"] if isinstance(b.get("extra_info"), dict)]
        elif isinstance(doc, dict) and "config" in doc:
            records.append(doc)
        elif isinstance(doc, list):
            records += [r for r in doc if isinstance(r, dict)]
        else:
            raise UsageError(f"--from {path!r}: not result records, a parity document, a plan or an answer's "
                             "directory")
    return records, plan


def _read(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--from {path!r}: {exc}") from None


def _rerun(args: argparse.Namespace) -> str:
    """The command that reruns this answer reusing what it ran."""
    words = ["python", "-m", "trainkit", "recommend", "--model", args.model, "--target-batch", str(args.target_batch),
             "--device", args.device]
    if args.world_size != 1:
        words += ["--world-size", str(args.world_size)]
    words += ["--from", args.output, "--output", args.output]
    return " ".join(shlex.quote(w) for w in words)


def _available_bytes() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def main(args: argparse.Namespace) -> int:
    """`python -m trainkit recommend` (module docstring)."""
    if args.price_per_hour is not None and args.train_samples is None and args.train_tokens is None:
        raise UsageError("--price-per-hour needs --train-samples or --train-tokens: the cost is of training them")
    if args.target_batch % args.world_size:
        raise UsageError(f"--target-batch {args.target_batch} is not a multiple of --world-size {args.world_size}")
    if args.model not in MODELS:
        model_fields(args.model)  # a bad spec is one line before anything starts
    given, plan = load_sources(args.sources)
    if plan is not None and (plan.get("model") != model_fields(args.model)["model"]
                             or plan.get("target_batch") != args.target_batch):
        raise UsageError(f"--from: the plan is of {plan.get('model')} at target batch {plan.get('target_batch')}, "
                         f"not {args.model} at {args.target_batch}")
    say = (lambda line: None) if args.quiet else (lambda line: print(f"[recommend] {line}", file=sys.stderr,
                                                                      flush=True))
    # torch is imported only now: bad input is refused before it loads.
    from ..engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, call_in_fresh_process, probe, run_cell
    from ..engine.cell.worker import serve_estimates

    try:
        hardware = probe(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    device_type = hardware["device"]
    if device_type == "cuda" and args.memory_limit_gb:
        raise UsageError("--memory-limit-gb is a CPU worker's cap; on a GPU the plan fits into the GPU's memory")
    limit = None
    if device_type == "cpu":
        limit = (int(args.memory_limit_gb * 2**30) if args.memory_limit_gb
                 else int(_available_bytes() * HOST_MEMORY_SHARE))
    base = recipe(args.model, device_type, args.steps, args.target_batch)
    timeout_s = args.cell_timeout or DEFAULT_CELL_TIMEOUT_S

    def run(config: RunConfig, purpose: str) -> dict[str, Any]:
        if purpose == "parity":  # the diagnostics pass names what stands out under a better or worse verdict
            return run_cell(config, timeout_s=timeout_s, memory_limit_bytes=limit,
                            profile=ProfileConfig(phase_steps=0, diagnostics=True))
        return run_cell(config, timeout_s=timeout_s, memory_limit_bytes=limit, evaluate=False)

    def estimate(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return call_in_fresh_process(serve_estimates, requests, timeout_s=timeout_s, what="the estimate")

    request = Request(base=base, model_spec=args.model, target_batch=args.target_batch, world_size=args.world_size,
                      device=args.device, precisions=tuple(args.precision) if args.precision else None,
                      margin=args.margin, confidence=args.confidence, budget_s=args.budget,
                      memory_limit_bytes=limit, seeds=args.seeds, rounds=args.rounds,
                      train_samples=args.train_samples, train_tokens=args.train_tokens,
                      price_per_hour=args.price_per_hour, output_dir=args.output, rerun=_rerun(args))
    started = time.monotonic()
    try:
        doc, plan_doc = answer(request, hardware, run, estimate, given=given, plan=plan, now=time.monotonic, say=say)
    except RuntimeError as exc:
        raise UsageError(f"recommend: {exc}") from None
    write_json(os.path.join(args.output, "answer.json"), doc.to_dict())
    write_json(os.path.join(args.output, PLAN), plan_doc)
    written = ["answer.json", PLAN, "records.jsonl"]
    try:
        from trainkit.reports.answer.card import write_pages  # the reports extra, only for the pages
    except ImportError as exc:
        print(f"warning: no answer.md/answer.html: {exc} (install trainkit[reports])", file=sys.stderr)
    else:
        written += write_pages(doc.to_dict(), args.output)
    say(f"{doc.decision.kind}: {doc.decision.reason}")
    say(f"{time.monotonic() - started:.0f} s; {doc.budget.cells_run} cells run, {doc.budget.cells_reused} reused; "
        f"wrote {', '.join(os.path.join(args.output, w) for w in written)}")
    return 1 if doc.decision.kind == CANT_TELL else 0
