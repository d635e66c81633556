"""`python -m reports compare` on real records, and how both commands treat bad input."""

from __future__ import annotations

import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pandas", reason="reports need the `reports` extra (pandas, plotly)")

from trainkit.reports.cli import main  # noqa: E402

from .test_reports import by_cell, real_records, write_results  # noqa: E402


def reports_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reports", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The real records, as a results file (the diverged lr=1e6 cell left out: it shares a cell id)."""
    usual = [r for r in real_records() if r["config"]["lr"] == 0.01]
    return usual, write_results(usual, str(tmp_path_factory.mktemp("base") / "results.jsonl"))


def halved(record: dict) -> dict:
    """The same cell, twice as slow: throughput halved, every step time doubled."""
    record = copy.deepcopy(record)
    if record["status"] == "ok":
        record["throughput_samples_per_s"] /= 2
        steps = record["step_time_s"]
        steps.update({k: steps[k] * 2 for k in ("median", "iqr", "min", "max", "mean")},
                     values=[v * 2 for v in steps["values"]])
    return record


def test_a_run_compared_with_itself_passes(baseline, tmp_path):
    _, path = baseline
    done = reports_cmd("compare", path, path, "-o", str(tmp_path / "compare.html"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("PASS: 0 gated cell(s) regressed")
    assert "environment" not in done.stderr
    page = (tmp_path / "compare.html").read_text()
    assert not re.search(r'class="[^"]*v-regressed', page) and "PASS" in page
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.csv").exists()


def test_a_run_with_half_the_throughput_fails(baseline, tmp_path, capsys):
    records, path = baseline
    slow = write_results([halved(r) for r in records], str(tmp_path / "slow.jsonl"))
    # Without the noise term (k = 0) halving beats the 7 % threshold in every cell.
    assert main(["compare", path, slow, "-o", str(tmp_path / "k0.html"), "--k", "0"]) == 1
    out = capsys.readouterr().out
    ok = [r for r in records if r["status"] == "ok"]
    assert out.startswith(f"FAIL: {len(ok)} gated cell(s) regressed")
    assert re.search(r'class="[^"]*v-regressed', (tmp_path / "k0.html").read_text())
    # With the default k = 3, a cell whose own steps varied by more than a sixth (IQR / median; a
    # busy 2-core machine does that) cannot tell halving from noise: unknown, never unchanged. One
    # quiet cell is enough to fail; with none, the machine was too busy to tell: inconclusive (3),
    # never the pass (0) it used to be.
    expected = {}
    for record in ok:
        steps = record["step_time_s"]
        expected[record["cell_id"]] = "regressed" if 3 * steps["iqr"] / steps["median"] < 0.5 else "unknown"
    exit_status = 1 if "regressed" in expected.values() else 3
    assert main(["compare", path, slow, "-o", str(tmp_path / "compare.html")]) == exit_status
    out = capsys.readouterr().out
    with open(tmp_path / "compare.csv") as f:
        rows = {row["cell"]: row for row in csv.DictReader(f)}
    for cell, verdict in expected.items():
        row = rows[cell]
        assert (row["verdict"], row["throughput_verdict"]) == (verdict, verdict), cell
        assert float(row["throughput_change"]) == pytest.approx(-0.5)
        if verdict == "regressed":
            assert f"  {cell}: regressed: throughput -50.0%" in out


def test_a_cell_that_diverges_in_the_candidate_is_a_failure(baseline, tmp_path, capsys):
    records, path = baseline
    diverged = next(r for r in real_records() if r["status"] == "diverged")
    candidate = [r for r in records if r["cell_id"] != diverged["cell_id"]] + [diverged]
    cand = write_results(candidate, str(tmp_path / "cand.jsonl"))
    assert main(["compare", path, cand, "-o", str(tmp_path / "compare.html")]) == 1
    out = capsys.readouterr().out
    assert f"  {diverged['cell_id']}: failed (now diverged: diverged@" in out


def test_a_cell_outside_the_gate_does_not_fail_it(baseline, tmp_path):
    records, path = baseline
    slow = write_results([halved(r) if r["config"]["model"] == "gpt" else r for r in records],
                         str(tmp_path / "slow.jsonl"))
    no_noise = ["-o", str(tmp_path / "c.html"), "--k", "0"]  # halving then always regresses
    assert main(["compare", path, slow, *no_noise]) == 1
    assert main(["compare", path, slow, *no_noise, "--gate-cells", "mlp-*"]) == 0
    assert main(["compare", path, slow, *no_noise, "--gate-cells", "mlp-*", "gpt-fp32-*"]) == 1


def test_a_different_environment_is_said_plainly(baseline, tmp_path):
    records, path = baseline
    moved = copy.deepcopy(records)
    for record in moved:
        if record["env"]:
            record["env"]["torch"] = "9.9.9"
    other = write_results(moved, str(tmp_path / "other.jsonl"))
    done = reports_cmd("compare", path, other, "-o", str(tmp_path / "compare.html"))
    torch_version = by_cell(records)["mlp-fp32-bs16-ga1-gpus1"]["env"]["torch"]
    assert f"warning: environment fingerprints differ: torch {torch_version} -> 9.9.9" in done.stderr
    assert "environment fingerprints differ" in (tmp_path / "compare.html").read_text()
    assert "environment fingerprints differ" in (tmp_path / "compare.md").read_text()


# --- bad input: exit 2 and one line, for both commands ------------------------------------------

def bad_inputs(tmp_path) -> dict[str, str]:
    (tmp_path / "malformed.json").write_text('{"benchmarks": [')
    line = json.dumps({"schema": "trainkit.result/1", "cell_id": "mlp-fp32-bs16-ga1-gpus1"})
    (tmp_path / "middle.jsonl").write_text(f"{line}\n{line[:20]}\n{line}\n")  # not a cut-off last line
    (tmp_path / "other.json").write_text(json.dumps({"machine_info": {}, "results": []}))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "no_benchmarks.json").write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    (tmp_path / "empty_dir").mkdir()
    return {"missing": str(tmp_path / "missing.json"), "malformed": str(tmp_path / "malformed.json"),
            "not a result file": str(tmp_path / "other.json"), "empty results": str(tmp_path / "empty.jsonl"),
            "empty run": str(tmp_path / "no_benchmarks.json"), "empty directory": str(tmp_path / "empty_dir"),
            "bad middle line": str(tmp_path / "middle.jsonl")}


@pytest.mark.parametrize("kind", ["missing", "malformed", "not a result file", "empty results", "empty run",
                                  "empty directory", "bad middle line"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, kind, baseline):
    bad = bad_inputs(tmp_path)[kind]
    assert main(["build", bad, "-o", str(tmp_path / "r.html")]) == 2
    assert main(["compare", baseline[1], bad, "-o", str(tmp_path / "c.html")]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {bad}: ") for line in lines), err
    assert out == "" and not (tmp_path / "r.html").exists()


def test_a_cut_off_results_file_is_read_and_said_once_on_stderr(baseline, tmp_path, capsys):
    """A run killed while appending a record: build and compare read the complete records and say
    which file and line were cut off, once, however many times the file is read."""
    records, path = baseline
    torn = tmp_path / "torn.jsonl"
    torn.write_text(Path(path).read_text() + json.dumps(records[0])[:100])
    said = (f"warning: {torn} line {len(records) + 1} is cut off (a run killed while writing it?); "
            f"read the {len(records)} complete records before it")
    assert main(["compare", str(torn), str(torn), "-o", str(tmp_path / "c.html")]) == 0  # read twice
    out, err = capsys.readouterr()
    assert err.splitlines() == [said] and out.startswith("PASS: 0 gated cell(s) regressed")
    done = reports_cmd("build", str(torn), "-o", str(tmp_path / "r.html"))  # Python's own warning filters
    assert done.returncode == 0 and done.stderr.splitlines() == [said], done.stderr


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    bad = bad_inputs(tmp_path)["malformed"]
    done = reports_cmd("build", bad, "-o", str(tmp_path / "r.html"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {bad}: malformed JSON at line 1 column 17: Expecting value"
    usage = reports_cmd("compare", bad)
    assert usage.returncode == 2 and len(usage.stderr.splitlines()) == 1 and "CANDIDATE" in usage.stderr


def test_bad_options_are_bad_input(baseline, tmp_path, capsys):
    path = baseline[1]
    assert main(["compare", path, path, "--relative", "lots"]) == 2
    assert main(["compare", path, path, "--gate-metrics", "speed"]) == 2
    assert main(["compare", path, path, "--threshold", "memory"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "not a number: 'lots'" in err[0] and "metric 'speed'" in err[1]


def test_thresholds_from_the_command_line(baseline, tmp_path, capsys):
    records, path = baseline
    slightly = copy.deepcopy(records)
    for record in slightly:
        if record["status"] == "ok":
            record["loss"]["final"] *= 1.05
    cand = write_results(slightly, str(tmp_path / "higher.jsonl"))
    assert main(["compare", path, cand, "-o", str(tmp_path / "a.html")]) == 0  # 5 % is within 7 %
    assert main(["compare", path, cand, "-o", str(tmp_path / "b.html"), "--threshold", "loss=2%"]) == 1
    assert "loss +5.0% (threshold ±2.0%)" in capsys.readouterr().out


def test_a_drifting_loss_and_a_noisy_cell_on_the_page_the_markdown_and_the_csv(baseline, tmp_path):
    from trainkit.reports.compare import compare_files, regressions_text
    from trainkit.reports.verdict import Thresholds

    records, path = baseline
    moved = copy.deepcopy(records)
    ok = [r for r in moved if r["status"] == "ok"]
    ok[0]["loss"]["final"] *= 0.95  # lower, yet a drift: the same seed should land on the same loss
    cand = write_results(moved, str(tmp_path / "moved.jsonl"))
    drift = Thresholds(per_metric={"loss": 0.02}, two_sided=("loss",), gate_metrics=("loss",))
    result, paths = compare_files(path, cand, str(tmp_path / "compare.html"), drift)
    assert [c.cell for c in result.regressions] == [ok[0]["cell_id"]]
    assert regressions_text(result) == [f"  {ok[0]['cell_id']}: drifted: loss -5.0% (threshold ±2.0%, drift)"]
    assert 'class="v-regressed v-drifted"' in Path(paths["html"]).read_text()
    assert "drifted = loss moved either way beyond the threshold" in Path(paths["markdown"]).read_text()
    with open(paths["csv"]) as f:
        rows = {row["cell"]: row for row in csv.DictReader(f)}
    row = rows[ok[0]["cell_id"]]
    assert (row["loss_verdict"], row["loss_baseline_n"], row["loss_candidate_n"]) == ("drifted", "1", "1")
    assert float(row["loss_change"]) == pytest.approx(-0.05) and float(row["loss_spread"]) == 0.0
    # Asking for 3 repeats of single-record runs: nothing is gated, the page says why, and a run
    # the gate could not see is inconclusive, not passed.
    few = Thresholds(min_repeats=3)
    result, paths = compare_files(path, cand, str(tmp_path / "few.html"), few)
    assert result.inconclusive and {c.verdict for c in result.cells if c.candidate_status == "ok"} == {"unknown"}
    assert "1 repeat(s), 3 needed to gate" in Path(paths["markdown"]).read_text()


def test_noise_and_drift_options_from_the_command_line(baseline, tmp_path, capsys):
    """--min-repeats leaves single-record cells unseen unless beyond the threshold; --two-sided loss fails
    a final loss that moved the other way (lower), which the one-sided default lets pass."""
    records, path = baseline
    slow = write_results([halved(r) for r in records], str(tmp_path / "slow.jsonl"))
    assert main(["compare", path, slow, "-o", str(tmp_path / "a.html"), "--k", "0"]) == 1
    # One record each, 3 asked for: halving is beyond any threshold, so it is judged all the same;
    # a run that did not move cannot be seen, so it is inconclusive.
    assert main(["compare", path, slow, "-o", str(tmp_path / "b.html"), "--k", "0", "--min-repeats", "3"]) == 1
    assert main(["compare", path, path, "-o", str(tmp_path / "b.html"), "--k", "0", "--min-repeats", "3"]) == 3
    lower = copy.deepcopy(records)
    for record in lower:
        if record["status"] == "ok":
            record["loss"]["final"] *= 0.8
    cand = write_results(lower, str(tmp_path / "lower.jsonl"))
    capsys.readouterr()
    assert main(["compare", path, cand, "-o", str(tmp_path / "c.html")]) == 0
    assert main(["compare", path, cand, "-o", str(tmp_path / "d.html"), "--two-sided", "loss"]) == 1
    assert "drifted" in capsys.readouterr().out


def slower(record: dict, factor: float = 0.95) -> dict:
    """The same cell at `factor` of its throughput, every step time stretched to match."""
    record = copy.deepcopy(record)
    if record["status"] == "ok":
        record["throughput_samples_per_s"] *= factor
        steps = record["step_time_s"]
        steps.update({k: steps[k] / factor for k in ("median", "iqr", "min", "max", "mean")},
                     values=[v / factor for v in steps["values"]])
    return record


def test_a_run_the_gate_cannot_see_is_inconclusive(baseline, tmp_path, capsys):
    """Every cell of a 5 %-slower candidate has too few repeats to be seen (2 asked for): exit 3,
    said in the headline, the unknown cells listed with their reason, the page marked."""
    records, path = baseline
    slow = write_results([slower(r) for r in records], str(tmp_path / "slow.jsonl"))
    ok = [r for r in records if r["status"] == "ok"]
    unseen = ["-o", str(tmp_path / "compare.html"), "--min-repeats", "2"]
    assert main(["compare", path, slow, *unseen]) == 3
    out = capsys.readouterr().out
    assert out.startswith(f"INCONCLUSIVE: the gate could not see {len(ok)} gated cell(s) (unknown: ")
    first = min(r["cell_id"] for r in ok)  # the unknown cells are listed in order, the first ten of them
    assert f"  {first}: unknown: throughput -5.0%, loss +0.0% (1 repeat(s), 2 needed to gate)" in out
    assert f"  ... and {len(ok) - 10} more unknown cell(s): see the comparison's table" in out
    page = (tmp_path / "compare.html").read_text()
    assert '<p class="warn"><b>INCONCLUSIVE: ' in page
    assert "any unknown gated cell makes the run inconclusive" in (tmp_path / "compare.md").read_text()
    assert main(["compare", path, slow, "-o", str(tmp_path / "c.html")]) == 0  # one repeat is enough by default


def test_a_real_regression_beside_unknown_cells_fails_the_comparison(baseline, tmp_path, capsys):
    """All cells at half the throughput: one measured over quiet steps on both sides (a regression),
    the others over steps 30 % apart (noise that hides halving). One seen regression fails the run."""
    records, _ = baseline
    quiet = next(r for r in records if r["status"] == "ok")["cell_id"]
    base, cand = copy.deepcopy(records), [halved(r) for r in records]
    for record in base + cand:
        if record["status"] == "ok":
            steps = record["step_time_s"]
            steps["iqr"] = (0.0 if record["cell_id"] == quiet or record in base else 0.3) * steps["median"]
    paths = [write_results(base, str(tmp_path / "base.jsonl")), write_results(cand, str(tmp_path / "cand.jsonl"))]
    assert main(["compare", *paths, "-o", str(tmp_path / "c.html"), "--gate-metrics", "throughput"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: 1 gated cell(s) regressed or failed") and f"  {quiet}: regressed" in out
    assert "unknown" in out.splitlines()[0]  # the others, counted in the headline
