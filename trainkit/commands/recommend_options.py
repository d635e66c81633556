"""The parser of `python -m trainkit recommend` (its work is trainkit.commands.recommend, imported
only when the command runs): the options, their defaults and the --budget type."""

from __future__ import annotations

import argparse
from typing import Any

from ..analysis.parity.document import CONFIDENCE, DEFAULT_MARGIN_RELATIVE, Margin
from ..engine.spec.options import (
    CELL_TIMEOUT,
    DEVICE,
    MEMORY_LIMIT_GB,
    PRECISIONS_LIST,
    QUIET,
    STEPS,
    fraction,
    integer,
    model_spec,
    number,
    output_dir,
)
from .parity_options import margin_option

DEFAULT_BUDGET_S = 780.0
"""13 minutes: `--model mlp --target-batch 256 --device cpu` ends within 15 on a 2-core machine, the
answer's pages and the last cell's overrun included."""
DEFAULT_SEEDS = 6
DEFAULT_ROUNDS = 8
HOST_MEMORY_SHARE = 0.5
"""On a CPU without --memory-limit-gb, each worker's address-space cap is this share of the memory
available when the command starts (one cell runs at a time; the rest is the machine's)."""


def budget(text: str) -> float:
    """Seconds, or a number with s, m or h (`90`, `15m`, `1h`), above 0."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text.strip()[-1:].lower(), None)
    digits = text.strip()[:-1] if scale else text.strip()
    try:
        value = float(digits) * (scale or 1)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds above 0, or a number with s, m or h (e.g. 15m)")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("recommend", help="say which precision, micro-batch and accumulation to train with, and why "
                                         "(plan, paired speed rounds, loss parity, within a budget)")
    what = p.add_argument_group("what to answer")
    what.add_argument("--model", type=model_spec, required=True, metavar="SPEC",
                      help="a built-in (mlp, cnn, resnet18, resnet50, gpt) or a workload's spec (MODULE:FUNCTION, "
                           "MODULE, a plugin's name, hf:..., timm:...)")
    what.add_argument("--target-batch", type=integer(1), required=True, metavar="N",
                      help="the effective batch to train with (micro-batch x accumulation x ranks)")
    PRECISIONS_LIST.add(what, help="the candidates (fp32 is always the reference; default: every mode of trainkit's "
                                   "table the device runs)")
    what.add_argument("--world-size", type=integer(1), default=1, metavar="N",
                      help="ranks (GPUs; processes on a CPU) every route uses (default 1)")
    DEVICE.add(what)
    what.add_argument("--margin", type=margin_option, default=Margin(), metavar="M",
                      help=f"parity's equivalence margin: a share of fp32's eval loss (0.5%%) or a loss (0.01) "
                           f"(default {DEFAULT_MARGIN_RELATIVE * 100:g}%%)")
    what.add_argument("--confidence", type=fraction, default=CONFIDENCE, metavar="C",
                      help=f"coverage of every interval (default {CONFIDENCE:g})")
    cost = p.add_argument_group("time and cost to train")
    amount = cost.add_mutually_exclusive_group()
    amount.add_argument("--train-samples", type=number(0, above=True), default=None, metavar="N",
                        help="samples to train: the answer gives the time it takes at the measured throughput")
    amount.add_argument("--train-tokens", type=number(0, above=True), default=None, metavar="N",
                        help="tokens to train (a sequence model's samples are tokens_per_sample tokens each)")
    cost.add_argument("--price-per-hour", type=number(0), default=None, metavar="X",
                      help="the price of an hour of the device(s): the answer gives the cost")
    how = p.add_argument_group("how much to run")
    how.add_argument("--budget", type=budget, default=DEFAULT_BUDGET_S, metavar="TIME",
                     help=f"wall time to plan within: seconds, or 15m, 1h (default {DEFAULT_BUDGET_S / 60:g}m); what "
                          "it cannot afford is listed in the answer")
    how.add_argument("--from", dest="sources", action="append", default=[], metavar="PATH",
                     help="evidence to reuse (repeatable): an earlier answer's directory, result records (JSON lines, "
                          "a record, pytest-benchmark JSON), a parity document or a plan; no cell they hold runs again")
    how.add_argument("--seeds", type=integer(2), default=DEFAULT_SEEDS, metavar="S",
                     help=f"most seeds a parity verdict may take (default {DEFAULT_SEEDS})")
    how.add_argument("--rounds", type=integer(1), default=DEFAULT_ROUNDS, metavar="R",
                     help=f"most interleaved speed rounds (default {DEFAULT_ROUNDS}; they stop once every interval "
                          "lies off 1x)")
    STEPS.add(how, help="optimizer steps of a parity cell (default: the model's parity recipe)")
    MEMORY_LIMIT_GB.add(how, help="on a CPU, each worker's address-space cap the plan fits micro-batches into "
                                  f"(default: {HOST_MEMORY_SHARE:.0%}% of the memory available at the start)")
    CELL_TIMEOUT.add(how)
    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", type=output_dir, required=True, metavar="DIR",
                     help="directory for answer.json, answer.md, answer.html, plan.json and records.jsonl")
    QUIET.add(out)
