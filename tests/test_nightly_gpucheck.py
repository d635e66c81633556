"""`python -m nightly gpu-check`: each check's decision on hand-made records (tests/gpucheck_records.py;
the memory checks are in test_nightly_gpucheck_memory.py), shown to pass and to fail; the whole GPU
path on a simulated GPU; and the real command on the CPU, as a subprocess, with its report in a browser."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.gpucheck_records import H200, gpt_config, gpu_record, resnet_config, step_count
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.schema import read_jsonl
from trainkit.nightly import BAD_INPUT, INFRASTRUCTURE, PASS, REGRESSION
from trainkit.nightly.cli import main
from trainkit.nightly.gpucheck import anchors, cells, command, numerics, nvml, registry, stepprobe, timing
from trainkit.nightly.gpucheck.results import FAIL, OK, REPORT, RESULTS, SKIP, SUMMARY_JSON, SUMMARY_MD, WindowClocks
from trainkit.nightly.gpucheck.thresholds import HALF_SHARE_MIN, TIME_TOLERANCE

from .conftest import REPO as ROOT

# --- time ------------------------------------------------------------------------------------------

def test_time_passes_when_the_marks_sum_to_the_wall_clock_within_3_percent():
    record = gpu_record(gpt_config())
    marks = sum(record["step_time_s"]["values"])
    check = timing.check_time(record, marks * 1.004)
    assert check.status == OK and check.figures["steps"] == 100
    assert math.isclose(check.figures["relative_difference"], 1 / 1.004 - 1)


@pytest.mark.parametrize("wall_factor, words", [(1.05, "miss part of each step"),
                                                (0.95, "MORE than the clock around them")])
def test_time_fails_when_the_marks_miss_time_or_count_too_much(wall_factor, words):
    record = gpu_record(gpt_config())
    check = timing.check_time(record, sum(record["step_time_s"]["values"]) * wall_factor)
    assert check.status == FAIL and words in check.reason and "CUDA events" in check.reason


def test_time_judges_the_workers_clock_and_reports_the_launchers_beside_it():
    # A CPU quota held each process hand-off for a scheduling period on a CI runner: the launcher's
    # clock read 9 % more than marks that were right. That figure is shown, and decides nothing.
    record = gpu_record(gpt_config())
    marks = sum(record["step_time_s"]["values"])
    check = timing.check_time(record, marks * 1.001, launcher_s=marks * 1.10)
    assert check.status == OK and check.figures["launcher_s"] == marks * 1.10
    assert timing.check_time(record, marks * 1.10, launcher_s=marks * 1.10).status == FAIL


def test_time_fails_with_the_cells_status_when_the_cell_did_not_finish():
    record = gpu_record(gpt_config())
    record.update(status="oom", status_detail="CUDA out of memory")
    check = timing.check_time(record, None)
    assert check.status == FAIL and "ended oom: CUDA out of memory" in check.reason


# --- precision -------------------------------------------------------------------------------------

def rounded(x: torch.Tensor, bits: int, truncate: bool = False) -> torch.Tensor:
    """fp32 values with only `bits` explicit mantissa bits: rounded to nearest (even), or truncated
    as some tensor-core conversions do."""
    drop = 23 - bits
    as_int = x.view(torch.int32)
    if not truncate:
        as_int = as_int + ((as_int >> drop) & 1) + ((1 << (drop - 1)) - 1)
    return (as_int & ~((1 << drop) - 1)).view(torch.float32)


def emulated_error(size: int, keep=lambda x: x) -> float:
    """Relative error against fp64 of an fp32 matmul of inputs passed through `keep`."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    reference = a.double() @ b.double()
    return float(((keep(a) @ keep(b)).double() - reference).norm() / reference.norm())


def probe_answer(size: int, fp32_error: float, tf32_error: float | None, fp32_s: float = 3e-3,
                 tf32_s: float = 5e-4) -> dict:
    modes = {"fp32": {"relative_error": fp32_error, "seconds_per_matmul": fp32_s, "tflops": 2 * size**3 / fp32_s / 1e12,
                      "allow_tf32": False, "float32_matmul_precision": "highest"}}
    if tf32_error is not None:
        modes["tf32"] = {"relative_error": tf32_error, "seconds_per_matmul": tf32_s,
                         "tflops": 2 * size**3 / tf32_s / 1e12, "allow_tf32": True, "float32_matmul_precision": "high"}
    return {"device": "cuda", "size": size, "repeats": 20, "modes": modes}


