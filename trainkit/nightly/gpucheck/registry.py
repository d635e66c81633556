"""Which checks there are: what each proves, the cells and probes it reads, where it can run, and
its decision; `--only`'s parser and the reason a check cannot run on a device."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.precision_facts import unsupported_reason

from .anchors import check_mfu, check_resnet50
from .memory import check_accumulation, check_memory_floor, check_memory_state
from .numerics import check_fp32_matmul, check_half_share, check_tf32_matmul, check_tf32_speed
from .nvml import check_energy, check_nvml
from .results import Check, Observed
from .timing import check_time


@dataclass(frozen=True, kw_only=True)
class CheckSpec:
    """A check: what it proves, the cells it reads, where it can run, and its decision."""

    name: str
    proves: str
    """What a pass shows, in one line (gpu-check.md repeats it)."""
    judge: Callable[[Observed], Check]
    roles: tuple[str, ...] = ()
    """Roles of the cells it reads (cells.plan_cells); the roles a device's plan lacks are left out."""
    matmul: bool = False
    """It reads the matmul probe."""
    step_probe: bool = False
    """It reads the step probe's count of its cells (stepprobe.count_step)."""
    gpu_only: str | None = None
    """Why it cannot run on a CPU; None when it runs there too."""
    modes: tuple[str, ...] = ()
    """Precision modes the device must run for the check to mean anything."""

    @property
    def group(self) -> str:
        return self.name.split(".")[0]


def records_of(observed: Observed, roles: Sequence[str]) -> list[dict[str, Any]]:
    """The records of these roles, each cell once."""
    seen: dict[str, dict[str, Any]] = {}
    for role in roles:
        if role in observed.records:
            seen.setdefault(observed.records[role]["cell_id"], observed.records[role])
    return list(seen.values())


FLOOR_ROLES = ("time", "resnet50-amp")
"""The cells memory.floor and memory.state read: the main GPT cell and, on GPUs, ResNet-50's AMP one."""
NEEDS_GPU = "needs a CUDA GPU: "
TF32_GPU_ONLY = NEEDS_GPU + "TF32 is a tensor-core math mode (compute capability >= 8.0)"
CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(name="time", roles=("time",),
              proves="the step times trainkit reports are the wall-clock time of the steps",
              judge=lambda o: check_time(o.records["time"], o.clocks["time"].worker_s, o.clocks["time"].launcher_s)),
    CheckSpec(name="memory.floor", roles=FLOOR_ROLES, step_probe=True,
              proves="the allocator's peak holds what the step must hold at once: weights, optimizer state, data, "
                     "and the saved activations and logits' gradients at the start of backward",
              judge=lambda o: check_memory_floor(records_of(o, FLOOR_ROLES), o.steps, o.step_errors)),
    CheckSpec(name="memory.state", roles=FLOOR_ROLES,
              proves="weights and optimizer state are kept in the dtypes and counts the precision mode promises",
              judge=lambda o: check_memory_state(records_of(o, FLOOR_ROLES))),
    CheckSpec(name="memory.nvml", roles=("time",),
              gpu_only=NEEDS_GPU + "NVML measures GPU memory of processes",
              proves="the driver sees at least the memory PyTorch reserved, plus the CUDA context",
              judge=lambda o: check_nvml(o.records["time"])),
    CheckSpec(name="memory.accumulation", roles=("accum-1", "accum-4"),
              proves="accumulating 4 micro-batches of B takes less memory than one batch of 4B",
              judge=lambda o: check_accumulation(o.records["accum-1"], o.records["accum-4"])),
    CheckSpec(name="precision.fp32", matmul=True,
              proves="the fp32 mode's matmuls are IEEE fp32 (TF32 really off)",
              judge=lambda o: check_fp32_matmul(o.matmul)),
    CheckSpec(name="precision.tf32", matmul=True, modes=("tf32",), gpu_only=TF32_GPU_ONLY,
              proves="the tf32 mode's matmuls really run in TF32",
              judge=lambda o: check_tf32_matmul(o.matmul)),
    CheckSpec(name="precision.tf32-speed", matmul=True, modes=("tf32",), gpu_only=TF32_GPU_ONLY,
              proves="TF32 matmuls are faster than fp32 ones",
              judge=lambda o: check_tf32_speed(o.matmul)),
    CheckSpec(name="precision.amp-bf16", roles=("amp-bf16",), modes=("amp-bf16",),
              proves="amp-bf16 really computes in bf16",
              judge=lambda o: check_half_share(o.records["amp-bf16"], "amp-bf16")),
    CheckSpec(name="precision.amp-fp16", roles=("amp-fp16",), modes=("amp-fp16",),
              proves="amp-fp16 really computes in fp16",
              judge=lambda o: check_half_share(o.records["amp-fp16"], "amp-fp16")),
    CheckSpec(name="anchor.resnet50", roles=("resnet50-fp32", "resnet50-tf32", "resnet50-amp"), modes=("tf32",),
              gpu_only=NEEDS_GPU + "the anchors are GPU speedups (CPU rows are no speed claims, and tf32 has no CPU "
                                   "implementation)",
              proves="ResNet-50's precision speedups are in the order published figures show",
              judge=lambda o: check_resnet50(o.records["resnet50-fp32"], o.records["resnet50-tf32"],
                                             o.records["resnet50-amp"])),
    CheckSpec(name="anchor.mfu", roles=("amp-bf16",), modes=("amp-bf16",),
              gpu_only=NEEDS_GPU + "MFU is a fraction of a GPU's sourced peak FLOP/s",
              proves="GPT-2 124M's MFU is plausible: FLOP counts, throughput and the peak table agree",
              judge=lambda o: check_mfu(o.records["amp-bf16"])),
    CheckSpec(name="anchor.energy", roles=("time",),
              gpu_only=NEEDS_GPU + "energy comes from NVML's counter",
              proves="energy per sample agrees with the power the GPU drew over the same time",
              judge=lambda o: check_energy(o.records["time"])),
)
CHECK_NAMES = tuple(spec.name for spec in CHECKS)
GROUPS = tuple(dict.fromkeys(spec.group for spec in CHECKS))


def parse_only(text: str) -> tuple[str, ...]:
    """`--only`: a comma list of check names or groups (the part before the dot), in CHECKS' order.
    Raises argparse.ArgumentTypeError naming the bad value and the valid ones."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not wanted:
        raise argparse.ArgumentTypeError(f"empty list; choose from {', '.join(CHECK_NAMES)}")
    for name in wanted:
        if name not in CHECK_NAMES and name not in GROUPS:
            raise argparse.ArgumentTypeError(f"unknown check {name!r}; choose from {', '.join(CHECK_NAMES)} "
                                             f"(or a group: {', '.join(GROUPS)})")
    return tuple(spec.name for spec in CHECKS if spec.name in wanted or spec.group in wanted)


def skip_reason(spec: CheckSpec, device: str, capability: Sequence[int] | None, gpu_name: str | None) -> str | None:
    """Why the check cannot run on this device, or None."""
    if device != "cuda" and spec.gpu_only:
        return spec.gpu_only
    for mode in spec.modes:
        reason = unsupported_reason(mode, device, tuple(capability) if capability else None, gpu_name)
        if reason:
            return f"the device cannot run it: {reason}"
    return None
