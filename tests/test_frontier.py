"""The axes beyond precision and accumulation: torch.compile, activation checkpointing, the CUDA
allocator's setting; their cell ids, and records from before them that must still compare."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainkit.bench.matrix import AXIS_OPTIONS, build_matrix, skip_reason
from trainkit.engine.cell import allocator, worker
from trainkit.engine.cell.launch import run_cell
from trainkit.engine.cell.record import merge_ranks
from trainkit.engine.cell.worker import RankWorker, classify
from trainkit.engine.measure.memory import SavedTensors
from trainkit.engine.spec.config import ConfigError, RunConfig
from trainkit.engine.spec.presets import preset
from trainkit.engine.train import checkpointing, compiled
from trainkit.engine.train.hardware import Hardware
from trainkit.engine.train.loop import Trainer, Unsupported

from .conftest import CPU, flat_params, small_config, train

CPU_HW = Hardware("cpu", cpu_count=2)
SETTING = "expandable_segments:True"


@pytest.fixture
def clean_alloc_env(monkeypatch):
    """In-process workers write the allocator setting into os.environ; put it back afterwards."""
    for name in allocator.ENV_VARS:
        monkeypatch.delenv(name, raising=False)


# --- cell ids ------------------------------------------------------------------------------------

def test_ids_carry_only_the_axes_that_differ_from_their_defaults():
    assert RunConfig(model="gpt", precision="amp-bf16", batch_size=32, grad_accum=4, world_size=2).cell_id \
        == "gpt-amp-bf16-bs32-ga4-gpus2"  # as before these axes existed
    assert RunConfig(model="gpt", precision="fp8-rowwise", batch_size=16, grad_accum=4, compile=True,
                     activation_checkpointing="full").cell_id == "gpt-fp8-rowwise-bs16-ga4-gpus1-compiled-ac"
    assert RunConfig(compile=True, compile_mode="max-autotune", alloc_conf=f"{SETTING},max_split_size_mb:128").cell_id \
        == "mlp-fp32-bs64-ga1-gpus1-compiled-max-autotune-alloc-expandable_segments_True_max_split_size_mb_128"


@pytest.mark.parametrize(("changes", "message"), [
    ({"compile_mode": "max-autotune"}, "compile_mode='max-autotune' needs compile"),
    ({"compile": True, "compile_mode": "fast"}, "compile_mode='fast' is not valid; choose from default, "),
    ({"activation_checkpointing": "half"}, "activation_checkpointing='half' is not valid; choose from none, full"),
    ({"alloc_conf": "expandable_segments"}, "alloc_conf='expandable_segments' is not valid; write option:value"),
])
def test_bad_axis_values_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RunConfig(**changes)


def test_the_matrix_crosses_the_new_axes_and_keeps_todays_ids():
    quick = preset("quick", on_gpu=False)
    cells = build_matrix(quick, CPU_HW, {}, 2, 1)
    before = {c.id for c in cells if not c.compile and c.activation_checkpointing == "none"}
    assert {"mlp-fp32-bs32-ga1-gpus1", "gpt-amp-bf16-bs32-ga4-gpus2", "cnn-half-bf16-bs32-ga4-gpus1"} <= before
    cells = build_matrix(quick, CPU_HW, {"model": ("gpt",), "precision": ("fp32", "fp8-rowwise"), "gpus": (1,),
                                         "grad_accum": (4,), "compile": AXIS_OPTIONS["compile"][1]("off,on"),
                                         "activation_checkpointing": ("none", "full")}, 2, 1)
    assert [c.id for c in cells] == [
        "gpt-fp32-bs32-ga4-gpus1", "gpt-fp32-bs32-ga4-gpus1-ac", "gpt-fp32-bs32-ga4-gpus1-compiled",
        "gpt-fp32-bs32-ga4-gpus1-compiled-ac", "gpt-fp8-rowwise-bs32-ga4-gpus1", "gpt-fp8-rowwise-bs32-ga4-gpus1-ac",
        "gpt-fp8-rowwise-bs32-ga4-gpus1-compiled", "gpt-fp8-rowwise-bs32-ga4-gpus1-compiled-ac"]
    assert {c.skip_reason for c in cells if c.precision == "fp8-rowwise"} == {
        "fp8-rowwise needs a CUDA GPU with compute capability >= 8.9"}
    assert all(c.skip_reason is None for c in cells if c.precision == "fp32")
    assert cells[3].config.compile and cells[3].config.activation_checkpointing == "full"
    assert cells[3].params["compile"] is True and cells[3].params["activation_checkpointing"] == "full"


def test_the_gpu_presets_compile_gpt_and_resnet50_and_run_fp8_for_the_gpt_only():
    h100 = Hardware("cuda", 8, (9, 0), "NVIDIA H100 80GB HBM3", 64)
    for name in ("full", "nightly"):
        cells = build_matrix(preset(name, on_gpu=True), h100, {}, 2, 1)
        assert {c.model for c in cells if c.compile} == {"gpt", "resnet50"}
        assert {c.model for c in cells if c.precision.startswith("fp8")} == {"gpt"}
        compiled_ids = {c.id for c in cells if c.compile}
        eager_ids = {c.id for c in cells if not c.compile}
        assert all(i.replace("-compiled", "") in eager_ids for i in compiled_ids)  # every one has its eager twin


def test_axis_options_parse_and_refuse():
    import argparse

    assert AXIS_OPTIONS["compile"][1]("off,on") == (False, True)
    assert AXIS_OPTIONS["alloc_conf"][1](f"none;{SETTING},max_split_size_mb:64") == (
        None, f"{SETTING},max_split_size_mb:64")
    for axis, text, message in (("compile", "maybe", "invalid choice: 'maybe' (choose from off, on)"),
                                ("activation_checkpointing", "half", "invalid choice: 'half'"),
                                ("alloc_conf", "expandable", "invalid allocator setting: 'expandable'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            AXIS_OPTIONS[axis][1](text)


# --- activation checkpointing ----------------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt", "resnet18", "cnn"])
def test_checkpointing_gives_the_same_gradients(model):
    """Same seed, same data, two optimizer steps with and without: the same losses and weights
    (each step's update is its gradients'), and the checkpointed modules are the documented ones."""
    shape = {"image_size": 16, "batch_size": 4} if model == "resnet18" else {}
    plain = train(small_config(model, steps=2, **shape))
    ckpt = train(small_config(model, steps=2, activation_checkpointing="full", **shape))
    assert ckpt.checkpointed == {"gpt": ["blocks.0"], "cnn": ["conv1", "conv2"]}.get(
        model, ["layer1", "layer2", "layer3", "layer4"])
    modules = dict(ckpt.raw_model.named_modules())
    assert all(isinstance(modules[name], checkpointing.Checkpointed) for name in ckpt.checkpointed)
    torch.testing.assert_close(ckpt.loss_curve(), plain.loss_curve(), rtol=0, atol=0)
    torch.testing.assert_close(flat_params(ckpt), flat_params(plain), rtol=1e-6, atol=1e-7)
    # The parameters keep their names: checkpoints and state dicts work either way.
    assert list(ckpt.raw_model.state_dict()) == list(plain.raw_model.state_dict())
    ckpt.raw_model.load_state_dict(plain.raw_model.state_dict())


def test_checkpointing_keeps_far_fewer_tensors_for_backward():
    """What autograd saves in the GPT's forward: checkpointed blocks keep their inputs only."""
    def saved_bytes(mode: str) -> int:
        config = small_config("gpt", activation_checkpointing=mode, gpt_layers=2)
        trainer = Trainer(config, CPU)
        inputs, targets = next(trainer.windows).micro_batches[0]
        counter = SavedTensors(trainer.raw_model, exclude=(inputs, targets))
        with counter.hooks():
            trainer.workload.loss_fn(trainer.model(inputs), targets)
        return counter.bytes

    plain, ckpt = saved_bytes("none"), saved_bytes("full")
    assert ckpt < 0.35 * plain, (ckpt, plain)  # the research notes measured -83 % on a larger GPT