@pytest.fixture(scope="module")
def errors() -> dict[str, float]:
    """Matmul errors of each kind of math, emulated on the CPU by rounding the inputs' mantissas."""
    return {"fp32": emulated_error(256), "tf32": emulated_error(256, lambda x: rounded(x, 10)),
            "tf32-truncated": emulated_error(256, lambda x: rounded(x, 10, truncate=True)),
            "bf16": emulated_error(256, lambda x: rounded(x, 7))}


def test_fp32_error_passes_at_fp32s_level_and_fails_at_tf32s(errors):
    assert numerics.check_fp32_matmul(probe_answer(256, errors["fp32"], None)).status == OK
    check = numerics.check_fp32_matmul(probe_answer(256, errors["tf32"], None))
    assert check.status == FAIL and "do not run in IEEE fp32" in check.reason


@pytest.mark.parametrize("kind", ["tf32", "tf32-truncated"])
def test_tf32_error_passes_for_tf32_math_rounded_or_truncated(errors, kind):
    assert numerics.check_tf32_matmul(probe_answer(256, errors["fp32"], errors[kind])).status == OK


@pytest.mark.parametrize("kind, words", [("fp32", "still run in full fp32"), ("bf16", "coarser than TF32")])
def test_tf32_error_fails_for_fp32_math_and_for_bf16_math(errors, kind, words):
    check = numerics.check_tf32_matmul(probe_answer(256, errors["fp32"], errors[kind]))
    assert check.status == FAIL and words in check.reason


def test_tf32_that_is_not_faster_fails():
    assert numerics.check_tf32_speed(probe_answer(4096, 3e-7, 3e-4, fp32_s=3e-3, tf32_s=5e-4)).status == OK
    check = numerics.check_tf32_speed(probe_answer(4096, 3e-7, 3e-4, fp32_s=3e-3, tf32_s=3e-3))
    assert check.status == FAIL and "not used" in check.reason


def test_the_matmul_probe_measures_real_fp32_math_on_the_cpu():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        answer = numerics.measure_matmuls("cpu", 128, 1)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert answer["modes"]["tf32"] == {"unsupported": "tf32 needs a CUDA GPU with compute capability >= 8.0"}
    fp32 = answer["modes"]["fp32"]
    assert 0 < fp32["relative_error"] < numerics.fp32_level(128) and fp32["float32_matmul_precision"] == "highest"
    assert numerics.check_fp32_matmul(answer).status == OK
    check = numerics.check_tf32_matmul(answer)  # asked for anyway: a fail that says why
    assert check.status == FAIL and "compute capability" in check.reason


def test_half_share_below_a_third_or_missing_fails():
    record = gpu_record(gpt_config())
    assert numerics.check_half_share(record, "amp-bf16").status == OK
    record["profile"]["reduced_precision_share"] = 0.05
    assert numerics.check_half_share(record, "amp-bf16").status == FAIL
    record["profile"] = {"error": "RuntimeError: profiler failed"}
    check = numerics.check_half_share(record, "amp-bf16")
    assert check.status == FAIL and "profiler failed" in check.reason
    assert numerics.check_half_share(gpu_record(gpt_config("amp-fp16")), "amp-bf16").status == FAIL  # the wrong mode


# --- anchors ---------------------------------------------------------------------------------------

def test_resnet50_is_sane_in_the_order_amp_tf32_fp32():
    fp32, tf32, amp = (gpu_record(resnet_config(p)) for p in ("fp32", "tf32", "amp-fp16"))
    check = anchors.check_resnet50(fp32, tf32, amp)
    assert check.status == OK and check.measured.startswith("AMP 1.80x TF32, 4.00x FP32")
    assert "DLE A100 80GB: AMP 2.63x TF32" in check.expected and "V100 16GB: AMP 3.26x FP32" in check.expected
    assert anchors.check_resnet50(fp32, amp, tf32).status == FAIL  # AMP slower than TF32
    check = anchors.check_resnet50(tf32, fp32, amp)  # "TF32" slower than "FP32": TF32 was not on
    assert check.status == FAIL and "TF32 is not faster than FP32" in check.reason


@pytest.mark.parametrize("mfu, compiled, status", [
    (0.18, False, OK), (0.08, False, FAIL),   # eager: about 18 % expected; under half of it starves
    (0.36, False, FAIL),                      # a doubled FLOP count (it passed the old 15-80 % band)
    (0.18 * 989 / 312, False, FAIL),          # an A100's peak on an H100: 57 %, which passed too
    (0.33, True, OK), (0.66, True, FAIL),     # compiled: about 33 %, doubled fails
    (0.30, False, FAIL),                      # a compiled figure on an eager cell is not plausible
])
def test_the_mfu_band_is_the_checked_cells_eager_or_compiled(mfu, compiled, status):
    record = gpu_record(gpt_config(), mfu=mfu)
    record["config"]["compile"] = compiled
    assert math.isclose(record["mfu"], mfu)
    check = anchors.check_mfu(record)
    assert check.status == status
    assert ("compiled" if compiled else "eager") in check.expected and "nanoGPT#464" in check.expected


