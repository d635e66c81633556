"""Loss parity: verdicts from the seed-paired eval-loss differences against fp32, the diagnostic that
explains a moved loss, and time to target. The records come from real in-process runs of the parity
GPT, made once per session; the statistics are also checked alone, against scipy and by simulation."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from trainkit.analysis.parity.document import (
    NO_VERDICT,
    PARITY_SCHEMA,
    TARGET_FRACTION,
    TASK_SEED,
    VERDICTS,
    Interval,
    Margin,
)
from trainkit.analysis.parity.stats import verdict
from trainkit.analysis.parity.verdicts import judge, judge_model, smooth, steps_to, window_of
from trainkit.commands.parity import CPU_SETUPS, judge_records
from trainkit.engine.cell.record import merge_ranks
from trainkit.engine.cell.worker import RankWorker
from trainkit.engine.spec.config import ProfileConfig, RunConfig

from .conftest import REPO, trainkit_cmd

STEPS = 58  # + 2 warmup, at batch 8: a fifth of the CLI's run, enough for the verdicts below (the tests' CPU budget)
BATCH = 8
SEEDS = (0, 1, 2, 3, 4)
THREE_SEEDS = (0, 1, 2)
OTHER_SEEDS = (5, 6, 7)
LR = CPU_SETUPS["gpt"].options["lr"]
EXAMPLE = os.path.join(REPO, "reports", "examples", "cpu-parity", "parity.json")


# --- real cells -----------------------------------------------------------------------------------

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


def scaled_eval(records: list[dict], factor: float) -> list[dict]:
    """A test-only hook: the records with their eval loss scaled (a planted shift of the measured loss)."""
    return [{**r, "loss": {**r["loss"], "eval": r["loss"]["eval"] * factor}} for r in records]


@pytest.fixture(scope="module")
def verdicts():
    """fp32 on seeds 0-4, and against it: fp32 itself, fp32 on other seeds, fp32 accumulating two
    micro-batches of 4 (the same optimizer, other rounding), planted shifts (lr x 0.98; the eval loss
    x 1.01), pure fp16, fp16 with master weights, and a planted fault (lr x 10)."""
    return judge(cells("fp32"), {
        "fp32": cells("fp32"),
        "fp32, other seeds": cells("fp32", OTHER_SEEDS),
        "fp32, 2 x 4 accumulated": cells("fp32", batch_size=BATCH // 2, grad_accum=2),
        "fp32, lr x 0.98": cells("fp32", lr=LR * 0.98),
        "fp32, eval x 1.01": scaled_eval(cells("fp32"), 1.01),
        "half-fp16": cells("half-fp16"),
        "half-fp16-master": cells("half-fp16-master", THREE_SEEDS),
        "fp32, lr x10": cells("fp32", THREE_SEEDS, lr=LR * 10),
        "fp32 accumulated, seed 3 far": [*cells("fp32", SEEDS[:3], batch_size=BATCH // 2, grad_accum=2),
                                         *scaled_eval(cells("fp32", (3,), batch_size=BATCH // 2, grad_accum=2), 1.05),
                                         *cells("fp32", (4,), batch_size=BATCH // 2, grad_accum=2)],
    })


def test_fp32_against_itself_is_the_reference_row(verdicts):
    entry = verdicts.precisions["fp32"]
    assert entry.verdict == "reference" and entry.loss.differences == (0.0,) * 5 and entry.named is None


def test_an_independent_fp32_set_is_equivalent(verdicts):
    """fp32 accumulating 2 micro-batches of 4 is the same training, rounded otherwise: its eval losses
    differ from fp32's (not a copy), by far less than the margin."""
    entry = verdicts.precisions["fp32, 2 x 4 accumulated"]
    assert entry.verdict == "equivalent", entry.loss
    assert entry.loss.test == "paired t" and any(entry.loss.differences)
    assert -entry.loss.margin_loss <= entry.loss.difference.low <= entry.loss.difference.high <= entry.loss.margin_loss


def test_a_seed_standing_apart_gives_no_verdict_and_names_it(verdicts):
    """Planted: the equivalent accumulated run with seed 3's eval loss 5 % higher (a test-only hook). A
    t interval over it would cover neither the typical seed nor the mean; no verdict, seed 3 named."""
    entry = verdicts.precisions["fp32 accumulated, seed 3 far"]
    assert entry.verdict == NO_VERDICT and entry.reason.startswith("seed 3 stands apart: eval-loss difference")
    assert "rerun it or add seeds" in entry.reason


