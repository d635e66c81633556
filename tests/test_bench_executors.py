"""`pytest bench --executor submitit-local`: every cell a real submitit job (a subprocess of this
machine), with the records, ids, statuses, pytest-benchmark entries and report of the local executor;
faults injected into running jobs; a driver killed mid-run and resumed."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainkit.engine.cell.record import check_record, read_jsonl

from .conftest import REPO, inprocess_pytest

pytest.importorskip("submitit", reason="the cluster executors need the `cluster` extra (submitit)")

# Two cells that run and one the CPU skips at collection (tf32), each as small as a cell gets.
CELLS = ("--preset", "tiny", "--model", "mlp", "--precision", "fp32,amp-bf16,tf32", "--grad-accum", "1",
         "--steps", "3", "--rounds", "2", "--warmup-steps", "1", "--phase-steps", "0", "--device", "cpu")


def bench_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "-p", "no:randomly",
            "-p", "no:cacheprovider", "-rs", "--report-dir", str(out), *args]


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    """A whole bench run, in this process (conftest.inprocess_pytest: the jobs and the local executor's
    workers are processes of their own either way; a fresh driver would only add its import of torch)."""
    proc = inprocess_pytest(bench_cmd(out, "--results-file", str(out / "results.jsonl"),
                                      "--benchmark-json", str(out / "bench.json"), *args)[3:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def by_cell(path: Path) -> dict[str, dict]:
    return {r["cell_id"] + (f"-rep{r['repeat']}" if r.get("repeat") else ""): r for r in read_jsonl(str(path))}


def report_rows(out: Path) -> list[dict]:
    """The report's summary, without the columns that are timings (they differ run to run)."""
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    keep = ("model", "hardware", "gpus", "batch_size", "grad_accum", "effective_batch", "precision", "status",
            "repeats", "final_loss")
    return [{k: row[k] for k in keep} for row in rows]


def test_submitit_local_gives_the_cells_records_entries_and_report_of_the_local_executor(tmp_path):
    local, jobs = tmp_path / "local", tmp_path / "jobs"
    run(local, *CELLS)
    proc = run(jobs, *CELLS, "--executor", "submitit-local")

    here, there = by_cell(local / "results.jsonl"), by_cell(jobs / "results.jsonl")
    assert set(here) == set(there) == {"mlp-fp32-bs16-ga1-gpus1", "mlp-amp-bf16-bs16-ga1-gpus1",
                                       "mlp-tf32-bs16-ga1-gpus1"}
    for cell, record in there.items():
        mine = here[cell]
        assert (record["status"], record["status_detail"]) == (mine["status"], mine["status_detail"]), cell
        assert set(record) - set(mine) <= {"executor"} and set(mine) <= set(record), cell
        assert record["config"] == mine["config"], cell
        if record["status"] == "ok":
            assert check_record(record) == []
            # The same seeds, steps and threads: the job trained exactly what the local worker did.
            assert record["loss"]["curve"] == mine["loss"]["curve"], cell
            assert record["step_time_s"]["n"] == mine["step_time_s"]["n"] == 3
            assert len(record["step_round_trip_s"]) == len(mine["step_round_trip_s"]) == 2
            assert record["executor"]["name"] == "submitit-local" and record["executor"]["state"] == "FINISHED"
            assert os.path.exists(record["executor"]["log"])

    entries = [json.loads((d / "bench.json").read_text()) for d in (local, jobs)]
    assert [sorted(b["name"] for b in e["benchmarks"]) for e in entries] == [
        ["test_train[mlp-amp-bf16-bs16-ga1-gpus1]", "test_train[mlp-fp32-bs16-ga1-gpus1]"]] * 2
    assert entries[0]["machine_info"]["trainkit_fingerprint"] == entries[1]["machine_info"]["trainkit_fingerprint"]
    for bench in entries[1]["benchmarks"]:
        record = bench["extra_info"]
        assert bench["stats"]["rounds"] == 2 and record["bench_rounds"] == 2
        assert bench["stats"]["data"] == pytest.approx(record["step_time_s"]["values"][:2], rel=1e-12)
        assert bench["params"]["precision"] == record["config"]["precision"]
    assert report_rows(jobs) == report_rows(local)
    assert "[cell 1/2] mlp-fp32-bs16-ga1-gpus1: 0/2 done, 1 running, 1 pending" in proc.stdout
    assert "tf32 needs a CUDA GPU" in proc.stdout  # skipped at collection, as locally


