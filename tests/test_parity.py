"""Loss parity: verdicts against fp32's seed noise, the diagnostic that explains a moved loss, and
time to target. The records come from real in-process runs of the parity GPT, made once per session."""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess

import numpy as np
import pytest

from trainkit.commands.parity import (
    CPU_SETUPS,
    TASK_SEED,
    judge,
    judge_model,
    smooth,
    steps_to,
    window_of,
)
from trainkit.engine.config import ProfileConfig, RunConfig
from trainkit.engine.result import merge_ranks
from trainkit.engine.worker import RankWorker

from .conftest import REPO, trainkit_cmd

STEPS = 58  # + 2 warmup, at batch 8: a fifth of the CLI's run, enough for the verdicts below (the tests' CPU budget)
BATCH = 8
SEEDS = (0, 1, 2)
OTHER_SEEDS = (3, 4, 5)
TWO_SEEDS = (0, 1)
REQUIRED = ("verdict", "eval_loss", "band", "steps_to_target", "time_to_target_s", "effective_speedup")


@functools.cache
def record(precision: str, seed: int, **changes) -> dict:
    """One cell of the parity GPT on the CPU, in this process, with its diagnostics."""
    setup = CPU_SETUPS["gpt"]
    config = RunConfig(model="gpt", precision=precision, seed=seed, task_seed=TASK_SEED, device="cpu", steps=STEPS,
                       warmup_steps=setup.warmup_steps, cpu_threads=1,  # tiny matmuls: a second thread only waits
                       **{**setup.options, "batch_size": BATCH, **changes})
    worker = RankWorker(config, profile=ProfileConfig(phase_steps=0))
    worker.warmup()
    worker.run_timed()
    return merge_ranks(config, [worker.collect()])


def cells(precision: str, seeds=SEEDS, **changes) -> list[dict]:
    return [record(precision, s, **changes) for s in seeds]


@pytest.fixture(scope="module")
def verdicts() -> dict:
    """fp32's band from seeds 0-2, and against it: fp32 on seeds 3-5, and on seeds 0-1 pure fp16,
    fp16 with master weights, and fp32 with a planted fault (its learning rate x10)."""
    return judge(cells("fp32"), {
        "fp32": cells("fp32"),
        "fp32, other seeds": cells("fp32", OTHER_SEEDS),
        "half-fp16": cells("half-fp16", TWO_SEEDS),
        "half-fp16-master": cells("half-fp16-master", TWO_SEEDS),
        "fp32, lr x10": cells("fp32", TWO_SEEDS, lr=CPU_SETUPS["gpt"].options["lr"] * 10),
    })


def test_fp32_on_seeds_outside_the_reference_set_is_within_noise(verdicts):
    entry = verdicts["precisions"]["fp32, other seeds"]
    assert entry["verdict"] == "within-noise", entry
    assert entry["distance_band_widths"] == 0.0 and "named" not in entry
    low, high = verdicts["reference"]["band"]
    assert low <= entry["eval_loss"] <= high
    assert verdicts["precisions"]["fp32"]["verdict"] == "within-noise"


def test_pure_fp16_adamw_is_better_with_its_optimizer_state_underflow_named(verdicts):
    entry = verdicts["precisions"]["half-fp16"]
    assert entry["verdict"] == "better", entry
    assert entry["named"].startswith("optimizer-state underflow: "), entry["named"]
    assert entry["flags"][0]["name"] == "optimizer-state underflow"
    assert entry["diagnostics"]["second_moment_zero_share"] > 0.3
    assert verdicts["reference"]["diagnostics"]["second_moment_zero_share"] == 0.0
    assert entry["steps_to_target"] < verdicts["precisions"]["fp32"]["steps_to_target"]  # it descends faster


def test_its_master_weight_twin_is_within_noise(verdicts):
    entry = verdicts["precisions"]["half-fp16-master"]
    assert entry["verdict"] == "within-noise", entry
    assert entry["flags"] == [] and entry["diagnostics"]["second_moment_zero_share"] == 0.0
    # Seed by seed, it lands where fp32 does (same start, same samples), to a hundredth of the band.
    fp32 = [r["loss"]["eval"] for r in cells("fp32", TWO_SEEDS)]
    assert entry["eval_losses"] == pytest.approx(fp32, abs=0.01 * verdicts["reference"]["band_width"])
    memory, fp32_memory = entry["memory"], verdicts["precisions"]["fp32"]["memory"]
    assert memory["master_bytes"] == fp32_memory["param_bytes"] == 2 * memory["param_bytes"]  # the price


