"""The nightly gate's decisions (trainkit.nightly: gate, rundir), on small hand-made records: noise-aware
thresholds over repeats, like-with-like baselines, new, removed and failing cells, loss drift, and the
exit status and label a run ends with. Pure Python: no worker runs here (test_nightly_e2e runs them)."""

from __future__ import annotations

import json
import os

import pytest

from trainkit.engine.spec.schema import SCHEMA, fingerprint
from trainkit.nightly import BAD_INPUT, INCONCLUSIVE, INFRASTRUCTURE, NO_BASELINE, PASS, REGRESSION, summary
from trainkit.nightly.baselines import MANIFEST, slug
from trainkit.nightly.cli import main
from trainkit.nightly.gate import NIGHTLY_THRESHOLDS, cell_rows, run_compare
from trainkit.nightly.rundir import COMPARE, RunDir, Stage, overall
from trainkit.reports.verdict import Thresholds

H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "575.51.03", "cuda": "12.8", "torch": "2.7.0",
        "cpu": "x", "hostname": "runner-1"}
MLP, GPT = "mlp-fp32-bs4096-ga1-gpus1", "gpt-amp-bf16-bs8-ga4-gpus2"


def record(cell=MLP, throughput=1000.0, memory=2**30, loss=2.0, status="ok", env=None, repeat=0, **extra):
    """A record with the fields the gate reads (the real schema's keys, the rest null)."""
    ok = status == "ok"
    step_s = 4096 / throughput if ok else None
    return {"schema": SCHEMA, "cell_id": cell, "status": status, "status_detail": "" if ok else f"{status}: boom",
            "config": {"model": cell.split("-")[0], "lr": 0.01}, "repeat": repeat,
            "throughput_samples_per_s": throughput if ok else None,
            "step_time_s": {"median": step_s, "iqr": step_s * 0.01 if ok else None},
            "memory": {"torch_max_allocated_bytes": None, "torch_max_reserved_bytes": memory if ok else None,
                       "nvml_process_peak_bytes": None, "host_rss_peak_bytes": 3 * 2**30},
            "loss": {"final": loss if ok else None}, "scaler": {}, "env": dict(H100 if env is None else env),
            "finished_at": f"2026-01-01T00:00:{repeat:02d}", **extra}


def repeats(cell=MLP, throughputs=(1000.0, 1000.0, 1000.0), memory=2**30, loss=2.0, statuses=None, env=None):
    statuses = statuses or ["ok"] * len(throughputs)
    return [record(cell, t, memory, loss, s, env, repeat=i) for i, (t, s) in enumerate(zip(throughputs, statuses))]


def write_results(path, records) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def baseline_dir(root, records) -> str:
    """A promoted baseline as `promote` lays it out: results and a manifest keyed by the fingerprint."""
    fp = fingerprint(records[0]["env"])
    path = os.path.join(root, slug(fp))
    write_results(os.path.join(path, "results.jsonl"), records)
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump({"fingerprint": fp, "commit": "abc123", "preset": "nightly", "repeats": 3}, f)
    return path


@pytest.fixture
def gate(tmp_path):
    """compare(baseline records, candidate records, thresholds) -> the compare stage."""
    def compare(base, cand, thresholds=NIGHTLY_THRESHOLDS) -> Stage:
        root = str(tmp_path / "baselines")
        if base:
            baseline_dir(root, base)
        run = RunDir(str(tmp_path / "run"))
        candidate = write_results(str(tmp_path / "run" / "results.jsonl"), cand)
        return run_compare(run, thresholds, candidate=candidate, baselines_root=root)
    return compare


def verdicts(stage: Stage, tmp_path) -> dict[str, str]:
    with open(tmp_path / "run" / "compare.csv") as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    return {row.split(",")[0]: row.split(",")[header.index("verdict")] for row in lines[1:]}


# --- noise ------------------------------------------------------------------------------------------