def _job_of(folder: Path, cell: str, deadline: float) -> tuple[int, str]:
    """(pid, job id) of the job running `cell`, once its log says it started (the job's own line)."""
    pattern = re.compile(rf"trainkit: cell {re.escape(cell)} in job (\S+), task 0/1, on \S+ \(pid (\d+)\)")
    while time.monotonic() < deadline:
        for log in folder.glob("*_0_log.out") if folder.exists() else ():
            found = pattern.search(log.read_text())
            if found:
                return int(found.group(2)), found.group(1).rstrip(",")
        time.sleep(0.1)
    raise AssertionError(f"no job started for {cell}")


def test_faults_in_jobs_a_killed_driver_and_resume(tmp_path):
    """A job killed outright ends crashed, a job signalled at its time limit ends timeout, and the
    matrix goes on. The driver is then killed while a job runs: the records it kept stay, the job
    finishes on its own, and --resume takes that job's record from the job directory and runs only
    the cell never submitted."""
    out = tmp_path / "out"
    results, folder = out / "results.jsonl", out / "results.jobs"
    cells = ("--preset", "tiny", "--model", "mlp", "--precision", "fp32", "--grad-accum", "1",
             "--batch-size", "16,17,18,19", "--steps", "3", "--warmup-steps", "1", "--phase-steps", "0",
             "--device", "cpu", "--executor", "submitit-local", "--results-file", str(results))
    out.mkdir()
    log = open(out / "driver.log", "w")  # read only when the test fails
    driver = subprocess.Popen(bench_cmd(out, *cells), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        killed, _ = _job_of(folder, "mlp-fp32-bs16-ga1-gpus1", deadline)
        os.kill(killed, signal.SIGKILL)
        limited, _ = _job_of(folder, "mlp-fp32-bs17-ga1-gpus1", deadline)
        os.kill(limited, signal.SIGUSR2)  # what SLURM and submitit's local controller send before the limit
        orphan, orphan_job = _job_of(folder, "mlp-fp32-bs18-ga1-gpus1", deadline)
        driver.kill()  # the driver dies while its third job runs
        driver.wait(timeout=30)
        kept = by_cell(results)
        assert [kept[c]["status"] for c in ("mlp-fp32-bs16-ga1-gpus1", "mlp-fp32-bs17-ga1-gpus1")] == \
            ["crashed", "timeout"]
        assert "mlp-fp32-bs18-ga1-gpus1" not in kept
        while (folder / f"{orphan_job}_0_result.pkl").exists() is False:  # the job outlives its driver
            assert time.monotonic() < deadline, "the orphaned job did not finish"
            time.sleep(0.1)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        log.close()
    with open(results, "a") as f:  # and had it died while appending a record, the line would be cut off
        f.write('{"schema": "trainkit.result/1", "cell_id": "mlp-fp32-bs19-ga1-gp')
    crash, limit = kept["mlp-fp32-bs16-ga1-gpus1"], kept["mlp-fp32-bs17-ga1-gpus1"]
    assert crash["status_detail"].startswith("submitit-local job ")
    assert "ended without a record" in crash["status_detail"]
    assert limit["status_detail"].startswith("the job's time limit came before the cell ended")

    # The resumed driver runs in this process: nothing signals it (its jobs are processes of their own).
    resumed = inprocess_pytest(bench_cmd(out, *cells, "--resume", str(results))[3:])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"--resume: {results} line 3 is cut off" in resumed.stdout and "that line was removed" in resumed.stdout
    final = read_jsonl(str(results))
    assert sorted(r["config"]["batch_size"] for r in final) == [16, 17, 18, 19]  # each cell once
    done = by_cell(results)
    assert done["mlp-fp32-bs16-ga1-gpus1"] == crash and done["mlp-fp32-bs17-ga1-gpus1"] == limit  # not run again
    harvested = done["mlp-fp32-bs18-ga1-gpus1"]
    assert harvested["status"] == "ok" and harvested["executor"]["job_id"] == orphan_job
    assert harvested["executor"]["harvested_from"].endswith(f"{orphan_job}_0_result.pkl")
    assert done["mlp-fp32-bs19-ga1-gpus1"]["status"] == "ok"
    assert resumed.stdout.count(f"recorded in {results}") == 3
    assert "[cell 1/1] mlp-fp32-bs19-ga1-gpus1" in resumed.stdout  # the only job the resumed run submitted
    assert (out / "report.html").exists()
    with open(out / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == 4  # the report has the whole matrix
