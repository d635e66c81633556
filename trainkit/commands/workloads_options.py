"""The options of `python -m trainkit workloads` and `check-workload`: what the parser needs, apart
from the work (commands/workloads.py), which `python -m trainkit` imports only when they run.
"""

from __future__ import annotations

from typing import Any

from ..engine.spec.config import DEVICES
from ..engine.spec.options import choice, comma_list, integer
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
