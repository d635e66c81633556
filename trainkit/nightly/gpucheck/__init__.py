"""`python -m nightly gpu-check`: every figure trainkit reports, held against something that did not
produce it.

    python -m nightly gpu-check --out DIR [--device auto|cuda|cpu] [--only CHECK[,CHECK]]

A handful of cells run in fresh worker processes (trainkit.engine.cell.launch; this process never initialises
CUDA), fresh processes time matmuls and count one real step of the floor's cells, and each check
compares one figure with an independent measure (registry.CHECKS; the README's "GPU check" says
what each proves and what it does not):

    time                  the worker's step times against its own wall clock around the same
                          synchronised window of steps, within 3 %
    memory.floor          PyTorch's allocated peak >= what the step must hold at once: weights, master
                          copy, optimizer state and data, plus the saved activations (counted in a
                          real step) and the logits' two fp32 gradients at the start of backward
    memory.state          the live weights and optimizer state hold exactly the precision table's bytes
    memory.nvml           NVML's process peak >= PyTorch's reserved peak + the CUDA context
    memory.accumulation   B x 4 micro-batches take less memory than 4B x 1
    precision.fp32        fp32 matmuls err against fp64 at fp32's level (TF32 really off)
    precision.tf32        TF32 matmuls err at TF32's level, and precision.tf32-speed: faster
    precision.amp-bf16    a profile of the step: a third or more of operator time in bf16 / fp16
    precision.amp-fp16
    anchor.resnet50       ResNet-50 AMP over TF32 over FP32, beside DeepLearningExamples' figures
    anchor.mfu            GPT-2 124M amp-bf16 MFU in the band of the cell as it ran (eager 9-29 %)
    anchor.energy         NVML's energy counter against mean power x time, within 10 %

On a CPU (`--device cpu`, as the test suite runs it) the checks that need a GPU are skipped with
their reasons and the others run at tiny sizes in about a minute, so the command cannot rot.

The package, one module per family of checks and one per part of the command:

    thresholds   every bound, with its reason        results    the typed results and document
    cells        the cells, their sizes, running one  stepprobe  the step probe (the floor's counts)
    timing       time                                 memory     memory.floor, .state, .accumulation
    nvml         memory.nvml, anchor.energy           numerics   precision.* (and the matmul probe)
    anchors      anchor.resnet50, anchor.mfu          registry   which checks, --only, skips
    render       the table and gpu-check.md           command    the command itself

DIR receives gpu-check.md (the table and every reason), gpu-check.json (the same, for scripts),
results.jsonl (the cells' records) and report.html (trainkit.reports.build, with report.csv and report.md).
Exit status (trainkit/nightly/__init__.py): 0 no check failed (skips allowed), 1 a check failed, 2 bad
input, 3 the device cannot be used (--device cuda without a GPU) or the report could not be built.
"""

from .command import DEFAULT_OUT, run_gpu_check
from .registry import CHECK_NAMES, GROUPS, parse_only

__all__ = ["CHECK_NAMES", "DEFAULT_OUT", "GROUPS", "parse_only", "run_gpu_check"]