def test_fp32_on_seeds_fp32_did_not_run_is_an_independent_set(verdicts):
    """No seed in common: nothing to pair, and 3 seeds a set are too few for Welch's interval
    (WELCH_MIN_SEEDS): no verdict, saying why and what would decide it."""
    entry = verdicts.precisions["fp32, other seeds"]
    assert entry.verdict == NO_VERDICT and "Welch's interval needs 5 a set" in entry.reason
    assert "run the seeds fp32 ran" in entry.reason


def test_a_planted_small_shift_is_worse_with_five_seeds(verdicts):
    """A learning rate 2% lower and an eval loss 1% higher (a test-only hook on the records): about
    twice the 0.5% margin, paid by each seed, and inside the old rule's band (fp32's mean +- 2 sd of
    single seeds), which called both within-noise."""
    for name in ("fp32, lr x 0.98", "fp32, eval x 1.01"):
        entry = verdicts.precisions[name]
        assert entry.verdict == "worse" and entry.loss.difference.low > entry.loss.margin_loss, (name, entry.loss)
        assert entry.loss.seeds == SEEDS and entry.loss.p_value < 0.01
        assert entry.loss.difference.mean < 2 * verdicts.reference.eval_loss_sd
    assert verdicts.precisions["fp32, eval x 1.01"].loss.relative_difference == pytest.approx(0.01, rel=0.05)


def test_pure_fp16_adamw_is_better_with_its_optimizer_state_underflow_named(verdicts):
    entry = verdicts.precisions["half-fp16"]
    assert entry.verdict == "better", entry.loss
    assert entry.named.startswith("optimizer-state underflow: "), entry.named
    assert entry.flags[0].name == "optimizer-state underflow"
    assert entry.diagnostics["second_moment_zero_share"] > 0.3
    assert verdicts.reference.diagnostics["second_moment_zero_share"] == 0.0
    reference = verdicts.precisions["fp32"].timing.steps_to_target.mean
    assert entry.timing.steps_to_target.mean < reference  # it descends faster


def test_its_master_weight_twin_is_equivalent(verdicts):
    entry = verdicts.precisions["half-fp16-master"]
    assert entry.verdict == "equivalent", entry.loss
    assert entry.flags == () and entry.diagnostics["second_moment_zero_share"] == 0.0
    # Seed by seed, it lands where fp32 does (same start, same samples), to a hundredth of the margin.
    assert max(abs(d) for d in entry.loss.differences) < 0.01 * entry.loss.margin_loss
    memory, fp32_memory = entry.memory, verdicts.precisions["fp32"].memory
    assert memory.master_bytes == fp32_memory.param_bytes == 2 * memory.param_bytes  # the price


def test_a_planted_fault_is_judged_and_its_diagnostic_named(verdicts):
    entry = verdicts.precisions["fp32, lr x10"]
    assert entry.verdict in ("better", "worse"), entry.loss
    assert entry.named.startswith("update size: "), entry.named
    assert [f.name for f in entry.flags] == ["update size"]


def from_records(records: list[dict], targets: dict[int, float]) -> dict[int, tuple[float, int | None]]:
    """Per seed, recomputed from the record alone: (median step time, first step at which the
    trailing-mean training loss reaches the seed's target)."""
    window = window_of(STEPS + 2)
    out = {}
    for r in records:
        curve = np.array(r["loss"]["curve"])
        smoothed = np.convolve(curve, np.ones(window))[:len(curve)] / np.minimum(np.arange(1, len(curve) + 1), window)
        reached = np.nonzero(smoothed <= targets[r["config"]["seed"]])[0]
        out[r["config"]["seed"]] = (r["step_time_s"]["median"], int(reached[0]) + 1 if len(reached) else None)
    return out


def test_time_to_target_and_speedups_per_seed_from_the_records(verdicts):
    """Each seed's target is its fp32 twin's smoothed loss at 80% of the run; the effective speedup is
    the geometric mean of fp32's time to target over this one's, seed by seed."""
    at = math.ceil(TARGET_FRACTION * (STEPS + 2)) - 1
    window = window_of(STEPS + 2)
    targets = {r["config"]["seed"]: smooth(r["loss"]["curve"], window)[at] for r in cells("fp32")}
    assert verdicts.target.loss_per_seed == {str(s): pytest.approx(t) for s, t in targets.items()}
    fp32 = from_records(cells("fp32"), targets)
    assert all(steps <= at + 1 for _, steps in fp32.values())  # fp32 reaches its own target by then
    for name, seeds in (("half-fp16", SEEDS), ("half-fp16-master", THREE_SEEDS)):
        entry, mine = verdicts.precisions[name], from_records(cells(name, seeds), targets)
        assert [(t.step_time_s, t.steps_to_target) for t in entry.timing.per_seed] == [mine[s] for s in seeds]
        ratios = [fp32[s][0] * fp32[s][1] / (mine[s][0] * mine[s][1]) for s in seeds]
        assert entry.timing.effective_speedup.mean == pytest.approx(math.exp(statistics.fmean(map(math.log, ratios))))
        assert entry.timing.steps_to_target.mean == pytest.approx(  # a count: the geometric mean, positive
            math.exp(statistics.fmean(math.log(mine[s][1]) for s in seeds)))


