"""Cells run in their own processes; every way a cell can end is a record, never a crash."""

import os
import signal
import time
import types
from pathlib import Path

import pytest

from trainkit.engine.cell.launch import CellFailed, CellWorkers, run_cell
from trainkit.engine.cell.record import check_record

from .conftest import small_config


def test_an_ok_cell_reports_every_rank_and_its_fixed_cost():
    record = run_cell(small_config("gpt", world_size=2, batch_size=4, steps=2), timeout_s=120)
    assert check_record(record) == [] and record["status"] == "ok"
    assert record["ranks_reported"] == 2 and len(record["memory"]["per_rank"]) == 2
    per_rank = record["memory"]["per_rank"]
    assert record["memory"]["host_rss_peak_bytes"] == max(r["host_rss_peak_bytes"] for r in per_rank)
    assert record["config"]["torch_num_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert set(record["fixed_cost_s"]) >= {"spawn_to_ready_s", "init_s", "build_s"}


def test_a_nan_ends_the_cell_as_diverged_at_its_step():
    record = run_cell(small_config(precision="half-fp16", lr=1e4, steps=6, warmup_steps=1), timeout_s=120)
    assert record["status"] == "diverged"
    assert record["status_detail"].startswith("diverged@") and "not finite" in record["status_detail"]
    assert check_record(record) == []
    assert record["loss"]["curve"] and record["loss"]["curve"][-1] is None  # the curve up to the NaN is kept


def test_a_collapsing_loss_scale_ends_the_cell_as_diverged():
    config = small_config(precision="amp-fp16", init_scale=2.0**40, min_loss_scale=2.0**39.5, steps=4, warmup_steps=1)
    record = run_cell(config, timeout_s=120)
    assert record["status"] == "diverged" and "fell below min_loss_scale" in record["status_detail"]


def test_running_out_of_host_memory_is_an_oom_result():
    """A real allocation failure: the worker's address space is capped (like `ulimit -v`) and the
    batch needs more than the cap."""
    config = small_config(batch_size=200_000, steps=1)
    record = run_cell(config, timeout_s=120, memory_limit_bytes=256 * 2**20)
    assert record["status"] == "oom", record["status_detail"]
    assert record["memory"]["host_rss_peak_bytes"] is not None


def _wait_for_steps(cell, n):
    for _ in range(n):
        cell.step()


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_killed_worker_ends_the_cell_as_crashed(world_size):
    with CellWorkers(small_config("gpt", world_size=world_size, steps=50), timeout_s=120) as cell:
        cell.start()
        cell.warmup()
        _wait_for_steps(cell, 2)
        os.kill(cell.pids[-1], signal.SIGKILL)
        with pytest.raises(CellFailed) as info:
            _wait_for_steps(cell, 10)
        record = cell.record_for(info.value)
    assert record["status"] == "crashed"
    assert f"rank {world_size - 1} was killed by SIGKILL" in record["status_detail"]
    assert check_record(record) == []


def test_a_hung_worker_ends_the_cell_as_timeout(monkeypatch):
    from trainkit.engine.cell import launch

    with CellWorkers(small_config(steps=50), timeout_s=60) as cell:
        cell.start()
        cell.warmup()
        os.kill(cell.pids[0], signal.SIGSTOP)  # a real hang: the worker stops answering
        # An injected clock: the cell's 60 s pass at once, so neither the wait nor a busy machine's
        # slow start can decide the outcome (a stopped worker never answers; only the deadline ends it).
        real = time.monotonic
        monkeypatch.setattr(launch, "time", types.SimpleNamespace(monotonic=lambda: real() + 61,
                                                                  perf_counter=time.perf_counter))
        with pytest.raises(CellFailed) as info:
            cell.step()
        record = cell.record_for(info.value)
    assert record["status"] == "timeout" and "cell timeout of 60 s" in record["status_detail"]
    assert "during step 1" in record["status_detail"]


def test_cells_are_isolated_processes():
    first = run_cell(small_config(steps=1), timeout_s=120)
    second = run_cell(small_config(steps=1), timeout_s=120)
    assert set(first["worker_pids"]).isdisjoint(second["worker_pids"])
    assert first["loss"]["curve"] == second["loss"]["curve"]


def test_the_fixed_cost_of_a_cell_is_small_once_the_fork_server_runs():
    run_cell(small_config(steps=1), timeout_s=120)  # starts the fork server if needed
    # One intra-op thread: waiting threads spin, and on a loaded host two threads' spinning doubled
    # the worker's CPU time.
    record = run_cell(small_config(steps=1, cpu_threads=1), timeout_s=120)
    # On the worker's own CPU clock (from its fork; a busy neighbour cannot inflate it): all its work,
    # the one step included, costs less than a fresh interpreter spends importing torch (1.6 s here).
    assert 0 < record["cpu_time_s"] < 1.0
    assert record["fixed_cost_s"]["spawn_to_ready_s"] > 0


def test_the_same_cell_runs_under_torchrun_and_rank_0_writes_the_record(tmp_path):
    """torchrun's environment contract (what multi-node runs use): no launcher, the ranks gather
    their partial results on rank 0, and the record equals the launcher's for the same cell."""
    import json
    import subprocess
    import sys

    from trainkit.engine.cell.launch import _free_port

    from .conftest import REPO

    out = tmp_path / "torchrun.json"
    args = ["--model", "mlp", "--world-size", "2", "--batch-size", "8", "--steps", "3", "--warmup-steps", "1",
            "--device", "cpu", "--quiet", "--phase-steps", "0"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "-m", "trainkit", "run", *args, "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["ranks_reported"] == 2
    assert record["config"]["distributed_backend"] == "gloo"
    launched = run_cell(small_config(world_size=2, steps=3, warmup_steps=1), timeout_s=120)
    assert record["loss"]["curve"] == launched["loss"]["curve"]


# --- what a timed step holds, and what it never does ---------------------------------------------

def _slow_checkpoints(monkeypatch, seconds=0.5):
    from trainkit.engine.train.loop import Trainer

    original = Trainer.save_checkpoint

    def slow(self):
        time.sleep(seconds)
        return original(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", slow)


def test_checkpoint_writes_are_never_step_time(tmp_path, monkeypatch):
    """A checkpoint written after every step, made 0.5 s slower: the timed steps, as one window and
    as bench rounds, stay the size of a step (the writes fall between them) and the files exist."""
    from trainkit.engine.cell.worker import RankWorker

    _slow_checkpoints(monkeypatch)
    config = small_config(steps=4, warmup_steps=1, checkpoint_every=1, checkpoint_dir=str(tmp_path / "window"))
    window = RankWorker(config)
    window.warmup()
    times = window.run_timed()
    rounds = RankWorker(config.replace(checkpoint_dir=str(tmp_path / "rounds")))
    rounds.warmup()
    times += [rounds.step() for _ in range(config.steps)]
    assert len(times) == 8 and max(times) < 0.5, times  # a step of this MLP takes milliseconds
    for kind in ("window", "rounds"):
        assert sorted(os.listdir(tmp_path / kind)) == [f"step{s:08d}.pt" for s in range(1, 6)]


def test_a_memory_limit_is_refused_for_a_gpu_cell(monkeypatch):
    """RLIMIT_AS caps address space, which CUDA reserves far beyond memory: on a GPU the cap would fail
    every cell, so the rank refuses it before touching the GPU."""
    import multiprocessing

    import torch

    from trainkit.engine.cell import worker
    from trainkit.engine.cell.protocol import Reply

    monkeypatch.setattr(worker, "select_device", lambda config, local_rank: torch.device("cuda", 0))
    monkeypatch.setattr(worker, "limit_host_memory", lambda extra: pytest.fail("the cap was applied"))
    parent, child = multiprocessing.Pipe()
    worker.serve(small_config(), 0, 0, 1, child, dict(os.environ), memory_limit_bytes=2**30)
    kind, (status, detail, _) = parent.recv()
    assert kind is Reply.FAILED and status == "unsupported" and "RLIMIT_AS" in detail


def test_the_cell_peaks_are_the_timed_steps_with_warmups_beside_them(monkeypatch):
    """The allocator's peaks are reset after the model and data are built and again when the timed
    steps begin: the record's peaks are the timed steps', the warmup's (which allocates the
    optimizer's state) stand beside them, and data generation counts in neither."""
    from trainkit.engine.cell import worker as worker_module
    from trainkit.engine.cell.record import merge_ranks

    events = []
    monkeypatch.setattr(worker_module, "reset_peaks", lambda device: events.append(("reset", trainer_step())))
    readings = iter([(1000, 2000), (300, 400)])
    monkeypatch.setattr(worker_module, "torch_memory",
                        lambda device: events.append(("read", trainer_step())) or next(readings))
    config = small_config(steps=3, warmup_steps=2)
    rank = worker_module.RankWorker(config)

    def trainer_step():
        return rank.trainer.step if hasattr(rank, "trainer") else None

    rank.warmup()
    rank.run_timed()
    memory = merge_ranks(config, [rank.collect()])["memory"]
    assert events == [("reset", 0), ("read", 2), ("reset", 2), ("read", 5)]
    assert (memory["torch_warmup_max_allocated_bytes"], memory["torch_warmup_max_reserved_bytes"]) == (1000, 2000)
    assert (memory["torch_max_allocated_bytes"], memory["torch_max_reserved_bytes"]) == (300, 400)


def test_the_nvml_context_baseline_is_read_before_nccl_starts(monkeypatch):
    """NCCL's buffers are not the CUDA context: the baseline is read right after the context exists,
    before the process group (a counter of what the code does, with CUDA and NCCL stood in)."""
    import types

    import torch

    from trainkit.engine.cell import worker as worker_module

    order = []

    class FakeNvml:
        def process_used_bytes(self, pids):
            order.append("baseline")
            return 500 * 2**20

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(worker_module.Nvml, "open", classmethod(lambda cls, device=None, **kw: FakeNvml()))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(uuid="GPU-0"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(worker_module.torch, "zeros", lambda *a, **k: order.append("context"))
    monkeypatch.setattr(worker_module.dist, "init_process_group", lambda *a, **k: order.append("nccl"))
    monkeypatch.setattr(worker_module, "Trainer", stop)
    with pytest.raises(Stop):
        worker_module.RankWorker(small_config(world_size=2), device=torch.device("cuda", 0))
    assert order == ["context", "baseline", "nccl"]


def test_a_cpu_cell_records_its_own_rss_growth_beside_the_inherited_pages():
    record = run_cell(small_config(batch_size=512, steps=2), timeout_s=120)
    memory = record["memory"]
    assert memory["host_rss_baseline_bytes"] > 100 * 2**20  # torch, inherited from the fork server
    assert memory["host_rss_growth_bytes"] == memory["host_rss_peak_bytes"] - memory["host_rss_baseline_bytes"]
    assert 0 < memory["host_rss_growth_bytes"] < memory["host_rss_baseline_bytes"]


# --- an allocator backend, which torch reads once, at import ------------------------------------

ASYNC = "backend:cudaMallocAsync"


@pytest.mark.slow
def test_a_cell_that_picks_an_allocator_backend_gets_it_from_a_fresh_interpreter(monkeypatch):
    """torch picks its CUDA allocator backend when it is imported (no GPU needed to ask which): the
    fork server imported torch long before, so such a cell's ranks start fresh, the setting in their
    environment from their first instruction, and the record shows the backend in effect."""
    import torch

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    if not hasattr(torch._C, "_cuda_getAllocatorBackend"):
        pytest.skip("this torch has no CUDA allocator to choose")
    config = small_config(steps=2, warmup_steps=1, world_size=2, alloc_conf=ASYNC)
    with CellWorkers(config, timeout_s=180) as cell:
        cell.start()
        environments = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in cell.pids]
        cell.warmup()
        cell.run_timed()
        record = cell.finish()
    assert all(f"PYTORCH_CUDA_ALLOC_CONF={ASYNC}".encode() in env for env in environments)  # set at exec
    assert record["status"] == "ok" and record["memory"]["allocator"]["backend_in_effect"] == "cudaMallocAsync"
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ  # the launcher's own environment is as it was
    plain = run_cell(small_config(steps=1), timeout_s=120)  # other cells: the fork server, the default
    assert plain["memory"]["allocator"]["backend_in_effect"] == "native"


def test_a_backend_that_cannot_take_effect_is_refused_in_one_line(monkeypatch):
    """A rank started by torchrun imported torch before it read its config: it refuses the cell
    (unsupported) and says how to give the setting, instead of running on the wrong allocator."""
    import torch

    from trainkit.engine.cell import allocator
    from trainkit.engine.train.precision import Unsupported

    if allocator.backend_in_effect() != "native":
        pytest.skip("needs a torch with CUDA, imported without a backend setting")
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Unsupported) as refused:
        allocator.set_alloc_conf(ASYNC)
    assert str(refused.value) == (f"alloc_conf={ASYNC!r}: backend cudaMallocAsync cannot take effect in this process: "
                                  "torch chose its CUDA allocator (native) when it was imported; start the process "
                                  f"with PYTORCH_CUDA_ALLOC_CONF={ASYNC} in its environment (trainkit's launcher does)")
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    allocator.set_alloc_conf("backend:native,expandable_segments:True")  # the backend it has: accepted
    assert torch.cuda.get_allocator_backend() == "native"


# --- a CPU cell's address-space cap is relative to what the worker holds before the model ----------

def _runtime_growth(queue, start_first: bool) -> None:  # runs in a fork server's process
    """Address space a first parallel operation and a first sgemm add, after the pool is started
    (start_cpu_threads) or only sized (set_num_threads, the planted fault); and MKL's cache setting."""
    import ctypes

    import torch

    from trainkit.engine.cell.worker import PARALLEL_ELEMENTS, start_cpu_threads
    from trainkit.engine.measure.memory import host_vm_now_bytes

    config = small_config(cpu_threads=2)
    if start_first:
        start_cpu_threads(config, 1)
    else:
        torch.set_num_threads(2)
    before = host_vm_now_bytes()
    torch.zeros(4 * PARALLEL_ELEMENTS).add_(1)
    pool_bytes = host_vm_now_bytes() - before
    try:
        mkl = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        mkl_cache_off = mkl.mkl_serv_get_fast_mm_status() == 1
    except (OSError, AttributeError):
        mkl_cache_off = None  # torch without MKL
    queue.put((pool_bytes, mkl_cache_off, os.environ.get("MALLOC_ARENA_MAX")))


def _in_a_rank_process(start_first: bool):
    from trainkit.engine.cell.launch import _fork_server

    ctx = _fork_server()
    queue = ctx.Queue()
    process = ctx.Process(target=_runtime_growth, args=(queue, start_first))
    process.start()
    try:
        return queue.get(timeout=120)
    finally:
        process.join(timeout=30)


def test_a_rank_starts_its_thread_pool_and_libraries_before_the_cap():
    """The pool's thread stacks (8 MiB of address space each) exist before the baseline and the cap,
    so a first parallel operation adds none; the planted fault (the count set, the pool not started)
    adds a stack. Ranks start with MKL's buffer cache off and one malloc arena (RANK_LIBRARY_ENV)."""
    started_growth, mkl_cache_off, arenas = _in_a_rank_process(start_first=True)
    assert started_growth < 2**20
    assert mkl_cache_off in (True, None) and arenas == "1"
    planted_growth, _, _ = _in_a_rank_process(start_first=False)
    assert planted_growth >= 4 * 2**20, planted_growth