def test_a_quiet_cell_that_slows_by_a_tenth_regresses(gate, tmp_path):
    stage = gate(repeats(throughputs=(1000, 1010, 990)), repeats(throughputs=(900, 905, 895)))
    assert stage.exit_status == REGRESSION and stage.details["outcome"] == "regression"
    assert stage.details["regressions"] == [f"{MLP}: regressed: throughput -10.0% (threshold ±7.0%)"]
    assert "FAIL: 1 gated cell(s) regressed or failed of 1" in stage.line
    assert os.path.exists(tmp_path / "run" / COMPARE)


def test_the_threshold_widens_with_the_spread_over_repeats(gate, tmp_path):
    # Candidate IQR / median = 8 %: the threshold is 3 x 8 % = 24 %, so -8 % is noise and -30 % is not.
    wobbly = (850.0, 920.0, 997.0)
    stage = gate(repeats(), repeats(throughputs=wobbly))  # the only cell unknown: the gate saw nothing
    assert stage.exit_status == INCONCLUSIVE and stage.details["outcome"] == "inconclusive"
    assert verdicts(None, tmp_path) == {MLP: "unknown"}
    slow = tuple(t * 0.7 / 0.92 for t in wobbly)  # median 700: -30 %
    stage = gate(repeats(), repeats(throughputs=slow))
    assert stage.exit_status == REGRESSION and "threshold ±24.0%" in stage.details["regressions"][0]


def test_a_cell_whose_own_runs_disagree_is_judged_beyond_its_threshold_and_unknown_within(gate, tmp_path):
    # 30 % spread in the baseline: threshold 90 %, so halving cannot be told from that: unknown,
    # and with a cell the gate could not see the run is inconclusive (it used to pass).
    stage = gate(repeats(throughputs=(1000, 700, 1300)), repeats(throughputs=(500, 490, 510)))
    assert stage.exit_status == INCONCLUSIVE and stage.details["unknown"] == [MLP]
    assert stage.line.startswith("INCONCLUSIVE: the gate could not see 1 gated cell(s)")
    assert stage.details["unjudged"] == [f"{MLP}: unknown: throughput -50.0% (the baseline's spread 30.0% above the "
                                         "noise limit of 10.0%: the baseline cannot judge this cell)"]
    with open(tmp_path / "run" / "compare.md") as f:
        assert "spread 30.0% above the noise limit of 10.0%" in f.read()
    # A fall beyond even that threshold is judged; the same halving over quiet repeats fails the gate.
    assert gate(repeats(throughputs=(1000, 700, 1300)), repeats(throughputs=(50, 49, 51))).exit_status == REGRESSION
    assert gate(repeats(), repeats(throughputs=(500, 500, 500))).exit_status == REGRESSION


def test_fewer_than_three_repeats_are_unknown_within_the_threshold(gate):
    stage = gate(repeats(), repeats(throughputs=(970.0,)))
    assert stage.exit_status == INCONCLUSIVE and stage.details["unknown"] == [MLP]
    assert gate(repeats(), repeats(throughputs=(500.0,))).exit_status == REGRESSION  # beyond it: judged
    asked_for_one = Thresholds(**{**vars(NIGHTLY_THRESHOLDS), "min_repeats": 1})
    assert gate(repeats(), repeats(throughputs=(970.0,)), asked_for_one).exit_status == PASS


def test_peak_memory_is_gated(gate):
    stage = gate(repeats(memory=10 * 2**30), repeats(memory=12 * 2**30))
    assert stage.exit_status == REGRESSION
    assert stage.details["regressions"] == [f"{MLP}: regressed: memory +20.0% (threshold ±7.0%)"]
    assert gate(repeats(memory=10 * 2**30), repeats(memory=8 * 2**30)).exit_status == PASS  # smaller is better


