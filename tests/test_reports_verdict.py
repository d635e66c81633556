"""The regression verdict (trainkit.reports.verdict) and the result-file reader (trainkit.reports.records): pure Python,
tested on small hand-made records so every branch of the rule is pinned to numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainkit.engine.spec.schema import CutOffLineWarning, ResultsFileError, cut_off_lines_on_stderr, read_jsonl
from trainkit.reports import records as rec
from trainkit.reports.verdict import (
    DRIFTED,
    FAILED,
    FIXED,
    IMPROVED,
    INCONCLUSIVE,
    NEW,
    NOT_MEASURED,
    PASS,
    REGRESSED,
    REGRESSION,
    REMOVED,
    STILL_FAILING,
    UNCHANGED,
    UNKNOWN,
    CellData,
    Samples,
    Thresholds,
    cell_data,
    compare_records,
    decide_cell,
    decide_metric,
)

CPU_ENV = {"cpu": "AMD EPYC", "torch": "2.14.1", "gpu_name": None, "hostname": "a"}
GPU_ENV = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "580.1", "cuda": "13.0", "torch": "2.14.1", "cpu": "x"}


def record(cell="mlp-fp32-bs64-ga1-gpus1", status="ok", throughput=1000.0, step_iqr_rel=0.01, memory=2**30,
           loss=2.0, env=None, lr=0.01, finished="2026-01-01T00:00:00+00:00"):
    """A record with just the fields the verdict reads (the real schema, most values null)."""
    ok = status == "ok"
    step_s = 64 / throughput if ok else None
    return {
        "schema": rec.SCHEMA, "cell_id": cell, "status": status, "status_detail": "" if ok else f"{status}: boom",
        "config": {"model": cell.split("-")[0], "lr": lr, "optimizer": "sgd"},
        "throughput_samples_per_s": throughput if ok else None,
        "step_time_s": {"median": step_s, "iqr": step_s * step_iqr_rel if ok else None, "values": [step_s] * 5},
        "memory": {"torch_max_allocated_bytes": None, "torch_max_reserved_bytes": memory if ok else None,
                   "nvml_process_peak_bytes": None, "host_rss_peak_bytes": 5 * 2**30},
        "loss": {"final": loss if ok else None, "curve": [loss] * 3 if ok else []},
        "scaler": {"enabled": False}, "env": dict(GPU_ENV if env is None else env), "finished_at": finished,
    }


# --- decide_metric: the rule -------------------------------------------------------------------

def test_a_change_within_the_relative_threshold_is_unchanged():
    v = decide_metric("throughput", Samples((100.0,)), Samples((95.0,)))
    assert v.verdict == UNCHANGED and v.change == pytest.approx(-0.05) and v.threshold == pytest.approx(0.07)


def test_lower_throughput_beyond_the_threshold_is_a_regression_and_higher_an_improvement():
    assert decide_metric("throughput", Samples((100.0,)), Samples((50.0,))).verdict == REGRESSED
    assert decide_metric("throughput", Samples((100.0,)), Samples((150.0,))).verdict == IMPROVED


def test_memory_and_loss_regress_when_they_grow():
    assert decide_metric("memory", Samples((100.0,)), Samples((110.0,))).verdict == REGRESSED
    assert decide_metric("memory", Samples((100.0,)), Samples((90.0,))).verdict == IMPROVED
    assert decide_metric("loss", Samples((2.0,)), Samples((2.2,))).verdict == REGRESSED


def test_the_threshold_widens_to_k_times_the_measured_spread():
    # 20 % slower; the candidate's steps vary by 10 % (IQR/median): threshold max(7 %, 3 x 10 %) = 30 %.
    noisy = decide_metric("throughput", Samples((100.0,), record_spread=0.01), Samples((80.0,), record_spread=0.10))
    assert noisy.threshold == pytest.approx(0.30) and noisy.spread == pytest.approx(0.10)
    assert noisy.verdict == UNKNOWN  # beyond 7 %, within the noise: cannot tell
    # The same 20 % with quiet steps is a regression, and 40 % beats even the noisy threshold.
    assert decide_metric("throughput", Samples((100.0,), 0.01), Samples((80.0,), 0.01)).verdict == REGRESSED
    assert decide_metric("throughput", Samples((100.0,), 0.01), Samples((60.0,), 0.10)).verdict == REGRESSED


def test_repeats_are_combined_as_their_median_with_the_iqr_as_spread():
    base = Samples((100.0, 102.0, 98.0, 100.0, 100.0), record_spread=0.5)  # the record spread is ignored
    cand = Samples((80.0, 81.0, 79.0, 80.0, 200.0))  # one outlier does not move the median
    v = decide_metric("throughput", base, cand)
    assert v.baseline == 100.0 and v.candidate == 80.0
    assert v.spread == pytest.approx(1.0 / 80.0)  # IQR (quartiles 80 and 81) / median
    assert v.verdict == REGRESSED


def test_mad_is_an_alternative_spread():
    values = (90.0, 100.0, 110.0, 100.0, 100.0)
    assert Samples(values).spread("mad") == pytest.approx(0.0)  # median |x - 100| = 0
    assert Samples(values).spread("iqr") == pytest.approx(0.0)
    wide = (80.0, 90.0, 100.0, 110.0, 120.0)
    assert Samples(wide).spread("mad") == pytest.approx(10.0 / 100.0)
    assert Samples(wide).spread("iqr") == pytest.approx(20.0 / 100.0)


def test_per_metric_thresholds_override_the_relative_one():
    strict = Thresholds(per_metric={"memory": 0.02})
    assert decide_metric("memory", Samples((100.0,)), Samples((104.0,)), strict).verdict == REGRESSED
    assert decide_metric("throughput", Samples((100.0,)), Samples((96.0,)), strict).verdict == UNCHANGED


def test_a_metric_missing_on_one_side_is_unknown_and_on_both_not_measured():
    v = decide_metric("memory", Samples(()), Samples((1.0,)))
    assert v.verdict == UNKNOWN and "baseline" in v.note
    assert decide_metric("memory", Samples(()), Samples(())).verdict == NOT_MEASURED


def test_a_change_from_zero_is_infinite_not_a_crash():
    assert decide_metric("memory", Samples((0.0,)), Samples((1.0,))).verdict == REGRESSED
    assert decide_metric("memory", Samples((0.0,)), Samples((0.0,))).verdict == UNCHANGED


def test_a_change_beyond_its_threshold_is_judged_however_noisy_the_baseline():
    limit = Thresholds(max_spread=0.10)
    wide = Samples((100.0, 70.0, 130.0))  # IQR 30 / median 100 = 30 %: threshold 90 %
    halved = decide_metric("throughput", wide, Samples((50.0, 50.0, 50.0)), limit)
    assert halved.verdict == UNKNOWN and halved.spread == pytest.approx(0.30)  # -50 % within 90 %: cannot tell
    assert halved.note == ("the baseline's spread 30.0% above the noise limit of 10.0%: the baseline cannot judge "
                           "this cell") and halved.spread_source == "the baseline's"
    assert decide_metric("throughput", wide, Samples((5.0, 5.0, 5.0)), limit).verdict == REGRESSED  # -95 % is judged
    # Within the limit the usual rule decides.
    tight = Samples((100.0, 99.0, 101.0))
    assert decide_metric("throughput", tight, Samples((50.0, 50.0, 51.0)), limit).verdict == REGRESSED
    assert decide_metric("throughput", tight, Samples((100.0, 100.0, 100.0)), limit).verdict == UNCHANGED


def test_too_few_repeats_leave_a_change_within_the_threshold_unknown():
    three = Thresholds(min_repeats=3)
    v = decide_metric("throughput", Samples((100.0, 100.0, 100.0)), Samples((97.0,), record_spread=0.0), three)
    assert v.verdict == UNKNOWN and v.note == "1 repeat(s), 3 needed to gate"
    assert (v.baseline_n, v.candidate_n, v.change) == (3, 1, pytest.approx(-0.03))  # still reported
    assert decide_metric("throughput", Samples((100.0,) * 3), Samples((50.0,)), three).verdict == REGRESSED
    assert decide_metric("throughput", Samples((100.0,) * 3), Samples((97.0,) * 3), three).verdict == UNCHANGED


def test_a_two_sided_metric_drifts_either_way():
    drift = Thresholds(per_metric={"loss": 0.02}, two_sided=("loss",))
    assert decide_metric("loss", Samples((2.0,)), Samples((2.1,)), drift).verdict == DRIFTED
    lower = decide_metric("loss", Samples((2.0,)), Samples((1.9,)), drift)
    assert lower.verdict == DRIFTED and lower.change == pytest.approx(-0.05)
    assert decide_metric("loss", Samples((2.0,)), Samples((2.01,)), drift).verdict == UNCHANGED
    # One-sided (the default), a lower loss is an improvement and never fails the gate.
    assert decide_metric("loss", Samples((2.0,)), Samples((1.5,))).verdict == IMPROVED
    cell = decide_cell("a", data("ok"), CellData(("ok",), {"throughput": Samples((100.0,)),
                                                           "memory": Samples((1.0,)), "loss": Samples((1.5,))}), drift)
    assert cell.verdict == DRIFTED and cell.fails_gate


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="spread"):
        Thresholds(spread="stddev")
    with pytest.raises(ValueError, match="metric 'speed'"):
        Thresholds(gate_metrics=("speed",))
    with pytest.raises(ValueError, match="must be >= 0"):
        Thresholds(relative=-0.1)
    with pytest.raises(ValueError, match="max_spread=-1"):
        Thresholds(max_spread=-1)
    with pytest.raises(ValueError, match="min_repeats=0"):
        Thresholds(min_repeats=0)
    with pytest.raises(ValueError, match="metric 'speed'"):
        Thresholds(two_sided=("speed",))


# --- cells ---------------------------------------------------------------------------------------

def data(*statuses, throughput=(100.0,)):
    return CellData(statuses=statuses, metrics={"throughput": Samples(throughput), "memory": Samples((1.0,)),
                                                "loss": Samples((2.0,))}, status_detail="oom: out of memory")


def test_cells_on_one_side_only_are_new_or_removed_and_a_removed_one_is_unknown():
    assert decide_cell("a", None, data("ok")).verdict == NEW
    removed = decide_cell("a", data("ok"), None)
    assert removed.verdict == REMOVED and not removed.fails_gate and removed.unknown  # never seen, never passed


@pytest.mark.parametrize("status", ["oom", "diverged", "crashed", "timeout", "unsupported"])
def test_an_ok_cell_that_no_longer_finishes_has_failed_and_fails_the_gate(status):
    verdict = decide_cell("a", data("ok"), data(status))
    assert verdict.verdict == FAILED and verdict.fails_gate and status in verdict.note


def test_one_failed_repeat_of_several_is_a_failure():
    assert decide_cell("a", data("ok", "ok"), data("ok", "oom", "ok", throughput=(100.0, 100.0))).verdict == FAILED


def test_cells_that_start_or_keep_failing():
    assert decide_cell("a", data("oom"), data("ok")).verdict == FIXED
    still = decide_cell("a", data("oom"), data("oom"))
    assert still.verdict == STILL_FAILING and not still.fails_gate


def test_a_cell_is_as_bad_as_its_worst_gated_metric():
    base, cand = data("ok"), data("ok", throughput=(50.0,))
    assert decide_cell("a", base, cand).verdict == REGRESSED
    memory_only = Thresholds(gate_metrics=("memory",))
    verdict = decide_cell("a", base, cand, memory_only)
    assert verdict.verdict == UNCHANGED and verdict.metrics["throughput"].verdict == REGRESSED  # reported, not gated


def test_the_gate_covers_only_the_cells_it_names():
    t = Thresholds(gate_cells=("gpt-*",))
    assert decide_cell("gpt-fp32-bs8-ga1-gpus1", data("ok"), data("ok", throughput=(50.0,)), t).fails_gate
    assert not decide_cell("mlp-fp32-bs8-ga1-gpus1", data("ok"), data("ok", throughput=(50.0,)), t).fails_gate


# --- from records --------------------------------------------------------------------------------

def test_a_single_record_brings_its_step_time_iqr_as_the_throughput_spread():
    cell = cell_data([record(step_iqr_rel=0.12)])
    assert cell.metrics["throughput"].spread() == pytest.approx(0.12)
    assert cell.metrics["memory"].values == (2**30,) and cell.memory_measure == "torch_max_reserved_bytes"
    assert cell.metrics["loss"].values == (2.0,)


def test_compare_passes_identical_runs_and_catches_a_halved_throughput():
    base = [record(), record(cell="gpt-fp32-bs8-ga1-gpus1", throughput=300.0)]
    same = compare_records(base, base)
    assert same.passed and not same.env_differs and {c.verdict for c in same.cells} == {UNCHANGED}
    halved = compare_records(base, [record(throughput=500.0), record(cell="gpt-fp32-bs8-ga1-gpus1", throughput=300.0)])
    assert not halved.passed and [c.cell for c in halved.regressions] == ["mlp-fp32-bs64-ga1-gpus1"]


def test_new_removed_and_failed_cells_from_records():
    base = [record(cell="a-fp32-bs1-ga1-gpus1"), record(cell="b-fp32-bs1-ga1-gpus1")]
    cand = [record(cell="b-fp32-bs1-ga1-gpus1", status="oom"), record(cell="c-fp32-bs1-ga1-gpus1")]
    verdicts = {c.cell: c.verdict for c in compare_records(base, cand).cells}
    assert verdicts == {"a-fp32-bs1-ga1-gpus1": REMOVED, "b-fp32-bs1-ga1-gpus1": FAILED, "c-fp32-bs1-ga1-gpus1": NEW}


def test_memory_is_compared_on_a_measure_both_sides_have():
    base = record()
    cand = record(memory=None)  # e.g. a run without the allocator's numbers
    cand["memory"]["host_rss_peak_bytes"] = 6 * 2**30
    memory = compare_records([base], [cand]).cells[0].metrics["memory"]
    assert memory.baseline == 5 * 2**30 and memory.candidate == 6 * 2**30  # host RSS on both sides
    assert memory.verdict == REGRESSED


def test_mismatched_fingerprints_are_said_plainly():
    other = dict(GPU_ENV, driver="590.2", hostname="b")
    result = compare_records([record()], [record(env=other)])
    assert result.env_differs
    assert result.env_difference() == "environment fingerprints differ: driver 580.1 -> 590.2"
    assert not compare_records([record(env=CPU_ENV)], [record(env=dict(CPU_ENV, hostname="c"))]).env_differs


def test_a_record_without_an_environment_does_not_count_as_a_mismatch():
    refused = record(cell="mlp-tf32-bs64-ga1-gpus1", status="unsupported", env={})
    assert not compare_records([record(), refused], [record()]).env_differs


def test_a_config_change_between_the_runs_is_noted_on_the_cell():
    verdict = compare_records([record()], [record(lr=0.02)]).cells[0]
    assert "config changed: lr 0.01 -> 0.02" in verdict.note


def test_the_fingerprint_is_model_driver_cuda_torch_or_cpu_cores_and_torch():
    assert rec.fingerprint(GPU_ENV) == {k: GPU_ENV.get(k) for k in ("gpu_name", "driver", "cuda", "torch")}
    assert rec.fingerprint(CPU_ENV) == {"cpu": CPU_ENV.get("cpu"), "usable_cpus": None, "torch": CPU_ENV.get("torch")}
    assert rec.fingerprint({}) == {"cpu": None, "usable_cpus": None, "torch": None}
    # A 2-core baseline is not a 4-core runner's.
    assert rec.fingerprint({**CPU_ENV, "usable_cpus": 2}) != rec.fingerprint({**CPU_ENV, "usable_cpus": 4})


# --- reading result files -------------------------------------------------------------------------

def write_lines(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


def test_a_cut_off_last_line_is_read_past_with_a_warning_naming_the_file_and_line(tmp_path):
    torn = write_lines(tmp_path / "torn.jsonl", [record(), record(cell="b-fp32-bs1-ga1-gpus1")], tail='{"schema": "tra')
    said = f"{torn} line 3 is cut off (a run killed while writing it?); read the 2 complete records before it"
    # Both readers are one: reports' and the one bench's results and the nightly read with.
    for read in (lambda: rec.read_run(torn).records, lambda: read_jsonl(torn)):
        with pytest.warns(CutOffLineWarning) as caught:
            assert [r["cell_id"] for r in read()] == ["mlp-fp32-bs64-ga1-gpus1", "b-fp32-bs1-ga1-gpus1"]
        assert [str(w.message) for w in caught] == [said]
    one = write_lines(tmp_path / "one.jsonl", [record()], tail='{"schema": "tra')
    with pytest.warns(CutOffLineWarning, match="line 2 is cut off .*; read the 1 complete record before it$"):
        assert len(read_jsonl(one)) == 1


def test_a_bad_line_that_is_not_the_last_is_an_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record()) + "\n{oops\n" + json.dumps(record()) + "\n")
    with pytest.raises(rec.InputError, match="line 2 is not valid JSON"):
        rec.read_run(str(bad))
    with pytest.raises(ResultsFileError, match=f"^{bad}: line 2 is not valid JSON"):
        read_jsonl(str(bad))  # it used to skip the line without a word


def test_a_cut_off_line_is_said_once_on_stderr_however_often_it_is_read(tmp_path, capsys):
    torn = write_lines(tmp_path / "torn.jsonl", [record()], tail="{")
    with cut_off_lines_on_stderr():
        for _ in range(3):
            assert len(read_jsonl(torn)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {torn} line 2 is cut off (a run killed while writing it?); read the 1 complete record before it"]
    with pytest.warns(CutOffLineWarning):  # outside it, an ordinary warning again
        read_jsonl(torn)


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ('{"benchmarks": []}', "no benchmarks"),
    ('{"benchmarks": [{"name": "test_other", "extra_info": {}}]}', "carries a trainkit result"),
    ('{"a": 1}', "neither a pytest-benchmark file nor a trainkit result"),
    ("[1, 2]", "neither a pytest-benchmark file nor a trainkit result"),
    ('{"a": ', "malformed JSON at line 1"),
    ('{"schema": "other/1", "cell_id": "x"}\n{"schema": "other/1", "cell_id": "y"}\n', "not a trainkit result record"),
])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "in.json"
    path.write_text(content)
    with pytest.raises(rec.InputError, match=message) as error:
        rec.read_run(str(path))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_a_missing_file_and_an_empty_directory_are_errors(tmp_path):
    with pytest.raises(rec.InputError, match="no such file"):
        rec.read_runs([str(tmp_path / "nope.json")])
    with pytest.raises(rec.InputError, match="without .json or .jsonl"):
        rec.read_runs([str(tmp_path)])
    with pytest.raises(rec.InputError, match="no result files given"):
        rec.read_runs([])


def test_a_directory_stands_for_its_result_files_and_a_cell_seen_twice_counts_once(tmp_path):
    (tmp_path / "runs").mkdir()
    one = record(finished="2026-01-01T00:00:01+00:00")
    write_lines(tmp_path / "runs" / "results.jsonl", [one, record(finished="2026-01-01T00:00:02+00:00")])
    bench = {"machine_info": {"trainkit_env": GPU_ENV}, "benchmarks": [
        {"name": "test_train[x]", "extra_info": one, "stats": {"median": 0.1, "rounds": 5}}]}
    (tmp_path / "runs" / "bench.json").write_text(json.dumps(bench))
    runs = rec.read_runs([str(tmp_path / "runs")])
    assert [r.kind for r in runs] == ["pytest-benchmark", "results"]
    records = rec.all_records(runs)
    assert len(records) == 2  # the record in both files once, the second execution of the cell kept
    assert records[0]["benchmark"]["median"] == 0.1 and records[0]["run"] == "bench.json"


def test_the_gate_path_imports_neither_pandas_nor_plotly_nor_torch():
    """A regression gate imports records, verdict and compare on a machine that may lack the extra."""
    code = ("import sys, trainkit.reports.records, trainkit.reports.verdict, trainkit.reports.compare, "
            "trainkit.reports.cli; "
            "print(sorted(m for m in ('pandas', 'plotly', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_removed_cells_fail_the_gate_only_when_asked():
    asked = Thresholds(fail_on_removed=True)
    assert decide_cell("a", data("ok"), None, asked).fails_gate
    assert not decide_cell("a", None, data("ok"), asked).fails_gate  # a new cell never does
    result = compare_records([record(), record(cell="gpt-fp32-bs8-ga1-gpus1")], [record()], asked)
    assert not result.passed and [c.cell for c in result.regressions] == ["gpt-fp32-bs8-ga1-gpus1"]


def test_a_fixed_cell_keeps_its_note_beside_a_config_change():
    base = cell_data([record(status="oom")])
    cand = cell_data([record(lr=0.02)])
    verdict = decide_cell("a", base, cand)
    assert verdict.verdict == FIXED and verdict.note == "was oom; config changed: lr 0.01 -> 0.02"


# --- the run as a whole: pass, regression, or inconclusive when the gate could not see a cell ------

def run(quiet: int, noisy: int, slowed: int = 0) -> tuple[list[dict], list[dict]]:
    """Baseline and candidate records: `quiet` cells unchanged, `noisy` cells at half the throughput
    whose steps varied by 30 % (threshold 3 x 30 %: halving is within the noise), `slowed` quiet
    cells at half the throughput (a real regression)."""
    base, cand = [], []
    for i in range(quiet + noisy + slowed):
        kind = "quiet" if i < quiet else "noisy" if i < quiet + noisy else "slowed"
        cell = f"mlp-fp32-bs{i + 1}-ga1-gpus1"
        base.append(record(cell=cell))
        cand.append(record(cell=cell, throughput=1000.0 if kind == "quiet" else 500.0,
                           step_iqr_rel=0.30 if kind == "noisy" else 0.01))
    return base, cand


def test_half_the_throughput_hidden_in_noise_is_inconclusive_not_a_pass():
    result = compare_records(*run(quiet=0, noisy=4))
    assert {c.verdict for c in result.cells} == {UNKNOWN} and not result.regressions
    assert result.outcome == INCONCLUSIVE and result.inconclusive and not result.passed
    assert len(result.unknown) == 4 and len(result.compared) == 4


@pytest.mark.parametrize("quiet, noisy, outcome", [(4, 0, PASS), (3, 1, INCONCLUSIVE), (9, 1, INCONCLUSIVE)])
def test_any_unknown_gated_cell_makes_the_run_inconclusive(quiet, noisy, outcome):
    # One cell the gate cannot see among nine quiet ones: before, a share under 25 % passed it.
    result = compare_records(*run(quiet, noisy))
    assert result.outcome == outcome and len(result.unknown) == noisy


def test_a_real_regression_beside_unknown_cells_is_still_a_regression():
    result = compare_records(*run(quiet=0, noisy=3, slowed=1))
    assert result.outcome == REGRESSION and [c.cell for c in result.regressions] == ["mlp-fp32-bs4-ga1-gpus1"]
    base, cand = run(quiet=0, noisy=3)
    base.append(record(cell="gpt-fp32-bs8-ga1-gpus1"))
    cand.append(record(cell="gpt-fp32-bs8-ga1-gpus1", status="oom"))
    assert compare_records(base, cand).outcome == REGRESSION  # a cell that failed, likewise


def test_only_gated_cells_count_as_unknown():
    base, cand = run(quiet=1, noisy=3)  # cells outside the gate are reported, not counted
    outside = compare_records(base, cand, Thresholds(gate_cells=("mlp-fp32-bs1-*",)))
    assert len(outside.compared) == 1 and not outside.unknown and outside.outcome == PASS
    still_failing = record(cell="cnn-fp32-bs8-ga1-gpus1", status="oom")
    new = [record(cell=f"gpt-fp32-bs{i}-ga1-gpus1") for i in range(1, 6)]
    result = compare_records([still_failing], new + [still_failing])
    assert result.outcome == PASS and not result.unknown  # new cells and a cell failing as before are seen


def _drifting_runs(planted: dict[str, float] | None = None, cells: int = 40, drift: float = 0.15, seed: int = 3):
    """Two runs of `cells` single-record cells whose step-to-step spread is 1 % but whose throughput
    moves by a log-normal `drift` between the runs (a CPU's run-to-run noise); `planted`: cell -> factor."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = [f"m{i}-fp32-bs8-ga1-gpus1" for i in range(cells)]
    base = [record(cell=n, throughput=1000.0) for n in names]
    factors = np.exp(drift * rng.standard_normal(cells))
    cand = [record(cell=n, throughput=1000.0 * f * (planted or {}).get(n, 1.0)) for n, f in zip(names, factors)]
    return base, cand


def test_the_run_to_run_spread_of_single_records_keeps_drift_from_reading_as_regressions(monkeypatch):
    """Planted fault fixed: two identical single-record runs that drift 15 % between them. On the
    records' own 1 % step spread alone the 7 % threshold called drifting cells regressed (as 3 of 81
    quick-matrix cells on a quiet host were); the spread across cells (1.4826 MAD of the log ratios)
    sets a floor, so no cell regresses, and a cell that lost 70 % still does."""
    import trainkit.reports.verdict as verdict

    base, cand = _drifting_runs()
    assert verdict.run_to_run_spread(*({r["cell_id"]: [r] for r in side} for side in (base, cand))) == (
        pytest.approx(0.15, rel=0.4))
    judged = compare_records(base, cand)
    assert judged.regressions == [] and judged.outcome != REGRESSION
    assert {c.metrics["throughput"].spread_source for c in judged.unknown} <= {"the run-to-run"}
    planted = compare_records(*_drifting_runs({"m5-fp32-bs8-ga1-gpus1": 0.3}))
    assert [c.cell for c in planted.regressions] == ["m5-fp32-bs8-ga1-gpus1"]
    # Without the floor (fewer cells than it needs), the same drift reads as regressions.
    monkeypatch.setattr(verdict, "RUN_SPREAD_MIN_CELLS", 10**6)
    assert compare_records(base, cand).regressions
