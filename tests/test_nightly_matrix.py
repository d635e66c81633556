"""How the matrix stage reads bench's outcome (nightly.matrix): which exits are bad input, which are the
runner's fault, and which are results for the gate. bench itself is played by a stand-in subprocess
that writes records and exits as bench would; test_nightly_e2e runs the real one."""

from __future__ import annotations

import json
import os
import types

import pytest

from trainkit.engine.spec.schema import SCHEMA
from trainkit.nightly import BAD_INPUT, INFRASTRUCTURE, PASS
from trainkit.nightly import matrix as nm
from trainkit.nightly.rundir import BENCH_JSON, RESULTS, RunDir


def record(cell: str, status: str = "ok", skipped: bool = False, throttled: bool | None = None) -> dict:
    return {"schema": SCHEMA, "cell_id": cell, "status": status, "status_detail": "" if status == "ok" else
            "needs 8 GPUs, 1 visible", "skipped_at_collection": skipped, "throttled": throttled}


@pytest.fixture
def bench(monkeypatch, tmp_path):
    """bench(returncode, records) -> the matrix stage, with bench played by a stand-in."""
    def play(returncode: int, records: list[dict], options: nm.MatrixOptions = nm.MatrixOptions(preset="tiny")):
        run = RunDir(str(tmp_path / "run"))
        calls = []

        def fake_run(command, cwd, env):
            calls.append(command)
            # A workload's module imports from the directory nightly was started in.
            assert env["PYTHONPATH"].split(os.pathsep)[0] == os.getcwd()
            if records:
                with open(run.path(RESULTS), "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
            return types.SimpleNamespace(returncode=returncode)
        monkeypatch.setattr(nm.subprocess, "run", fake_run)
        stage = nm.run_matrix(options, run)
        assert len(calls) == 1
        return stage, calls[0]
    return play


def test_the_bench_command_is_the_documented_one(bench, tmp_path):
    options = nm.MatrixOptions(preset="nightly", repeats=3, device="cuda", bench_args=("--model", "gpt"))
    stage, command = bench(0, [record("a"), record("a")], options)
    # The plugin's own matrix test, as a person would run it outside a checkout too.
    assert command[1:8] == ["-m", "pytest", "-p", "trainkit.bench", "--benchmark-only", "-k", "test_train"]
    assert command[command.index("--preset") + 1] == "nightly" and command[command.index("--repeats") + 1] == "3"
    assert command[command.index("--device") + 1] == "cuda" and "--no-report" in command
    assert command[command.index("--results-file") + 1] == str(tmp_path / "run" / RESULTS)
    assert command[command.index("--benchmark-json") + 1] == str(tmp_path / "run" / BENCH_JSON)
    assert command[-2:] == ["--model", "gpt"]
    assert stage.exit_status == PASS and stage.line == "1 cells x 3 repeats (nightly): 2 ok"


def test_failed_cells_are_results_and_throttling_and_unrunnable_cells_are_counted(bench):
    records = [record("a"), record("b", "oom"), record("c", throttled=True), record("d", "unsupported", skipped=True)]
    stage, _ = bench(0, records)
    assert stage.exit_status == PASS
    assert stage.line == ("3 cells x 3 repeats (tiny): 2 ok, 1 oom; 1 cell(s) throttled during timed steps; "
                          "1 cell(s) not run here (needs 8 GPUs, 1 visible, ...)")
    # --strict-cells makes pytest exit 1 for those cells: still results, not a broken run.
    assert bench(1, records)[0].exit_status == PASS


@pytest.mark.parametrize("returncode, records, status, line", [
    (4, [], BAD_INPUT, "bench refused its options (pytest exit 4; see its error above)"),
    (2, [], INFRASTRUCTURE, "bench exited 2: the matrix could not run"),  # interrupted: not an option
    (5, [], BAD_INPUT, "the options select no cell of the matrix"),
    (3, [record("d", "unsupported", skipped=True)], BAD_INPUT,
     "no cell of the preset can run here: needs 8 GPUs, 1 visible"),
    (3, [record("a")], INFRASTRUCTURE, "bench exited 3: the matrix could not run"),
    (-9, [record("a")], INFRASTRUCTURE, "bench exited -9: the matrix could not run"),
    (1, [], INFRASTRUCTURE, "bench exited 1: the matrix could not run"),
    (0, [], INFRASTRUCTURE, "bench ran but wrote no record"),
])
def test_what_an_exit_of_bench_means(bench, returncode, records, status, line):
    stage, _ = bench(returncode, records)
    assert (stage.exit_status, stage.line) == (status, line)


def test_an_earlier_runs_results_are_never_judged(bench, tmp_path):
    run = RunDir(str(tmp_path / "run"))
    run.start()
    with open(run.path(RESULTS), "w") as f:
        f.write(json.dumps(record("old")) + "\n")
    stage, _ = bench(4, [])  # bench refused its options and wrote nothing
    assert stage.exit_status == BAD_INPUT and not run.exists(RESULTS)


def test_a_gpu_lost_during_the_matrix_is_the_runners_fault(bench, monkeypatch):
    monkeypatch.setattr(nm.preflight, "postflight", lambda run: "GPU(s) 3 no longer answer NVML after the matrix")
    stage, _ = bench(0, [record("a", "crashed")])
    assert (stage.exit_status, stage.line) == (INFRASTRUCTURE, "GPU(s) 3 no longer answer NVML after the matrix")


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats=0 must be >= 1"):
        nm.MatrixOptions(repeats=0)