def test_the_final_loss_drifting_either_way_fails(gate):
    lower = gate(repeats(loss=2.0), repeats(loss=1.9))
    assert lower.exit_status == REGRESSION
    assert lower.details["regressions"] == [f"{MLP}: drifted: loss -5.0% (threshold ±2.0%, drift)"]
    assert gate(repeats(loss=2.0), repeats(loss=2.1)).exit_status == REGRESSION
    assert gate(repeats(loss=2.0), repeats(loss=2.02)).exit_status == PASS  # 1 %: within the 2 % tolerance


def noisy_run(quiet: int, noisy: int, slowed: int = 0) -> tuple[list[dict], list[dict]]:
    """quiet cells unchanged, noisy cells halved over repeats 30 % apart, slowed cells halved over quiet ones."""
    base, cand = [], []
    for i in range(quiet + noisy + slowed):
        cell = f"mlp-fp32-bs{i + 1}-ga1-gpus1"
        base += repeats(cell)
        throughputs = (1000.0,) * 3 if i < quiet else (500.0, 350.0, 650.0) if i < quiet + noisy else (500.0,) * 3
        cand += repeats(cell, throughputs=throughputs)
    return base, cand


@pytest.mark.parametrize("quiet, noisy, expected", [(4, 0, PASS), (3, 1, INCONCLUSIVE), (9, 1, INCONCLUSIVE)])
def test_any_unknown_gated_cell_makes_the_run_inconclusive(tmp_path, capsys, quiet, noisy, expected):
    root = str(tmp_path / "baselines")
    base, cand = noisy_run(quiet, noisy)
    baseline_dir(root, base)
    candidate = write_results(str(tmp_path / "c.jsonl"), cand)
    assert main(["compare", "--out", str(tmp_path / "run"), "--candidate", candidate, "--baselines", root]) == expected
    out = capsys.readouterr().out
    if expected == INCONCLUSIVE:
        assert out.startswith(f"nightly comparison: inconclusive: INCONCLUSIVE: the gate could not see {noisy} gated ")
        assert f"  mlp-fp32-bs{quiet + 1}-ga1-gpus1: unknown: throughput -50.0% (tonight's spread 30.0% above " in out
    assert RunDir(str(tmp_path / "run")).outcome().label == {PASS: "pass", INCONCLUSIVE: "inconclusive"}[expected]


def test_a_regression_beside_unknown_cells_is_still_a_regression(gate):
    stage = gate(*noisy_run(quiet=0, noisy=3, slowed=1))
    assert stage.exit_status == REGRESSION and len(stage.details["unknown"]) == 3
    assert stage.details["regressions"] == ["mlp-fp32-bs4-ga1-gpus1: regressed: throughput -50.0% (threshold ±7.0%)"]


def test_an_inconclusive_run_is_labelled_the_runners_problem_and_cannot_be_promoted(gate, tmp_path, monkeypatch,
                                                                                      capsys):
    run = RunDir(str(tmp_path / "run"))
    for name in ("preflight", "matrix", "report"):
        run.record(Stage(name, PASS, "fine"))
    run.record(gate(*noisy_run(quiet=1, noisy=3)))
    summary, output = tmp_path / "step_summary.md", tmp_path / "output.txt"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert main(["status", "--out", run.root]) == INCONCLUSIVE
    out = capsys.readouterr().out
    assert out.startswith("trainkit nightly: inconclusive (exit 4): comparison: INCONCLUSIVE: the gate could not "
                          "see 3 gated cell(s)")
    assert ("::error title=Inconclusive: the gate could not see every cell (not a regression)::comparison: "
            "INCONCLUSIVE: the gate could not see 3") in out
    assert output.read_text() == "exit_status=4\nlabel=inconclusive\n"
    text = summary.read_text()
    assert text.startswith("# trainkit nightly: ❔ inconclusive (exit 4)\n\ncomparison: INCONCLUSIVE: the gate could ")
    assert "When the runner was too noisy to gate on" in text and "do not bisect the code" in text
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert main(["promote", run.root, "--baselines", str(tmp_path / "promoted")]) == BAD_INPUT
    assert "the run is not green (inconclusive: comparison: INCONCLUSIVE" in capsys.readouterr().err


