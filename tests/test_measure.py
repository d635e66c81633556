"""Measurement pieces: timers, statistics, the merge of ranks, MFU and the optional NVML."""

import math
import os
import statistics
import sys
import time
import types
from fractions import Fraction

import pytest
import torch

from trainkit.engine.cell.record import LauncherReport, RankLoss, RankMemory, RankReport, RankTiming, merge_ranks
from trainkit.engine.measure.conditions import (
    CONFIDENCE,
    INTERPOLATION_MARGIN,
    HostSnapshot,
    condition_flags,
    host_window,
    median_order_weights,
    noise_of,
    other_gpu_pids,
)
from trainkit.engine.measure.flops import gpt_flops_per_token, mfu, peak_flops_per_s, training_flops_per_sample
from trainkit.engine.measure.nvml import Nvml
from trainkit.engine.measure.timing import Marks, summarize_s
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.workloads.models import build_builtin

from .conftest import CPU, small_config


def test_step_timer_is_contiguous_and_skips_paused_spans():
    timer = Marks(CPU)
    timer.mark()
    time.sleep(0.02)
    timer.mark()
    timer.pause()
    time.sleep(0.05)  # e.g. a checkpoint: not part of any step
    timer.mark()
    time.sleep(0.01)
    timer.mark()
    first, second = timer.read_s()
    assert 0.02 <= first < 0.04 and 0.01 <= second < 0.03
    assert timer.read_s() == []


