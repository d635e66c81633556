"""The benchmark matrix: `pytest bench --benchmark-only`, run for real, in this process (pytest.main)
or, where a test signals the run or changes the registry of axes, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import psutil
import pytest

from trainkit.bench.matrix import AXIS_OPTIONS, build_matrix, skip_reason
from trainkit.engine.cell.record import RECORD_KEYS, check_record, read_jsonl
from trainkit.engine.spec.presets import NIGHTLY, preset
from trainkit.engine.spec.schema import CutOffLineWarning
from trainkit.engine.train.hardware import Hardware

from .conftest import REPO, inprocess_pytest

CPU_HW = Hardware("cpu", cpu_count=2)


def bench_cmd(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "-p", "no:randomly",
            "--report-dir", str(tmp_path / "out"), "--results-file", str(tmp_path / "results.jsonl"), *args]


def run_bench(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pytest bench/test_train.py --benchmark-only ...` in a fresh interpreter."""
    return subprocess.run(bench_cmd(tmp_path, *args), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def run_bench_here(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The same run as run_bench, in this process (conftest.inprocess_pytest): its cells still run in
    worker processes of their own, and it saves a fresh interpreter's import of torch."""
    return inprocess_pytest(bench_cmd(tmp_path, *args)[3:])  # the arguments after `python -m pytest`


def records(tmp_path: Path) -> dict[str, dict]:
    return {r["cell_id"] + (f"-rep{r['repeat']}" if r.get("repeat") else ""): r
            for r in read_jsonl(str(tmp_path / "results.jsonl"))}


# --- the matrix, as pure functions ----------------------------------------------------------

def test_quick_preset_covers_what_it_promises_on_a_cpu():
    quick = preset("quick", on_gpu=False)
    cells = build_matrix(quick, CPU_HW, {}, quick.steps, quick.warmup_steps)
    runnable = [c for c in cells if not c.skip_reason]
    assert {c.precision for c in runnable} == {"fp32", "amp-fp16", "amp-bf16", "half-fp16", "half-bf16",
                                               "half-fp16-master", "half-bf16-master", "half-bf16-sr",
                                               "half-bf16-kahan"}
    assert {c.grad_accum for c in runnable} >= {1, 4} and {c.gpus for c in runnable} == {1, 2}
    assert len({c.model for c in runnable}) >= 2
    assert {c.skip_reason for c in cells if c.precision == "tf32"} == {
        "tf32 needs a CUDA GPU with compute capability >= 8.0"}


def test_repeats_run_in_rounds_every_cell_once_then_every_cell_again():
    cells = build_matrix(preset("tiny", on_gpu=False), CPU_HW, {"model": ("mlp",), "precision": ("fp32", "amp-bf16"),
                                                               "grad_accum": (1,), "gpus": (1,)}, 2, 1, repeats=3)
    ids = [c.id for c in cells]
    once = [c.id for c in cells if c.repeat == 0]
    assert len(once) >= 2 and ids == [*once, *(f"{i}-rep1" for i in once), *(f"{i}-rep2" for i in once)]
    assert [c.repeat for c in cells] == sorted(c.repeat for c in cells)  # ABAB, never AABB


def test_overrides_replace_axes_and_ids_are_readable():
    cells = build_matrix(preset("quick", on_gpu=False), CPU_HW,
                         {"model": ("resnet50",), "precision": ("amp-fp16", "fp32"), "batch_size": (256,),
                          "grad_accum": (4,), "gpus": (2,)}, steps=3, warmup_steps=1)
    # quick's compiled and checkpointed blocks keep those axes, like every axis not given (the ids say so).
    assert [c.id for c in cells] == ["resnet50-amp-fp16-bs256-ga4-gpus2", "resnet50-fp32-bs256-ga4-gpus2",
                                     "resnet50-amp-fp16-bs256-ga4-gpus2-compiled",
                                     "resnet50-fp32-bs256-ga4-gpus2-compiled",
                                     "resnet50-amp-fp16-bs256-ga4-gpus2-ac", "resnet50-fp32-bs256-ga4-gpus2-ac"]
    assert cells[0].skip_reason.startswith("fp16 convolutions on the CPU")
    assert cells[1].skip_reason is None and cells[1].config.image_size == 32  # CPU-sized ResNet


@pytest.mark.parametrize(("model", "precision", "gpus", "hw", "reason"), [
    ("gpt", "amp-bf16", 1, Hardware("cuda", 1, (7, 0), "Tesla V100"), "compute capability >= 8.0 (Tesla V100 is 7.0)"),
    ("gpt", "tf32", 1, Hardware("cuda", 1, (7, 5), "Tesla T4"), "tf32 needs compute capability >= 8.0"),
    ("gpt", "fp32", 4, Hardware("cuda", 2, (9, 0), "H100"), "needs 4 GPUs, 2 visible"),
    ("gpt", "amp-bf16", 2, Hardware("cuda", 8, (9, 0), "H100"), None),
    ("resnet18", "half-fp16", 1, CPU_HW, "fp16 convolutions on the CPU"),
    ("mlp", "half-fp16", 1, CPU_HW, None),
    ("mlp", "fp32", 4, CPU_HW, "needs 4 CPU ranks, 2 cores"),
])
def test_skip_reasons(model, precision, gpus, hw, reason):
    got = skip_reason(model, precision, gpus, hw)
    assert got == reason if reason is None else reason in got


def test_the_nightly_preset_is_skipped_on_a_cpu_with_a_reason():
    cells = build_matrix(NIGHTLY, CPU_HW, {}, 2, 1)
    assert cells and all("GPU matrix" in c.skip_reason for c in cells)


@pytest.mark.parametrize(("axis", "text", "message"), [
    # --model takes workload specs too: its parse checks the form, and resolving follows (below).
    ("model", "mlp,my model", "invalid model: 'my model' (a built-in: mlp, cnn, resnet18, resnet50, gpt; or a"),
    ("batch_size", "1,two", "'two' is not an integer"),
    ("gpus", "0", "'0' must be >= 1"),
    ("grad_accum", ",", "empty list"),
])
def test_axis_lists_reject_unknown_values(axis, text, message):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        AXIS_OPTIONS[axis][1](text)


def test_axis_lists_keep_their_order_without_repeats():
    assert AXIS_OPTIONS["precision"][1]("amp-bf16, fp32,amp-bf16") == ("amp-bf16", "fp32")
    assert AXIS_OPTIONS["batch_size"][1]("64,16,64") == (64, 16)


# --- the suite, run for real ------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--model", "mlp,vit"], "--model 'vit' is not a built-in model (mlp, cnn, resnet18, resnet50, gpt), an installed "
                             "plugin (none), an adapter (hf:..., timm:...) nor an importable module"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8' (choose from fp32, tf32, amp-fp16"),
    (["--batch-size", "big"], "argument --batch-size: 'big' is not an integer"),
    (["--gpus", "0"], "argument --gpus: '0' must be >= 1"),
    (["--steps", "0"], "argument --steps: '0' must be >= 1"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu' (choose from auto, cpu, cuda)"),
    (["--steps", "3", "--rounds", "5"], "ERROR: --rounds: 5 is more than the 3 timed steps per cell"),
])
def test_usage_errors_are_pytests_own(tmp_path, args, message):
    """Options are validated where they are parsed: pytest reports a bad value as its usage error
    (exit 4), naming the value and what is valid, before any cell runs and without a traceback."""
    proc = run_bench_here(tmp_path, *args)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and not (tmp_path / "results.jsonl").exists()


def test_collection_lists_cells_with_readable_ids_and_skip_reasons(tmp_path):
    proc = run_bench_here(tmp_path, "--collect-only", "-q", "--preset", "quick", "--model", "gpt", "--gpus", "1",
                          "--grad-accum", "4")
    assert proc.returncode == 0, proc.stderr
    assert "bench/test_train.py::test_train[gpt-amp-bf16-bs32-ga4-gpus1]" in proc.stdout
    assert "bench/test_train.py::test_train[gpt-tf32-bs32-ga4-gpus1]" in proc.stdout  # collected, then skipped
    proc = run_bench_here(tmp_path, "-rs", "--preset", "quick", "--model", "cnn", "--precision", "amp-fp16,tf32",
                          "--no-report")
    assert "fp16 convolutions on the CPU are ~100x slower" in proc.stdout
    assert "tf32 needs a CUDA GPU" in proc.stdout
    assert all(r["status"] == "unsupported" for r in records(tmp_path).values())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run of the tiny preset with 1 and 2 ranks, 2 precisions and 2 repeats (8 cells, at
    accumulation 1 only: the tests below read ranks, precisions and repeats, never accumulation), JSON
    saved with the raw data. No report: none is read here (tests/test_reports_bench.py reads one)."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    proc = run_bench_here(tmp_path, "--preset", "tiny", "--gpus", "1,2", "--precision", "fp32,amp-bf16",
                          "--model", "mlp", "--grad-accum", "1", "--steps", "6", "--rounds", "4", "--warmup-steps", "2",
                          "--repeats", "2", "--no-report", "--benchmark-json", str(tmp_path / "bench.json"),
                          "--benchmark-save-data", "--benchmark-group-by", "param:precision")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, proc, json.loads((tmp_path / "bench.json").read_text())