# --- cells that come, go or fail -------------------------------------------------------------------

def test_a_cell_that_used_to_pass_and_now_fails_is_a_regression(gate):
    for status in ("oom", "diverged", "crashed", "timeout"):
        stage = gate(repeats(), repeats(statuses=["ok", status, "ok"]))
        assert stage.exit_status == REGRESSION, status
        assert stage.details["regressions"] == [f"{MLP}: failed (now 1 of 3 repeat(s) {status}: {status}: boom)"]


def test_cells_that_keep_failing_or_get_fixed_do_not_fail_the_gate(gate):
    assert gate(repeats(statuses=["oom"] * 3), repeats(statuses=["oom"] * 3)).exit_status == PASS
    assert gate(repeats(statuses=["oom"] * 3), repeats()).exit_status == PASS


def test_a_removed_cell_is_unknown_and_fails_on_request(gate, tmp_path):
    base = repeats(MLP) + repeats(GPT)
    cand = repeats(MLP) + repeats("resnet50-fp32-bs64-ga1-gpus1")
    stage = gate(base, cand)  # no record tonight: the gate cannot see it, so the run does not pass
    assert stage.exit_status == INCONCLUSIVE and stage.details["counts"] == {"removed": 1, "unchanged": 1, "new": 1}
    assert stage.details["unjudged"] == [f"{GPT}: removed: no record in the candidate: the gate cannot see this cell"]
    strict = Thresholds(**{**vars(NIGHTLY_THRESHOLDS), "fail_on_removed": True})
    stage = gate(base, cand, strict)
    assert stage.exit_status == REGRESSION and verdicts(stage, tmp_path)[GPT] == "removed"


def test_cells_this_runner_cannot_run_are_left_out_not_failed(gate):
    """An 8-GPU baseline, a runner that shows 4: bench records the 8-GPU cells as unsupported."""
    eight = "mlp-fp32-bs4096-ga1-gpus8"
    skipped = [dict(record(eight, status="unsupported", repeat=i, skipped_at_collection=True),
                    status_detail="needs 8 GPUs, 4 visible") for i in range(3)]
    stage = gate(repeats(MLP) + repeats(eight), repeats(MLP) + skipped)
    assert stage.exit_status == PASS and stage.details["counts"] == {"unchanged": 1}
    assert stage.details["warnings"] == [f"1 cell(s) of the baseline could not run on this runner "
                                         f"(needs 8 GPUs, 4 visible): {eight}"]
    # A worker that now refuses a cell it used to run is a failure, not the runner's shape.
    refused = repeats(eight, statuses=["unsupported"] * 3)
    assert gate(repeats(MLP) + repeats(eight), repeats(MLP) + refused).exit_status == REGRESSION


def test_cells_unsupported_on_both_sides_are_listed_as_a_warning_in_the_summary(gate, tmp_path):
    """FP8 cells on a runner installed without the fp8 extra end unsupported tonight and in the
    baseline alike: nothing compares them, and the summary says so instead of dropping them."""
    fp8 = ["gpt-fp8-tensorwise-bs8-ga1-gpus1", "gpt-fp8-rowwise-bs8-ga1-gpus1"]
    no_torchao = "fp8 precisions need torchao: pip install 'trainkit[fp8]'"
    refused = [dict(record(cell, status="unsupported", repeat=i), status_detail=no_torchao)
               for cell in fp8 for i in range(3)]
    old_gpu = "gpt-fp8-tensorwise-bs8-ga4-gpus1"
    skipped = [dict(record(old_gpu, status="unsupported", repeat=i, skipped_at_collection=True),
                    status_detail="fp8-tensorwise needs compute capability >= 8.9") for i in range(3)]
    once = [dict(r, cell_id="gpt-fp8-rowwise-bs8-ga4-gpus1") for r in refused[:3]]  # ok tonight: not this case
    base = repeats(MLP) + refused + skipped + once
    cand = repeats(MLP) + refused + skipped + repeats("gpt-fp8-rowwise-bs8-ga4-gpus1")
    run = RunDir(str(tmp_path / "run"))
    stage = gate(base, cand)
    assert stage.exit_status == PASS
    assert stage.details["warnings"] == [
        f"2 cell(s) were unsupported in the baseline and again now, so nothing gated them ({no_torchao}): "
        f"{fp8[1]}, {fp8[0]}",
        f"1 cell(s) were unsupported in the baseline and again now, so nothing gated them (fp8-tensorwise needs "
        f"compute capability >= 8.9): {old_gpu}"]
    run.record(stage)
    assert f"> ⚠ 2 cell(s) were unsupported in the baseline and again now, so nothing gated them ({no_torchao})" \
        in summary.render(run)


