"""Learnable synthetic batches for workloads: labels follow from the inputs through a fixed random
teacher, so losses fall and compare across precision modes.

The built-in models, the `hf:` and `timm:` adapters and users' workloads share these: a workload's
`make_batch` can be `token_batches(vocab, seq_len)` or `image_batches((3, 32, 32), classes)`.
The teacher is made from `task_seed` on the batch's device; the samples come from the generator the
data passes in, so the same generator state gives the same batch (equivalence and determinism).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LATENT_SIDE = 7  # synthetic images are smooth: bilinear upsampling of a 7x7 latent, plus noise
TEACHER_FANOUT = 16
"""Successors each token can have in the synthetic language: the chain is peaked and learnable
like a dense vocab x vocab one, in vocab x 16 memory (a dense table of GPT-2's vocabulary is 10 GB)."""

Batch = tuple[torch.Tensor, torch.Tensor]
MakeBatch = Callable[[int, torch.Generator, torch.device], Batch]


class TokenTeacher:
    """A random, peaked Markov chain that generates token sequences: each token has TEACHER_FANOUT
    possible successors, drawn with fixed random probabilities. Targets are the next tokens."""

    def __init__(self, vocab: int, seq_len: int, seed: int, device: torch.device) -> None:
        self.vocab, self.seq_len, self.device = vocab, seq_len, device
        gen = torch.Generator(device=device).manual_seed(seed)
        self.successors = torch.randint(vocab, (vocab, TEACHER_FANOUT), generator=gen, device=device)
        logits = 3.0 * torch.randn(vocab, TEACHER_FANOUT, generator=gen, device=device)
        # Inverse-CDF sampling: one searchsorted per position (torch.multinomial is ~20x slower on
        # the CPU); the top is pinned to 1 so every uniform sample lands in a bucket despite rounding.
        self.cdf = torch.softmax(logits, dim=1).cumsum(dim=1)
        self.cdf[:, -1] = 1.0

    def sample(self, count: int, gen: torch.Generator) -> Batch:
        tokens = torch.empty(count, self.seq_len + 1, dtype=torch.long, device=self.device)
        tokens[:, 0] = torch.randint(self.vocab, (count,), generator=gen, device=self.device)
        uniforms = torch.rand(self.seq_len, count, 1, generator=gen, device=self.device)
        for t in range(self.seq_len):
            current = tokens[:, t]
            choice = torch.searchsorted(self.cdf[current], uniforms[t])
            tokens[:, t + 1] = self.successors[current].gather(1, choice).squeeze(1)
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class ImageTeacher:
    """Smooth random images (a 7x7 latent upsampled, plus noise) whose class is picked by a random
    linear map of the latent."""

    def __init__(self, shape: tuple[int, int, int], classes: int, seed: int, device: torch.device) -> None:
        self.shape, self.device = shape, device
        gen = torch.Generator(device=device).manual_seed(seed)
        self.weight = torch.randn(shape[0] * LATENT_SIDE * LATENT_SIDE, classes, generator=gen, device=device)

    def sample(self, count: int, gen: torch.Generator) -> Batch:
        channels, height, width = self.shape
        latent = torch.randn(count, channels, LATENT_SIDE, LATENT_SIDE, generator=gen, device=self.device)
        labels = (latent.flatten(1) @ self.weight).argmax(dim=1)
        images = F.interpolate(latent, size=(height, width), mode="bilinear", align_corners=False)
        images += 0.1 * torch.randn(images.shape, generator=gen, device=self.device)
        return images, labels


class SequenceClassTeacher:
    """Random token sequences whose class is the argmax of a fixed random score per token, summed
    over the sequence (a bag-of-words task a sequence classifier can learn)."""

    def __init__(self, vocab: int, seq_len: int, classes: int, seed: int, device: torch.device) -> None:
        self.vocab, self.seq_len, self.device = vocab, seq_len, device
        gen = torch.Generator(device=device).manual_seed(seed)
        self.scores = torch.randn(vocab, classes, generator=gen, device=device)

    def sample(self, count: int, gen: torch.Generator) -> Batch:
        tokens = torch.randint(self.vocab, (count, self.seq_len), generator=gen, device=self.device)
        return tokens, self.scores[tokens].sum(dim=1).argmax(dim=1)


def _per_call(make: Callable[[torch.device], TokenTeacher | ImageTeacher | SequenceClassTeacher]) -> MakeBatch:
    """make_batch over a teacher made afresh (from its seed) for each call: its tables are small
    next to the samples, and none outlives the call to show in a cell's memory."""
    def make_batch(batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        return make(torch.device(device)).sample(batch_size, generator)

    return make_batch


def token_batches(vocab: int, seq_len: int, task_seed: int = 0) -> MakeBatch:
    """Next-token batches of a language model: (N, seq_len) ids in, (N, seq_len) next ids out."""
    return _per_call(lambda device: TokenTeacher(vocab, seq_len, task_seed, device))


def image_batches(shape: tuple[int, int, int], classes: int, task_seed: int = 0) -> MakeBatch:
    """Image classification batches: (N, C, H, W) float32 images in, (N,) class ids out."""
    return _per_call(lambda device: ImageTeacher(shape, classes, task_seed, device))


def sequence_class_batches(vocab: int, seq_len: int, classes: int, task_seed: int = 0) -> MakeBatch:
    """Sequence classification batches: (N, seq_len) ids in, (N,) class ids out."""
    return _per_call(lambda device: SequenceClassTeacher(vocab, seq_len, classes, task_seed, device))