def test_the_json_holds_a_record_for_every_timed_cell(tiny_run):
    tmp_path, _, data = tiny_run
    names = {b["name"] for b in data["benchmarks"]}
    expected = {f"test_train[mlp-{p}-bs16-ga1-gpus{g}{rep}]" for p in ("fp32", "amp-bf16") for g in (1, 2)
                for rep in ("", "-rep1")}
    assert names == expected
    for bench in data["benchmarks"]:
        record = bench["extra_info"]
        assert check_record(record) == [] and set(RECORD_KEYS) <= set(record)
        assert record["status"] == "ok" and bench["params"]["precision"] == record["config"]["precision"]
        assert bench["stats"]["rounds"] == 4 and record["step_time_s"]["n"] == 6
    assert data["machine_info"]["trainkit_fingerprint"]["torch"].startswith("2.")
    assert data["machine_info"]["trainkit_env"]["git_commit"]
    assert len(records(tmp_path)) == len(expected)  # the results file has every cell too


def test_benchmarks_time_the_steps_the_worker_timed_never_the_warmup(tiny_run):
    """pytest-benchmark's rounds are exactly the first timed steps of the record, which come after
    the warmup steps; the pipe round trip to the worker is not in them."""
    _, _, data = tiny_run
    for bench in data["benchmarks"]:
        record = bench["extra_info"]
        assert bench["stats"]["data"] == pytest.approx(record["step_time_s"]["values"][:4], rel=1e-12)
        assert len(record["loss"]["curve"]) == 2 + 6  # warmup steps ran, untimed
        assert record["warmup_time_s"] > 0
        measured, own = bench["stats"]["median"], sorted(record["step_time_s"]["values"][:4])
        assert abs(measured - (own[1] + own[2]) / 2) <= 0.05 * measured  # within 5% (here: equal)
        assert all(rt >= st for rt, st in zip(record["step_round_trip_s"], bench["stats"]["data"]))