# --- like with like ---------------------------------------------------------------------------------

def test_a_baseline_of_another_driver_is_not_comparable(gate, tmp_path):
    other = dict(H100, driver="580.65.06")
    stage = gate(repeats(env=other), repeats(throughputs=(100.0, 100.0, 100.0)))
    assert stage.exit_status == PASS and stage.details["outcome"] == NO_BASELINE
    assert stage.line.startswith(f"{NO_BASELINE} for gpu_name NVIDIA H100 80GB HBM3, driver 575.51.03, ")
    assert "baselines exist for: gpu_name NVIDIA H100 80GB HBM3, driver 580.65.06" in stage.line
    assert not os.path.exists(tmp_path / "run" / COMPARE)  # no comparison, not even an informative one


def test_no_baseline_at_all_is_said_plainly(gate):
    stage = gate([], repeats())
    assert stage.exit_status == PASS and stage.line == (f"{NO_BASELINE} for gpu_name NVIDIA H100 80GB HBM3, "
                                                        "driver 575.51.03, cuda 12.8, torch 2.7.0")


def test_the_baseline_is_chosen_by_fingerprint_among_several(tmp_path):
    root = str(tmp_path / "baselines")
    baseline_dir(root, repeats(throughputs=(500.0,) * 3, env=dict(H100, torch="2.6.0")))
    baseline_dir(root, repeats())
    cand = write_results(str(tmp_path / "c.jsonl"), repeats())
    stage = run_compare(RunDir(str(tmp_path / "run")), candidate=cand, baselines_root=root)
    assert stage.exit_status == PASS and stage.details["outcome"] == "pass"
    assert "nvidia-h100-80gb-hbm3-driver-575.51.03-cuda-12.8-torch-2.7.0" in stage.details["baseline"]


def test_an_explicit_baseline_of_another_environment_is_not_compared_either(tmp_path):
    base = write_results(str(tmp_path / "base.jsonl"), repeats(env=dict(H100, cuda="13.0")))
    cand = write_results(str(tmp_path / "c.jsonl"), repeats(throughputs=(1.0, 1.0, 1.0)))
    stage = run_compare(RunDir(str(tmp_path / "run")), candidate=cand, baseline=base)
    assert stage.exit_status == PASS and stage.details["outcome"] == NO_BASELINE and "cuda 13.0" in stage.line


A100 = dict(H100, gpu_name="NVIDIA A100-SXM4-80GB", hostname="node-7")
L40S = dict(H100, gpu_name="NVIDIA L40S", hostname="node-9")