def test_a_model_without_blocks_cannot_be_checkpointed_and_its_cells_are_left_out():
    reason = "activation checkpointing wraps the blocks a workload names (Workload.checkpoint_blocks); mlp names none"
    with pytest.raises(Unsupported, match=re.escape(reason)):
        Trainer(small_config("mlp", activation_checkpointing="full"), CPU)
    left_out: dict[str, str] = {}
    cells = build_matrix(preset("quick", on_gpu=False), CPU_HW, {"model": ("mlp", "cnn"), "precision": ("fp32",),
                                                                 "activation_checkpointing": ("none", "full")},
                         2, 1, left_out=left_out)
    # Not a result of the hardware: no cell, no record, no red row; the collection says why.
    assert not any(c.model == "mlp" and c.activation_checkpointing == "full" for c in cells)
    assert any(c.model == "cnn" and c.activation_checkpointing == "full" and not c.skip_reason for c in cells)
    assert left_out and set(left_out.values()) == {
        "mlp names no blocks to checkpoint (Workload.checkpoint_blocks)"}
    assert all(cell_id.startswith("mlp-") and cell_id.endswith("-ac") for cell_id in left_out)


# --- torch.compile ----------------------------------------------------------------------------------

COMPILE_CHARGE_S = 60.0
"""What the compiled cell's clock charges for each frame and graph dynamo compiles."""


