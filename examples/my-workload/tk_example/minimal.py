"""The minimal form: a module with build, loss and batch is a workload by itself.

    python -m trainkit run --model tk_example.minimal
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NAME = "tiny-regressor"  # optional: the module's name (minimal) otherwise


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))


def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output.squeeze(1).float(), target)


def batch(batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch_size, 16, generator=generator, device=device)
    return x, torch.sin(x[:, :4].sum(dim=1))
