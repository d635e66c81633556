"""A timed window holds no host sync beyond what the step itself needs.

On a GPU, reading a value off the device (.item(), float(), .tolist(), bool()), copying a tensor made
from Python data onto it, or synchronising makes the host wait for every queued kernel, which
serialises the pipeline and adds the wait to the step time. On the CPU nothing is asynchronous, so
these tests count the calls that *would* sync, made from trainkit's own code while the timed steps
run; a GPU test (skipped without a GPU) lets CUDA itself flag any sync, torch's included.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from trainkit.engine.cell.worker import RankWorker
from trainkit.engine.train import loop

from .conftest import small_config
from .datasets import write_mnist

TRAINKIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainkit")
# Calls that read a device value on the host: always a sync on a GPU.
READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"}
CPU = torch.device("cpu")


def is_sync_point(name: str, args: tuple, kwargs: dict) -> bool:
    """A read of a device value, a blocking copy to the host, or a tensor built from Python data
    straight onto a device (a pageable copy, which waits for the GPU to drain)."""
    if name in READS:
        return True
    if name == "to":
        to_host = any(a == "cpu" or a == CPU for a in (*args[1:], kwargs.get("device")))
        return to_host and not kwargs.get("non_blocking", False)
    return name in ("tensor", "as_tensor") and kwargs.get("device") is not None


class SyncCounter(TorchFunctionMode):
    """Counts the sync points trainkit's own code calls (torch's internals are the GPU test's)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if is_sync_point(name, args, kwargs or {}):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(TRAINKIT):
                self.calls[f"{name} ({os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno})"] += 1
        return func(*args, **(kwargs or {}))


def _timed(worker: RankWorker, how: str) -> Counter[str]:
    worker.warmup()
    with SyncCounter() as counter:
        if how == "window":  # the window itself; the divergence check after it reads the losses
            worker._timed_span(worker.trainer.total_steps - worker.trainer.step,
                               lambda step, total: None)  # progress shown: the worst case
        else:
            for _ in range(worker.trainer.total_steps - worker.trainer.step):
                worker.trainer.run(1, worker.timer)  # a bench round's step, without its check between rounds
                worker.timer.read_s()
    return counter.calls


@pytest.mark.parametrize("how", ["window", "rounds"])
@pytest.mark.parametrize("precision", ["fp32", "amp-bf16", "amp-fp16", "half-fp16", "half-fp16-master"])
def test_the_timed_steps_hold_no_sync_of_trainkits(precision, how, monkeypatch):
    # The losses are stacked every CURVE_CHUNK_STEPS steps; made 4 here, so 1 warmup step and 9 timed
    # ones stack them twice inside the window (at steps 4 and 8), as 130 steps would at 64 and 128.
    monkeypatch.setattr(loop, "CURVE_CHUNK_STEPS", 4)
    config = small_config("gpt", precision=precision, steps=9, warmup_steps=1, batch_size=4, grad_accum=2)
    worker = RankWorker(config)
    assert _timed(worker, how) == {}
    assert len(worker.trainer.loss_chunks) == 2 and len(worker.trainer.loss_curve()) == 10  # stacked twice


def test_synthetic_epochs_hold_no_sync_of_trainkits():
    config = small_config(epochs=3, dataset_size=100, batch_size=8, grad_accum=2, warmup_steps=1)
    assert _timed(RankWorker(config), "window") == {}


def test_real_data_epochs_hold_no_sync_of_trainkits(tmp_path):
    root = write_mnist(tmp_path, samples=120)
    config = small_config("mlp", data="mnist", data_root=str(root), epochs=2, batch_size=16, warmup_steps=1)
    assert _timed(RankWorker(config), "window") == {}


def test_the_counter_sees_a_sync_where_there_is_one(monkeypatch):
    """The counter itself: reading the loss curve after every step (as a progress line with the
    latest loss would) is caught, in trainkit's code where it happens."""
    from trainkit.engine.train.loop import Trainer

    original = Trainer.end_step

    def reading(self, loss, samples):
        original(self, loss, samples)
        self.loss_curve()

    monkeypatch.setattr(Trainer, "end_step", reading)
    calls = _timed(RankWorker(small_config(steps=5, warmup_steps=1)), "window")
    assert calls and all("(loop.py:" in name for name in calls)
    assert sum(n for name, n in calls.items() if name.startswith("to ")) >= 5  # a copy to the host per step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: CUDA's sync debug mode flags syncs")
@pytest.mark.parametrize(("precision", "syncs_per_step"), [("fp32", 0), ("amp-bf16", 0), ("amp-fp16", 1)])
def test_cuda_flags_no_sync_in_the_timed_steps_but_gradscalers(precision, syncs_per_step):
    """CUDA's own sync detector over a whole window: none, but GradScaler's one read per step of
    whether a gradient overflowed (it belongs to the step: the update depends on it)."""
    import warnings

    config = small_config("gpt", precision=precision, steps=20, warmup_steps=2, device="cuda")
    worker = RankWorker(config)
    worker.warmup()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            worker.trainer.run(config.steps, worker.timer)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == syncs_per_step * config.steps, [str(w.message) for w in syncs[:3]]
