"""Workloads of the pure-bf16 tests (tests/test_halfprec.py), importable as MODULE:FUNCTION specs.

subulp: a linear teacher-student regression whose Adam updates are below half a bf16 ulp of most
weights. Every seed starts from the same weights (a fixed generator, sd 0.25; the seeds vary the
data) and the teacher sits ~0.03 away from them, so fp32 Adam at lr 1e-4 closes the gap in 600
steps, while a bf16 weight of |w| >= 2**-6 (95 % of them: half its ulp is >= 1.2e-4) never moves
under round-to-nearest. Label noise (sd 1) sets the loss floor: the noise stochastic rounding adds
to the weights (variance ~ update x ulp per step) stays far below the 0.5 % margin. Tuned on this
project's CPU: half-bf16 +2.7 % [2.2, 3.2] of fp32's eval loss, SR +0.05 % [-0.16, 0.26], Kahan
-0.01 % [-0.08, 0.05] (5 seeds, 95 % paired t intervals).

cast_to_bf16: the planted fault of TensorAuto/OpenTau#177, a build that casts its own model to bf16
whatever the precision asks (its forward casts the inputs to the weights' dtype, so it runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.engine.workloads.workload import Workload

DIM, OUT = 64, 4
INIT_SD, TEACHER_SHIFT_SD, NOISE_SD = 0.25, 0.03, 1.0


def _initial_weight() -> torch.Tensor:
    return torch.randn(OUT, DIM, generator=torch.Generator().manual_seed(1234)) * INIT_SD


TEACHER = _initial_weight() + torch.randn(OUT, DIM, generator=torch.Generator().manual_seed(99)) * TEACHER_SHIFT_SD


def _regression_batch(n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(n, DIM, generator=generator)
    targets = inputs @ TEACHER.T + NOISE_SD * torch.randn(n, OUT, generator=generator)
    return inputs.to(device), targets.to(device)


def subulp() -> Workload:
    def build() -> nn.Module:
        layer = nn.Linear(DIM, OUT, bias=False)
        with torch.no_grad():
            layer.weight.copy_(_initial_weight())
        return layer

    return Workload(name="subulp", build=build, loss_fn=F.mse_loss, make_batch=_regression_batch)


class CastsItsInputs(nn.Module):
    """A model that casts its inputs to its weights' dtype, as mixed-dtype user code does."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.to(self.body[0].weight.dtype))


def cast_to_bf16() -> Workload:
    return Workload(name="castbf16", build=lambda: CastsItsInputs().to(torch.bfloat16),
                    loss_fn=lambda out, target: F.mse_loss(out.float(), target), make_batch=_regression_batch)
