"""Synthetic data is learnable and split-invariant; real pipelines read local files, never download."""

import os

import pytest
import torch

from trainkit.engine.cell.launch import run_cell
from trainkit.engine.workloads.data import EVAL_SAMPLES, SyntheticData, pool_size
from trainkit.engine.workloads.models import build_builtin

from .conftest import CPU, small_config, train
from .datasets import write_cifar10, write_image_folder, write_mnist


def test_a_step_covers_the_same_samples_however_it_is_split():
    spec = build_builtin(small_config())

    def samples(batch_size, grad_accum, world_size, step):
        config = small_config(batch_size=batch_size, grad_accum=grad_accum, world_size=world_size)
        rows = []
        for rank in range(world_size):
            data = SyntheticData(config, spec, CPU, torch.float32, rank)
            rows += [x for x, _ in data.window(step).micro_batches]
        return torch.cat(rows).flatten(1)

    reference = samples(32, 1, 1, step=3)
    for split in ((8, 4, 1), (16, 1, 2), (4, 2, 4)):
        got = samples(*split, step=3)
        assert torch.equal(got.sort(dim=0).values, reference.sort(dim=0).values), split


def test_the_pool_wraps_around_without_changing_the_sample_numbering():
    config = small_config(batch_size=48)
    spec = build_builtin(config)
    data = SyntheticData(config, spec, CPU, torch.float32, 0)
    size = pool_size(spec)
    x, _ = data._take(size - 16, 48)  # crosses the end of the pool
    torch.testing.assert_close(x[16:], data.inputs[:32])
    torch.testing.assert_close(x[:16], data.inputs[size - 16:])


@pytest.mark.parametrize("model", ["mlp", "gpt", "cnn"])
def test_synthetic_data_is_learnable(model):
    trainer = train(small_config(model, steps=60, batch_size=32, optimizer="adam", lr=3e-3))
    curve = trainer.loss_curve()
    assert curve[-5:].mean() < 0.85 * curve[:5].mean()
    assert trainer.evaluate() < float(curve[:5].mean())  # the held-out loss falls too


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_a_task_seed_fixes_the_task_and_the_held_out_set_while_seed_draws_the_samples(model):
    spec = build_builtin(small_config(model))

    def data(**changes):
        return SyntheticData(small_config(model, **changes), spec, CPU, torch.float32, 0)

    default, same_seed, task0_seed1, task0_seed2 = data(seed=1), data(seed=1, task_seed=1), \
        data(seed=1, task_seed=0), data(seed=2, task_seed=0)
    # Without task_seed, seed decides everything, as it always did.
    assert torch.equal(default.inputs, same_seed.inputs) and torch.equal(default.eval_set[1], same_seed.eval_set[1])
    for a, b in zip(task0_seed1.eval_set, task0_seed2.eval_set):  # one task, one held-out set
        assert torch.equal(a, b)
    assert not torch.equal(task0_seed1.inputs, task0_seed2.inputs)  # the training samples follow seed
    assert not torch.equal(task0_seed1.eval_set[1], default.eval_set[1])  # another task than task 1


def test_half_precision_inputs_are_stored_in_half():
    trainer = train(small_config(precision="half-bf16", steps=1))
    inputs, _ = trainer.data.eval_set
    assert inputs.dtype == torch.bfloat16 and trainer.data.source.inputs.dtype == torch.bfloat16