def test_mfu_without_a_sourced_peak_fails_naming_the_gpu():
    record = gpu_record(gpt_config(), gpu_name="NVIDIA H300 Preview")
    assert record["mfu"] is None
    check = anchors.check_mfu(record)
    assert check.status == FAIL and "no sourced peak for NVIDIA H300 Preview" in check.reason


def test_energy_off_by_20_percent_fails():
    record = gpu_record(gpt_config())
    assert record["energy_method"].startswith(nvml.COUNTER_METHOD)
    assert nvml.check_energy(record).status == OK
    record["energy_j_per_sample"] *= 1.2
    check = nvml.check_energy(record)
    assert check.status == FAIL and "+20%" in check.reason


def test_energy_from_the_power_integral_skips_and_a_missing_figure_fails():
    record = gpu_record(gpt_config())
    record["energy_method"] = "power-integral (NVML power samples) over the timed window(s) of 5 s"
    check = nvml.check_energy(record)
    assert check.status == SKIP and "circular" in check.reason
    record.update(energy_j_per_sample=None, energy_method="not measured: no run of timed steps lasted 1 s")
    check = nvml.check_energy(record)
    assert check.status == FAIL and "lasted 1 s" in check.reason


# --- choosing checks and cells ---------------------------------------------------------------------

def test_only_takes_names_and_groups_and_names_the_valid_ones():
    assert registry.parse_only("anchor,time") == ("time", "anchor.resnet50", "anchor.mfu", "anchor.energy")
    assert registry.parse_only("memory.nvml, precision.fp32") == ("memory.nvml", "precision.fp32")
    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"unknown check 'memroy'; choose from time, memory.floor, .* \(or a group: time, memory"):
        registry.parse_only("memroy")


def test_every_check_finds_its_cells_on_a_gpu_and_skips_with_a_reason_where_it_cannot_run():
    plans = cells.plan_cells("cuda", (9, 0), H200)
    for spec in registry.CHECKS:
        assert registry.skip_reason(spec, "cuda", (9, 0), H200) is None
        assert all(role in plans for role in spec.roles), spec.name
    assert plans["time"] is plans["amp-bf16"] is plans["accum-1"]  # one main cell serves them
    assert plans["accum-4"].config.effective_batch == plans["accum-1"].config.effective_batch
    cpu = cells.plan_cells("cpu")
    for spec in registry.CHECKS:
        reason = registry.skip_reason(spec, "cpu", None, None)
        assert (reason is None) == (spec.gpu_only is None), spec.name
        # memory.floor and memory.state read the ResNet-50 cell too where a plan has one (GPUs)
        assert reason is not None or not spec.roles or spec.roles[0] in cpu, spec.name
    v100 = cells.plan_cells("cuda", (7, 0), "Tesla V100-SXM2-16GB")
    assert v100["time"].config.precision == "amp-fp16" and "amp-bf16" not in v100 and "resnet50-tf32" not in v100
    mfu = next(spec for spec in registry.CHECKS if spec.name == "anchor.mfu")
    assert "compute capability >= 8.0" in registry.skip_reason(mfu, "cuda", (7, 0), "Tesla V100-SXM2-16GB")


# --- the whole command on a simulated GPU ------------------------------------------------------------

