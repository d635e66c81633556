"""The memory planner: the search against a fake out-of-memory oracle, the recommendation against
hand-made throughputs, a real CPU plan under an address-space cap checked against a brute-force
scan, bad input, bench's --batch-size max and the report's planner section."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, trainkit_cmd
from tests.test_reports import assert_every_chart_renders
from trainkit.analysis.plan.file import SCHEMA, PlanError, planned_max_batch
from trainkit.analysis.plan.search import (
    FAILED,
    OK,
    OOM,
    Candidate,
    Probe,
    candidates,
    most_promising,
    outcome_of,
    recommend,
    search_max_batch,
)
from trainkit.bench.matrix import AXIS_OPTIONS, BATCH_MAX, build_matrix
from trainkit.commands.cli import main
from trainkit.commands.plan import PROBE_GRAD_ACCUM, make_plan, probe_config
from trainkit.commands.plan_options import PlanOptions
from trainkit.engine.cell.launch import run_cell
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.presets import preset
from trainkit.engine.train.hardware import Hardware

CPU_HW = Hardware("cpu", cpu_count=2)


# --- the search, against a fake out-of-memory oracle ---------------------------------------------

def oracle(boundary: int, fails_at: int | None = None):
    """Runs every batch up to `boundary`, runs out of memory above it (crashes at `fails_at`); it
    remembers what it was asked."""
    asked: list[int] = []

    def probe(batch: int) -> Probe:
        asked.append(batch)
        if batch == fails_at:
            return Probe(batch, FAILED, "crashed", "RuntimeError: boom")
        return Probe(batch, OK if batch <= boundary else OOM, "ok" if batch <= boundary else "oom")

    return probe, asked


@pytest.mark.parametrize("boundary,start", [(1, 1), (1, 64), (2, 1), (37, 1), (37, 32), (37, 4096), (1000, 7),
                                            (4096, 4096), (5000, 1024), (100_000, 3)])
def test_the_search_finds_the_boundary_in_logarithmically_many_probes(boundary, start):
    probe, asked = oracle(boundary)
    search = search_max_batch(probe, start)
    assert (search.largest_ok, search.smallest_oom, search.bounded_by) == (boundary, boundary + 1, "oom")
    assert [p.batch for p in search.probes] == asked and len(set(asked)) == len(asked)  # every probe kept, once
    # Doubling or halving from the start to the boundary, then bisecting a gap no wider than it.
    limit = abs(math.log2(start / boundary)) + math.log2(boundary + 1) + 3
    assert len(asked) <= limit, asked


def test_the_planned_maximum_honours_the_safety_factor():
    probe, _ = oracle(1000)
    search = search_max_batch(probe, 64)
    assert search.max_batch(1.0) == 1000 and search.max_batch(0.9) == 900 and search.max_batch(0.333) == 333
    probe, _ = oracle(1)
    assert search_max_batch(probe, 8).max_batch(0.9) is None  # nothing is left of batch 1 after a margin


def test_the_search_stops_at_its_limit_and_at_its_resolution():
    probe, asked = oracle(10_000)
    search = search_max_batch(probe, 64, search_limit=4552)
    assert (search.largest_ok, search.smallest_oom, search.bounded_by) == (4552, None, "search limit")
    assert asked == [64, 128, 256, 512, 1024, 2048, 4096, 4552]
    probe, asked = oracle(100_000)
    coarse = search_max_batch(probe, 1024, resolution=0.05)
    assert coarse.smallest_oom - coarse.largest_ok <= 0.05 * coarse.largest_ok
    assert coarse.largest_ok <= 100_000 < coarse.smallest_oom
    assert len(asked) < len(search_max_batch(oracle(100_000)[0], 1024).probes)


def test_a_probe_that_fails_otherwise_stops_the_search_and_no_fit_is_said():
    probe, asked = oracle(1000, fails_at=128)
    search = search_max_batch(probe, 64)
    assert (search.largest_ok, search.bounded_by, asked) == (64, "failure", [64, 128])
    probe, asked = oracle(0)
    nothing = search_max_batch(probe, 16)
    assert (nothing.largest_ok, nothing.smallest_oom, nothing.bounded_by) == (None, 1, "no batch fits")
    assert asked == [16, 8, 4, 2, 1] and nothing.max_batch(0.9) is None


@pytest.mark.parametrize("status,detail,outcome", [
    ("ok", "", OK), ("oom", "out of memory: ...", OOM),
    ("crashed", "worker rank 0 was killed by SIGKILL during warmup (the kernel's OOM killer ...)", OOM),
    ("crashed", "RuntimeError: std::bad_alloc (loop.py:12)", OOM),
    ("crashed", "ValueError: boom", FAILED), ("timeout", "no reply", FAILED), ("diverged", "diverged@3", FAILED)])
def test_what_counts_as_out_of_memory(status, detail, outcome):
    assert outcome_of({"status": status, "status_detail": detail}) == outcome


# --- candidates and the recommendation -------------------------------------------------------------

def test_candidates_are_the_micro_batches_that_divide_the_target_up_to_the_maximum():
    found = candidates(1024, 300, (1, 2))
    assert [(c.micro_batch, c.grad_accum, c.gpus) for c in found if c.gpus == 1] == [
        (256, 4, 1), (128, 8, 1), (64, 16, 1), (32, 32, 1), (16, 64, 1), (8, 128, 1), (4, 256, 1), (2, 512, 1),
        (1, 1024, 1)]
    assert [(c.micro_batch, c.grad_accum) for c in found if c.gpus == 2][:2] == [(256, 2), (128, 4)]
    assert all(c.micro_batch * c.grad_accum * c.gpus == 1024 for c in found)
    assert [c.micro_batch for c in candidates(12, 100, (1,))] == [12, 6, 4, 3, 2, 1]
    assert [(c.micro_batch, c.gpus) for c in most_promising(found, 3)] == [
        (256, 1), (128, 1), (64, 1), (256, 2), (128, 2), (64, 2)]
    assert candidates(1024, None, (1,)) == []


def measured(micro, accum, gpus, throughput, status="ok", headroom=0):
    return Candidate(micro, accum, gpus, measured=True, status=status, throughput_samples_per_s=throughput,
                     headroom_bytes=headroom)


def test_the_recommendation_is_the_fastest_candidate_that_ran():
    made_up = [measured(512, 2, 1, 900.0), measured(256, 4, 1, 1250.0), measured(128, 8, 1, 1100.0),
               measured(1024, 1, 1, 5000.0, status="oom"), measured(256, 2, 2, None, status="crashed")]
    assert (recommend(made_up).micro_batch, recommend(made_up).grad_accum) == (256, 4)
    tie = [measured(256, 2, 2, 1000.0), measured(512, 2, 1, 1000.0, headroom=1),
           measured(256, 4, 1, 1000.0, headroom=9)]
    assert (recommend(tie).gpus, recommend(tie).micro_batch) == (1, 256)  # fewer GPUs, then more headroom
    assert recommend([measured(64, 2, 1, None, status="oom")]) is None


def fake_record(config: RunConfig, throughput: dict[tuple[str, int, int], float], boundary: dict[str, int]):
    """A record as a cell would end: out of memory past the precision's boundary, else ok with the
    made-up throughput of its micro-batch x accumulation."""
    if config.batch_size > boundary[config.precision]:
        return {"status": "oom", "status_detail": "out of memory: made up", "memory": {}}
    return {"status": "ok", "status_detail": "", "memory": {"host_rss_growth_bytes": 1000 * config.batch_size},
            "throughput_samples_per_s": throughput.get((config.precision, config.batch_size, config.grad_accum), 1.0),
            "step_time_s": {"median": 0.1}}


def fake_estimates(requests):
    """Estimates as trainkit.engine.estimate.estimate answers them, made up: 1 kB a sample over 10 kB of weights."""
    def estimate(batch, accum):
        return {"batch_size": batch, "grad_accum": accum, "total_bytes": 10_000 + 1000 * batch,
                "terms": {"parameters": 10_000, "activations": 1000 * batch}}

    return [{"state": {"parameters": 10_000}, "weights_bytes": 10_000, "activations_per_sample_bytes": 1000,
             "activations_constant_bytes": 0, "first_probe": 16,
             "estimates": [estimate(b, a) for b, a in r["points"]]} for r in requests]


def plan_options(tmp_path, **changes) -> PlanOptions:
    values = dict(base=RunConfig(model="mlp", device="cpu", dataset_size=512), precisions=("fp32", "amp-bf16"),
                  target_batch=64, gpus=(1,), device="cpu", memory_limit_bytes=2**30, safety=0.9,
                  search_limit=None, resolution=0.0, probe_steps=2, measure=3, cell_timeout_s=60.0,
                  output=str(tmp_path / "plan.json"))
    values.update(changes)
    return PlanOptions(**values)


def test_a_plan_recommends_the_fastest_measured_way_to_the_target(tmp_path):
    """make_plan with made-up cells: the largest three micro-batches under each planned maximum are
    measured, the fastest is recommended, and the fastest precision is named."""
    boundary = {"fp32": 40, "amp-bf16": 100}  # planned maxima 36 and 90: candidates 32, 16, 8 and 64, 32, 16
    throughput = {("fp32", 32, 2): 500.0, ("fp32", 16, 4): 800.0, ("fp32", 8, 8): 700.0,
                  ("amp-bf16", 64, 1): 650.0, ("amp-bf16", 32, 2): 600.0, ("amp-bf16", 16, 4): 300.0}
    ran: list[RunConfig] = []

    def run(config):
        ran.append(config)
        return fake_record(config, throughput, boundary)

    hardware = {"device": "cpu", "gpu_count": 0, "capability": None, "gpu_name": None, "cpu_count": 2, "env": {}}
    plan = make_plan(plan_options(tmp_path), hardware, run, fake_estimates)
    fp32, bf16 = plan["precisions"]["fp32"], plan["precisions"]["amp-bf16"]
    assert (fp32["largest_ran_batch"], fp32["smallest_oom_batch"], fp32["max_batch"]) == (40, 41, 36)
    assert [(c["micro_batch"], c["grad_accum"]) for c in fp32["candidates"] if c["measured"]] == [
        (32, 2), (16, 4), (8, 8)]
    assert (fp32["recommendation"]["micro_batch"], fp32["recommendation"]["grad_accum"]) == (16, 4)
    assert (bf16["recommendation"]["micro_batch"], bf16["max_batch"]) == (64, 90)
    assert plan["fastest"]["precision"] == "fp32" and plan["fastest"]["throughput_samples_per_s"] == 800.0
    probes = [c for c in ran if c.grad_accum == PROBE_GRAD_ACCUM and c.steps == 2]
    assert all(c.warmup_steps == 1 for c in probes)
    assert set(fp32["estimate_bytes"]) == {str(p["batch"]) for p in fp32["probes"]}
    for entry in (fp32, bf16):
        for p in entry["probes"]:
            assert p["estimate_bytes"] == entry["estimate_bytes"][str(p["batch"])]["total_bytes"] > 0
    assert plan["schema"] == SCHEMA and json.loads(json.dumps(plan)) == plan


# --- a real plan on a CPU, under an address-space cap ----------------------------------------------

BRUTE_CAP_MIB = 64
# A GPT whose logits take 2 MiB a sample (64 tokens x 8192 classes x 4 B): the cap falls between
# small batch sizes (4 runs, 5 does not), which a brute-force scan can afford to run one by one.
BRUTE_GPT = ("--model", "gpt", "--gpt-layers", "1", "--gpt-width", "64", "--gpt-heads", "2", "--seq-len", "64",
             "--vocab-size", "8192")


@pytest.fixture(scope="module")
def cpu_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    args = ["plan", *BRUTE_GPT, "--precision", "fp32", "--target-batch", "8", "--device", "cpu",
            "--memory-limit-gb", str(BRUTE_CAP_MIB / 1024), "--search-limit", "none", "--resolution", "0",
            "--safety", "1", "--measure", "2", "--steps", "2", "--warmup-steps", "1",
            "--output", str(out / "plan.json"), "--report", str(out / "plan.html"), "--quiet"]
    status = main(args)
    with open(out / "plan.json") as f:
        plan = json.load(f)
    return {"status": status, "plan": plan, "dir": out}


def test_a_real_cpu_plan_finds_the_largest_batch_a_brute_force_scan_finds(cpu_plan):
    """The search's answer against every batch size from 1 up, each a real probe cell under the same
    cap: all of them run up to the search's largest, and the next one runs out of memory. So the
    largest successful probe really runs under the cap and the smallest failing one really fails."""
    plan = cpu_plan["plan"]
    fp32 = plan["precisions"]["fp32"]
    assert fp32["bounded_by"] == "oom" and fp32["smallest_oom_batch"] == fp32["largest_ran_batch"] + 1
    base = RunConfig.from_dict({**plan["config"], "device": "cpu"})
    scan = {}
    for batch in range(1, fp32["smallest_oom_batch"] + 1):
        record = run_cell(probe_config(base, "fp32", batch, 1, 2), timeout_s=300,
                          memory_limit_bytes=BRUTE_CAP_MIB * 2**20, evaluate=False)
        scan[batch] = outcome_of(record)
    first_oom = min(b for b, outcome in scan.items() if outcome == OOM)
    assert first_oom == fp32["smallest_oom_batch"] and all(scan[b] == OK for b in range(1, first_oom)), scan
    assert fp32["max_batch"] == fp32["largest_ran_batch"]  # --safety 1


def test_a_real_cpu_plan_writes_what_the_issue_asks_for(cpu_plan):
    plan = cpu_plan["plan"]
    assert cpu_plan["status"] == 0 and plan["device"] == "cpu" and plan["memory_limit_bytes"] == BRUTE_CAP_MIB * 2**20
    for precision, entry in plan["precisions"].items():
        probed = {p["batch"] for p in entry["probes"]}
        assert set(entry["estimate_bytes"]) == {str(b) for b in probed}
        for estimate in entry["estimate_bytes"].values():
            assert estimate["total_bytes"] == sum(estimate["terms"].values()) > 0
            assert estimate["terms"]["activations"] + estimate["terms"]["temporaries"] > 0
        assert all(p["outcome"] in (OK, OOM) for p in entry["probes"])
        ran = [p for p in entry["probes"] if p["outcome"] == OK]
        assert ran and all(p["peak_measure"] == "host_vm_growth_bytes" for p in ran)
        assert all(0 < p["peak_bytes"] <= plan["memory_limit_bytes"] for p in ran)  # the cap held
        assert entry["estimate"]["activations_per_sample_bytes"] > 2 * 64 * 8192  # logits and their softmax
        best = entry["recommendation"]
        assert best["micro_batch"] * best["grad_accum"] * best["gpus"] == 8
        assert best["micro_batch"] <= entry["max_batch"] and best["throughput_samples_per_s"] > 0
        assert 0 < best["peak_bytes"] < plan["memory_limit_bytes"] and best["headroom_bytes"] > 0
        assert [c["measured"] for c in entry["candidates"]][:2] == [True, True], precision
    assert plan["fastest"]["precision"] in plan["precisions"]
    # bench's --batch-size max reads this very plan for a cell of the same model, options and cap
    cell = RunConfig.from_dict({**plan["config"], "device": "cpu"}).replace(precision="fp32", batch_size=1)
    assert planned_max_batch([plan], cell, "cpu", BRUTE_CAP_MIB * 2**20) == plan["precisions"]["fp32"]["max_batch"]


def test_the_plan_page_and_the_report_section_render(cpu_plan, tmp_path):
    from trainkit.reports.build import build_report

    page_path = cpu_plan["dir"] / "plan.html"
    page = page_path.read_text()
    assert "Memory planner" in page and page.count('<div class="chart">') == 3
    assert_every_chart_renders(str(page_path), page, tmp_path)
    results = tmp_path / "results.jsonl"
    record = run_cell(probe_config(RunConfig(model="mlp", device="cpu", dataset_size=256), "fp32", 8, 1, 1),
                      timeout_s=120, evaluate=False)
    assert record["status"] == "ok" and record["loss"]["eval"] is None  # a probe skips the held-out loss
    assert record["memory"]["host_vm_growth_bytes"] > 0
    results.write_text(json.dumps(record) + "\n")
    paths = build_report([str(results)], str(tmp_path / "report.html"), plans=[str(cpu_plan["dir"] / "plan.json")])
    with open(paths["html"]) as f:
        report = f.read()
    assert '<section id="planner"><h2>Memory planner</h2>' in report and 'href="#planner"' in report
    assert "Estimated vs measured peak per probe" in report
    # the page again from the plan file alone; a file that is not a plan is bad input, one line
    from trainkit.reports.cli import main as reports_main

    again = tmp_path / "again.html"
    assert reports_main(["plan", str(cpu_plan["dir"] / "plan.json"), "-o", str(again)]) == 0
    assert again.read_text().count('<div class="chart">') == 3
    assert reports_main(["plan", str(results), "-o", str(tmp_path / "no.html")]) == 2
    assert not (tmp_path / "no.html").exists()


# --- bad input: one line, exit 2 -----------------------------------------------------------------

def test_a_target_no_micro_batch_divides_is_refused_before_anything_runs():
    done = subprocess.run(trainkit_cmd("plan", "--model", "mlp", "--precision", "fp32", "--target-batch", "1001",
                                       "--gpus", "2", "--device", "cpu", "--memory-limit-gb", "1", "--output",
                                       "/dev/null"), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--target-batch 1001" in done.stderr and "multiple of 2" in done.stderr


@pytest.mark.parametrize("args,message", [
    (("--precision", "fp32,tf32", "--memory-limit-gb", "1"), "--precision tf32: tf32 needs a CUDA GPU"),
    (("--precision", "fp32", "--memory-limit-gb", "0.0001"), "is below mlp's own weights in fp32"),
    (("--precision", "fp32"), "plan on a CPU needs --memory-limit-gb"),
    (("--precision", "fp32", "--memory-limit-gb", "1", "--safety", "1.5"), "--safety: must be <= 1"),
    (("--precision", "fp8", "--memory-limit-gb", "1"), "invalid choice: 'fp8'"),
])
def test_bad_input_exits_2_in_one_line(args, message, capsys, tmp_path):
    status = main(["plan", "--model", "mlp", "--target-batch", "64", "--device", "cpu", *args,
                   "--output", str(tmp_path / "plan.json")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "plan.json").exists()


# --- bench: --batch-size max ----------------------------------------------------------------------

def plan_document(**changes) -> dict:
    plan = {"schema": SCHEMA, "path": "plan.json", "device": "cpu", "gpu_name": None,
            "memory_limit_bytes": 2**30, "probe": {"world_size": 2},
            "config": RunConfig(model="mlp").to_dict(),
            "precisions": {"fp32": {"max_batch": 3686, "bounded_by": "oom"},
                           "amp-bf16": {"max_batch": 1234, "bounded_by": "oom"}}}
    plan.update(changes)
    return plan


def test_batch_size_max_resolves_to_each_precisions_planned_maximum():
    plans = [plan_document()]

    def resolve(config):
        return planned_max_batch(plans, config, "cpu", 2**30)

    quick = preset("tiny", on_gpu=False)  # no compiled or checkpointed blocks: the plan holds for every cell
    cells = build_matrix(quick, CPU_HW, {"model": ("mlp",), "precision": ("fp32", "amp-bf16", "tf32"),
                                         "batch_size": (BATCH_MAX, 64), "grad_accum": (1,), "gpus": (1,)},
                         2, 1, max_batch=resolve)
    assert [c.id for c in cells] == ["mlp-fp32-bs3686-ga1-gpus1", "mlp-fp32-bs64-ga1-gpus1",
                                     "mlp-amp-bf16-bs1234-ga1-gpus1", "mlp-amp-bf16-bs64-ga1-gpus1",
                                     "mlp-tf32-bs64-ga1-gpus1"]  # tf32 cannot run here and has no plan
    assert AXIS_OPTIONS["batch_size"][1]("max,8") == (BATCH_MAX, 8)
    with pytest.raises(argparse.ArgumentTypeError, match=r"'two' is not an integer \(or max"):
        AXIS_OPTIONS["batch_size"][1]("max,two")
    with pytest.raises(ValueError, match="--batch-size max needs --plan"):
        build_matrix(quick, CPU_HW, {"model": ("mlp",), "batch_size": (BATCH_MAX,)}, 2, 1)


@pytest.mark.parametrize("plan,config,device,limit,message", [
    (plan_document(), RunConfig(), "cpu", 2**31, "is for a 1 GiB memory cap, this run's is 2 GiB"),
    (plan_document(config=RunConfig(model="gpt").to_dict()), RunConfig(model="gpt", optimizer="adamw"), "cpu", 2**30,
     "was made with optimizer 'sgd' (the cell's 'adamw')"),
    (plan_document(device="cuda", gpu_name="NVIDIA H100"), RunConfig(), "cpu", 2**30, "made on NVIDIA H100, not cpu"),
    (plan_document(), RunConfig(precision="half-bf16"), "cpu", 2**30, "plan.json has no half-bf16"),
    (plan_document(probe={"world_size": 1}), RunConfig(world_size=2), "cpu", 2**30, "probed 1 rank"),
    # Checkpointing and compiling change what a step holds: an eager plan's maximum is not theirs.
    (plan_document(), RunConfig(model="mlp", compile=True), "cpu", 2**30,
     "was made with compile False (the cell's True)"),
    (plan_document(config=RunConfig(model="gpt").to_dict()), RunConfig(model="gpt", activation_checkpointing="full"),
     "cpu", 2**30, "was made with activation_checkpointing 'none' (the cell's 'full')"),
])
def test_a_plan_that_does_not_hold_for_a_cell_says_which_plan_to_make(plan, config, device, limit, message):
    with pytest.raises(PlanError) as info:
        planned_max_batch([plan], config, device, limit)
    assert message in str(info.value) and f"python -m trainkit plan --model {config.model}" in str(info.value)
    if config.optimizer != RunConfig().optimizer:  # the plan to make has the cell's memory-shaping options
        assert f"--optimizer {config.optimizer} " in str(info.value)
    if config.compile:
        assert "--compile --precision" in str(info.value)
    if config.activation_checkpointing != "none":
        assert "--activation-checkpointing full " in str(info.value)


def test_bench_reads_the_plan_at_collection(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_document(memory_limit_bytes=2**30)))
    command = [sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "-p", "no:randomly",
               "--collect-only", "-q", "--preset", "tiny", "--model", "mlp", "--precision", "fp32,amp-bf16",
               "--batch-size", "max", "--grad-accum", "1", "--cell-memory-limit-gb", "1", "--plan", str(path),
               "--report-dir", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "test_train[mlp-fp32-bs3686-ga1-gpus1]" in done.stdout
    assert "test_train[mlp-amp-bf16-bs1234-ga1-gpus1]" in done.stdout


def test_the_search_goes_to_out_of_memory_unless_limited(tmp_path):
    """By default each precision's maximum is its own (bench's --batch-size max compares them);
    auto stops at the target per rank with its margin."""
    from trainkit.commands.cli import build_parser
    from trainkit.commands.plan_options import options_from_args

    common = ["plan", "--model", "mlp", "--precision", "fp32", "--target-batch", "4096", "--gpus", "2,4",
              "--device", "cpu", "--memory-limit-gb", "1", "--output", str(tmp_path / "plan.json")]
    assert options_from_args(build_parser().parse_args(common)).search_limit is None
    auto = options_from_args(build_parser().parse_args([*common, "--search-limit", "auto"]))
    assert auto.search_limit == math.ceil(4096 // 2 / 0.9) and auto.gpus == (2, 4)


# --- the plan file and its page, as main built them before the planner's types moved ---------------

EXAMPLE_PLAN = Path(REPO) / "reports" / "examples" / "cpu-plan" / "plan.json"
EXAMPLE_SECTION = Path(REPO) / "tests" / "fixtures" / "cpu_plan_section.html"
"""trainkit.reports.plan.section of the example plan, as built before the plan's pure part moved to
trainkit.analysis (main at 3f4281c): the move changes no byte of it."""


def key_shape(document: dict) -> dict:
    """The keys of a plan, in order, at every level a reader looks into."""
    entry = next(iter(document["precisions"].values()))
    return {"plan": list(document), "precision": list(entry), "estimate": list(entry["estimate"]),
            "probe": list(entry["probes"][0]), "candidate": list(entry["candidates"][0]),
            "recommendation": list(entry["recommendation"]), "fastest": list(document["fastest"]),
            "probe cells": list(document["probe"]), "candidate cells": list(document["candidate_cells"])}


def test_a_plan_written_now_has_the_keys_of_the_committed_example(tmp_path):
    boundary, throughput = {"fp32": 40, "amp-bf16": 100}, {("fp32", 16, 4): 800.0}
    hardware = {"device": "cpu", "gpu_count": 0, "capability": None, "gpu_name": None, "cpu_count": 2, "env": {}}
    plan = make_plan(plan_options(tmp_path), hardware, lambda c: fake_record(c, throughput, boundary), fake_estimates)
    example = json.loads(EXAMPLE_PLAN.read_text())
    # Keys added since the example was planned: a candidate's throughput interval and flags, whether
    # the fastest is ranked, how the candidates ran. An older plan lacks them; readers take them as
    # not measured (the example's page is unchanged, below).
    added = {"candidate": CANDIDATE_ADDED, "recommendation": CANDIDATE_ADDED,
             "fastest": [*CANDIDATE_ADDED, "ranked"], "candidate cells": ["memory_capped"]}
    now = key_shape(plan)
    assert {k: [key for key in keys if key not in added.get(k, [])] for k, keys in now.items()} == key_shape(example)
    assert all(set(keys) <= set(now[k]) for k, keys in added.items())


CANDIDATE_ADDED = ["throughput_low_samples_per_s", "throughput_high_samples_per_s", "flags"]


def test_the_committed_example_plan_builds_the_page_it_built_before_the_move():
    from trainkit.reports.plan import page, read_plans, section

    (plan,) = read_plans([str(EXAMPLE_PLAN)])
    built = section([plan])
    assert built == EXAMPLE_SECTION.read_text()
    assert built in page(plan)