def test_a_run_over_several_environments_is_gated_cell_by_cell_against_its_own(tmp_path):
    """Cluster jobs land on different GPUs: each cell meets only the baseline of its own record's
    environment, so an A100 at half an H100's speed is no regression, and a cell on a GPU without
    a baseline is reported, not gated."""
    root = str(tmp_path / "baselines")
    baseline_dir(root, repeats() + repeats(GPT))
    baseline_dir(root, repeats(throughputs=(500.0,) * 3, env=A100))
    cand = write_results(str(tmp_path / "c.jsonl"), repeats() + repeats(GPT, throughputs=(800.0,) * 3)
                         + repeats(throughputs=(500.0,) * 3, env=A100) + repeats(GPT, env=L40S))
    stage = run_compare(RunDir(str(tmp_path / "run")), candidate=cand, baselines_root=root)
    assert stage.exit_status == REGRESSION
    assert verdicts(stage, tmp_path) == {f"{MLP} @ NVIDIA H100 80GB HBM3": "unchanged",
                                         f"{GPT} @ NVIDIA H100 80GB HBM3": "regressed",
                                         f"{MLP} @ NVIDIA A100-SXM4-80GB": "unchanged"}
    assert stage.details["regressions"] == [f"{GPT} @ NVIDIA H100 80GB HBM3: regressed: throughput -20.0% "
                                            "(threshold ±7.0%)"]
    assert (f"{NO_BASELINE} for gpu_name NVIDIA L40S, driver 575.51.03, cuda 12.8, torch 2.7.0: its 1 cell(s) "
            "are not gated") in stage.details["warnings"]
    assert "nvidia-h100" in stage.line and "nvidia-a100" in stage.line
    assert [fp["gpu_name"] for fp in stage.details["fingerprint"]] == [H100["gpu_name"], A100["gpu_name"],
                                                                       L40S["gpu_name"]]


def test_a_record_without_an_environment_is_gated_where_its_cell_ran(tmp_path):
    """A job killed before its worker reported has no fingerprint: it joins the environment that
    measured its cell's other repeats, where the cell now fails."""
    root = str(tmp_path / "baselines")
    baseline_dir(root, repeats(GPT))
    baseline_dir(root, repeats(env=A100))
    killed = record(GPT, status="crashed", env={}, repeat=2)
    cand = write_results(str(tmp_path / "c.jsonl"), repeats(GPT, throughputs=(1000.0,) * 2) + [killed]
                         + repeats(env=A100))
    stage = run_compare(RunDir(str(tmp_path / "run")), candidate=cand, baselines_root=root)
    assert stage.exit_status == REGRESSION
    assert verdicts(stage, tmp_path) == {f"{GPT} @ NVIDIA H100 80GB HBM3": "failed",
                                         f"{MLP} @ NVIDIA A100-SXM4-80GB": "unchanged"}


def test_an_explicit_baseline_is_split_by_environment_too(tmp_path):
    base = write_results(str(tmp_path / "base.jsonl"), repeats() + repeats(throughputs=(500.0,) * 3, env=A100))
    cand = write_results(str(tmp_path / "c.jsonl"), repeats() + repeats(throughputs=(500.0,) * 3, env=A100))
    stage = run_compare(RunDir(str(tmp_path / "run")), candidate=cand, baseline=base)
    assert stage.exit_status == PASS and stage.details["outcome"] == "pass"
    assert set(verdicts(stage, tmp_path).values()) == {"unchanged"}


def test_promote_makes_one_baseline_per_environment_of_the_run(tmp_path, capsys):
    run = RunDir(str(tmp_path / "run"))
    write_results(run.path("results.jsonl"), repeats() + repeats(GPT, env=A100))
    root = str(tmp_path / "baselines")
    assert main(["promote", run.root, "--baselines", root, "--force"]) == PASS  # forced: no green run here
    out = capsys.readouterr().out
    assert [line.startswith("promoted ") for line in out.splitlines()] == [True, True, False]
    assert "nvidia-h100" in out and "nvidia-a100" in out
    for env, cell in ((H100, MLP), (A100, GPT)):
        path = os.path.join(root, slug(fingerprint(env)))
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        assert manifest["fingerprint"] == fingerprint(env) and (manifest["cells"], manifest["records"]) == (1, 3)
        with open(os.path.join(path, "results.jsonl")) as f:
            assert {json.loads(line)["cell_id"] for line in f} == {cell}