@pytest.fixture
def simulated_gpu(monkeypatch):
    """The command's GPU path with the device answered by hand: the probe, every cell (records from
    gpu_record) and the matmul probe; the rest (plans, skips, judging, files, report) is real."""
    pytest.importorskip("pandas", reason="the report needs the `reports` extra")
    import trainkit.engine.cell.launch

    gpu = {"name": H200, "capability": (9, 0)}
    ran: list[RunConfig] = []

    def probe(device: str, timeout_s: float = 300.0) -> dict:
        return {"device": "cuda", "gpu_count": 1, "capability": gpu["capability"], "gpu_name": gpu["name"],
                "cpu_count": 16, "env": {"driver": "570.86", "cuda": "13.0", "torch": "2.14.1"}}

    def run_cell(plan: cells.CellPlan, profile_dir: str, timeout_s: float = 0) -> tuple[dict, float]:
        ran.append(plan.config)
        record = gpu_record(plan.config, gpu_name=gpu["name"])
        marks_s = sum(record["step_time_s"]["values"])
        return record, WindowClocks(worker_s=marks_s * 1.002, launcher_s=marks_s * 1.01)

    def fresh_process(target, *args, timeout_s=0, what=""):
        if target is stepprobe.step_probe_worker:
            (configs,) = args
            return {count.cell_id: dataclasses.asdict(count)
                    for count in (step_count(RunConfig.from_dict(c)) for c in configs)}
        device, size, _ = args
        assert target is numerics.matmul_worker and device == "cuda" and size == cells.GPU_MATMUL_SIZE
        return probe_answer(size, 2.5e-7, 3.1e-4)

    monkeypatch.setattr(trainkit.engine.cell.launch, "probe", probe)
    monkeypatch.setattr(trainkit.engine.cell.launch, "call_in_fresh_process", fresh_process)
    monkeypatch.setattr(cells, "run_cell_with_clock", run_cell)
    return gpu, ran


def test_on_an_h200_every_check_runs_and_passes(simulated_gpu, tmp_path, capsys):
    _, ran = simulated_gpu
    assert command.run_gpu_check(str(tmp_path)) == PASS
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert [(c["name"], c["status"]) for c in summary["checks"]] == [(n, OK) for n in registry.CHECK_NAMES]
    assert sorted(c.cell_id for c in ran) == sorted(
        ["gpt-amp-bf16-bs16-ga1-gpus1", "gpt-amp-bf16-bs4-ga4-gpus1", "gpt-amp-fp16-bs16-ga1-gpus1",
         "resnet50-fp32-bs128-ga1-gpus1", "resnet50-tf32-bs128-ga1-gpus1", "resnet50-amp-fp16-bs128-ga1-gpus1"])
    assert len(read_jsonl(str(tmp_path / RESULTS))) == 6 and (tmp_path / REPORT).stat().st_size > 0
    assert sorted(summary["step_probe"]) == ["gpt-amp-bf16-bs16-ga1-gpus1", "resnet50-amp-fp16-bs128-ga1-gpus1"]
    out = capsys.readouterr().out
    assert "anchor.mfu" in out and "gpu-check: pass (exit 0): 13 pass, 0 fail, 0 skipped" in out


def test_on_an_unknown_gpu_mfu_fails_and_the_command_exits_1(simulated_gpu, tmp_path, capsys):
    gpu, _ = simulated_gpu
    gpu["name"] = "NVIDIA H300 Preview"
    assert command.run_gpu_check(str(tmp_path), only=registry.parse_only("anchor.mfu,time")) == REGRESSION
    checks = {c["name"]: c for c in json.loads((tmp_path / SUMMARY_JSON).read_text())["checks"]}
    assert checks["time"]["status"] == OK
    assert checks["anchor.mfu"]["status"] == FAIL
    assert "no sourced peak for NVIDIA H300 Preview" in checks["anchor.mfu"]["reason"]
    assert "| anchor.mfu |" in (tmp_path / SUMMARY_MD).read_text() and "fail" in capsys.readouterr().out


def test_on_a_v100_the_bf16_and_tf32_checks_skip_with_their_reasons(simulated_gpu, tmp_path):
    gpu, ran = simulated_gpu
    gpu.update(name="Tesla V100-SXM2-16GB", capability=(7, 0))
    assert command.run_gpu_check(str(tmp_path)) == PASS
    checks = {c["name"]: c for c in json.loads((tmp_path / SUMMARY_JSON).read_text())["checks"]}
    skipped = {name for name, c in checks.items() if c["status"] == SKIP}
    assert skipped == {"precision.tf32", "precision.tf32-speed", "precision.amp-bf16", "anchor.resnet50", "anchor.mfu"}
    assert "compute capability >= 8.0" in checks["anchor.mfu"]["reason"]
    assert {c.precision for c in ran} == {"amp-fp16"}


# --- the real command ---------------------------------------------------------------------------------