def compile_charging_clock() -> float:
    """perf_counter plus COMPILE_CHARGE_S for every frame and graph dynamo has compiled in this
    process so far: read around a step, a step that compiled shows a minute more than it took, one
    that compiled nothing shows what it took. A compile from inductor's warm cache takes well under
    a second of a fast host's time and a loaded host stretches any step past that, so wall times
    cannot tell a compiling step from the others; this clock can, whatever the load."""
    counted = compiled.Counters.now()
    return time.perf_counter() + COMPILE_CHARGE_S * (counted.frames + counted.graphs)


@pytest.fixture(scope="module")
def compiled_mlp():
    """One compiled MLP cell in this process, on the compile-charging clock: its worker, record and
    eager twin (inductor's cache under /tmp makes every run after the first take seconds instead of
    ~20 s)."""
    config = RunConfig(model="mlp", batch_size=16, steps=4, warmup_steps=1, device="cpu", compile=True)
    try:
        cell = RankWorker(config, clock=compile_charging_clock)
        cell.warmup()
        cell.run_timed()
        record = merge_ranks(config, [cell.collect()])
        eager_config = config.replace(compile=False)
        eager = RankWorker(eager_config)
        eager.warmup()
        eager.run_timed()
        return cell, record, merge_ranks(eager_config, [eager.collect()])
    finally:
        torch.compiler.set_stance("default")


def test_compile_time_is_recorded_and_kept_out_of_the_timed_steps(compiled_mlp):
    cell, record, _ = compiled_mlp
    compile_record = record["compile"]
    assert record["status"] == "ok" and record["cell_id"] == "mlp-fp32-bs16-ga1-gpus1-compiled"
    assert compile_record["graphs"] >= 1 and compile_record["recompiles"] == 0
    # Warmup step 0 compiled; the configured warmup ended there, so one more step proved it had stopped.
    assert compile_record["compiling_warmup_steps"] == [0] and compile_record["settle_steps"] == 1
    first, _ = compile_record["warmup_step_times_s"]
    steps = record["step_time_s"]
    assert steps["n"] == 4 and record["config"]["total_steps"] == 1 + 1 + 4  # the timed steps are still 4
    assert compile_record["compile_time_s"] == pytest.approx(first - steps["median"])
    # The compiling step is warmup, never a timed step: the timed ones start after the settling step,
    # and none of them compiled (the clock would have charged it COMPILE_CHARGE_S), while the
    # compiling warmup step carries at least one charge, and so does the compile time recorded.
    assert cell.report.timing.first_timed_step == 2
    assert first >= COMPILE_CHARGE_S > steps["max"]
    assert compile_record["compile_time_s"] >= COMPILE_CHARGE_S - steps["median"]
    # The compiled model is the one that trained: the same first loss as eager.
    assert record["loss"]["curve"][0] == pytest.approx(compiled_mlp[2]["loss"]["curve"][0], rel=1e-5)


def test_a_recompile_after_warmup_is_an_error_the_cell_reports(compiled_mlp):
    cell, _, _ = compiled_mlp
    compiled.fail_on_recompile()  # the stance the worker left after its warmup
    with pytest.raises(RuntimeError) as failure:
        cell.trainer.model(torch.zeros(3, 1, 28, 28))  # a new batch size: dynamo would recompile
    status, detail = classify(failure.value)
    assert status == "crashed"
    assert detail.startswith("torch.compile: RuntimeError: Detected recompile when torch.compile stance is "
                             "'fail_on_recompile'") and "\n" not in detail


