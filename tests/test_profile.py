"""Profiling: where a cell's time goes, without changing the figures it sits beside."""

import itertools
import json
import os
import sys
import time
import types

import pytest
import torch

from trainkit.engine.cell import worker as worker_module
from trainkit.engine.cell.launch import run_cell
from trainkit.engine.cell.profile import PHASES, memory_snapshot, phase_breakdown, torch_trace
from trainkit.engine.cell.record import merge_ranks
from trainkit.engine.cell.worker import RankWorker
from trainkit.engine.measure.nvml import GpuSampler, Nvml
from trainkit.engine.measure.timing import Marks
from trainkit.engine.spec.config import ConfigError, ProfileConfig
from trainkit.engine.train.loop import Trainer

from .conftest import CPU, small_config
from .test_measure import fake_pynvml


def test_phases_add_up_to_the_step_they_split():
    """Timed from outside, the same steps take what their phases add up to (within 10%): the marks'
    own clock, read around the step (process CPU time would count torch's idle worker threads). The
    phases never exceed the clock around them; a neighbour that preempts this thread between the
    outer clock and the first mark only ever widens the gap, so the closest of 5 steps is judged."""
    clock = time.perf_counter
    trainer = Trainer(small_config("gpt", grad_accum=3, batch_size=16, steps=20), CPU)
    trainer.run(2)
    gaps = []
    for _ in range(5):
        marks = Marks(CPU)
        started = clock()
        marks.mark("start")
        trainer.train_step(marks)
        outside = clock() - started
        phases = marks.totals_s(PHASES)
        assert set(phases) == set(PHASES) and all(v >= 0 for v in phases.values())
        assert sum(phases.values()) <= outside
        assert phases["forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0
        gaps.append((outside - sum(phases.values())) / outside)
    assert min(gaps) <= 0.10, gaps


def test_the_phase_breakdown_of_a_cell_matches_its_timed_steps():
    # The cell's own pass, as the record carries it: its method and its arithmetic.
    record = run_cell(small_config("gpt", batch_size=32, steps=6, warmup_steps=1),
                      timeout_s=120, profile=ProfileConfig(phase_steps=3))
    profile = record["profile"]
    assert profile["phase_method"] == "synchronised clock" and profile["phase_steps"] == 3
    assert profile["phase_total_s"] == pytest.approx(sum(profile["phases_s"].values()))
    assert profile["data_bound"] is False and profile["data_share"] < 0.2  # synthetic data is on the device
    # The phases of a step add up to a whole step taken right beside it (within 10%): the same pass
    # over the same clock, run here on this process's CPU time so a busy neighbour cannot move it.
    # One intra-op thread: a waiting thread spins, and its spinning on a loaded host is CPU time too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(small_config("gpt", batch_size=32, steps=40), CPU)
        trainer.run(2)
        # This process's CPU time: a neighbour's load steals wall time, not this process's CPU time.
        breakdown = phase_breakdown(trainer, 15, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    assert breakdown["phase_total_s"] == pytest.approx(breakdown["step_s"], rel=0.10)


def test_a_slow_data_pipeline_is_flagged_as_data_bound():
    trainer = Trainer(small_config(steps=10), CPU)
    windows = trainer.windows

    def slow_windows():
        for window in windows:
            time.sleep(0.1)  # a data loader that cannot keep up
            yield window

    trainer.windows = slow_windows()
    result = phase_breakdown(trainer, 3)
    # The sleep lands in the data phase whatever the host's speed; a step of this tiny model would
    # need 0.4 s of compute (100x its quiet time) to fall under the 20 % share that flags it.
    assert result["phases_s"]["data"] >= 0.1
    assert result["data_bound"] is True and result["data_share"] > 0.2


@pytest.mark.parametrize(("precision", "reduced"), [("fp32", False), ("amp-bf16", True), ("half-bf16", True)])
def test_the_trace_loads_and_holds_the_models_operators(tmp_path, precision, reduced):
    trainer = Trainer(small_config("gpt", precision=precision, steps=4), CPU)
    trainer.run(2)
    result = torch_trace(trainer, 2, str(tmp_path / "t" / "trace.json"))
    with open(result["trace_file"]) as f:
        trace = json.load(f)
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"aten::mm", "aten::native_layer_norm"} <= names
    assert any("scaled_dot_product" in name for name in names if name)
    assert result["top_ops"] and result["top_ops"][0]["self_time_s"] >= result["top_ops"][-1]["self_time_s"]
    share = result["reduced_precision_share"]
    assert (share > 0) if reduced else share == 0.0
    # The share's size is judged by operator count, which a busy host cannot move: the time share
    # is wall time on a CPU, and one preempted fp32 operator of a 2-step trace of a tiny model can
    # outweigh the rest (0.93 for half-bf16 quiet, under 0.3 once with a core kept busy).
    aten = [e for e in trace["traceEvents"] if str(e.get("name", "")).startswith("aten::")]
    halves = [e for e in aten if {"c10::BFloat16", "c10::Half"} & set((e.get("args") or {}).get("Input type", []))]
    assert (len(halves) / len(aten) > 0.3) if reduced else halves == []


def test_profiling_never_changes_the_figures_beside_it(tmp_path, monkeypatch):
    """The same cell with and without every profiling pass: the same loss curve, epoch means, eval
    loss and timed steps, to the bit. The passes run after the timed steps were read (shown where
    they start: every timed step read, no mark of the step timer pending), and on a clock that ticks
    once a read the step times too are equal to the bit, which a pass inside the timed window would
    break by adding reads (the host's speed is never compared: a wall-time assertion would be). In
    epoch mode, whose last window of an epoch is short, so the epoch means' sample weights matter."""
    # 112 samples, batch 8 x accumulation 4: windows of 32, 32, 32 and 16 samples per epoch.
    config = small_config("gpt", epochs=4, dataset_size=112, batch_size=8, grad_accum=4, warmup_steps=4)
    original, seen = worker_module.profile_cell, []

    def watched(trainer, profile, rank):
        worker = seen[-1]["worker"]
        seen[-1].update(timed=len(worker.report.timing.step_times_s), pending=list(worker.timer.marks),
                        step=trainer.step)
        return original(trainer, profile, rank)

    monkeypatch.setattr(worker_module, "profile_cell", watched)
    records = {}
    for name, profile in (("plain", ProfileConfig(phase_steps=0)),
                          ("profiled", ProfileConfig(phase_steps=3, trace_steps=2, output_dir=str(tmp_path)))):
        worker = RankWorker(config, profile=profile)
        worker.timer.clock = lambda ticks=itertools.count(): next(ticks) / 1000  # the step timer's clock
        seen.append({"name": name, "worker": worker})
        worker.warmup()
        worker.run_timed()
        records[name] = merge_ranks(config, [worker.collect()])
    plain, profiled = records["plain"], records["profiled"]
    assert plain["profile"] == {} and profiled["profile"]["trace_file"].startswith(str(tmp_path))
    assert profiled["profile"]["phases_s"] and "error" not in profiled["profile"]
    # The passes start after all 4 warmup and 12 timed steps (and the steps the figures before them
    # take), every timed step read.
    assert [(s["name"], s["timed"], s["pending"], s["step"] >= 16) for s in seen] == [
        ("plain", 12, [], True), ("profiled", 12, [], True)]
    curve, weights = plain["loss"]["curve"], [32, 32, 32, 16]
    expected = [sum(c * w for c, w in zip(curve[e * 4:e * 4 + 4], weights)) / 112 for e in range(4)]
    assert plain["loss"]["epoch_means"] == pytest.approx(expected)
    assert profiled["loss"] == plain["loss"] and plain["loss"]["eval"] is not None
    assert profiled["step_time_s"] == plain["step_time_s"] and plain["step_time_s"]["n"] == 12
    timed = ("step_time_s", "throughput_samples_per_s", "effective_throughput_samples_per_s", "tokens_per_s",
             "timed_samples")
    assert {k: profiled[k] for k in timed} == {k: plain[k] for k in timed}


def test_the_cli_writes_the_trace_beside_the_record(tmp_path, monkeypatch):
    from trainkit.commands.cli import main

    out = tmp_path / "r.json"
    assert main(["run", "--model", "mlp", "--steps", "3", "--batch-size", "8", "--device", "cpu", "--profile",
                 "--memory-snapshot", "-q", "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    trace = tmp_path / "r.json.profile" / "mlp-fp32-bs8-ga1-gpus1" / "rank0.trace.json"
    assert record["profile"]["trace_file"] == str(trace) and trace.exists()
    monkeypatch.chdir(tmp_path)  # a relative --output: the record still names the trace by its absolute path
    assert main(["run", "--model", "mlp", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--profile",
                 "--phase-steps", "0", "-q", "-o", "rel.json"]) == 0
    relative = json.loads((tmp_path / "rel.json").read_text())["profile"]["trace_file"]
    assert os.path.isabs(relative) and os.path.exists(relative)
    assert record["profile"]["memory_snapshot_file"] is None
    assert record["profile"]["memory_snapshot_note"] == "allocator snapshots need a CUDA device"


def test_the_memory_snapshot_records_bounded_python_stacks_around_its_steps_only(monkeypatch, tmp_path):
    """The CUDA path, exercised on the CPU: the allocator calls are stood in for and observed."""
    calls = []
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                        lambda enabled="all", **kw: calls.append(("record", enabled, kw)))
    monkeypatch.setattr(torch.cuda.memory, "_dump_snapshot", lambda path: calls.append(("dump", path)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync",)))
    fake = types.SimpleNamespace(device=torch.device("cuda", 0), train_step=lambda: calls.append(("step",)))
    result = memory_snapshot(fake, 2, str(tmp_path / "m.pickle"), max_entries=5000)
    assert calls == [("record", "all", {"max_entries": 5000, "stacks": "python"}), ("step",), ("step",), ("sync",),
                     ("dump", str(tmp_path / "m.pickle")), ("record", None, {})]
    assert result["memory_snapshot_file"] == str(tmp_path / "m.pickle")


def test_profile_config_validation():
    with pytest.raises(ConfigError, match="phase_steps=-1"):
        ProfileConfig(phase_steps=-1)
    with pytest.raises(ConfigError, match="need output_dir"):
        ProfileConfig(trace_steps=2)


# --- NVML sampling from the launcher, exercised through the stand-in NVML -------------------------

def _sampler(monkeypatch, **kwargs):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(**kwargs))
    return GpuSampler([Nvml.open(uuid="GPU-0"), Nvml.open(uuid="GPU-1")], interval_s=0.01)


def test_the_sampler_summarises_clocks_power_and_throttling(monkeypatch):
    sampler = _sampler(monkeypatch)
    for _ in range(5):
        sampler.maybe_sample()
        time.sleep(0.012)
    summary = sampler.summary()
    assert summary["samples"] == 10  # 5 rounds x 2 GPUs
    assert summary["sm_clock_mhz"] == {"min": 1980, "median": 1980, "max": 1980}
    assert summary["power_w_mean"] == 350.0 and summary["temperature_c_max"] == 61
    assert summary["throttle_reasons"] == ["HwThermalSlowdown", "SwPowerCap"] and summary["throttled"] is True


def test_the_sampler_integrates_power_over_its_windows_when_the_energy_counter_is_missing(monkeypatch):
    sampler = _sampler(monkeypatch)
    sampler.samples = [{"gpu": g, "t_s": t, "power_w": 100.0 * (g + 1), "sm_clock_mhz": None,
                        "temperature_c": None, "throttle_reasons": None} for t in (0.0, 0.5, 1.5, 9.0) for g in (0, 1)]
    sampler.windows = [(0.0, 1.5)]  # the sample at 9 s lies between windows: idle, never counted
    assert sampler.energy_j() == (pytest.approx(1.5 * 100 + 1.5 * 200), 1.5)
    sampler.windows = [(0.0, 0.5)]  # 0.5 s: too short to trust
    assert sampler.energy_j() == (None, 0.0)


def test_no_nvml_no_samples():
    sampler = GpuSampler([])
    sampler.maybe_sample()
    assert sampler.summary() is None and sampler.due_in_s() is None and sampler.energy_j() == (None, 0.0)
