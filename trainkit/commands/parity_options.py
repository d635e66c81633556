"""The options of `python -m trainkit parity` and each model's parity recipe: what its parser needs,
apart from the work (commands/parity.py), which `python -m trainkit` imports only when parity runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..analysis.parity.document import CONFIDENCE, DEFAULT_MARGIN_RELATIVE, TARGET_FRACTION, Margin
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
    fraction,
    integer,
    number,
    output_file,
)
from ..engine.spec.precision_facts import precision_names

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
CPU_PRECISIONS = ("fp32", "amp-bf16", "half-fp16", "half-bf16", "half-bf16-sr", "half-bf16-kahan", "half-fp16-master",
                  "half-bf16-master")
"""The CPU default: amp-fp16's autocast is slow and adds nothing a CPU can say that these do not."""


def default_precisions(device_type: str) -> tuple[str, ...]:
    return CPU_PRECISIONS if device_type == "cpu" else precision_names()


def setups_for(device_type: str) -> dict[str, ParitySetup]:
    """The models with a parity recipe on this kind of device, and their recipes."""
    return CPU_SETUPS if device_type == "cpu" else GPU_SETUPS


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
