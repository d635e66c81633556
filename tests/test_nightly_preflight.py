"""The pre-flight's decisions (nightly.preflight) on a stand-in NVML (tests/test_measure.py's fake
pynvml): there is no GPU here, so what a GPU runner would report is played back, and the device probe
answers as a GPU worker would. A busy or full GPU is an infrastructure failure (exit 3), never a
regression; clocks and throttle reasons are recorded."""

from __future__ import annotations

import json
import sys
import types

import pytest

from trainkit.nightly import INFRASTRUCTURE, PASS
from trainkit.nightly import preflight as pf
from trainkit.nightly.cli import main
from trainkit.nightly.rundir import RunDir

from .test_measure import _proc, fake_pynvml

GiB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
CUDA_PROBE = {"device": "cuda", "gpu_count": 1, "capability": [9, 0], "gpu_name": H100, "cpu_count": 16,
              "env": {"gpu_name": H100, "driver": "575.51.03", "cuda": "12.8", "torch": "2.7.0", "cpu": "x"}}
CPU_PROBE = {"device": "cpu", "gpu_count": 0, "capability": None, "gpu_name": None, "cpu_count": 2,
             "env": {"gpu_name": None, "cpu": "AMD EPYC", "usable_cpus": 2, "torch": "2.7.0"}}
IDLE = 0x1  # nvmlClocksEventReasonGpuIdle: a healthy idle GPU


@pytest.fixture
def machine(monkeypatch):
    """machine(probe=..., gpus=N, procs=[...], free_gib=..., reasons=...) installs what the pre-flight will see."""
    def install(probe=CUDA_PROBE, gpus=1, procs=None, free_gib=79.5, reasons=IDLE, fail=()):
        nv = fake_pynvml(procs=procs, fail=fail)
        nv.nvmlDeviceGetCount = lambda: gpus
        nv.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(total=80 * GiB, free=int(free_gib * GiB))
        nv.nvmlDeviceGetCurrentClocksEventReasons = lambda handle: reasons
        monkeypatch.setitem(sys.modules, "pynvml", nv if gpus or fail else None)
        monkeypatch.setattr(pf, "probe_device", lambda device: dict(probe))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


def preflight(tmp_path, *options: str) -> tuple[int, dict]:
    status = main(["preflight", "--out", str(tmp_path), *options])
    with open(tmp_path / "preflight.json") as f:
        return status, json.load(f)


def test_an_idle_gpu_with_free_memory_passes_and_its_clocks_are_recorded(machine, tmp_path, capsys):
    machine()
    status, facts = preflight(tmp_path, "--device", "cuda")
    assert status == PASS and facts["passed"] and facts["problems"] == [] and facts["warnings"] == []
    (gpu,) = facts["gpus"]
    assert gpu == {"id": "0", "name": H100, "driver": "575.51.03", "memory_total_bytes": 80 * GiB,
                   "memory_free_bytes": int(79.5 * GiB), "foreign_pids": [], "foreign_used_bytes": 0,
                   "sm_clock_mhz": 1980, "max_sm_clock_mhz": 1980, "temperature_c": 61, "power_w": 350.0,
                   "power_limit_w": 700.0, "throttle_reasons": ["GpuIdle"], "ecc": True, "mig": False}
    assert facts["fingerprint"] == {"gpu_name": H100, "driver": "575.51.03", "cuda": "12.8", "torch": "2.7.0"}
    assert facts["baseline_slug"] == "nvidia-h100-80gb-hbm3-driver-575.51.03-cuda-12.8-torch-2.7.0"
    assert capsys.readouterr().out.startswith(
        f"nightly pre-flight: pass: 1 x {H100} (driver 575.51.03); GPU 0: 79.5 of 80.0 GiB free, SM 1980/1980 MHz")


def test_a_foreign_process_on_the_gpu_is_an_infrastructure_failure(machine, tmp_path):
    machine(procs=[_proc(4242, 6 * GiB)], free_gib=73.5)
    status, facts = preflight(tmp_path)
    assert status == INFRASTRUCTURE and not facts["passed"]
    assert facts["problems"] == [f"GPU 0 ({H100}) is busy: 1 foreign process(es) (pid 4242) use 6.0 GiB"]
    run = RunDir(str(tmp_path))
    assert run.outcome().label == "infrastructure failure" and run.outcome().exit_status == INFRASTRUCTURE
    assert "# trainkit nightly: ⚠️ infrastructure failure (exit 3)" in (tmp_path / "summary.md").read_text()
    assert main(["status", "--out", str(tmp_path)]) == INFRASTRUCTURE
    # Allowed on request (a shared development box), the same GPU passes.
    assert preflight(tmp_path, "--allow-foreign-processes")[0] == PASS


def test_too_little_free_memory_is_an_infrastructure_failure(machine, tmp_path):
    machine(free_gib=60.0)  # someone's 20 GiB, without a process NVML can show (another container)
    status, facts = preflight(tmp_path)
    assert status == INFRASTRUCTURE
    assert facts["problems"] == [f"GPU 0 ({H100}): 60.0 of 80.0 GiB free (75%), below the 90% required"]
    assert preflight(tmp_path, "--min-free-fraction", "70%")[0] == PASS