def nightly(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nightly", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["--only", "memroy"], "argument --only: unknown check 'memroy'; choose from time, memory.floor"),
    (["--only", ","], "argument --only: empty list; choose from time"),
    (["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
])
def test_bad_input_is_one_line_and_exit_2(args, words, tmp_path, capsys):
    assert main(["gpu-check", "--out", str(tmp_path), *args]) == BAD_INPUT
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.listdir(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda can run")
def test_no_gpu_for_device_cuda_is_an_infrastructure_failure(tmp_path):
    done = nightly("gpu-check", "--device", "cuda", "--out", str(tmp_path))
    assert done.returncode == INFRASTRUCTURE, done.stdout + done.stderr
    assert "infrastructure failure: the device cannot be used" in done.stdout and "no CUDA GPU" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert json.loads((tmp_path / SUMMARY_JSON).read_text())["exit_status"] == INFRASTRUCTURE


@pytest.mark.slow
def test_only_runs_the_chosen_checks_and_no_cell(tmp_path, capfd):
    # The command's function in this process (its probes still run in fresh ones): a fresh
    # interpreter here adds only its start to what is checked.
    code = main(["gpu-check", "--device", "cpu", "--only", "precision.fp32", "--out", str(tmp_path)])
    assert code == PASS, capfd.readouterr()
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert [c["name"] for c in summary["checks"]] == ["precision.fp32"] and summary["cells"] == []
    assert not (tmp_path / RESULTS).exists() and "no cell ran" in (tmp_path / SUMMARY_MD).read_text()


CPU_CHECKS = {"time", "memory.floor", "memory.state", "memory.accumulation", "precision.fp32", "precision.amp-bf16",
              "precision.amp-fp16"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    (out / RESULTS).write_text("stale\n")  # an earlier run's file is removed, never appended to
    done = nightly("gpu-check", "--device", "cpu", "--out", str(out))
    return out, done


@pytest.mark.slow
def test_the_cpu_run_passes_its_checks_and_skips_each_gpu_check_with_its_reason(cpu_run):
    out, done = cpu_run
    assert done.returncode == PASS, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["check", "|", "expected", "|", "measured", "|", "result"]
    rows = {line.split("|")[0].strip(): line.split("|")[-1].strip() for line in lines[2:15]}
    assert rows == {name: OK if name in CPU_CHECKS else SKIP for name in registry.CHECK_NAMES}
    for spec in registry.CHECKS:
        if spec.name not in CPU_CHECKS:
            assert f"{spec.name} (skip): {spec.gpu_only}" in done.stdout
            assert spec.gpu_only.startswith("needs a CUDA GPU: ")
    assert "gpu-check: cell 1/5" in done.stderr  # progress while it runs


@pytest.mark.slow
def test_the_cpu_checks_hold_real_measured_values(cpu_run):
    out, _ = cpu_run
    checks = {c["name"]: c for c in json.loads((out / SUMMARY_JSON).read_text())["checks"]}
    figures = {name: checks[name]["figures"] for name in CPU_CHECKS}
    # The window's length is machine-made (1.5 s here, less on a faster CPU): only its sign is asserted.
    assert figures["time"]["steps"] == cells.CPU_TIME_STEPS and figures["time"]["wall_s"] > 0
    assert figures["time"]["marks_s"] > 0 and figures["time"]["launcher_s"] >= figures["time"]["wall_s"]
    assert abs(figures["time"]["relative_difference"]) <= TIME_TOLERANCE
    assert 0 < figures["memory.accumulation"]["ratio"] < 1
    assert 0 < figures["precision.fp32"]["relative_error"] <= figures["precision.fp32"]["bound"]
    for mode in ("amp-bf16", "amp-fp16"):
        assert HALF_SHARE_MIN <= figures[f"precision.{mode}"]["reduced_precision_share"] <= 1
    (floor,) = figures["memory.floor"].values()
    assert 0 <= floor["slack_bytes"] < floor["optimizer_state_bytes"] and floor["peak_bytes"] > 0
    (state,) = figures["memory.state"].values()
    assert state["expected_bytes"] == state["live_param_bytes"] + state["live_optimizer_state_bytes"] > 0
    assert all(checks[name]["measured"] for name in CPU_CHECKS)


@pytest.mark.slow
def test_the_cpu_run_writes_its_files_and_the_report_renders(cpu_run, tmp_path):
    from tests.test_reports import assert_every_chart_renders

    out, _ = cpu_run
    records = read_jsonl(str(out / RESULTS))
    assert {r["status"] for r in records} == {"ok"} and len(records) == 5
    assert len({r["worker_pids"][0] for r in records}) == 5  # every cell in its own worker process
    markdown = (out / SUMMARY_MD).read_text()
    assert markdown.startswith("# trainkit gpu-check: pass") and "| memory.nvml | - | - | skip |" in markdown
    assert "needs a CUDA GPU: NVML measures GPU memory of processes" in markdown
    page = (out / REPORT).read_text()
    assert all(r["cell_id"] in page for r in records)
    assert_every_chart_renders(str(out / REPORT), page, tmp_path)