def test_summary_statistics():
    stats = summarize_s([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (stats["median"], stats["min"], stats["max"], stats["mean"], stats["n"]) == (3.0, 1.0, 5.0, 3.0, 5)
    assert stats["iqr"] == 2.0
    assert summarize_s([])["median"] is None


def _report(rank, times, curve, memory, samples=(32, 32)):
    return RankReport(rank=rank, pid=100 + rank,
                      timing=RankTiming(step_times_s=times, timed_samples=list(samples),
                                        first_timed_step=len(curve) - len(times)),
                      loss=RankLoss(curve=curve, skipped=[False] * len(curve)), memory=RankMemory(**memory),
                      param_checksum=1.5, derived={"resolved_device": "cpu"}, env={})


def test_merge_takes_the_slowest_rank_the_max_memory_and_sums_the_loss_shares():
    config = RunConfig(batch_size=16, world_size=2)
    rank0 = _report(0, [0.10, 0.20], [1.0, 0.8, 0.6], {"host_rss_peak_bytes": 100, "torch_max_allocated_bytes": 7})
    rank1 = _report(1, [0.15, 0.10], [1.2, 0.9, 0.5], {"host_rss_peak_bytes": 300, "torch_max_allocated_bytes": 5})
    record = merge_ranks(config, [rank1, rank0])
    assert record["step_time_s"]["values"] == [0.15, 0.20]
    assert record["throughput_samples_per_s"] == pytest.approx(64 / 0.35)  # global, not per rank
    assert record["memory"]["host_rss_peak_bytes"] == 300  # max over ranks, never a sum
    assert record["memory"]["torch_max_allocated_bytes"] == 7
    assert record["loss"]["curve"] == pytest.approx([2.2, 1.7, 1.1])
    assert record["loss"]["final"] == pytest.approx(1.1)


def _conditions(load, threads, host="a", busy=0.5):
    return {"window_s": 1.0, "load_avg_1m_start": load, "load_avg_1m_end": load / 2, "cpu_busy_share": busy,
            "cpu_steal_share": 0.0, "cpu_pressure_share": 0.1, "torch_threads": threads, "interop_threads": 1,
            "usable_cores": 2, "host_cores": 4, "hostname": host}


def test_merge_keeps_the_worst_ranks_conditions_and_adds_up_the_threads_of_a_host():
    rank0, rank1 = _report(0, [0.1, 0.2], [1.0, 0.9], {}), _report(1, [0.1, 0.2], [1.0, 0.9], {})
    rank0.conditions, rank1.conditions = _conditions(1.5, 2, busy=0.9), _conditions(9.0, 2, busy=0.4)
    record = merge_ranks(RunConfig(world_size=2), [rank0, rank1])
    conditions = record["conditions"]
    assert conditions["load_avg_1m_start"] == 9.0 and conditions["cpu_busy_share"] == 0.9  # a peak is a max
    assert conditions["threads_on_busiest_host"] == 4 and conditions["usable_cores"] == 2
    assert conditions["gpu_other_processes"] is None and "CPU" in conditions["gpu_other_processes_note"]
    # 9 runnable on 4 cores beyond the cell's own 4 threads: others'; 5.0 could be the cell's own.
    assert condition_flags(conditions) == ["host loaded: load average 9.0 on 4 cores",
                                           "oversubscribed: 4 threads on 2 usable cores"]
    assert condition_flags({**conditions, "load_avg_1m_start": 5.0}) == ["oversubscribed: 4 threads on 2 usable cores"]
    rank1.conditions["hostname"] = "b"  # ranks on two hosts share no cores
    assert merge_ranks(RunConfig(world_size=2), [rank0, rank1])["conditions"]["threads_on_busiest_host"] == 2


def test_other_processes_on_the_gpus_leave_out_the_cells_own_workers():
    rank0, rank1 = _report(0, [0.1], [1.0], {}), _report(1, [0.1], [1.0], {})
    for rank in (rank0, rank1):
        rank.derived = {"resolved_device": f"cuda:{rank.rank}"}
    rank0.gpu_other_pids, rank1.gpu_other_pids = [101, 4242], [100]  # 100, 101: the cell's ranks
    record = merge_ranks(RunConfig(world_size=2), [rank0, rank1], launcher=LauncherReport(worker_pids=[100, 101]))
    assert record["conditions"] is None  # no rank measured its host: nothing to merge
    rank0.conditions = _conditions(0.5, 1)
    conditions = merge_ranks(RunConfig(world_size=2), [rank0, rank1],
                             launcher=LauncherReport(worker_pids=[100, 101]))["conditions"]
    assert conditions["gpu_other_processes"] == [4242]
    assert condition_flags(conditions) == ["1 other process on its GPUs (PID 4242)"]
    rank0.gpu_other_pids = rank1.gpu_other_pids = None  # NVML could not tell
    conditions = merge_ranks(RunConfig(world_size=2), [rank0, rank1])["conditions"]
    assert conditions["gpu_other_processes"] is None and "PID namespace" in conditions["gpu_other_processes_note"]


def test_host_window_shares_come_from_the_counters_deltas():
    before = HostSnapshot(monotonic_s=10.0, load_avg_1m=1.0, cpu_jiffies=(100, 0, 50, 1000, 10, 0, 0, 5, 0, 0),
                          cpu_pressure_some_us=1_000_000)
    # 200 jiffies: 60 user, 20 system, 100 idle, 0 iowait, 20 steal; 0.5 s of the 2 s with a task waiting.
    after = HostSnapshot(monotonic_s=12.0, load_avg_1m=3.0, cpu_jiffies=(160, 0, 70, 1100, 10, 0, 0, 25, 0, 0),
                         cpu_pressure_some_us=1_500_000)
    window = host_window(before, after)
    assert window["window_s"] == 2.0 and window["load_avg_1m_end"] == 3.0
    assert window["cpu_busy_share"] == pytest.approx(0.5) and window["cpu_steal_share"] == pytest.approx(0.1)
    assert window["cpu_pressure_share"] == pytest.approx(0.25)
    assert window["others_cpu_share"] is None  # no reading of the cell's own threads: not measured
    assert condition_flags({**window, "host_cores": 2}) == ["host loaded: load average 3.0 on 2 cores",
                                                            "CPU steal 10% of the timed window"]
    blind = HostSnapshot(monotonic_s=12.0, load_avg_1m=None, cpu_jiffies=None, cpu_pressure_some_us=None)
    assert host_window(before, blind)["cpu_busy_share"] is None and condition_flags(host_window(before, blind)) == []


def test_the_median_step_times_interval_is_an_order_statistic_interval():
    times = [1.26, 2.105, 2.047, 2.056, 2.068, 1.942, 1.954, 1.711]
    noise = noise_of(times)
    assert noise["median_ci_low_s"] <= statistics.median(times) <= noise["median_ci_high_s"]
    assert min(times) <= noise["median_ci_low_s"] < noise["median_ci_high_s"] <= max(times)
    assert "order-statistic" in noise["method"]
    # At 8 values [X(1), X(8)] covers 99.2 % and [X(2), X(7)] 93.0 %: the interval lies between them.
    x = sorted(times)
    assert x[0] < noise["median_ci_low_s"] < x[1] and x[6] < noise["median_ci_high_s"] < x[7]
    assert noise["iqr_over_median"] == pytest.approx(summarize_s(times)["iqr"] / statistics.median(times))
    for n in (2, 3, 4, 5):  # min to max of 5 covers 93.75 %: no 95 % interval, and the note says so
        short = noise_of([1.0, 2.0, 1.5, 1.2, 1.1][:n])
        assert short["median_ci_low_s"] is None and f"{n} timed steps" in short["note"]
        assert "at least 6" in short["note"]
        assert short["iqr_over_median"] is not None  # the spread needs no interval
    assert noise_of([0.5] * 6)["median_ci_low_s"] == noise_of([0.5] * 6)["median_ci_high_s"] == 0.5


def test_a_cell_of_thousands_of_timed_steps_has_its_interval():
    """2.0**n is past a float's range from n = 1024: a window of 2,500 timed steps (a short CPU cell)
    gets its interval all the same, from the pair of order statistics the exact binomial coverage picks."""
    times = [1.0 + (i * 7919 % 2500) / 2500 for i in range(2500)]  # 1.0 .. 1.9996, each once, shuffled
    noise = noise_of(times)
    assert noise["n"] == 2500 and noise["note"] is None
    d, share = median_order_weights(2500)
    x = sorted(times)
    assert noise["median_ci_low_s"] == pytest.approx((1 - share) * x[d - 1] + share * x[d])
    assert noise["median_ci_low_s"] <= statistics.median(times) <= noise["median_ci_high_s"]

    def coverage(pair: int) -> Fraction:  # of [X(pair), X(n - pair + 1)], in exact rationals
        return 1 - Fraction(2 * sum(math.comb(2500, j) for j in range(pair)), 2**2500)

    aim = Fraction(CONFIDENCE + INTERPOLATION_MARGIN)
    assert coverage(d) >= aim > coverage(d + 1) and 0 < share < 1


def test_ranks_that_end_apart_are_a_failed_cell():
    config = RunConfig(world_size=2)
    a, b = _report(0, [0.1], [1.0], {}), _report(1, [0.1], [1.0], {})
    b.param_checksum = 2.5
    record = merge_ranks(config, [a, b])
    assert record["status"] == "crashed" and "different parameters" in record["status_detail"]


def test_mlp_flops_match_a_hand_count():
    """Forward 2 FLOPs per weight, backward 4, except the first layer's input gradient, which is
    never computed (the input needs no gradient): 6N - 2 * 784 * 128."""
    weights = [784 * 128, 128 * 64, 64 * 10]
    assert training_flops_per_sample(build_builtin(RunConfig(model="mlp"))) == 6 * sum(weights) - 2 * weights[0]


@pytest.mark.parametrize("sizes", [{}, {"gpt_layers": 3, "gpt_width": 96, "gpt_heads": 3, "seq_len": 32}])
def test_gpt_flops_match_palms_formula(sizes):
    config = RunConfig(model="gpt", **sizes)
    counted = training_flops_per_sample(build_builtin(config))
    assert counted == gpt_flops_per_token(config) * config.seq_len


def test_peak_table_and_mfu():
    assert peak_flops_per_s("NVIDIA H100 80GB HBM3", "amp-bf16") == 989.4e12
    assert peak_flops_per_s("NVIDIA H100 PCIe", "tf32") == 378e12
    assert peak_flops_per_s("Tesla V100-SXM2-16GB", "amp-bf16") is None  # no bf16 tensor cores
    assert peak_flops_per_s("Some Future GPU", "fp32") is None  # unknown: None, never a guess
    assert peak_flops_per_s(None, "fp32") is None


# Names where one contains another, or that differ by a suffix: a substring match gets each wrong.
NEAR_COLLISIONS = [
    ("NVIDIA L4", "NVIDIA L40S"), ("NVIDIA L4", "NVIDIA L40"), ("NVIDIA L40", "NVIDIA L40S"),
    ("NVIDIA H200", "NVIDIA H200 NVL"), ("NVIDIA H100 PCIe", "NVIDIA H100 NVL"),
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 NVL"), ("NVIDIA A10", "NVIDIA A40"),
    ("NVIDIA A10", "NVIDIA A100-SXM4-40GB"), ("Tesla V100-SXM2-16GB", "Tesla V100-PCIE-16GB"),
]
NOT_IN_THE_TABLE = [
    "NVIDIA A10G",  # another chip than the A10, without a datasheet
    "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "NVIDIA H100 80GB HBM3 MIG 1g.20gb",  # a slice, not the GPU
    "NVIDIA H20", "NVIDIA GH200 480GB", "NVIDIA GB200", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 3090 Ti",
    "Tesla V100S-PCIE-32GB", "NVIDIA Graphics Device", "A100-SXM4-40GB", "NVIDIA H100", "NVIDIA RTX A4000",
]


@pytest.mark.parametrize(("short", "long"), NEAR_COLLISIONS)
def test_peaks_match_gpu_names_exactly(short, long):
    from trainkit.engine.measure.flops import PEAK_TFLOPS

    assert short in PEAK_TFLOPS and long in PEAK_TFLOPS
    assert peak_flops_per_s(short, "amp-bf16") != peak_flops_per_s(long, "amp-bf16") \
        or PEAK_TFLOPS[short] != PEAK_TFLOPS[long]
    assert peak_flops_per_s(long, "fp32") == PEAK_TFLOPS[long]["fp32"] * 1e12


@pytest.mark.parametrize("name", NOT_IN_THE_TABLE)
def test_a_gpu_without_a_sourced_peak_has_none(name):
    from trainkit.engine.measure.flops import peak_unknown_reason

    assert peak_flops_per_s(name, "amp-bf16") is None and peak_flops_per_s(name, "fp32") is None
    assert name in peak_unknown_reason(name, "amp-bf16")


def test_the_l40s_and_h200_nvl_get_their_own_peaks():
    assert peak_flops_per_s("NVIDIA L40S", "amp-bf16") == pytest.approx(362.05e12)  # not the L4's 121
    assert peak_flops_per_s("NVIDIA H200 NVL", "amp-bf16") == pytest.approx(835.5e12)  # not the SXM's 989
    assert peak_flops_per_s("NVIDIA B200", "tf32") is None  # NVIDIA's own pages disagree
    assert mfu(1e9, 1000.0, 1e13, 2) == pytest.approx(0.05)
    assert mfu(1e9, 1000.0, None, 1) is None


def test_a_cpu_record_has_no_mfu_and_no_gpu_memory():
    from trainkit.engine.cell.launch import run_cell

    record = run_cell(small_config(steps=2), timeout_s=120)
    assert record["mfu"] is None and record["peak_flops_per_s"] is None
    assert record["flops_per_sample"] == training_flops_per_sample(build_builtin(RunConfig(model="mlp")))
    memory = record["memory"]
    assert memory["torch_max_allocated_bytes"] is None and memory["nvml_process_peak_bytes"] is None
    assert memory["nvml_method"] == "unavailable: no GPU" and memory["host_rss_peak_bytes"] > 0
    conditions = record["conditions"]  # read from /proc over the timed window
    assert conditions["window_s"] > 0 and conditions["load_avg_1m_end"] is not None
    assert conditions["torch_threads_per_rank"] == [record["config"]["torch_num_threads"]]
    assert conditions["usable_cores"] >= 1 and conditions["threads_on_busiest_host"] >= 1
    assert conditions["gpu_other_processes"] is None and record["noise"]["n"] == 2


def test_step_time_grows_with_the_work():
    from trainkit.engine.cell.launch import run_cell

    # One intra-op thread: with two, a busy neighbour on one core stalls every op on its straggler
    # thread, and a loaded host made 1-micro-batch steps slower than 16-micro-batch ones.
    small = run_cell(small_config(batch_size=16, steps=16, cpu_threads=1), timeout_s=120)
    large = run_cell(small_config(batch_size=16, grad_accum=16, steps=8, cpu_threads=1), timeout_s=120)
    # 16 times the work. The fastest step of each: a busy neighbour only ever adds time to a step, so
    # the minima are the least disturbed (a shared machine's medians swing 2-3x between runs).
    assert large["step_time_s"]["min"] > 4 * small["step_time_s"]["min"]


# --- NVML, exercised on the CPU through a stand-in module with NVML's interface ----------------

class _NVMLError(Exception):
    pass


def fake_pynvml(procs=None, energy=None, fail=()):
    """A pynvml stand-in: what the driver reports for one GPU; names in `fail` raise NotSupported."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = _NVMLError
    nv.NVML_CLOCK_SM, nv.NVML_TEMPERATURE_GPU = 1, 0
    nv.nvmlClocksEventReasonGpuIdle, nv.nvmlClocksEventReasonSwPowerCap = 0x1, 0x4
    nv.nvmlClocksEventReasonHwThermalSlowdown, nv.nvmlClocksEventReasonAll = 0x40, 0xFF

    def maybe(name, value):
        def call(*args):
            if name in fail:
                raise _NVMLError("Not Supported")
            return value(*args) if callable(value) else value
        setattr(nv, name, call)

    maybe("nvmlInit", None)
    maybe("nvmlDeviceGetHandleByUUID", "handle")
    maybe("nvmlDeviceGetHandleByIndex", "handle")
    maybe("nvmlDeviceGetComputeRunningProcesses", procs or [])
    maybe("nvmlDeviceGetTotalEnergyConsumption", energy)
    maybe("nvmlDeviceGetPowerUsage", 350_000)
    maybe("nvmlDeviceGetClockInfo", 1980)
    maybe("nvmlDeviceGetTemperature", 61)
    maybe("nvmlDeviceGetCurrentClocksEventReasons", 0x4 | 0x40)
    maybe("nvmlDeviceGetEnforcedPowerLimit", 700_000)
    maybe("nvmlDeviceGetMaxClockInfo", 1980)
    maybe("nvmlDeviceGetEccMode", (1, 1))
    maybe("nvmlDeviceGetMigMode", (0, 0))
    maybe("nvmlDeviceGetMemoryInfo", types.SimpleNamespace(total=80 * 2**30, free=79 * 2**30))
    maybe("nvmlDeviceGetName", b"NVIDIA H100 80GB HBM3")
    maybe("nvmlSystemGetDriverVersion", b"575.51.03")
    return nv


def _proc(pid, used):
    return types.SimpleNamespace(pid=pid, usedGpuMemory=used)


@pytest.fixture
def install_nvml(monkeypatch):
    def install(**kwargs):
        monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(**kwargs))
        return Nvml.open(uuid="GPU-0000")
    return install


def test_nvml_per_process_memory_counts_only_our_processes(install_nvml):
    nvml = install_nvml(procs=[_proc(10, 900), _proc(11, 400), _proc(99, 5000)])
    assert nvml.process_used_bytes({10, 11}) == 1300
    assert nvml.process_used_bytes({12}) is None  # PIDs not visible (a container without --pid=host)
    assert nvml.foreign_processes({10, 11}) == [99]


@pytest.mark.parametrize(("procs", "seen"), [
    ([(os.getpid(), 2**30), (4242, 2**29), (4343, None)], [4242, 4343]),
    ([(os.getpid(), 2**30)], []),
    ([(12, 2**30), (13, 2**30)], None),  # our PID is not among NVML's: another PID namespace, no verdict
])
def test_a_rank_notes_the_other_processes_on_its_gpu(install_nvml, procs, seen):
    nvml = install_nvml(procs=[_proc(pid, used) for pid, used in procs])
    first = other_gpu_pids(nvml, os.getpid(), None)
    assert other_gpu_pids(nvml, os.getpid(), first) == seen  # read again after a span: the union, once each
    assert other_gpu_pids(None, os.getpid(), [7]) == [7]  # no NVML: what was seen stays


def test_nvml_samples_info_and_throttle_reasons(install_nvml):
    nvml = install_nvml(energy=123_456)
    assert nvml.energy_mj() == 123_456
    sample = nvml.sample()
    assert sample == {"sm_clock_mhz": 1980, "temperature_c": 61, "power_w": 350.0,
                      "throttle_reasons": ["HwThermalSlowdown", "SwPowerCap"]}
    info = nvml.info()
    assert info["driver"] == "575.51.03" and info["power_limit_w"] == 700.0 and info["mig"] is False


def test_nvml_not_supported_gives_none_never_a_crash(install_nvml):
    nvml = install_nvml(fail=("nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetComputeRunningProcesses",
                              "nvmlDeviceGetMigMode", "nvmlDeviceGetPowerUsage"))
    assert nvml.energy_mj() is None and nvml.process_used_bytes({1}) is None
    assert nvml.info()["mig"] is None and nvml.sample()["power_w"] is None


def test_no_nvml_at_all_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert Nvml.open(uuid="GPU-0000") is None
    broken = fake_pynvml(fail=("nvmlInit",))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert Nvml.open(uuid="GPU-0000") is None


def test_the_launching_process_never_touches_cuda(monkeypatch):
    """Only workers touch CUDA: a launcher that initialised it would hand forked processes a broken
    context and hold GPU memory of its own. Every way into CUDA here is a recording stand-in."""
    from trainkit.engine.cell.launch import probe, run_cell

    calls = []
    for name in ("_lazy_init", "init", "is_available", "device_count", "current_device", "get_device_properties",
                 "get_device_capability", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _name=name, **k: calls.append(_name))
    assert probe("auto")["device"] == "cpu"
    assert run_cell(small_config(world_size=2, steps=2), timeout_s=120)["status"] == "ok"
    assert calls == []


@pytest.mark.parametrize(("precision", "optimizer", "state_per_param"), [
    ("fp32", "adam", 2 * 4), ("half-fp16", "adam", 2 * 2), ("fp32", "sgd", 4), ("amp-bf16", "sgd", 4)])
def test_model_state_bytes_are_recorded(precision, optimizer, state_per_param):
    from trainkit.engine.cell.launch import run_cell

    record = run_cell(small_config(precision=precision, optimizer=optimizer, steps=1), timeout_s=120)
    config = record["config"]
    width = 2 if precision.startswith("half") else 4
    assert config["param_bytes"] == config["params"] * width
    assert config["optimizer_state_bytes"] == config["params"] * state_per_param  # moments / momentum buffers


# --- energy: over the timed steps, and nothing else ---------------------------------------------

def test_energy_counts_the_timed_windows_never_the_idle_time_between_rounds(monkeypatch):
    """A stand-in energy counter that rises at 100 W whether or not a step runs: bench rounds with
    idle gaps between them (the pipe, pytest), then a window of steps. Energy per sample is 100 W x
    the window's own seconds over its samples; the rounds are too short for the counter and the
    gaps are in no span."""
    from trainkit.engine.cell.record import merge_energy
    from trainkit.engine.cell.worker import RankWorker

    monkeypatch.setattr(RankWorker, "_energy_mj", lambda self: int(time.monotonic() * 100 * 1e3))
    worker = RankWorker(small_config(batch_size=64, steps=10**6, warmup_steps=1))
    worker.warmup()
    for _ in range(3):
        worker.step()
        time.sleep(0.2)  # idle: 20 J at 100 W that a window from the first round on would count
    steps = 64
    while worker._timed_span(steps) and worker.report.timing.spans[-1].seconds < 1.2:
        steps *= 2  # windows of growing length until one is long enough for the counter, on any machine
    report = worker.collect(evaluate=False)
    assert [s.steps for s in report.timing.spans[:3]] == [1, 1, 1]
    long = [s for s in report.timing.spans if s.seconds >= 1.0]
    per_sample, method, seconds = merge_energy([report], LauncherReport(), on_gpu=True)
    assert seconds == sum(s.seconds for s in long) and f"{len(long)} timed window" in method
    # The counter is read just outside each window's marks: within a few ms of 100 W x its seconds.
    assert per_sample * sum(s.samples for s in long) == pytest.approx(100 * seconds, rel=0.02, abs=0.5)


def test_energy_of_rounds_too_short_for_the_counter_is_null_with_the_reason():
    from trainkit.engine.cell.record import TimedSpan, merge_energy

    report = RankReport(rank=0, pid=1, timing=RankTiming(spans=[TimedSpan(1, 0.02, 32, 0.0)] * 20))
    per_sample, method, _ = merge_energy([report], LauncherReport(), on_gpu=True)
    assert per_sample is None and method.startswith("not measured: no run of timed steps lasted 1 s")
    assert merge_energy([report], LauncherReport(), on_gpu=False)[1] == \
        "not measured: energy comes from NVML, on GPUs only"


def test_the_nvml_process_peak_is_the_largest_sample_not_the_last(monkeypatch):
    """The launcher samples each rank's process memory through the timed windows; a process that
    grew and then released memory (e.g. after empty_cache) reports its maximum."""
    from trainkit.engine.measure.nvml import GpuSampler

    procs = [_proc(4242, 1000)]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(procs=procs))
    gpu = Nvml.open(uuid="GPU-0")
    sampler = GpuSampler([gpu], interval_s=0.0, processes=[(gpu, 4242)])
    sampler.open_window()
    for used in (1000, 5000, 3000):
        procs[0] = _proc(4242, used)
        sampler.maybe_sample()
    sampler.close_window()
    assert sampler.process_peaks == [5000]
    assert sampler.process_note().startswith("per-process") and "largest of 4 samples" in sampler.process_note()


def test_the_nvml_method_says_why_there_is_no_process_peak(monkeypatch):
    from trainkit.engine.measure.nvml import GpuSampler

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(procs=[_proc(1, 100)]))  # not the worker's PID
    gpu = Nvml.open(uuid="GPU-0")
    sampler = GpuSampler([gpu], processes=[(gpu, 4242)])
    sampler.open_window()
    sampler.close_window()
    assert sampler.process_peaks == [None] and sampler.process_note().startswith("unavailable: NVML lists none")
    record = merge_ranks(RunConfig(), [RankReport(rank=0, pid=4242)],
                         launcher=LauncherReport(nvml_process_peak_bytes=sampler.process_peaks,
                                                 nvml_note=sampler.process_note()))
    assert record["memory"]["nvml_process_peak_bytes"] is None
    assert record["memory"]["nvml_method"].startswith("unavailable")


# --- activations: what autograd saves for backward ------------------------------------------------

def _saved_bytes(config, batch):
    from trainkit.engine.measure.memory import SavedTensors
    from trainkit.engine.train.loop import Trainer

    trainer = Trainer(config.replace(batch_size=batch), CPU)
    inputs, targets = trainer.data.source.window(0).micro_batches[0]
    counter = SavedTensors(trainer.raw_model, exclude=(inputs, targets))
    with counter.hooks(), trainer.policy.forward_context():
        loss = trainer.workload.loss_fn(trainer.policy.convert_output(trainer.raw_model(inputs)), targets)
    loss.backward()
    return counter.bytes


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_saved_activation_bytes_are_linear_in_the_batch_with_weights_left_out(model):
    """Activations scale with the batch exactly; what does not (the loss's scalar, position ids) is
    a few bytes: parameters, buffers and views of one storage are never counted."""
    config = small_config(model)
    sizes = {batch: _saved_bytes(config, batch) for batch in (8, 16, 32)}
    per_sample = (sizes[32] - sizes[16]) / 16
    assert sizes[16] - sizes[8] == per_sample * 8  # exactly linear
    assert 0 < sizes[8] - 8 * per_sample < 1024  # the constant: a loss scalar, position ids


def test_the_mlps_saved_activations_match_a_hand_count():
    """Each ReLU saves its output (128, 64 floats), which fc2 and fc3 save as their inputs (the same
    storages), log_softmax its output (10): (128 + 64 + 10) x 4 bytes per sample, plus nll_loss's
    4-byte weight total. fc1's input is the batch, a view of the data pool: data, not activations."""
    assert _saved_bytes(small_config("mlp"), 8) == 8 * (128 + 64 + 10) * 4 + 4


def test_a_window_that_held_checkpoint_writes_has_no_counter_energy():
    """The counter runs through a checkpoint written between two timed steps; the steps' time does
    not. Such a window's energy would be charged to its samples, so it is left out, and said."""
    from trainkit.engine.cell.record import TimedSpan, merge_energy

    clean = RankReport(rank=0, pid=1, timing=RankTiming(spans=[TimedSpan(100, 2.0, 3200, 600.0, counter_s=2.01)]))
    assert merge_energy([clean], LauncherReport(), on_gpu=True)[0] == pytest.approx(600.0 / 3200)
    paused = RankReport(rank=0, pid=1, timing=RankTiming(spans=[TimedSpan(100, 2.0, 3200, 900.0, counter_s=3.5)]))
    per_sample, method, _ = merge_energy([paused], LauncherReport(), on_gpu=True)
    assert per_sample is None and "checkpoint writes" in method