def test_reaching_the_target_at_fp32s_step_makes_the_effective_speedup_the_throughput_speedup(verdicts):
    entry = verdicts.precisions["half-fp16-master"]
    fp32_steps = {t.seed: t.steps_to_target for t in verdicts.precisions["fp32"].timing.per_seed}
    assert all(t.steps_to_target == fp32_steps[t.seed] for t in entry.timing.per_seed)
    effective, throughput = entry.timing.effective_speedup, entry.timing.throughput_speedup
    assert (effective.mean, effective.low, effective.high) == pytest.approx(
        (throughput.mean, throughput.low, throughput.high))


def test_not_reached_says_how_many_seeds_reached():
    """A target between the seeds' lowest smoothed losses: the two lower seeds reach it, the third not."""
    window = window_of(STEPS + 2)
    lowest = sorted(min(smooth(r["loss"]["curve"], window)) for r in cells("fp32", THREE_SEEDS))
    block = judge(cells("fp32"), {"fp32, 3 seeds": cells("fp32", THREE_SEEDS)}, target_loss=lowest[1])
    timing = block.precisions["fp32, 3 seeds"].timing
    assert timing.seeds_reached == 2 and timing.steps_to_target.mean is None, timing.per_seed
    assert timing.steps_to_target.note == timing.effective_speedup.note == "not reached in 1 of 3 seeds"
    assert timing.effective_speedup.mean is None and timing.throughput_speedup.mean is not None


def test_the_curve_helpers():
    assert smooth([4.0, 2.0, 0.0, None, 1.0], 2) == [4.0, 3.0, 1.0, None, None]
    assert steps_to([3.0, None, 2.0, 1.0], 2.0) == 3 and steps_to([3.0], 1.0) is None


def test_judge_model_groups_records_by_precision_and_needs_two_reference_seeds():
    block = judge_model(cells("fp32")[:2] + cells("half-fp16-master", THREE_SEEDS[:2]))
    assert list(block.precisions) == ["fp32", "half-fp16-master"] and block.reference.seeds == 2
    alone = judge_model(cells("fp32")[:1] + cells("half-fp16-master", THREE_SEEDS)[:1])
    assert alone.reference.error == "1 fp32 seed(s) finished; a comparison needs at least 2"
    assert {e.verdict for e in alone.precisions.values()} == {"no-verdict"}


def test_a_diverged_seed_makes_it_worse_and_a_crashed_one_leaves_no_verdict():
    ok = cells("fp32", THREE_SEEDS)
    diverged = [*ok[:2], {**ok[2], "status": "diverged", "status_detail": "diverged@step 40: loss nan"}]
    crashed = [*ok[:2], {**ok[2], "status": "crashed", "status_detail": "worker killed by SIGKILL"}]
    block = judge(cells("fp32"), {"diverged": diverged, "crashed": crashed})
    entry = block.precisions["diverged"]
    assert (entry.verdict, entry.decided_by) == ("worse", "divergence") and "1 of 3 seeds" in entry.reason
    assert entry.loss.seeds == (0, 1)  # the seeds that finished are still compared
    entry = block.precisions["crashed"]
    assert entry.verdict == "no-verdict" and entry.reason == "1 of 3 seeds ended crashed: worker killed by SIGKILL"
    assert [c.status for c in entry.cells] == ["ok", "ok", "crashed"]


def test_a_mode_the_device_cannot_run_gets_no_verdict_with_the_reason():
    blocks = judge_records(cells("fp32", THREE_SEEDS), ["gpt"], margin=Margin(),
                           unsupported={"tf32": "tf32 needs a CUDA GPU"})
    entry = blocks["gpt"].precisions["tf32"]
    assert entry.verdict == "no-verdict" and entry.reason == "unsupported: tf32 needs a CUDA GPU"
    assert blocks["gpt"].config["model"] == "gpt" and "seed" not in blocks["gpt"].config


