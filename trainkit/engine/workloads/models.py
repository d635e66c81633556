"""Model builders: the seeds' MLP and CNN, torchvision ResNets and a small GPT.

Each is registered as a Workload (trainkit.engine.workloads.workload) the same way a user's model is: how to
build it, its loss, its learnable synthetic batches, whether it has BatchNorm (not
accumulation-equivalent: statistics are per micro-batch); its training FLOPs per sample are
counted once on the meta device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..spec.choices import MODELS
from ..spec.config import RunConfig
from .teachers import image_batches, token_batches
from .workload import Workload


class SimpleNN(nn.Module):
    """Seed 1's model, exactly: 784 -> 128 -> 64 -> 10 with ReLU and log_softmax (for NLLLoss)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


class TwoConvNet(nn.Module):
    """Seed 4's CNN: two 5x5 conv + ReLU + 2x2 max-pool stages, then one linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.out = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv2(self.conv1(x)).flatten(1))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention and a 4x MLP, each residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, width))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small decoder-only transformer (nanoGPT's shape): token + position embeddings, pre-LN
    blocks, a final LayerNorm and a linear head. LayerNorm keeps it accumulation-equivalent."""

    def __init__(self, vocab_size: int, seq_len: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Flattening covers both classifiers (N, C) and language models (N, T, V); mean per token.
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def _mlp(config: RunConfig, num_classes: int) -> Workload:
    # Seed 1's model has 10 outputs whatever the data: it reads MNIST-shaped images only.
    return Workload("mlp", SimpleNN, nll_loss, image_batches((1, 28, 28), 10, _task_seed(config)),
                    has_batchnorm=False, num_classes=10, source="built-in")


def _cnn(config: RunConfig, num_classes: int) -> Workload:
    return Workload("cnn", lambda: TwoConvNet(num_classes), cross_entropy,
                    image_batches((1, 28, 28), num_classes, _task_seed(config)),
                    has_batchnorm=False, num_classes=num_classes, checkpoint_blocks=_named("conv1", "conv2"),
                    source="built-in")


def _resnet(config: RunConfig, num_classes: int) -> Workload:
    import torchvision  # only here: torchvision's import costs seconds the other models never pay

    factory = getattr(torchvision.models, config.model)
    side = config.resolved_image_size
    return Workload(config.model, lambda: factory(weights=None, num_classes=num_classes), cross_entropy,
                    image_batches((3, side, side), num_classes, _task_seed(config)),
                    has_batchnorm=True, num_classes=num_classes,
                    checkpoint_blocks=_named("layer1", "layer2", "layer3", "layer4"), source="built-in")


def _gpt(config: RunConfig, num_classes: int) -> Workload:
    def build() -> nn.Module:
        return GPT(config.vocab_size, config.seq_len, config.gpt_width, config.gpt_layers, config.gpt_heads)

    return Workload("gpt", build, cross_entropy, token_batches(config.vocab_size, config.seq_len, _task_seed(config)),
                    has_batchnorm=False, num_classes=config.vocab_size, tokens_per_sample=config.seq_len,
                    checkpoint_blocks=_gpt_blocks, source="built-in")


def _gpt_blocks(model: nn.Module) -> list[str]:
    return [f"blocks.{i}" for i in range(len(model.blocks))]  # type: ignore[arg-type]


def _named(*names: str) -> Callable[[nn.Module], tuple[str, ...]]:
    return lambda _: names


def _task_seed(config: RunConfig) -> int:
    return config.seed if config.task_seed is None else config.task_seed


BUILTINS: dict[str, Callable[[RunConfig, int], Workload]] = dict(
    zip(MODELS, (_mlp, _cnn, _resnet, _resnet, _gpt), strict=True))
"""The built-in models as workloads, by the names of the one list of them (spec.choices.MODELS, which
the torch-free options read): each factory takes the run's config (shapes, task seed) and the classes
of its data (10 for the synthetic teacher). A name added there without its factory here fails at import;
tests/test_workload.py holds each factory to its name."""


def build_builtin(config: RunConfig, num_classes: int = 10) -> Workload:
    """The workload of a built-in config.model; num_classes comes from the data (10 for the
    synthetic teacher). Other workloads: trainkit.engine.workloads.resolve.build_workload."""
    if config.model not in BUILTINS:
        raise ValueError(f"model={config.model!r} is not a built-in model; choose from {', '.join(BUILTINS)}")
    return BUILTINS[config.model](config, num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