def test_mnist_from_local_idx_files(tmp_path):
    root = write_mnist(tmp_path, samples=300)
    trainer = train(small_config("cnn", data="mnist", data_root=str(root), epochs=1, batch_size=16, grad_accum=2))
    held = min(EVAL_SAMPLES, 300 // 5)
    micro = -(-(300 - held) // 16)  # 15 micro-batches: windows 2,2,...,2,1
    assert trainer.data.steps_per_epoch == -(-micro // 2) == trainer.step
    assert trainer.step_samples[-1] == (300 - held) - 16 * (micro - 1)  # the short last micro-batch
    assert trainer.data.eval_set[0].shape == (held, 1, 28, 28)
    assert float(trainer.data.eval_set[0].min()) >= -1.0 and float(trainer.data.eval_set[0].max()) <= 1.0
    assert torch.isfinite(trainer.loss_curve()).all()


def test_cifar10_from_local_pickles(tmp_path):
    root = write_cifar10(tmp_path, samples_per_batch=20)
    trainer = train(small_config("resnet18", data="cifar10", data_root=str(root), epochs=1, batch_size=16,
                                 drop_last=True))
    assert trainer.workload.num_classes == 10
    assert trainer.step_samples and set(trainer.step_samples) == {16}  # drop_last: no short batch
    assert trainer.data.eval_set[0].shape[1:] == (3, 32, 32)


def test_image_folder_with_workers_through_the_launcher(tmp_path):
    """ImageFolder (Resize + CenterCrop + ImageNet normalisation) with DataLoader workers,
    prefetching and persistent workers, in a real worker process, over two epochs."""
    root = write_image_folder(tmp_path / "images", classes=3, per_class=14)  # 42 - 8 held out = 34: batches 4 x 8 + 2
    config = small_config("resnet18", data="imagefolder", data_root=str(root), image_size=32, epochs=2,
                          batch_size=4, grad_accum=2, warmup_steps=1, num_workers=2, prefetch_factor=2,
                          persistent_workers=True)
    record = run_cell(config, timeout_s=300)
    assert record["status"] == "ok", record["status_detail"]
    assert record["config"]["num_classes"] == 3
    assert len(record["loss"]["epoch_means"]) == 2
    assert record["config"]["total_steps"] == 2 * record["config"]["steps_per_epoch"]
    assert record["loss"]["eval"] is not None


def test_real_data_is_never_downloaded(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    record = run_cell(small_config("mlp", data="mnist", data_root=str(empty), epochs=1), timeout_s=120)
    assert record["status"] == "crashed"
    assert "download" in record["status_detail"] or "not found" in record["status_detail"].lower()


GENERATION_PROBE = """
import resource, sys
import torch
from trainkit.engine.spec.presets import GPU_GPT
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.workloads.data import SyntheticData
from trainkit.engine.measure.memory import host_rss_now_bytes
from trainkit.engine.workloads.models import build_builtin

config = RunConfig(model="gpt", device="cpu", **GPU_GPT)
spec = build_builtin(config)
# Cap the address space well below what a vocab x vocab teacher needs (10 GB a matrix at GPT-2's
# vocabulary), so generating like that fails here instead of taking the machine's memory.
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.RLIM_INFINITY))
# Code that runs for the first time loads its pages: do it once on a small vocabulary first.
SyntheticData(RunConfig(model="gpt", device="cpu"), build_builtin(RunConfig(model="gpt")), torch.device("cpu"),
              torch.float32, 0)
before = max(host_rss_now_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
data = SyntheticData(config, spec, torch.device("cpu"), torch.float32, 0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
kept = data.pool_bytes + sum(t.nbytes for t in data.eval_set)
print(peak - before - kept, data.pool_bytes, data.inputs.shape[0])
"""


def test_generating_the_gpu_gpts_data_stays_within_its_bound():
    """GPT-2's vocabulary (50304 tokens, 1024 per sample): what generating the pool takes beyond the
    pool itself (peak resident set, so the allocator's and libraries' own pages count too) stays
    within GENERATION_MAX_BYTES, on the device as here. A dense vocab x vocab teacher needs 10 GB a
    matrix and fails under the cap."""
    import subprocess
    import sys

    from trainkit.engine.workloads.data import GENERATION_MAX_BYTES

    cap = 6 * 2**30  # address space, not memory: torch's libraries alone map ~3 GB
    proc = subprocess.run([sys.executable, "-c", GENERATION_PROBE, str(cap)], capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    transient, pool_bytes, samples = map(int, proc.stdout.split())
    assert samples == 4096 and pool_bytes == 2 * 4096 * 1024 * 8  # inputs and targets, int64
    assert transient <= GENERATION_MAX_BYTES, f"{transient / 2**20:.0f} MiB beyond the pool"


def test_persistent_workers_start_once_for_the_whole_run(tmp_path, monkeypatch):
    """With persistent_workers the DataLoader's worker processes start once, not once per epoch (a
    new loader per epoch would restart them and put their start-up into timed steps)."""
    from torch.utils.data import dataloader

    started = []
    original = dataloader._MultiProcessingDataLoaderIter.__init__

    def counting(self, loader):
        started.append(loader)
        original(self, loader)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "__init__", counting)
    root = write_mnist(tmp_path, samples=120)
    trainer = train(small_config("mlp", data="mnist", data_root=str(root), epochs=3, batch_size=16,
                                 num_workers=1, persistent_workers=True))
    assert trainer.step == 3 * trainer.data.steps_per_epoch
    assert len(started) == 1
    persistent = trainer.data.source.loader
    assert persistent.persistent_workers and persistent._iterator is not None


def test_a_resumed_epoch_run_reads_the_rest_of_its_epoch_from_the_one_loader(tmp_path):
    """The loader is built once; resuming mid-epoch skips that epoch's first samples only."""
    config = small_config("mlp", epochs=2, dataset_size=112, batch_size=8, grad_accum=4, warmup_steps=0)
    whole = train(config)
    checkpoints = tmp_path / "ckpt"
    first = train(config.replace(epochs=2, checkpoint_dir=str(checkpoints), checkpoint_every=3))
    resumed = train(config.replace(resume_from=str(checkpoints / "step00000003.pt")))
    assert torch.equal(whole.loss_curve(), first.loss_curve())
    assert torch.equal(resumed.loss_curve(), whole.loss_curve())