def test_the_document_is_strict_json(verdicts):
    json.dumps(dataclasses.asdict(verdicts), allow_nan=False)


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
    assert doc["schema"] == PARITY_SCHEMA == "trainkit.parity/2" and doc["device"] == "cpu" and doc["seeds"] == [0, 1]
    assert "not GPU claims" in doc["timing_note"]
    block = doc["models"]["mlp"]
    assert list(block["precisions"]) == ["fp32", "half-bf16", "half-bf16-master"]
    for entry in block["precisions"].values():
        assert entry["verdict"] in (*VERDICTS, "reference") and entry["loss"]["test"] == "paired t"
        assert entry["loss"]["margin_loss"] == pytest.approx(0.005 * block["reference"]["eval_loss_mean"])
        assert [c["seed"] for c in entry["cells"]] == [0, 1]
    assert block["config"]["task_seed"] == TASK_SEED and block["steps"] == 14
    assert doc["records_file"] == "parity.records.jsonl"  # beside the document: no machine's path in it
    with open(parity_run["out"] / doc["records_file"]) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    assert all(r["diagnostics"]["step"] == 14 for r in records)
    # Two cells at a time, each with half the cores.
    assert {r["config"]["torch_num_threads"] for r in records} == {max(1, os.cpu_count() // 2)}
    # The table: per precision the mean paired difference, its interval, the margin and the verdict.
    line = next(x for x in done.stderr.splitlines() if x.startswith("  half-bf16 "))
    test = block["precisions"]["half-bf16"]["loss"]
    assert (f"diff {test['difference']['mean']:+.5f} [{test['difference']['low']:+.5f}, "
            f"{test['difference']['high']:+.5f}] (paired t), margin +-{test['margin_loss']:.5f}") in line
    assert block["precisions"]["half-bf16"]["verdict"] in line


def test_the_records_can_be_judged_again_with_another_margin(parity_run, tmp_path):
    doc = parity_run["doc"]
    out = tmp_path / "again.json"
    done = subprocess.run(trainkit_cmd("parity", "--from-records", str(parity_run["out"] / doc["records_file"]),
                                       "--margin", "50%", "-q",
                                       "-o", str(out)), capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    again = json.loads(out.read_text())["models"]["mlp"]
    before = doc["models"]["mlp"]["precisions"]["half-bf16"]["loss"]
    after = again["precisions"]["half-bf16"]["loss"]
    assert after["differences"] == before["differences"] and after["margin_loss"] == pytest.approx(
        0.5 * again["reference"]["eval_loss_mean"])
    assert again["margin"]["relative"] == 0.5 and after["verdict"] == verdict(
        Interval(**after["difference"]), after["margin_loss"])


def test_the_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    from trainkit.commands.cli import main

    def refused(*args: str) -> tuple[int, str]:
        """The command's function in this process (a fresh interpreter per case cost ~1 s each);
        the first case below runs as a process, to show what a shell sees."""
        try:
            code = main(["parity", "-o", str(tmp_path / "p.json"), *args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        return code, capsys.readouterr().err

    done = subprocess.run(trainkit_cmd("parity", "-o", str(tmp_path / "p.json"), "--target-fraction", "2"),
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "--target-fraction 2 must be in (0, 1]" in done.stderr
    for args, message in ((["--target-fraction", "2"], "--target-fraction 2 must be in (0, 1]"),
                          (["--seeds", "1"], "argument --seeds: '1' must be >= 2"),
                          (["--model", "cnn", "--device", "cpu"], "--model: no parity recipe for cnn on cpu; "
                                                                  "choose from gpt, mlp"),
                          (["--precision", "fp64"], "invalid choice: 'fp64'"),
                          (["--jobs", "0"], "argument --jobs/-j: '0' must be >= 1"),
                          (["--margin", "0%"], "argument --margin: '0%': give a share of fp32's eval loss above 0"),
                          (["--confidence", "1"], "--confidence 1 must be in (0, 1)"),
                          (["--from-records", str(tmp_path / "none.jsonl")], "--from-records"),
                          (["--from-records", __file__, "--steps", "3"], "--from-records runs no cell: --steps")):
        code, stderr = refused(*args)
        assert code == 2 and message in stderr and stderr.count("\n") == 1, (args, stderr)
        assert not (tmp_path / "p.json").exists()


def test_a_document_of_the_old_schema_is_refused_with_what_to_do(tmp_path):
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "trainkit.parity/1", "models": {}, "records_file": "/x/p.records.jsonl"}))
    done = subprocess.run([sys.executable, "-m", "reports", "build", str(old), "-o", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "trainkit.parity/1" in done.stderr and "--from-records /x/p.records.jsonl" in done.stderr


def test_the_parity_report_renders_in_chromium_without_console_errors(parity_run, tmp_path):
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    from .test_reports import assert_every_chart_renders

    page_path = parity_run["out"] / "parity.html"
    page = page_path.read_text()
    assert '<section id="parity">' in page and page.count('<div class="chart">') == 2
    assert "2 sd (spread)" in page and "against the margin" in page and "not GPU claims" in page
    assert_every_chart_renders(str(page_path), page, tmp_path)
    markdown = (parity_run["out"] / "parity.md").read_text()
    assert "| half-bf16-master |" in markdown and "effective vs fp32" in markdown and "time to target" in markdown
    margin = parity_run["doc"]["models"]["mlp"]["margin"]["loss"]
    assert "Δ eval loss vs fp32 [95% CI]" in markdown and f"margin ±{margin:.5f}" in markdown


def test_a_report_of_results_and_a_parity_document_has_both(parity_run, tmp_path):
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    from trainkit.reports.build import build_report

    doc = parity_run["doc"]
    paths = build_report([str(parity_run["out"] / doc["records_file"]), str(parity_run["out"] / "parity.json")],
                         str(tmp_path / "r.html"))
    with open(paths["html"]) as f:
        page = f.read()
    assert '<section id="summary">' in page and '<section id="parity">' in page
    assert page.index('<section id="loss">') < page.index('<section id="parity">') < page.index('<section id="scaler">')


def test_the_report_names_the_diagnostic_next_to_each_verdict(verdicts):
    """Under a better or worse row, the diagnostic named; under an equivalent row that still has a
    diagnostic standing out, that one; under an inconclusive one, the seeds that would decide it;
    under the reference row, no note."""
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    import re

    from trainkit.analysis.parity.document import Flag
    from trainkit.analysis.parity.verdicts import document
    from trainkit.reports import parity as parity_report

    standing = Flag("updates rounded away", "updates rounded away: a step left 9% of the weights")
    chosen = {p: verdicts.precisions[p] for p in ("fp32", "half-fp16", "half-fp16-master", "fp32, other seeds")}
    chosen["half-fp16-master"] = dataclasses.replace(chosen["half-fp16-master"], flags=(standing,))
    block = dataclasses.replace(verdicts, precisions=chosen)
    doc = document({"gpt": block}, seeds=list(SEEDS), device="cpu", env=None, margin=Margin()).to_dict()
    page = parity_report.section([doc])

    def note_after(precision: str) -> str | None:
        row = re.search(rf'<tr[^>]*precision="{precision}"[^>]*>(?:(?!</tr>).)*</tr>'
                        r'(<tr class="row-note"[^>]*>.*?</tr>)?', page, re.S)
        assert row, precision
        return row.group(1)

    named = verdicts.precisions["half-fp16"].named
    assert "better" in note_after("half-fp16") and parity_report.html.esc(named) in note_after("half-fp16")
    assert "equivalent, though it stands out: updates rounded away" in note_after("half-fp16-master")
    if verdicts.precisions["fp32, other seeds"].verdict == "inconclusive":
        assert "inconclusive: " in note_after("fp32, other seeds")
    assert note_after("fp32") is None


def test_the_committed_example_judges_by_its_intervals():
    """reports/examples/cpu-parity: every verdict is what its interval and margin say, recomputed with
    scipy from the per-seed differences; mlp half-fp16 and gpt half-bf16-master, which the old band
    called within-noise at paired t of about +3, are judged by that interval now."""
    with open(EXAMPLE) as f:
        doc = json.load(f)
    assert doc["schema"] == PARITY_SCHEMA
    for model, block in doc["models"].items():
        for precision, entry in block["precisions"].items():
            if precision == "fp32":
                assert entry["verdict"] == "reference"
                continue
            loss = entry["loss"]
            ci = stats.ttest_1samp(loss["differences"], 0.0).confidence_interval(block["confidence"])
            assert (loss["difference"]["low"], loss["difference"]["high"]) == (pytest.approx(ci.low),
                                                                              pytest.approx(ci.high))
            low, high, margin = ci.low, ci.high, loss["margin_loss"]
            expected = ("worse" if low > margin else "better" if high < -margin
                        else "equivalent" if -margin <= low and high <= margin else "inconclusive")
            assert entry["verdict"] == expected, (model, precision)
    for model, precision in (("mlp", "half-fp16"), ("gpt", "half-bf16-master")):
        assert doc["models"][model]["precisions"][precision]["verdict"] != "within-noise"