def test_gate_options_from_the_command_line(tmp_path, capsys):
    root = str(tmp_path / "baselines")
    baseline_dir(root, repeats())
    cand = write_results(str(tmp_path / "c.jsonl"), repeats(throughputs=(950.0,) * 3))  # -5 %
    out = ["compare", "--out", str(tmp_path / "run"), "--candidate", cand, "--baselines", root]
    assert main(out) == PASS
    assert main([*out, "--relative", "3%"]) == REGRESSION
    assert f"  {MLP}: regressed: throughput -5.0% (threshold ±3.0%)" in capsys.readouterr().out
    assert main([*out, "--relative", "3%", "--gate-metrics", "memory,loss"]) == PASS
    assert main([*out, "--max-spread", "-1"]) == BAD_INPUT
    assert "--max-spread: must be >= 0" in capsys.readouterr().err
    assert main([*out, "--two-sided", "speed"]) == BAD_INPUT
    assert "metric 'speed' is not valid" in capsys.readouterr().err


# --- the run's verdict --------------------------------------------------------------------------

def stages(**exit_statuses: int) -> dict:
    return {name: {"exit_status": status, "line": f"{name} said {status}"} for name, status in exit_statuses.items()}


@pytest.mark.parametrize("ran, expected", [
    (dict(preflight=3), (INFRASTRUCTURE, "infrastructure failure", "pre-flight: preflight said 3")),
    (dict(preflight=0, matrix=3), (INFRASTRUCTURE, "infrastructure failure", "matrix: matrix said 3")),
    (dict(preflight=0, matrix=2), (BAD_INPUT, "bad input", "matrix: matrix said 2")),
    (dict(preflight=0, matrix=0, report=0, compare=1), (REGRESSION, "regression", "comparison: compare said 1")),
    (dict(preflight=0, matrix=0, report=3, compare=1), (REGRESSION, "regression", "comparison: compare said 1")),
    (dict(preflight=0, matrix=0, report=3, compare=0), (INFRASTRUCTURE, "infrastructure failure",
                                                        "report: report said 3")),
    (dict(preflight=0, matrix=0, report=0, compare=0), (PASS, "pass", "comparison: compare said 0")),
    (dict(preflight=0, matrix=0, report=0, compare=4), (INCONCLUSIVE, "inconclusive", "comparison: compare said 4")),
    (dict(preflight=0, matrix=0, report=3, compare=4), (INCONCLUSIVE, "inconclusive", "comparison: compare said 4")),
    (dict(preflight=0), (INFRASTRUCTURE, "infrastructure failure", "matrix: did not run (the job stopped before it)")),
    (dict(preflight=0, matrix=0, report=0), (INFRASTRUCTURE, "infrastructure failure",
                                             "comparison: did not run (the job stopped before it)")),
])
def test_the_run_is_labelled_by_its_earliest_failing_stage(ran, expected):
    outcome = overall(stages(**ran))
    assert (outcome.exit_status, outcome.label, outcome.line) == expected


def test_no_comparable_baseline_is_a_passing_label_of_its_own():
    ran = stages(preflight=0, matrix=0, report=0, compare=0)
    ran["compare"]["outcome"] = NO_BASELINE
    assert overall(ran).label == NO_BASELINE and overall(ran).exit_status == PASS


def test_status_under_github_actions_writes_the_summary_outputs_and_an_annotation(tmp_path, monkeypatch, capsys):
    run = RunDir(str(tmp_path / "run"))
    run.record(Stage("preflight", INFRASTRUCTURE, "GPU 0 (NVIDIA H100) is busy: 1 foreign process(es) (pid 99)"))
    summary, output = tmp_path / "step_summary.md", tmp_path / "output.txt"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert main(["status", "--out", run.root]) == INFRASTRUCTURE
    out = capsys.readouterr().out
    assert ("::error title=Infrastructure failure (not a regression)::pre-flight: GPU 0 (NVIDIA H100) is busy"
            in out)
    assert output.read_text() == "exit_status=3\nlabel=infrastructure failure\n"
    text = summary.read_text()
    assert text.startswith("# trainkit nightly: ⚠️ infrastructure failure (exit 3)")
    assert "not a regression" in text and "| pre-flight | 3 | GPU 0 (NVIDIA H100) is busy" in text
    # Outside GitHub Actions the same command touches none of that.
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert main(["status", "--out", run.root]) == INFRASTRUCTURE
    assert output.read_text() == "exit_status=3\nlabel=infrastructure failure\n"
    assert "::error" not in capsys.readouterr().out


