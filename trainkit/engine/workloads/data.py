"""Data: synthetic learnable samples generated on the device, and real DataLoader pipelines.

Both are served as *windows*: one optimizer step's micro-batches for this rank, plus the number
of samples the step covers over all ranks (the loss of a micro-batch is weighted by its share of
that, so the gradient is the mean over the effective batch even when the last window of an epoch
is short).

Synthetic samples are indexed by a global sample number: step s covers samples
[s * effective_batch, (s + 1) * effective_batch), and micro-batch m of rank r takes a contiguous
block of them. So the samples of a step are the same whatever its split into ranks and
micro-batches, which makes accumulation and world-size equivalence testable exactly.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..spec.config import RunConfig
from ..spec.precision_facts import facts_of
from .workload import Workload

POOL_MAX_SAMPLES = 4096
POOL_MAX_BYTES = 256 * 2**20  # bounds the device memory the synthetic pool takes from the model
GENERATION_MAX_BYTES = 64 * 2**20
"""Bound on the device memory that generating the pool takes beyond the pool itself: the teacher's
tables (vocab x TEACHER_FANOUT for tokens) and samples made in chunks of a quarter of this, whose
cache is emptied after them, so generating data never shows in a cell's memory and never runs a small GPU
out of memory."""
EVAL_SAMPLES = 256


@dataclass
class AccumulationWindow:
    """One accumulation window: the micro-batches of one optimizer step on this rank."""

    micro_batches: list[tuple[torch.Tensor, torch.Tensor]]
    global_samples: int
    """Samples in this optimizer step over all ranks and micro-batches."""


def sample_bytes(workload: Workload) -> int:
    """Bytes of one generated sample's input as generated (int64 tokens, fp32 images)."""
    return workload.sample_bytes()