def test_throttle_reasons_are_recorded_and_a_slowdown_at_idle_warns_or_fails(machine, tmp_path):
    machine(reasons=0x4 | 0x40)  # SwPowerCap and HwThermalSlowdown
    status, facts = preflight(tmp_path)
    assert status == PASS and facts["gpus"][0]["throttle_reasons"] == ["HwThermalSlowdown", "SwPowerCap"]
    assert facts["warnings"] == [f"GPU 0 ({H100}) is throttled while idle: HwThermalSlowdown, SwPowerCap"]
    assert "| HwThermalSlowdown, SwPowerCap |" in (tmp_path / "summary.md").read_text()
    status, facts = preflight(tmp_path, "--fail-on-slowdown")
    assert status == INFRASTRUCTURE and facts["problems"] == [
        f"GPU 0 ({H100}) is throttled while idle: HwThermalSlowdown, SwPowerCap"]


def test_a_runner_that_lost_a_gpu_fails(machine, tmp_path):
    machine(probe=dict(CUDA_PROBE, gpu_count=7), gpus=7)
    status, facts = preflight(tmp_path, "--min-gpus", "8")
    assert status == INFRASTRUCTURE and facts["problems"] == ["torch sees 7 GPU(s), the runner should have 8"]


def test_no_gpu_on_a_gpu_runner_fails_and_nvml_without_torch_fails(machine, tmp_path):
    machine(probe=CPU_PROBE, gpus=0)
    status, facts = preflight(tmp_path, "--device", "cuda")
    assert status == INFRASTRUCTURE and facts["problems"] == ["no GPU visible to torch (asked for --device cuda)"]
    machine(probe=CPU_PROBE, gpus=1)  # the driver answers, CUDA does not
    status, facts = preflight(tmp_path)
    assert status == INFRASTRUCTURE
    assert facts["problems"] == ["NVML sees 1 GPU(s) but torch sees none: a driver/CUDA mismatch?"]


def test_a_probe_that_cannot_start_a_worker_fails(machine, tmp_path, monkeypatch):
    machine()

    def dead(device):
        raise RuntimeError("the device probe died (exit code -9)")
    monkeypatch.setattr(pf, "probe_device", dead)
    status, facts = preflight(tmp_path)
    assert status == INFRASTRUCTURE and facts["problems"] == ["the device probe died (exit code -9)"]


def test_a_gpu_without_nvml_cannot_be_checked_and_fails(machine, tmp_path):
    machine(fail=("nvmlInit",))
    status, facts = preflight(tmp_path)
    assert status == INFRASTRUCTURE and facts["problems"][0].startswith("NVML is not available: ")


def test_a_process_list_nvml_cannot_read_is_a_warning(machine, tmp_path):
    machine(fail=("nvmlDeviceGetComputeRunningProcesses",))
    status, facts = preflight(tmp_path)
    assert status == PASS and facts["gpus"][0]["foreign_pids"] is None
    assert facts["warnings"] == [f"GPU 0 ({H100}): NVML cannot list its processes; idleness not checked"]


def test_only_the_gpus_cuda_may_use_are_checked(machine, tmp_path, monkeypatch):
    machine(gpus=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-8f2c")
    status, facts = preflight(tmp_path)
    assert status == PASS and [g["id"] for g in facts["gpus"]] == ["2", "GPU-8f2c"]


def test_on_a_cpu_the_preflight_records_what_it_can_and_passes(machine, tmp_path, capsys):
    machine(probe=CPU_PROBE, gpus=0)
    status, facts = preflight(tmp_path)
    assert status == PASS and facts["gpus"] == [] and facts["host"]["cpu_count"] >= 1
    assert facts["warnings"] == ["no GPU: a CPU run, whose rows are correctness and smoke rows, not speed claims"]
    assert facts["fingerprint"] == {"cpu": "AMD EPYC", "usable_cpus": 2, "torch": "2.7.0"}
    assert capsys.readouterr().out.startswith("nightly pre-flight: pass: no GPU: CPU AMD EPYC")


def test_bad_limits_are_bad_input(machine, tmp_path, capsys):
    machine()
    assert main(["preflight", "--out", str(tmp_path), "--min-free-fraction", "1.5"]) == 2
    assert "min_free_fraction=1.5 must be between 0 and 1" in capsys.readouterr().err


def test_a_gpu_that_vanishes_during_the_matrix_is_caught_after_it(machine, tmp_path):
    machine(gpus=2)
    assert preflight(tmp_path)[0] == PASS
    run = RunDir(str(tmp_path))
    assert pf.postflight(run) is None
    machine(gpus=1)  # fell off the bus
    assert pf.postflight(run) == "GPU(s) 1 no longer answer NVML after the matrix"


def test_a_visible_gpu_nvml_cannot_open_fails(machine, tmp_path, monkeypatch):
    machine()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,bogus")
    status, facts = preflight(tmp_path)
    assert status == INFRASTRUCTURE
    assert facts["problems"] == ["NVML cannot open GPU bogus: cannot check that the GPUs are idle"]