def test_a_planted_fault_is_judged_and_its_diagnostic_named(verdicts):
    entry = verdicts["precisions"]["fp32, lr x10"]
    assert entry["verdict"] in ("better", "worse"), entry
    assert entry["named"].startswith("update size: "), entry["named"]
    assert [f["name"] for f in entry["flags"]] == ["update size"]


def test_effective_speedup_is_throughput_speedup_times_the_step_ratio_from_the_records(verdicts):
    """Recomputed from the records alone: median step times, and the first step at which the
    seed-mean trailing-mean curve reaches the target."""
    target = verdicts["target"]["loss"]
    window = window_of(STEPS + 2)

    def from_records(records):
        step_s = statistics.median(r["step_time_s"]["median"] for r in records)
        curves = np.array([r["loss"]["curve"] for r in records])
        kernel = np.ones(window)
        sums = np.array([np.convolve(c, kernel)[:len(c)] for c in curves])
        counts = np.minimum(np.arange(1, curves.shape[1] + 1), window)
        mean = (sums / counts).mean(axis=0)
        reached = np.nonzero(mean <= target)[0]
        return step_s, int(reached[0]) + 1 if len(reached) else None

    fp32_step_s, fp32_steps = from_records(cells("fp32"))
    for name in ("half-fp16", "half-fp16-master"):
        entry = verdicts["precisions"][name]
        step_s, steps = from_records(cells(name, TWO_SEEDS))
        assert (entry["step_time_s"], entry["steps_to_target"]) == (pytest.approx(step_s), steps)
        assert entry["throughput_speedup"] == pytest.approx(fp32_step_s / step_s)
        assert entry["time_to_target_s"] == pytest.approx(steps * step_s)
        assert entry["effective_speedup"] == pytest.approx(entry["throughput_speedup"] * fp32_steps / steps)


def test_the_curve_helpers():
    assert smooth([4.0, 2.0, 0.0, None, 1.0], 2) == [4.0, 3.0, 1.0, None, None]
    assert steps_to([3.0, None, 2.0, 1.0], 2.0) == 3 and steps_to([3.0], 1.0) is None


def test_judge_model_groups_records_by_precision_and_needs_two_reference_seeds():
    block = judge_model(cells("fp32")[:2] + cells("half-fp16-master", TWO_SEEDS))
    assert list(block["precisions"]) == ["fp32", "half-fp16-master"] and block["reference"]["seeds"] == 2
    alone = judge_model(cells("fp32")[:1] + cells("half-fp16-master", TWO_SEEDS)[:1])
    assert alone["reference"]["error"] == "1 fp32 seed(s) finished; a band needs at least 2"
    assert {e["verdict"] for e in alone["precisions"].values()} == {"no-verdict"}


# --- the command and its report -----------------------------------------------------------------