def test_status_of_a_directory_without_a_run_is_bad_input(tmp_path, capsys):
    assert main(["status", "--out", str(tmp_path)]) == BAD_INPUT
    assert "no nightly run here" in capsys.readouterr().err


def test_cell_rows_give_median_and_spread_over_repeats():
    rows = cell_rows(repeats(throughputs=(900.0, 1000.0, 1100.0), loss=2.0), max_spread=0.05)
    (row,) = rows
    assert (row["throughput_median"], row["ok"], row["repeats"]) == (1000.0, 3, 3)
    assert row["throughput_spread"] == pytest.approx(0.10) and row["loss_spread"] == 0.0 and row["noisy"]
    assert cell_rows(repeats(), max_spread=0.05)[0]["noisy"] is False


def test_a_failing_cell_that_ran_throttled_says_so(gate, tmp_path):
    hot = [dict(r, throttled=True) for r in repeats(throughputs=(700.0, 700.0, 700.0))]
    stage = gate(repeats(), hot)
    assert stage.exit_status == REGRESSION
    assert stage.details["warnings"] == [f"1 failing cell(s) ran throttled (NVML clock-event reasons): {MLP}; "
                                         "check the runner's cooling and clocks before the code"]
    with open(tmp_path / "run" / "compare.md") as f:
        assert "ran throttled" in f.read()


# --- results a killed run left ------------------------------------------------------------------

def test_a_cut_off_results_file_is_gated_on_its_complete_records_and_said_once(tmp_path, capsys):
    """The matrix killed while appending a record: compare, the summary, status and promote each read
    results.jsonl; every command says once which line was cut off and goes on with the rest."""
    root = str(tmp_path / "baselines")
    baseline_dir(root, repeats())
    run = RunDir(str(tmp_path / "run"))
    results = write_results(run.path("results.jsonl"), repeats())
    with open(results, "a") as f:
        f.write(json.dumps(record())[:80])
    said = [f"warning: {results} line 4 is cut off (a run killed while writing it?); "
            "read the 3 complete records before it"]
    assert main(["compare", "--out", run.root, "--baselines", root]) == PASS
    out, err = capsys.readouterr()
    assert err.splitlines() == said and "PASS: 0 gated cell(s) regressed or failed of 1" in out
    assert main(["status", "--out", run.root]) == PASS
    assert capsys.readouterr().err.splitlines() == said
    assert main(["promote", run.root, "--baselines", str(tmp_path / "promoted"), "--force"]) == PASS
    assert capsys.readouterr().err.splitlines() == said


def test_a_results_file_with_a_bad_line_in_the_middle_is_bad_input(tmp_path, capsys):
    root = str(tmp_path / "baselines")
    baseline_dir(root, repeats())
    run = RunDir(str(tmp_path / "run"))
    lines = [json.dumps(r) for r in repeats()]
    os.makedirs(run.root)
    with open(run.path("results.jsonl"), "w") as f:
        f.write("\n".join([lines[0], lines[1][:80], lines[2]]) + "\n")
    assert main(["compare", "--out", run.root, "--baselines", root]) == BAD_INPUT
    assert f"{run.path('results.jsonl')}: line 2 is not valid JSON" in capsys.readouterr().out
    assert main(["status", "--out", run.root]) == BAD_INPUT
    assert main(["promote", run.root, "--baselines", str(tmp_path / "promoted"), "--force"]) == BAD_INPUT
    assert "line 2 is not valid JSON" in capsys.readouterr().err
