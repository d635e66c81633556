"""Cells as SLURM jobs (trainkit.engine.cluster), against stand-in sbatch, srun, sacct, squeue and scancel
(tests/slurm_standins.py): the sbatch parameters submitit writes for the matrix, how sacct's states
become cell statuses, the torchrun environment of a multi-node task, and the whole bench run on a
stand-in cluster whose jobs run here (a 2-rank cell over 2 "nodes" with gloo)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainkit.engine import cluster
from trainkit.engine.cell.record import check_record
from trainkit.engine.cluster import CellJob, ExecutorOptions, JobShape, job_shape, placement_problem, status_from_sacct
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.schema import read_jsonl

from .conftest import REPO
from .slurm_standins import FakeSlurm

pytest.importorskip("submitit", reason="the cluster executors need the `cluster` extra (submitit)")


def gpt(gpus: int, device: str = "cuda") -> RunConfig:
    return RunConfig(model="gpt", precision="amp-bf16", batch_size=8, world_size=gpus, device=device)


@pytest.fixture
def slurm(tmp_path, monkeypatch) -> FakeSlurm:
    """The stand-in cluster on this process's PATH, in hold mode: jobs wait until a test ends them."""
    fake = FakeSlurm(tmp_path / "slurm")
    for name, value in fake.env().items():
        if name in ("PATH", "FAKE_SLURM_DIR"):
            monkeypatch.setenv(name, value)
    yield fake
    fake.stop()


# --- pure functions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "exit_code", "status", "words"), [
    ("TIMEOUT", "0:15", "timeout", "was killed at its time limit of 20 min (sacct TIMEOUT, exit code 0:15"),
    ("OUT_OF_MEMORY", "0:125", "oom", "for using more memory than it was given (sacct OUT_OF_MEMORY, exit code 0:125"),
    ("NODE_FAIL", "0:0", "crashed", "lost its node (sacct NODE_FAIL"),
    ("PREEMPTED", "0:15", "crashed", "was preempted (sacct PREEMPTED"),
    ("CANCELLED by 1234", "0:15", "crashed", "was cancelled (sacct CANCELLED by 1234, exit code 0:15"),
    ("FAILED", "1:0", "crashed", "failed (sacct FAILED, exit code 1:0"),
    ("BOOT_FAIL", "0:0", "crashed", "could not boot its node"),
    ("DEADLINE", "0:0", "timeout", "at its deadline"),
])
def test_sacct_states_become_cell_statuses(state, exit_code, status, words):
    got, detail = status_from_sacct(state, exit_code, "1000_3", "gpu017", time_limit_min=20)
    assert got == status and words in detail
    assert detail.startswith("SLURM job 1000_3 ") and detail.endswith(", node gpu017)") and "\n" not in detail


def test_active_states_are_not_ends():
    assert all(cluster.is_active(s) for s in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"))
    assert not any(cluster.is_active(s) for s in ("COMPLETED", "TIMEOUT", "CANCELLED by 0", "OUT_OF_MEMORY"))


@pytest.mark.parametrize(("gpus", "per_node", "shape", "problem"), [
    (1, 8, JobShape(1, 1, 1, 4), None),
    (8, 8, JobShape(1, 1, 8, 32), None),  # one task: run_cell starts the 8 ranks, as locally
    (16, 8, JobShape(2, 8, 8, 4), None),  # one task per GPU over 2 nodes
    (8, 4, JobShape(2, 4, 4, 4), None),
    (12, 8, JobShape(2, 6, 6, 4), None),  # 12 split evenly over the 2 nodes it needs
    (9, 8, None, "9 ranks do not split evenly over the 2 nodes of 8 GPUs they need"),
])
def test_cells_map_to_job_shapes(gpus, per_node, shape, problem):
    options = ExecutorOptions(executor="slurm", gpus_per_node=per_node)
    got = placement_problem(gpt(gpus), options)
    assert got == problem if problem is None else problem in got
    if shape is not None:
        assert job_shape(gpt(gpus), options) == shape
    assert job_shape(gpt(2, "cpu"), options).gpus_per_node == 0  # a CPU cell asks for no GPU


def test_a_multi_node_task_gets_torchruns_environment_from_slurms(monkeypatch):
    """submitit's JobEnvironment reads SLURM's variables; the task's torchrun contract comes from it."""
    import submitit

    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7001", "SLURM_ARRAY_JOB_ID": "7000",
                        "SLURM_ARRAY_TASK_ID": "3", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
                        "SLURM_NODEID": "1", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
                        "SLURM_JOB_NODELIST": "gpu[017-018]"}.items():
        monkeypatch.setenv(name, value)
    env = cluster.torchrun_environment(submitit.JobEnvironment())
    assert env == {"RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu017", "MASTER_PORT": str(cluster.rendezvous_port("7000_3"))}
    assert 20000 <= int(env["MASTER_PORT"]) < 40000
    # All 8 GPUs of the node visible to every task: LOCAL_RANK picks one; one bound to the task: GPU 0.
    assert cluster.torchrun_environment(submitit.JobEnvironment(), "0,1,2,3,4,5,6,7")["LOCAL_RANK"] == "3"
    assert cluster.torchrun_environment(submitit.JobEnvironment(), "3")["LOCAL_RANK"] == "0"