@pytest.fixture(scope="module")
def parity_run(tmp_path_factory):
    """`python -m trainkit parity` end to end: real cells in fresh workers, the document, the
    records and the report."""
    out = tmp_path_factory.mktemp("parity")
    command = trainkit_cmd("parity", "--model", "mlp", "--precision", "half-bf16,half-bf16-master", "--seeds", "2",
                           "--steps", "12", "--device", "cpu", "--jobs", "2", "--output", str(out / "parity.json"),
                           "--report", str(out / "parity.html"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    with open(out / "parity.json") as f:
        doc = json.load(f)
    return {"done": done, "doc": doc, "out": out}


def test_the_command_writes_a_document_with_one_entry_per_precision(parity_run):
    done, doc = parity_run["done"], parity_run["doc"]
    assert done.returncode == 0, done.stderr
    assert "[parity] 6/6 mlp " in done.stderr and "[parity] 1/6 mlp " in done.stderr  # progress, cell by cell
    assert doc["schema"] == "trainkit.parity/1" and doc["device"] == "cpu" and doc["seeds"] == [0, 1]
    assert "not GPU claims" in doc["timing_note"]
    block = doc["models"]["mlp"]
    assert list(block["precisions"]) == ["fp32", "half-bf16", "half-bf16-master"]
    for entry in block["precisions"].values():
        assert set(REQUIRED) <= set(entry) and entry["verdict"] in ("within-noise", "better", "worse")
        assert [c["seed"] for c in entry["cells"]] == [0, 1]
    assert block["config"]["task_seed"] == TASK_SEED and block["steps"] == 14
    with open(doc["records_file"]) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    assert all(r["diagnostics"]["step"] == 14 for r in records)
    # Two cells at a time, each with half the cores.
    assert {r["config"]["torch_num_threads"] for r in records} == {max(1, os.cpu_count() // 2)}


def test_the_command_refuses_bad_input_in_one_line(tmp_path):
    for args, message in ((["--target-fraction", "2"], "--target-fraction 2 must be in (0, 1]"),
                          (["--seeds", "1"], "argument --seeds: '1' must be >= 2"),
                          (["--model", "cnn", "--device", "cpu"], "--model: no parity recipe for cnn on cpu; "
                                                                  "choose from gpt, mlp"),
                          (["--precision", "fp64"], "invalid choice: 'fp64'"),
                          (["--jobs", "0"], "argument --jobs/-j: '0' must be >= 1")):
        done = subprocess.run(trainkit_cmd("parity", "-o", str(tmp_path / "p.json"), *args), capture_output=True,
                              text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not (tmp_path / "p.json").exists()


def test_the_parity_report_renders_in_chromium_without_console_errors(parity_run, tmp_path):
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    from .test_reports import assert_every_chart_renders

    page_path = parity_run["out"] / "parity.html"
    page = page_path.read_text()
    assert '<section id="parity">' in page and page.count('<div class="chart">') == 1
    assert "fp32 band" in page and "within-noise" in page and "not GPU claims" in page
    assert_every_chart_renders(str(page_path), page, tmp_path)
    markdown = (parity_run["out"] / "parity.md").read_text()
    assert "| half-bf16-master |" in markdown and "effective vs fp32" in markdown and "time to target" in markdown
    band = parity_run["doc"]["models"]["mlp"]["reference"]["band"]
    assert f"band {band[0]:.4f} – {band[1]:.4f}" in markdown


def test_a_report_of_results_and_a_parity_document_has_both(parity_run, tmp_path):
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    from reports.build import build_report

    doc = parity_run["doc"]
    paths = build_report([doc["records_file"], str(parity_run["out"] / "parity.json")], str(tmp_path / "r.html"))
    with open(paths["html"]) as f:
        page = f.read()
    assert '<section id="summary">' in page and '<section id="parity">' in page
    assert page.index('<section id="loss">') < page.index('<section id="parity">') < page.index('<section id="scaler">')



def test_the_report_names_the_diagnostic_next_to_each_verdict(verdicts):
    """Under a better or worse row, the diagnostic named; under a within-noise row that still has a
    diagnostic standing out, that one; under a row with nothing standing out, no note."""
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    import copy
    import re

    from reports import parity as parity_report
    from trainkit.commands.parity import document

    block = copy.deepcopy(verdicts)
    block["precisions"] = {p: block["precisions"][p] for p in ("fp32", "half-fp16", "half-fp16-master")}
    standing = {"name": "updates rounded away", "text": "updates rounded away: a step left 9% of the weights"}
    block["precisions"]["half-fp16-master"]["flags"] = [standing]
    doc = document({"gpt": block}, seeds=list(SEEDS), device="cpu", env=None, configs={"gpt": {}})
    page = parity_report.section([doc])

    def note_after(precision: str) -> str | None:
        row = re.search(rf'<tr[^>]*precision="{precision}"[^>]*>(?:(?!</tr>).)*</tr>'
                        r'(<tr class="row-note"[^>]*>.*?</tr>)?', page, re.S)
        assert row, precision
        return row.group(1)

    named = verdicts["precisions"]["half-fp16"]["named"]
    assert "better" in note_after("half-fp16") and parity_report.html.esc(named) in note_after("half-fp16")
    assert "within noise, though it stands out: updates rounded away" in note_after("half-fp16-master")
    assert note_after("fp32") is None