def test_a_compiled_cell_over_epochs_drops_the_short_micro_batch_and_says_so():
    """40 samples in micro-batches of 16 leave 8: a third shape, which after warmup would be a
    recompile, an error. The cell drops those 8 per epoch and its record says so."""
    config = RunConfig(model="mlp", batch_size=16, epochs=2, dataset_size=40, warmup_steps=1, device="cpu",
                       compile=True)
    try:
        cell = RankWorker(config)
        cell.warmup()
        cell.run_timed()
        report = cell.collect()
        record = merge_ranks(config, [report])
    finally:
        torch.compiler.set_stance("default")
    assert record["status"] == "ok", record["status_detail"]
    assert report.loss.step_samples == [16] * 4
    assert record["compile"]["recompiles"] == 0
    assert record["config"]["steps_per_epoch"] == 2 and record["config"]["total_steps"] == 4
    assert record["config"]["dropped_samples_per_epoch"] == 8
    assert record["config"]["short_micro_batch_dropped"].startswith("torch.compile: a short micro-batch is a new shape")
    # The same data eager keeps the short micro-batch.
    eager = Trainer(config.replace(compile=False), CPU)
    assert eager.data.steps_per_epoch == 3 and eager.data.drop_reason is None


def test_a_compile_failure_is_a_crashed_cell_with_the_errors_first_line(monkeypatch):
    """No C++ compiler, found out at the first compiled step (bench and the Trainer refuse such cells
    beforehand; here the check is bypassed so that the compile itself fails)."""
    import torch._functorch.config
    import torch._inductor.config

    # torch's config modules are patched with their own patch(): monkeypatch's undo deletes an
    # attribute it found through the module's __getattr__, which hides that setting from every later
    # compile in this process ("torch._functorch.config.enable_autograd_cache does not exist").
    with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/g++"),
                                       "fx_graph_cache": False}), \
            torch._functorch.config.patch(enable_autograd_cache=False):  # a cached kernel needs no compiler
        compiler, why = compiled.cpp_compiler.__wrapped__()
        assert compiler is None and "No working C++ compiler found" in why
        monkeypatch.setattr(compiled, "unsupported_reason", lambda device_type: None)
        trainer = Trainer(small_config("mlp", batch_size=5, compile=True), CPU)  # 5: a shape no other test compiles
        with pytest.raises(RuntimeError) as failure:
            trainer.run(1)
    status, detail = classify(failure.value)
    assert status == "crashed" and "\n" not in detail
    assert detail.startswith("torch.compile: InductorError: InvalidCxxCompiler: No working C++ compiler found"), detail


def test_without_a_cpp_compiler_compiled_cells_are_unsupported_with_the_reason(monkeypatch):
    monkeypatch.setattr(compiled, "cpp_compiler", lambda: (None, "No working C++ compiler found in (None, 'g++')"))
    reason = compiled.unsupported_reason("cpu")
    assert reason == ("torch.compile on a CPU needs a C++ compiler for inductor (install g++ or set CXX): "
                      "No working C++ compiler found in (None, 'g++')")
    assert compiled.unsupported_reason("cuda") is None
    with pytest.raises(Unsupported, match="needs a C.. compiler"):
        Trainer(small_config("mlp", compile=True), CPU)
    hw = Hardware("cpu", cpu_count=2, compile_unsupported=reason)
    assert skip_reason("mlp", "fp32", 1, hw, compile=True) == reason
    assert skip_reason("mlp", "fp32", 1, hw, compile=False) is None


# --- the allocator's setting ------------------------------------------------------------------------