def pool_size(workload: Workload) -> int:
    """Samples in the synthetic pool: depends on the sample's shape only, never on the batch
    split, so configs that must be equivalent read the same samples."""
    return max(1, min(POOL_MAX_SAMPLES, POOL_MAX_BYTES // sample_bytes(workload)))


def generate(workload: Workload, count: int, gen: torch.Generator, device: torch.device,
             input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` samples of the workload's make_batch, made in chunks whose temporaries (about four
    times the chunk's samples, for the built-in teachers) take at most a quarter of
    GENERATION_MAX_BYTES beyond the result. The chunks depend on the sample's shape only, so the
    same seed gives the same samples whatever the batch split."""
    chunk = max(1, GENERATION_MAX_BYTES // (16 * sample_bytes(workload)))
    inputs = targets = None
    for start in range(0, count, chunk):
        x, y = workload.make_batch(min(chunk, count - start), gen, device)
        x = x.to(input_dtype) if x.is_floating_point() else x
        if inputs is None:
            inputs = torch.empty((count, *x.shape[1:]), dtype=x.dtype, device=x.device)
            targets = torch.empty((count, *y.shape[1:]), dtype=y.dtype, device=y.device)
        inputs[start:start + x.shape[0]] = x
        targets[start:start + y.shape[0]] = y
        del x, y
    assert inputs is not None and targets is not None
    return inputs, targets


class SyntheticData:
    """Step mode: an endless stream of global sample numbers mapped onto a pool on the device."""

    def __init__(self, config: RunConfig, workload: Workload, device: torch.device, input_dtype: torch.dtype,
                 rank: int) -> None:
        self.config = config
        self.rank = rank
        task_seed = config.seed if config.task_seed is None else config.task_seed
        gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        pool = config.dataset_size or pool_size(workload)
        self.inputs, self.targets = generate(workload, pool, gen, device, input_dtype)
        eval_gen = torch.Generator(device=device).manual_seed(task_seed + 2)
        self.eval_set = generate(workload, EVAL_SAMPLES, eval_gen, device, input_dtype)
        self.pool_bytes = self.inputs.nbytes + self.targets.nbytes
        if device.type == "cuda":
            # Generation's temporaries stay in the caching allocator unless given back: they would
            # count as the cell's reserved and NVML memory.
            torch.cuda.empty_cache()

    def _take(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.inputs.shape[0]
        first = start % size
        if first + count <= size:  # the common case: a view, no copy in the timed step
            return self.inputs[first:first + count], self.targets[first:first + count]
        index = (torch.arange(count, device=self.inputs.device) + first) % size
        return self.inputs.index_select(0, index), self.targets.index_select(0, index)

    def windows(self, start_step: int) -> Iterator[AccumulationWindow]:
        """Windows from optimizer step start_step on, forever (the loop decides when to stop)."""
        step = start_step
        while True:
            yield self.window(step)
            step += 1

    def window(self, step: int) -> AccumulationWindow:
        cfg = self.config
        base = step * cfg.effective_batch
        micro = [self._take(base + (m * cfg.world_size + self.rank) * cfg.batch_size, cfg.batch_size)
                 for m in range(cfg.grad_accum)]
        return AccumulationWindow(micro, cfg.effective_batch)


class _SkipSampler(Sampler[int]):
    """The indices of a sampler after the first `skip` (resuming mid-epoch; set per epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int = 0) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


class _IndexDataset(Dataset):
    """Synthetic samples on the device, served by index (epoch mode)."""

    def __init__(self, synthetic: SyntheticData) -> None:
        self.synthetic = synthetic

    def __len__(self) -> int:
        return self.synthetic.inputs.shape[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices)
        device = self.synthetic.inputs.device
        if device.type == "cuda":
            # A copy from pageable memory waits for the GPU to drain; from pinned memory it is queued
            # behind the step like any kernel (the host allocator keeps the block until it is done).
            index = index.pin_memory().to(device, non_blocking=True)
        return self.synthetic.inputs.index_select(0, index), self.synthetic.targets.index_select(0, index)


def _keep(batch: Any) -> Any:
    return batch


def fixed_rows_reason(config: RunConfig) -> str | None:
    """Why every micro-batch of this run must hold batch_size samples, or None. An epoch's short
    last micro-batch would otherwise end the cell: under torch.compile a new batch size is a new
    shape, a recompile, which the worker's stance after warmup turns into an error; float8's weight
    gradient GEMM runs over the micro-batch's rows, which must be a multiple of 16 on a GPU."""
    if config.compile:
        return "torch.compile: a short micro-batch is a new shape, a recompile (an error after warmup)"
    if facts_of(config.precision).peak_kind == "fp8":
        return "float8 GEMMs need the rows of every micro-batch to be a multiple of 16"
    return None


class EpochData:
    """Epoch mode: a data set split over ranks by DistributedSampler (shuffled per epoch with
    seed + epoch, padded to equal rank shares), grouped into windows of grad_accum micro-batches,
    the last window of an epoch holding what is left. The short last micro-batch of an epoch is
    dropped when drop_last says so, and always for cells that need fixed rows (fixed_rows_reason)."""

    def __init__(self, config: RunConfig, dataset: Dataset, device: torch.device, input_dtype: torch.dtype,
                 rank: int, on_device: bool) -> None:
        self.config, self.dataset, self.device, self.input_dtype = config, dataset, device, input_dtype
        self.rank, self.on_device = rank, on_device
        self.sampler = DistributedSampler(dataset, num_replicas=config.world_size, rank=rank, shuffle=config.shuffle,
                                          seed=config.seed)
        short = len(self.sampler) % config.batch_size
        self.drop_reason = "drop_last" if config.drop_last else fixed_rows_reason(config) if short else None
        """Why the short last micro-batch of each epoch is dropped, or None when none is."""
        self.dropped_samples_per_epoch = short * config.world_size if self.drop_reason else 0
        """Samples (all ranks) left out of every epoch by that."""
        self.skipping = _SkipSampler(self.sampler)
        # One loader for the whole run, so persistent workers persist: started once, not per epoch.
        self.loader = self._loader()
        self.micro_per_epoch = len(self.loader)
        if self.micro_per_epoch == 0:
            raise ValueError(f"{len(dataset)} samples make no micro-batch of {config.batch_size} "  # type: ignore[arg-type]
                             f"on each of {config.world_size} ranks")
        self.steps_per_epoch = -(-self.micro_per_epoch // config.grad_accum)

    def _loader(self) -> DataLoader:
        cfg = self.config
        if self.on_device:  # synthetic: batches are gathered on the device, no workers, no collate
            return DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.skipping,
                              drop_last=self.drop_reason is not None, collate_fn=_keep)
        # Workers are forked from this rank: started any other way (a worker inherits the fork
        # server's start method) they would outlive a killed rank, whose PID their watchdog
        # never sees. They never touch CUDA, so forking after CUDA's initialisation is safe.
        context = multiprocessing.get_context("fork") if cfg.num_workers > 0 else None
        return DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.skipping,
                          drop_last=self.drop_reason is not None, num_workers=cfg.num_workers,
                          multiprocessing_context=context,
                          pin_memory=cfg.pin_memory and self.device.type == "cuda",
                          prefetch_factor=cfg.prefetch_factor, persistent_workers=cfg.persistent_workers,
                          generator=torch.Generator().manual_seed(cfg.seed))

    def _to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        inputs = inputs.to(self.device, non_blocking=True)
        if inputs.is_floating_point():
            inputs = inputs.to(self.input_dtype)
        return inputs, targets.to(self.device, non_blocking=True)

    def windows(self, start_step: int) -> Iterator[AccumulationWindow]:
        """Windows from optimizer step start_step on, forever (the loop decides when to stop)."""
        k = self.config.grad_accum
        epoch, step_in_epoch = divmod(start_step, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)  # the shuffle of this epoch (seed + epoch)
            self.skipping.skip = step_in_epoch * k * self.config.batch_size
            window: list[tuple[torch.Tensor, torch.Tensor]] = []
            for batch in self.loader:
                window.append(self._to_device(batch))
                if len(window) == k:
                    yield self._close(window)
                    window = []
            if window:  # the short last window of the epoch
                yield self._close(window)
            epoch, step_in_epoch = epoch + 1, 0

    def _close(self, window: list[tuple[torch.Tensor, torch.Tensor]]) -> AccumulationWindow:
        # DistributedSampler gives every rank the same number of samples, so the step's total is
        # world_size times this rank's.
        local = sum(inputs.shape[0] for inputs, _ in window)
        return AccumulationWindow(window, local * self.config.world_size)


def build_real_dataset(config: RunConfig) -> Dataset:
    """A torchvision data set read from config.data_root; never a download."""
    # torchvision: optional, only for the real (not synthetic) data sets
    import torchvision
    from torchvision import transforms as T

    root = config.data_root or ""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data_root={root!r} is not a directory")
    if config.data == "mnist":
        # Seed 1: ToTensor, then Normalize(mean 0.5, std 0.5) to [-1, 1].
        tf = T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])
        return torchvision.datasets.MNIST(root, train=True, transform=tf, download=False)
    if config.data == "cifar10":
        tf = T.Compose([T.Resize(config.resolved_image_size), T.ToTensor(),
                        T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])

        class LocalCIFAR10(torchvision.datasets.CIFAR10):
            """torchvision checks the MD5 sums of the official archive's files; a local copy (or a
            test's small generated one) is trusted when every file is present."""

            def _check_integrity(self) -> bool:
                folder = os.path.join(self.root, self.base_folder)
                names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
                return all(os.path.isfile(os.path.join(folder, name)) for name in names)

            def _load_meta(self) -> None:
                with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
                self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        return LocalCIFAR10(root, train=True, transform=tf, download=False)
    # Seed 5: resize to 224 (the image size), ImageNet normalisation.
    size = config.resolved_image_size
    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return torchvision.datasets.ImageFolder(root, transform=tf)


def num_classes_of(dataset: Dataset) -> int:
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes else 10


def hold_out(dataset: Dataset, eval_samples: int = EVAL_SAMPLES) -> tuple[Dataset, Dataset]:
    """Split a real data set into training samples and a fixed held-out tail for the eval loss."""
    n = len(dataset)  # type: ignore[arg-type]
    held = min(eval_samples, n // 5)
    return Subset(dataset, range(n - held)), Subset(dataset, range(n - held, n))


def stack_eval(dataset: Dataset, device: torch.device, input_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    inputs = torch.stack([torch.as_tensor(x) for x, _ in pairs]).to(device)
    # Class ids (torchvision's ints) or a workload's target tensors, stacked alike.
    targets = torch.stack([torch.as_tensor(y) for _, y in pairs]).to(device)
    return (inputs.to(input_dtype) if inputs.is_floating_point() else inputs), targets



@dataclass
class DataBundle:
    """What the loop gets from the data: windows, a fixed held-out eval set, and facts to record."""

    source: SyntheticData | EpochData
    eval_set: tuple[torch.Tensor, torch.Tensor]
    steps_per_epoch: int | None
    device_bytes: int
    """Device memory the data itself holds (the synthetic pool), reported beside the peaks."""
    drop_reason: str | None = None
    """Why the short last micro-batch of each epoch is dropped (epoch mode), or None."""
    dropped_samples_per_epoch: int = 0
    """Samples (all ranks) that dropping it leaves out of every epoch."""


def build_data(config: RunConfig, workload: Workload, device: torch.device, input_dtype: torch.dtype,
               rank: int, dataset: Dataset | None = None) -> DataBundle:
    """The data of a run; `dataset` is the real data set (built first: it decides num_classes)."""
    if config.data == "synthetic":
        synthetic = SyntheticData(config, workload, device, input_dtype, rank)
        if config.epochs is None:
            return DataBundle(synthetic, synthetic.eval_set, None, synthetic.pool_bytes)
        epochs = EpochData(config, _IndexDataset(synthetic), device, input_dtype, rank, on_device=True)
        return DataBundle(epochs, synthetic.eval_set, epochs.steps_per_epoch, synthetic.pool_bytes,
                          epochs.drop_reason, epochs.dropped_samples_per_epoch)
    assert dataset is not None, "real data needs its data set"
    train, held = hold_out(dataset)
    epochs = EpochData(config, train, device, input_dtype, rank, on_device=False)
    return DataBundle(epochs, stack_eval(held, device, input_dtype), epochs.steps_per_epoch, 0,
                      epochs.drop_reason, epochs.dropped_samples_per_epoch)