def test_progress_counts_only_the_cells_k_selected(tmp_path):
    proc = run_bench_here(tmp_path, "--preset", "tiny", "--model", "mlp", "--precision", "fp32", "--gpus", "1",
                          "--steps", "2", "--warmup-steps", "1", "--no-report", "-k", "ga1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[cell 1/1] mlp-fp32-bs16-ga1-gpus1 (elapsed" in proc.stdout and "[cell 2/" not in proc.stdout


def test_each_cell_and_each_repeat_runs_in_its_own_processes(tiny_run):
    _, _, data = tiny_run
    pids = [tuple(b["extra_info"]["worker_pids"]) for b in data["benchmarks"]]
    assert len(set(pids)) == len(pids)
    assert {len(p) for p in pids} == {1, 2}


def test_progress_and_the_summary_table_are_shown(tiny_run):
    _, proc, _ = tiny_run
    assert "[cell 1/8] mlp-fp32-bs16-ga1-gpus1 (elapsed" in proc.stdout
    assert "[cell 8/8]" in proc.stdout and "left)" in proc.stdout
    assert "trainkit cells" in proc.stdout and "samples/s" in proc.stdout
    assert "benchmark 'precision=fp32': 4 tests" in proc.stdout  # --benchmark-group-by param:precision


def test_pytest_benchmark_compare_reads_the_json(tiny_run):
    tmp_path, _, _ = tiny_run
    cli = Path(sys.executable).with_name("pytest-benchmark")
    proc = subprocess.run([str(cli), "compare", str(tmp_path / "bench.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "test_train[mlp-fp32-bs16-ga1-gpus1]" in proc.stdout


def test_autosave_and_compare_keep_working(tmp_path):
    storage = f"file://{tmp_path / 'storage'}"
    common = ("--preset", "tiny", "--model", "mlp", "--precision", "fp32", "--grad-accum", "1", "--steps", "2",
              "--warmup-steps", "1", "--no-report", "--benchmark-storage", storage)
    assert run_bench_here(tmp_path, *common, "--benchmark-autosave").returncode == 0
    proc = run_bench_here(tmp_path, *common, "--benchmark-compare")
    assert proc.returncode == 0, proc.stderr
    assert "0001" in proc.stdout  # compared with the first saved run


def test_oom_and_divergence_end_their_cells_and_the_matrix_goes_on(tmp_path):
    """Real faults: a batch past the workers' address-space cap (its fp16 input alone is 1.5 GiB; a
    capped worker's malloc holds no spare address space, so 200000 samples fit in 0.5 GiB), and a
    learning rate fp16 cannot hold (fp32 stays finite at it)."""
    proc = run_bench_here(tmp_path, "--preset", "tiny", "--model", "mlp", "--precision", "half-fp16,fp32",
                          "--batch-size", "1000000,16", "--grad-accum", "1", "--lr", "30", "--steps", "3",
                          "--warmup-steps", "1", "--cell-memory-limit-gb", "0.5", "--no-report", "-rx")
    assert proc.returncode == 0, proc.stdout[-3000:]
    got = records(tmp_path)
    assert got["mlp-half-fp16-bs1000000-ga1-gpus1"]["status"] == "oom"
    assert got["mlp-half-fp16-bs16-ga1-gpus1"]["status"] == "diverged"
    assert got["mlp-half-fp16-bs16-ga1-gpus1"]["status_detail"].startswith("diverged@")
    assert got["mlp-fp32-bs1000000-ga1-gpus1"]["status"] == "oom"
    assert got["mlp-fp32-bs16-ga1-gpus1"]["status"] == "ok"  # the cell after the failures ran
    assert "cells that did not end ok" in proc.stdout and "XFAIL" in proc.stdout
    data_names = proc.stdout
    assert "3 xfailed" in data_names and "1 passed" in data_names


def test_strict_cells_turns_a_failed_cell_into_a_failure(tmp_path):
    proc = run_bench_here(tmp_path, "--preset", "tiny", "--model", "mlp", "--precision", "half-fp16",
                          "--grad-accum", "1", "--lr", "30", "--steps", "3", "--warmup-steps", "1", "--no-report",
                          "--strict-cells")
    assert proc.returncode == 1
    assert "cell mlp-half-fp16-bs16-ga1-gpus1 ended diverged" in proc.stdout


def _workers(bench: psutil.Process) -> list[psutil.Process]:
    """Cell workers: the children of the fork server, itself a child of the process running the matrix."""
    found = []
    for child in bench.children():
        try:
            if "forkserver" in " ".join(child.cmdline()):
                found += child.children()
        except psutil.NoSuchProcess:
            continue
    return found


def _signal(process: psutil.Process, signum: int) -> bool:
    try:
        process.send_signal(signum)
        return True
    except psutil.NoSuchProcess:  # it ended (a probe, or a cell that finished) before the signal
        return False


def _wait_for_new_worker(bench: psutil.Process, seen: set[int], deadline: float) -> psutil.Process:
    while time.monotonic() < deadline:
        for worker in _workers(bench):
            if worker.pid not in seen:
                return worker
        time.sleep(0.05)
    raise AssertionError("no new worker appeared")


def _kill_then_hang(bench: psutil.Process, seen: set[int], results: Path, done: list, ended: threading.Event) -> None:
    """SIGKILL the first cell's worker, then SIGSTOP the second's (a crash, then a real hang), each once
    it has reached its timed steps (`seen`: the fork server's children before the run, none of its
    cells); `done` gets the signalled pids, or the error that stopped this.
    Should the run not end (a hang the cell timeout missed), the hung worker is killed after 120 s:
    the test then fails on that cell's status instead of hanging the suite."""
    try:
        deadline = time.monotonic() + 120
        while not results.exists():  # created after the device probe has ended
            assert time.monotonic() < deadline, "the run made no results file"
            time.sleep(0.05)
        for signum in (signal.SIGKILL, signal.SIGSTOP):
            while True:
                worker = _wait_for_new_worker(bench, seen, deadline)
                seen.add(worker.pid)
                time.sleep(0.6)  # let it reach its timed steps (start ~0.3 s, a warmup step, then seconds of steps)
                if _signal(worker, signum):
                    done.append(worker.pid)
                    break
        if not ended.wait(120):
            _signal(worker, signal.SIGKILL)
    except BaseException as exc:  # said by the test, after the run
        done.append(exc)


def test_a_killed_worker_and_a_hung_worker_end_their_cells_and_the_matrix_goes_on(tmp_path):
    # The two cells signalled take a batch of 16,384 and 8,192 (60 and 30 ms a step here: 100 steps
    # outlive the signals by seconds, so each signal lands on its own cell's worker, in its timed
    # steps), the last one a batch of 16 (under 0.1 s of steps). The cell timeout is what the hung
    # cell waits out: 10 s, 20 times what the last cell takes on a quiet machine, so that cell still
    # ends ok well inside it under load. The run is this process's (its fork server's children are the
    # workers), signalled from a thread; no report, none is read here.
    done: list = []
    ended = threading.Event()
    here = psutil.Process()
    signaller = threading.Thread(target=_kill_then_hang, daemon=True,
                                 args=(here, {w.pid for w in _workers(here)}, tmp_path / "results.jsonl", done, ended))
    signaller.start()
    try:
        proc = run_bench_here(tmp_path, "--preset", "tiny", "--model", "mlp", "--precision", "fp32", "--grad-accum",
                              "1", "--batch-size", "16384,8192,16", "--steps", "100", "--rounds", "5",
                              "--warmup-steps", "1", "--cell-timeout", "10", "--no-report")
    finally:
        ended.set()
        signaller.join(timeout=10)
    assert len(done) == 2 and all(isinstance(pid, int) for pid in done), done
    got = records(tmp_path)
    assert got["mlp-fp32-bs16384-ga1-gpus1"]["status"] == "crashed", proc.stdout[-2000:]
    assert "killed by SIGKILL" in got["mlp-fp32-bs16384-ga1-gpus1"]["status_detail"]
    assert got["mlp-fp32-bs8192-ga1-gpus1"]["status"] == "timeout"
    assert got["mlp-fp32-bs8192-ga1-gpus1"]["status_detail"].startswith("no reply within the cell timeout of 10 s")
    assert got["mlp-fp32-bs16-ga1-gpus1"]["status"] == "ok", got["mlp-fp32-bs16-ga1-gpus1"]["status_detail"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


class _RanButItsRecordFails:
    """CellWorkers' stand-in: the cell's worker ran, and making its record raised (as merge_ranks did
    for 1,024 or more timed steps: a float overflow in the median's interval)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self) -> None:
        pass

    def warmup(self) -> float:
        return 0.1

    def step(self) -> float:
        return 0.01

    def run_timed(self) -> None:
        pass

    def finish(self):
        raise OverflowError(34, "Numerical result out of range")


class _Benchmark:
    """pytest-benchmark's fixture, as far as BenchSession uses it."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.has_error = False

    def pedantic(self, target, rounds, iterations, warmup_rounds) -> None:
        for _ in range(rounds):
            target()


def test_a_cell_whose_record_trainkit_fails_to_make_still_leaves_one_and_fails_its_test(tmp_path, monkeypatch):
    from trainkit.bench import runner

    monkeypatch.setattr(runner, "CellWorkers", _RanButItsRecordFails)
    results = tmp_path / "results.jsonl"
    options = runner.SessionOptions(rounds=2, cell_timeout_s=60, memory_limit_bytes=None, strict_cells=False,
                                    report_dir=str(tmp_path), results_file=str(results))
    session = runner.BenchSession(options, write=lambda text: None)
    cells = build_matrix(preset("tiny", on_gpu=False), CPU_HW, {"model": ("mlp",), "precision": ("fp32",),
                                                               "grad_accum": (1,), "gpus": (1,)}, 4, 1, repeats=2)
    cell = next(c for c in cells if c.repeat == 1)  # a cell of the second round
    with pytest.raises(OverflowError):  # the test of the cell fails with trainkit's own error
        session.run(cell, _Benchmark())
    (kept,) = read_jsonl(str(results))
    assert kept["cell_id"] == cell.config.cell_id and kept["round"] == kept["repeat"] == 1
    assert kept["status"] == "crashed" and check_record(kept) == []
    assert kept["status_detail"] == ("trainkit failed, not the cell: OverflowError: "
                                     "(34, 'Numerical result out of range')")
    assert session.failed() == [kept]


def test_a_run_killed_mid_matrix_keeps_its_finished_cells(tmp_path):
    cmd = bench_cmd(tmp_path, "--preset", "tiny", "--model", "mlp", "--precision", "fp32", "--grad-accum", "1,2,3,4",
                    "--steps", "400", "--rounds", "5", "--warmup-steps", "1")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results = tmp_path / "results.jsonl"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if results.exists() and len(results.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers included, at once
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # SIGKILL may land while a record is being appended: the complete ones are read, and a cut-off
    # last line is said (CutOffLineWarning), never silently dropped.
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", CutOffLineWarning)
        kept = read_jsonl(str(results))
    assert all(w.category is CutOffLineWarning and f"read the {len(kept)} complete" in str(w.message) for w in said)
    assert 2 <= len(kept) < 4
    assert all(r["status"] == "ok" and check_record(r) == [] for r in kept)


# --- an axis is one row of trainkit.engine.spec.axes ------------------------------------------------------------

def test_a_made_up_axis_is_one_row_and_everything_sees_it(monkeypatch):
    """The seed as an axis (tests/made_up_axis.py): the matrix crosses it, the ids, parameters and
    records carry it, the skip rule skips by it and the report's grouping tells its cells apart."""
    from trainkit.engine.cell.record import merge_ranks
    from trainkit.engine.spec import axes
    from trainkit.reports.load import to_frame

    from .made_up_axis import SEED_AXIS

    monkeypatch.setattr(axes, "AXES", (*axes.AXES, SEED_AXIS))
    assert AXIS_OPTIONS["seed"][0] == "--seed" and AXIS_OPTIONS["seed"][1]("0,13,0") == (0, 13)
    tiny = preset("tiny", on_gpu=False)
    cells = build_matrix(tiny, CPU_HW, {"model": ("mlp",), "grad_accum": (1,), "seed": (0, 13)}, 2, 1)
    assert [(c.id, c.skip_reason) for c in cells] == [
        ("mlp-fp32-bs16-ga1-gpus1", None), ("mlp-fp32-bs16-ga1-gpus1-seed13", "seed 13 is unlucky"),
        ("mlp-amp-bf16-bs16-ga1-gpus1", None), ("mlp-amp-bf16-bs16-ga1-gpus1-seed13", "seed 13 is unlucky")]
    assert cells[1].params["seed"] == 13 and cells[1].seed == 13 and cells[1].config.seed == 13
    records = [merge_ranks(c.config, [], "unsupported", c.skip_reason or "-") for c in cells]
    assert [r["cell_id"] for r in records] == [c.id for c in cells]
    frame = to_frame(records)
    assert list(frame["variant"]) == ["", "seed=13", "", "seed=13"] and list(frame["seed"]) == [0, 13, 0, 13]


def test_a_made_up_axis_reaches_the_options_and_parameters_of_the_real_suite(tmp_path):
    proc = run_bench(tmp_path, "-p", "tests.made_up_axis", "--preset", "tiny", "--model", "mlp", "--precision", "fp32",
                     "--grad-accum", "1", "--seed", "0,13", "--steps", "2", "--warmup-steps", "1", "--no-report",
                     "--benchmark-json", str(tmp_path / "bench.json"), "-rs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "seed 13 is unlucky" in proc.stdout
    (bench,) = json.loads((tmp_path / "bench.json").read_text())["benchmarks"]
    assert bench["name"] == "test_train[mlp-fp32-bs16-ga1-gpus1]" and bench["params"]["seed"] == 0
    got = records(tmp_path)
    assert got["mlp-fp32-bs16-ga1-gpus1"]["status"] == "ok"
    skipped = got["mlp-fp32-bs16-ga1-gpus1-seed13"]
    assert skipped["status"] == "unsupported" and skipped["config"]["seed"] == 13


def test_time_left_learns_each_kind_of_cell_and_never_guesses_a_compiled_one_from_eager_ones():
    from trainkit.engine.cell.launch import time_left

    eager, eager_bf16, eager_2 = (False, False, 1, "fp32"), (False, False, 1, "amp-bf16"), (False, False, 2, "fp32")
    compiled = (True, False, 1, "fp32")
    done = [(eager, 2.0), (eager, 4.0), (eager_bf16, 9.0)]
    # Each kind by its own median; a kind not seen by its nearest seen kind (2 ranks: the 1-rank fp32
    # and bf16 cells, median 4 s); compiled cells counted, not timed.
    assert time_left(done, [eager, eager_bf16, eager_2, compiled, compiled]) == (3.0 + 9.0 + 4.0, 2)
    # Once a compiled cell has run, the others take its time (a mean over every cell would say 12 s).
    assert time_left([*done, (compiled, 40.0)], [compiled, eager]) == (43.0, 0)