class _Pipe:
    """The launcher's end of a worker's pipe, as far as serve() uses it before its first command."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)

    def recv(self):
        raise EOFError


def test_the_allocator_setting_is_in_the_environment_before_cuda_starts(monkeypatch):
    """serve() restores the launcher's environment, then the cell's setting, then picks the device
    (the first CUDA call); RankWorker does the same for ranks that torchrun starts."""
    environ = {"PATH": os.environ.get("PATH", "")}
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve() clears it: never the real one
    seen = []

    class Stop(Exception):
        pass

    def first_cuda_touch(config, local_rank):
        seen.append({name: os.environ.get(name) for name in allocator.ENV_VARS} | {"cuda": torch.cuda.is_initialized()})
        raise Stop

    monkeypatch.setattr(worker, "select_device", first_cuda_touch)
    config = RunConfig(alloc_conf=SETTING, device="cpu")
    pipe = _Pipe()
    worker.serve(config, 0, 0, 1, pipe, environ, None)
    with pytest.raises(Stop):
        RankWorker(config)  # torchrun's ranks
    assert seen == [{"PYTORCH_CUDA_ALLOC_CONF": SETTING, "PYTORCH_ALLOC_CONF": SETTING, "cuda": False}] * 2
    assert pipe.sent and pipe.sent[0][1][0] == "crashed"  # the stop above, reported as the cell's end


def test_a_cell_records_the_setting_in_effect_and_no_fragmentation_on_a_cpu(clean_alloc_env):
    """A real worker process: the allocator parsed the cell's setting (torch reads it once, so a
    setting that came after anything read it would show the environment's instead)."""
    record = run_cell(RunConfig(model="mlp", batch_size=16, steps=2, warmup_steps=1, device="cpu", alloc_conf=SETTING))
    assert record["status"] == "ok" and record["cell_id"].endswith("-alloc-expandable_segments_True")
    figures = record["memory"]["allocator"]
    if hasattr(torch._C, "_accelerator_getAllocatorSettings"):  # torch >= 2.9 says what it parsed
        assert figures["settings_in_effect"] == SETTING
    assert figures["alloc_conf"] == SETTING and figures["method"] == allocator.NOT_APPLICABLE
    assert figures["fragmentation_bytes"] is figures["num_alloc_retries"] is figures["num_ooms"] is None
    assert os.environ.get("PYTORCH_CUDA_ALLOC_CONF") is None  # the launcher's own environment is untouched


def test_a_setting_too_late_for_cuda_is_refused(monkeypatch, clean_alloc_env):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="comes too late: CUDA already started"):
        allocator.set_alloc_conf(SETTING)
    allocator.set_alloc_conf(None)  # no setting asked for: nothing to refuse


# --- records from before these axes ---------------------------------------------------------------

def without_new_fields(record: dict) -> dict:
    """A record as trainkit wrote it before these axes: no such config fields, no compile,
    precision_details or allocator entries."""
    old = copy.deepcopy(record)
    for key in ("compile", "compile_mode", "activation_checkpointing", "alloc_conf", "checkpointed_modules"):
        old["config"].pop(key)
    for key in ("compile", "precision_details"):
        old.pop(key)
    old["memory"].pop("allocator")
    for rank in old["memory"]["per_rank"]:
        rank.pop("allocator")
    return old


def test_records_from_before_these_axes_still_load_and_compare(compiled_mlp, tmp_path):
    pytest.importorskip("pandas", reason="reports need the `reports` extra")
    from trainkit.reports.load import to_frame
    from trainkit.reports.summary import summary
    from trainkit.reports.verdict import NEW, REMOVED, Thresholds, compare_records

    _, _, eager = compiled_mlp
    old = without_new_fields(eager)
    assert RunConfig.from_dict(old["config"]) == RunConfig.from_dict(eager["config"])
    result = compare_records([old], [eager], Thresholds(min_repeats=1))
    (cell,) = result.cells
    assert cell.cell == "mlp-fp32-bs16-ga1-gpus1" and cell.verdict not in (NEW, REMOVED)
    assert cell.metrics["throughput"].baseline is not None and "config changed" not in cell.note
    frame = to_frame([old, eager])
    assert list(frame["compiled"]) == [False, False] and list(frame["variant"]) == ["", ""]
    table = summary(frame)
    assert len(table) == 1 and table["repeats"].iloc[0] == 2  # one cell, both records


# --- the report --------------------------------------------------------------------------------------