# --- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("parse", "text", "message"), [
    (cluster.executor_name, "pbs", r"invalid choice: 'pbs' \(choose from local, slurm, submitit-local\)"),
    (cluster.sbatch_param, "--mem=4G", "expected KEY=VALUE or KEY"),
    (cluster.slurm_name, "gpu a100", "one word"),
])
def test_bad_option_values_name_the_value_and_what_is_valid(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_without_submitit_a_job_executor_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now fails as if not installed
    for name in ("slurm", "submitit-local"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"needs submitit: pip install 'trainkit\[cluster\]'"):
            cluster.executor_name(name)
    assert cluster.executor_name("local") == "local"


def test_bench_without_submitit_says_what_to_install_in_one_line(tmp_path):
    """A `submitit` that cannot be imported first on the path stands for one never installed."""
    (tmp_path / "submitit.py").write_text("raise ImportError(\"No module named 'submitit'\")\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "-p",
                           "no:cacheprovider", "--executor", "slurm", "--collect-only"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4  # pytest's usage error
    assert ("error: argument --executor: slurm needs submitit: pip install 'trainkit[cluster]'\n"
            in proc.stderr), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_slurm_needs_sbatch_on_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(argparse.ArgumentTypeError, match="no sbatch on PATH"):
        cluster.executor_name("slurm")


def test_options_round_trip_through_the_command_line():
    parser = argparse.ArgumentParser()
    cluster.add_options(parser.add_argument)
    options = ExecutorOptions(executor="submitit-local", partition="gpu", gpus_per_node=4, array_parallelism=3,
                              sbatch=(("mem", "0"), ("exclusive", True)), job_dir="jobs", shared_nodes=True)
    assert cluster.from_namespace(parser.parse_args(cluster.command_line(options))) == options
    assert "--slurm-shared-nodes" in cluster.command_line(options)
    assert cluster.from_namespace(parser.parse_args([])) == ExecutorOptions()


# --- submission and states, against the stand-ins ------------------------------------------------------

def test_the_matrix_becomes_one_capped_array_per_shape_and_sacct_states_become_statuses(slurm, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setattr(cluster.slurm, "RESULT_GRACE_S", 0.0)  # FAILED: no result file will come
    options = ExecutorOptions(executor="slurm", partition="gpu", account="perf", qos="high", constraint="h100",
                              gpus_per_node=8, cpus_per_gpu=6, array_parallelism=3,
                              sbatch=(("mem", "0"), ("exclusive", True)))
    cells = [CellJob(f"one-rep{i}", gpt(1), i) for i in range(4)]
    cells += [CellJob("two", gpt(2)), CellJob("sixteen", gpt(16))]
    jobs = cluster.make_jobs(options, str(tmp_path / "jobs"), cell_timeout_s=900)
    jobs.submit(cells)

    sbatch = slurm.calls("sbatch")
    assert len(sbatch) == 3  # one array per shape: 1 GPU x4, 2 GPUs, 2 nodes x 8 GPUs
    common = {"partition": "gpu", "account": "perf", "qos": "high", "constraint": "h100", "mem": "0",
              "exclusive": True, "no-requeue": True, "time": "20", "signal": "USR2@90"}  # (900 + 300) s
    one, two, sixteen = (call["params"] for call in sbatch)
    for params in (one, two, sixteen):
        assert common.items() <= params.items()
    assert (one["array"], one["gpus-per-node"], one["nodes"], one["ntasks-per-node"], one["cpus-per-task"]) == \
        ("0-3%3", "1", "1", "1", "6")
    assert "array" not in two and (two["gpus-per-node"], two["nodes"], two["cpus-per-task"]) == ("2", "1", "12")
    assert (sixteen["gpus-per-node"], sixteen["nodes"], sixteen["ntasks-per-node"], sixteen["cpus-per-task"]) == \
        ("8", "2", "8", "6")
    assert "srun --unbuffered" in sbatch[2]["script"] and "submitit.core._submit" in sbatch[2]["script"]

    assert jobs.poll() == [] and jobs.counts() == cluster.Counts(0, 0, 6)  # sacct: "1000_[0-3%3]|PENDING"
    slurm.end("1000_0", "RUNNING")
    jobs.poll()
    assert jobs.counts() == cluster.Counts(0, 1, 5)
    for task, state, code in [("1000_0", "TIMEOUT", "0:15"), ("1000_1", "OUT_OF_MEMORY", "0:125"),
                              ("1000_2", "NODE_FAIL", "0:0"), ("1000_3", "PREEMPTED", "0:15"),
                              ("1001", "CANCELLED by 4242", "0:15"), ("1002", "FAILED", "1:0")]:
        slurm.end(task, state, code, node="gpu017")
    ended = {cell.key: record for cell, record in jobs.poll()}
    assert {k: r["status"] for k, r in ended.items()} == {
        "one-rep0": "timeout", "one-rep1": "oom", "one-rep2": "crashed", "one-rep3": "crashed", "two": "crashed",
        "sixteen": "crashed"}
    assert ended["one-rep0"]["status_detail"].startswith(
        "SLURM job 1000_0 was killed at its time limit of 20 min (sacct TIMEOUT, exit code 0:15, node gpu017)")
    assert "sacct OUT_OF_MEMORY, exit code 0:125" in ended["one-rep1"]["status_detail"]
    assert "sacct NODE_FAIL" in ended["one-rep2"]["status_detail"]
    assert "sacct PREEMPTED" in ended["one-rep3"]["status_detail"]
    assert "was cancelled (sacct CANCELLED by 4242" in ended["two"]["status_detail"]
    assert "failed (sacct FAILED, exit code 1:0" in ended["sixteen"]["status_detail"]
    for key, record in ended.items():
        assert check_record(record) == [], key
        assert record["executor"]["name"] == "slurm" and record["executor"]["log"].endswith("_0_log.out")
    assert ended["one-rep3"]["repeat"] == 3 and ended["one-rep3"]["executor"]["job_id"] == "1000_3"
    assert jobs.counts() == cluster.Counts(6, 0, 0) and jobs.poll() == []


@pytest.mark.parametrize("shared", [False, True])
def test_timed_cells_get_their_nodes_to_themselves_unless_shared_nodes(slurm, tmp_path, monkeypatch, shared):
    """SLURM packs jobs onto shared nodes by default: a timed cell's job asks for --exclusive (the probe,
    which times nothing, does not), --slurm-shared-nodes turns it off, and the record says which."""
    monkeypatch.setattr(cluster.slurm, "RESULT_GRACE_S", 0.0)
    options = ExecutorOptions(executor="slurm", shared_nodes=shared)
    jobs = cluster.make_jobs(options, str(tmp_path / "jobs"), cell_timeout_s=60)
    jobs.submit([CellJob("one", gpt(1)), CellJob("sixteen", gpt(16))])
    with pytest.raises(RuntimeError, match="did not end within"):
        cluster.probe_on_cluster(options, "cuda", str(tmp_path / "probe"), wait_s=0)
    *cells, probe = [call["params"] for call in slurm.calls("sbatch")]
    assert [("exclusive" in params) for params in cells] == [not shared, not shared]
    assert probe["job-name"] == "trainkit-probe-1gpu" and "exclusive" not in probe
    slurm.end("1000", "FAILED", "1:0")
    ((_, record),) = jobs.poll() or jobs.poll()
    assert record["executor"]["node_sharing"].startswith("shared: --slurm-shared-nodes" if shared else
                                                         "exclusive: sbatch --exclusive")


def test_a_record_that_says_a_rank_was_killed_is_oom_when_slurm_says_out_of_memory(slurm, tmp_path):
    """The cgroup's OOM killer takes a rank with SIGKILL: the job still returns a record (crashed,
    killed by SIGKILL), and sacct marks the job OUT_OF_MEMORY: the cell is oom."""
    from submitit.core.utils import cloudpickle_dump

    from trainkit.engine.cell.record import merge_ranks

    jobs = cluster.make_jobs(ExecutorOptions(executor="slurm"), str(tmp_path / "jobs"), cell_timeout_s=60)
    jobs.submit([CellJob("a", gpt(1))])
    killed = merge_ranks(gpt(1), [], "crashed", "worker rank 0 was killed by SIGKILL during step 3")
    cloudpickle_dump(("success", killed), jobs.watched[0].job.task(0).paths.result_pickle)
    assert jobs.poll() == []  # a result, but the job has not ended: its final state may say more
    slurm.end("1000", "OUT_OF_MEMORY", "0:125")
    ((_, record),) = jobs.poll()
    assert record["status"] == "oom"
    assert record["status_detail"] == ("SLURM job 1000 was killed for using more memory than it was given (sacct "
                                       "OUT_OF_MEMORY, exit code 0:125): worker rank 0 was killed by SIGKILL during "
                                       "step 3")


def test_stopping_early_cancels_the_arrays_that_have_not_ended(slurm, tmp_path):
    jobs = cluster.make_jobs(ExecutorOptions(executor="slurm"), str(tmp_path / "jobs"), cell_timeout_s=60)
    jobs.submit([CellJob("a", gpt(1)), CellJob("b", gpt(1)), CellJob("c", gpt(2))])
    slurm.end("1000_0", "COMPLETED")  # without a result: ends once the result's grace has passed
    jobs.cancel()
    assert [c["argv"] for c in slurm.calls("scancel")] == [["1000", "1001"]]
    assert [j for j in os.listdir(slurm.root / "state") if "CANCELLED" in (slurm.root / "state" / j).read_text()]


def test_when_sacct_fails_squeue_says_which_jobs_ended(slurm, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.slurm, "RESULT_GRACE_S", 0.0)
    jobs = cluster.make_jobs(ExecutorOptions(executor="slurm"), str(tmp_path / "jobs"), cell_timeout_s=60)
    jobs.submit([CellJob("a", gpt(1)), CellJob("b", gpt(1))])
    slurm.break_sacct()
    slurm.end("1000_0", "COMPLETED")  # gone from squeue, no result
    ended = jobs.poll() or jobs.poll()  # the first look starts the result's grace
    assert [(cell.key, record["status"]) for cell, record in ended] == [("a", "crashed")]
    assert ("ended without a record; its final state is unknown (sacct: sacct: error: Slurm accounting storage "
            "is disabled)") in ended[0][1]["status_detail"]
    assert jobs.counts() == cluster.Counts(1, 0, 1)  # b: squeue still lists it PENDING
    assert slurm.calls("squeue")[-1]["argv"] == ["--noheader", "--array", "--format=%i|%T", "--jobs=1000"]


# --- bench on the stand-in cluster -------------------------------------------------------------------------

def bench_on(fake: FakeSlurm, out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "-p", "no:randomly",
               "-p", "no:cacheprovider", "--report-dir", str(out), "--results-file", str(out / "results.jsonl"),
               "--executor", "slurm", *args]
    return subprocess.run(command, cwd=REPO, env=fake.env(), capture_output=True, text=True, timeout=400)


def test_a_bad_partition_is_a_one_line_usage_error(tmp_path):
    fake = FakeSlurm(tmp_path / "slurm")
    proc = bench_on(fake, tmp_path / "out", "--slurm-partition", "nope", "--device", "cpu", "--collect-only")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip() == ("ERROR: --executor slurm: sbatch refused the probe job: sbatch: error: invalid "
                                   "partition specified: nope sbatch: error: Batch job submission failed: Invalid "
                                   "partition name specified")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_the_nightly_runs_its_cells_as_slurm_jobs_a_multi_node_cell_included(tmp_path):
    """`python -m nightly run --executor slurm` on a stand-in cluster that runs its jobs here: the
    probe, a 1-rank cell, and a 2-rank cell that needs 2 "nodes" of 1 (--slurm-gpus-per-node 1):
    2 tasks under torchrun's contract, gloo between them. Each cell has 2 repeats in an array capped
    at 1 running task; the second tasks end (preempted, node failure) while the first ones run: their
    records are appended as they end, before the record of the cell the driver waits for. The login
    node's pre-flight is skipped."""
    fake = FakeSlurm(tmp_path / "slurm", mode="run")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "nightly", "run", "--out", str(run), "--preset", "tiny", "--repeats", "2",
               "--device", "cpu", "--baselines", str(tmp_path / "none"), "--executor", "slurm",
               "--slurm-partition", "cpu", "--slurm-gpus-per-node", "1", "--slurm-array-parallelism", "1", "--",
               "--model", "mlp", "--precision", "fp32", "--grad-accum", "1", "--gpus", "1,2", "--steps", "3",
               "--rounds", "2", "--warmup-steps", "1", "--phase-steps", "0"]
    env = {k: v for k, v in fake.env().items() if not k.startswith("GITHUB_")}
    nightly = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state = fake.root / "state"
        deadline = time.monotonic() + 120
        while not ((state / "task-1001_1.json").exists() and (state / "task-1002_1.json").exists()):
            assert time.monotonic() < deadline and nightly.poll() is None, "the arrays were not submitted"
            time.sleep(0.05)
        # The cap holds the second tasks until the first end (seconds): SLURM ends them meanwhile.
        fake.end("1001_1", "PREEMPTED", "0:15", node="node002")
        fake.end("1002_1", "NODE_FAIL", "0:0", node="node003")
        stdout, stderr = nightly.communicate(timeout=400)
    finally:
        if nightly.poll() is None:
            nightly.kill()
            nightly.communicate()
        fake.stop()
    assert nightly.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "nightly pre-flight: not run here: with --executor slurm the cells run on cluster nodes" in stdout
    assert "nightly matrix: 2 cells x 2 repeats (tiny): 2 crashed, 2 ok" in stdout
    assert "probing a node: SLURM job 1000 (log: " in stdout
    order = [r["cell_id"] + f"-rep{r['repeat']}" for r in read_jsonl(str(run / "results.jsonl"))]
    assert order.index("mlp-fp32-bs16-ga1-gpus1-rep1") < order.index("mlp-fp32-bs16-ga1-gpus1-rep0")
    assert order.index("mlp-fp32-bs16-ga1-gpus2-rep1") < order.index("mlp-fp32-bs16-ga1-gpus1-rep0")
    assert "    mlp-fp32-bs16-ga1-gpus1-rep1 -> crashed: SLURM job 1001_1 was preempted (sacct PREEMPTED" in stdout
    records = {(r["cell_id"], r["repeat"]): r for r in read_jsonl(str(run / "results.jsonl"))}
    one, two = records[("mlp-fp32-bs16-ga1-gpus1", 0)], records[("mlp-fp32-bs16-ga1-gpus2", 0)]
    assert one["status"] == two["status"] == "ok" and check_record(two) == []
    assert (two["ranks_reported"], two["config"]["distributed_backend"], two["executor"]["tasks"]) == (2, "gloo", 2)
    assert two["executor"]["state"] == "COMPLETED" and two["executor"]["job_id"] == "1002_0"
    assert one["executor"]["tasks"] == 1 and len(one["worker_pids"]) == 1  # run_cell's own worker process
    lost = records[("mlp-fp32-bs16-ga1-gpus2", 1)]
    assert lost["status"] == "crashed" and "lost its node (sacct NODE_FAIL, exit code 0:0, node node003)" in \
        lost["status_detail"]
    params = [c["params"] for c in fake.calls("sbatch")]
    assert [(p["job-name"], p["nodes"], p["ntasks-per-node"], p.get("array"), p["partition"]) for p in params] == [
        ("trainkit-probe-4cpu", "1", "1", None, "cpu"), ("trainkit-4cpu", "1", "1", "0-1%1", "cpu"),
        ("trainkit-2x4cpu", "2", "1", "0-1%1", "cpu")]
    multi = [c for c in fake.calls("srun") if c["env"]["SLURM_NTASKS"] == "2"]
    assert len(multi) == 1 and multi[0]["env"]["SLURM_JOB_NODELIST"] == "localhost,localhost"
    data = json.loads((run / "benchmark.json").read_text())
    assert len(data["benchmarks"]) == 2  # pytest-benchmark keeps the cells that ended ok
    for bench in data["benchmarks"]:
        record = bench["extra_info"]
        assert bench["stats"]["data"] == pytest.approx(record["step_time_s"]["values"][:2], rel=1e-12)
    assert "[cell 4/4] mlp-fp32-bs16-ga1-gpus2-rep1: 4/4 done" in stdout
    assert (run / "report.html").exists()
