"""Measurement pieces: timers, statistics, the merge of ranks, MFU and the optional NVML."""

import sys
import time
import types

import pytest
import torch

from trainkit.config import RunConfig
from trainkit.flops import gpt_flops_per_token, mfu, peak_flops_per_s, training_flops_per_sample
from trainkit.models import build_spec
from trainkit.nvml import Nvml
from trainkit.result import merge_ranks
from trainkit.timing import Marks, summarize_s

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


def _partial(rank, times, curve, memory, samples=(32, 32)):
    return {"rank": rank, "step_times_s": times, "timed_samples": list(samples), "loss_curve": curve,
            "skipped": [False] * len(curve), "first_timed_step": len(curve) - len(times),
            "memory": memory, "param_checksum": 1.5, "derived": {"resolved_device": "cpu"}, "env": {}}


def test_merge_takes_the_slowest_rank_the_max_memory_and_sums_the_loss_shares():
    config = RunConfig(batch_size=16, world_size=2)
    rank0 = _partial(0, [0.10, 0.20], [1.0, 0.8, 0.6], {"host_rss_peak_bytes": 100, "torch_max_allocated_bytes": 7})
    rank1 = _partial(1, [0.15, 0.10], [1.2, 0.9, 0.5], {"host_rss_peak_bytes": 300, "torch_max_allocated_bytes": 5})
    record = merge_ranks(config, [rank1, rank0])
    assert record["step_time_s"]["values"] == [0.15, 0.20]
    assert record["throughput_samples_per_s"] == pytest.approx(64 / 0.35)  # global, not per rank
    assert record["memory"]["host_rss_peak_bytes"] == 300  # max over ranks, never a sum
    assert record["memory"]["torch_max_allocated_bytes"] == 7
    assert record["loss"]["curve"] == pytest.approx([2.2, 1.7, 1.1])
    assert record["loss"]["final"] == pytest.approx(1.1)


def test_ranks_that_end_apart_are_a_failed_cell():
    config = RunConfig(world_size=2)
    a, b = _partial(0, [0.1], [1.0], {}), _partial(1, [0.1], [1.0], {})
    b["param_checksum"] = 2.5
    record = merge_ranks(config, [a, b])
    assert record["status"] == "crashed" and "different parameters" in record["status_detail"]


def test_mlp_flops_match_a_hand_count():
    """Forward 2 FLOPs per weight, backward 4, except the first layer's input gradient, which is
    never computed (the input needs no gradient): 6N - 2 * 784 * 128."""
    weights = [784 * 128, 128 * 64, 64 * 10]
    assert training_flops_per_sample(build_spec(RunConfig(model="mlp"))) == 6 * sum(weights) - 2 * weights[0]


@pytest.mark.parametrize("sizes", [{}, {"gpt_layers": 3, "gpt_width": 96, "gpt_heads": 3, "seq_len": 32}])
def test_gpt_flops_match_palms_formula(sizes):
    config = RunConfig(model="gpt", **sizes)
    counted = training_flops_per_sample(build_spec(config))
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
    from trainkit.flops import PEAK_TFLOPS

    assert short in PEAK_TFLOPS and long in PEAK_TFLOPS
    assert peak_flops_per_s(short, "amp-bf16") != peak_flops_per_s(long, "amp-bf16") \
        or PEAK_TFLOPS[short] != PEAK_TFLOPS[long]
    assert peak_flops_per_s(long, "fp32") == PEAK_TFLOPS[long]["fp32"] * 1e12


@pytest.mark.parametrize("name", NOT_IN_THE_TABLE)
def test_a_gpu_without_a_sourced_peak_has_none(name):
    from trainkit.flops import peak_unknown_reason

    assert peak_flops_per_s(name, "amp-bf16") is None and peak_flops_per_s(name, "fp32") is None
    assert name in peak_unknown_reason(name, "amp-bf16")


def test_the_l40s_and_h200_nvl_get_their_own_peaks():
    assert peak_flops_per_s("NVIDIA L40S", "amp-bf16") == pytest.approx(362.05e12)  # not the L4's 121
    assert peak_flops_per_s("NVIDIA H200 NVL", "amp-bf16") == pytest.approx(835.5e12)  # not the SXM's 989
    assert peak_flops_per_s("NVIDIA B200", "tf32") is None  # NVIDIA's own pages disagree
    assert mfu(1e9, 1000.0, 1e13, 2) == pytest.approx(0.05)
    assert mfu(1e9, 1000.0, None, 1) is None


def test_a_cpu_record_has_no_mfu_and_no_gpu_memory():
    from trainkit.launch import run_cell

    record = run_cell(small_config(steps=2), timeout_s=120)
    assert record["mfu"] is None and record["peak_flops_per_s"] is None
    assert record["flops_per_sample"] == training_flops_per_sample(build_spec(RunConfig(model="mlp")))
    memory = record["memory"]
    assert memory["torch_max_allocated_bytes"] is None and memory["nvml_process_peak_bytes"] is None
    assert memory["nvml_method"] == "unavailable: no GPU" and memory["host_rss_peak_bytes"] > 0


def test_step_time_grows_with_the_work():
    from trainkit.launch import run_cell

    small = run_cell(small_config(batch_size=16, steps=8), timeout_s=120)
    large = run_cell(small_config(batch_size=16, grad_accum=16, steps=8), timeout_s=120)
    # 16 times the work; a shared machine's speed swings up to 2-3x between runs, never 16x.
    assert large["step_time_s"]["median"] > 4 * small["step_time_s"]["median"]


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


def test_torch_is_free_of_cuda_here():
    assert not torch.cuda.is_initialized()  # this process never initialises CUDA


@pytest.mark.parametrize(("precision", "optimizer", "state_per_param"), [
    ("fp32", "adam", 2 * 4), ("half-fp16", "adam", 2 * 2), ("fp32", "sgd", 4), ("amp-bf16", "sgd", 4)])
def test_model_state_bytes_are_recorded(precision, optimizer, state_per_param):
    from trainkit.launch import run_cell

    record = run_cell(small_config(precision=precision, optimizer=optimizer, steps=1), timeout_s=120)
    config = record["config"]
    width = 2 if precision.startswith("half") else 4
    assert config["param_bytes"] == config["params"] * width
    assert config["optimizer_state_bytes"] == config["params"] * state_per_param  # moments / momentum buffers