def test_the_report_draws_compile_speedups_and_the_memory_throughput_front(compiled_mlp, tmp_path):
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    from trainkit.engine.cell.record import append_jsonl
    from trainkit.reports.build import build_report
    from trainkit.reports.load import to_frame
    from trainkit.reports.sections.frontier import cells, compile_pairs, pareto_front

    from .test_reports import assert_every_chart_renders

    _, compiled_record, eager = compiled_mlp
    gpt = [merge_ranks(c, [_run(c)]) for c in (
        small_config("gpt", steps=2, warmup_steps=1, grad_accum=a, activation_checkpointing=m)
        for a in (1, 2) for m in ("none", "full"))]
    fp8 = RunConfig(model="gpt", precision="fp8-rowwise", device="cpu")
    refused = merge_ranks(fp8, [], "unsupported", skip_reason("gpt", "fp8-rowwise", 1, CPU_HW))
    records = [compiled_record, eager, *gpt, refused]
    results = tmp_path / "results.jsonl"
    for record in records:
        append_jsonl(record, str(results))
    paths = build_report([str(results)], str(tmp_path / "report.html"))
    page = Path(paths["html"]).read_text()

    def section(key: str) -> str:
        body = page[page.index(f'<section id="{key}">'):]
        return body[:body.index("</section>")]

    # At the median step time (one record each, no rounds: the ratio of the two medians).
    speedup = eager["step_time_s"]["median"] / compiled_record["step_time_s"]["median"]
    assert 'class="chart"' in section("compile") and f"{speedup:.2f}×" in section("compile")
    assert f"{compiled_record['compile']['compile_time_s']:.1f}" in section("compile")
    # The compiled run took a settling step more than its twin: its loss is compared at the twin's last step.
    pairs = compile_pairs(cells(to_frame(records)))
    (pair,) = pairs[pairs["model"] == "mlp"].itertuples()
    eager_steps = len(eager["loss"]["curve"])
    assert len(compiled_record["loss"]["curve"]) == eager_steps + 1 and pair.eager_steps == eager_steps
    assert pair.loss_at_eager_steps == compiled_record["loss"]["curve"][eager_steps - 1]
    assert f"{pair.loss_at_eager_steps:.4f}" in section("compile")
    assert f"{eager['loss']['final']:.4f}" in section("compile")
    assert section("pareto").count('class="chart"') == 2  # gpt and mlp
    assert "fp8-rowwise needs a CUDA GPU with compute capability &gt;= 8.9" in section("fp8")
    # The front: no point on it is beaten on both memory and throughput by any other point, a throughput
    # beaten only by one whose interval lies wholly above its own (trainkit.reports.flags).
    points = cells(to_frame(records)).dropna(subset=["peak_mib"])
    low, high = points["throughput_low"].fillna(points["throughput"]), points["throughput_high"].fillna(
        points["throughput"])
    front = pareto_front(points)
    for i in front.index:
        assert not ((points["peak_mib"] <= points.at[i, "peak_mib"]) & (low > high[i])).any()
    off = points.index.difference(front.index)
    assert all(((points["peak_mib"] <= points.at[i, "peak_mib"]) & (low > high[i])).any() for i in off)
    assert_every_chart_renders(paths["html"], page, tmp_path)


def _run(config: RunConfig):
    cell = RankWorker(config)
    cell.warmup()
    cell.run_timed()
    return cell.collect()


@pytest.mark.slow
def test_a_compiled_model_on_a_cpu_writes_nothing_to_the_terminal():
    """inductor's C++ build imports torch.utils.cpp_extension, which warns "No CUDA runtime is found"
    when a CUDA build of torch runs without a GPU: a stray line among a matrix's progress lines."""
    code = ("import torch\nfrom trainkit.engine.train import compiled\n"
            "model = compiled.compile_model(torch.nn.Linear(4, 4), None)\nmodel(torch.randn(2, 4)).sum().backward()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                               "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == done.stderr == ""


@pytest.mark.slow
def test_a_compiled_bench_cell_ends_the_run_without_a_leaked_semaphore(tmp_path):
    """inductor waits on its compile workers behind a tqdm bar whose multiprocessing lock the rank
    registered with the launcher's resource tracker: the bench's last line was "There appear to be 1
    leaked semaphore objects" (compiled.thread_lock_for_progress_bars gives tqdm a thread lock)."""
    from .conftest import REPO
    from .test_bench import bench_cmd

    # Without the suite's OMP_NUM_THREADS=1: with one thread inductor compiles in-process, no bar waits.
    environ = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(bench_cmd(tmp_path, "--preset", "quick", "--model", "mlp", "-k", "compiled", "--steps", "3",
                                    "--warmup-steps", "1"), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=environ)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[cell 1/1] mlp-fp32-bs32-ga1-gpus1-compiled" in proc.stdout
    assert "leaked semaphore" not in proc.stdout + proc.stderr
