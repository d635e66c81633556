"""A residual MLP classifier on 64-feature vectors, as trainkit workloads.

    python -m trainkit run --model tk_example.workloads:resmlp      # MODULE:FUNCTION
    python -m trainkit run --model 'tk_example.workloads:resmlp?width=128&depth=4'
    python -m trainkit run --model resmlp                           # the installed plugin

Its data is its own: features from a fixed random mixture, labels from a fixed random teacher
network, so the loss falls and compares across precision modes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainkit.engine.workloads import Workload

FEATURES = 64
CLASSES = 8
TEACHER_SEED = 1234
"""The task is fixed: every run learns the same teacher (the run's seed changes the weights and
the samples drawn, never the task)."""


class ResidualMLP(nn.Module):
    """Input projection, `depth` residual blocks (norm, linear, GELU, linear), a classifier head."""

    def __init__(self, width: int, depth: int, norm: str) -> None:
        super().__init__()
        make_norm = nn.LayerNorm if norm == "layer" else nn.BatchNorm1d
        self.inp = nn.Linear(FEATURES, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(make_norm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(depth))
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def make_batch(batch_size: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features from the generator; labels from a teacher made from TEACHER_SEED on the same device."""
    teacher = torch.Generator(device=device).manual_seed(TEACHER_SEED)
    weight = torch.randn(FEATURES, CLASSES, generator=teacher, device=device)
    features = torch.randn(batch_size, FEATURES, generator=generator, device=device)
    return features, torch.tanh(features).matmul(weight).argmax(dim=1)


def dataset(samples: int = 1024) -> TensorDataset:
    """A fixed data set of the same task (`--data workload --epochs N`), as a real one would be read."""
    return TensorDataset(*make_batch(samples, torch.Generator().manual_seed(TEACHER_SEED + 1), torch.device("cpu")))


def resmlp(width: int = 64, depth: int = 2) -> Workload:
    """The LayerNorm variant: accumulation-equivalent."""
    return Workload(name="resmlp", build=lambda: ResidualMLP(width, depth, "layer"), loss_fn=F.cross_entropy,
                    make_batch=make_batch, dataset=dataset, num_classes=CLASSES)


def resmlp_bn(width: int = 64, depth: int = 2) -> Workload:
    """The BatchNorm variant: statistics per micro-batch, so accumulation is not exact (detected)."""
    return Workload(name="resmlp-bn", build=lambda: ResidualMLP(width, depth, "batch"), loss_fn=F.cross_entropy,
                    make_batch=make_batch, num_classes=CLASSES)
