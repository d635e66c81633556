"""A user's workload through the commands, as a user runs them: from a directory outside the
repository, `--model MODULE:FUNCTION` in run (the worker resolves it in its own processes),
`workloads`, `check-workload`, plan, parity and the nightly job. Where a fresh interpreter (~5 s
here) adds nothing to what a test checks, the command's own function runs in this process, from
the user's directory (in_user_dir)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainkit.commands.cli import main as trainkit_main
from trainkit.nightly.cli import main as nightly_main

from .conftest import REPO, trainkit_cmd
from .test_workload import EXAMPLE, example_entry_points, write_dist_info, write_user_module


def env_with(*paths: str) -> dict[str, str]:
    """This environment with `paths` and the repository importable (not the current directory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*paths, REPO, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(args: list[str], cwd, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env or env_with(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user_dir(tmp_path):
    assert not str(tmp_path).startswith(REPO)
    write_user_module(tmp_path)
    return tmp_path


@pytest.fixture
def in_user_dir(user_dir, monkeypatch):
    """This process in the user's directory, as a command started there: the workload resolves from
    the current directory (not a path the test adds), and a process the command starts finds the
    repository. Afterwards sys.path and the user's module are as they were."""
    monkeypatch.chdir(user_dir)
    monkeypatch.setattr(sys, "path", list(sys.path))  # resolving appends the current directory
    monkeypatch.setenv("PYTHONPATH", env_with()["PYTHONPATH"])
    yield user_dir
    sys.modules.pop("usermodels", None)


def test_run_trains_a_user_workload_in_its_workers_and_ranks_agree_with_one(in_user_dir):
    """world size 2 x batch 4 x accum 2 == one rank x batch 16, through the real launcher: the
    workers (forked from the fork server) import the user's module from the command's directory,
    the command's (a fresh `python -m trainkit run`) and this process's (the one-rank reference)."""
    common = ["--model", "usermodels:tiny", "--device", "cpu", "--steps", "4", "--warmup-steps", "1", "--lr", "0.1",
              "-q"]
    proc = run(trainkit_cmd("run", *common, "--world-size", "2", "--batch-size", "4", "--grad-accum", "2",
                            "-o", "two.json"), in_user_dir)
    assert proc.returncode == 0, proc.stderr
    assert trainkit_main(["run", *common, "--batch-size", "16", "-o", "one.json"]) == 0
    two, one = (json.loads((in_user_dir / f"{name}.json").read_text()) for name in ("two", "one"))
    assert two["cell_id"] == "tiny-fp32-bs4-ga2-gpus2" and two["ranks_reported"] == 2
    assert two["config"]["workload"] == "usermodels:tiny" and two["config"]["has_batchnorm"] is False
    assert two["flops_per_sample"] == 6 * (32 * 64 + 64 * 2) - 2 * 32 * 64  # no input gradient for the first layer
    for a, b in zip(two["loss"]["curve"], one["loss"]["curve"]):
        assert a == pytest.approx(b, rel=1e-5)


def test_workloads_lists_built_ins_plugins_and_adapters(tmp_path):
    write_dist_info(tmp_path, "tk-example-workload", example_entry_points())
    proc = run(trainkit_cmd("workloads"), tmp_path, env_with(str(tmp_path), EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["gpt", "built-in"] for line in lines)
    assert any(line.startswith("resmlp ") and "plugin (tk-example-workload)" in line
               and "tk_example.workloads:resmlp" in line for line in lines)
    assert any(line.startswith("hf:...") for line in lines) and any(line.startswith("timm:...") for line in lines)


def parse_table(stdout: str) -> dict[str, tuple[str, str]]:
    """check-workload's table: {check: (verdict, detail)}, cut at the dashes' columns."""
    header = next(i for i, line in enumerate(stdout.splitlines()) if line.startswith("check "))
    lines = stdout.splitlines()
    widths = [len(dashes) for dashes in lines[header + 1].split("  ")]
    rows = {}
    for line in lines[header + 2:]:
        check = line[:widths[0]].strip()
        verdict = line[widths[0] + 2:widths[0] + 2 + widths[1]].strip()
        rows[check] = (verdict, line[widths[0] + widths[1] + 4:].strip())
    return rows


@pytest.mark.slow
def test_check_workload_reports_the_invariants_of_a_module_function(user_dir):
    proc = run(trainkit_cmd("check-workload", "--model", "usermodels:tiny", "--device", "cpu",
                            "--precision", "fp32,half-bf16,fp8-tensorwise"), user_dir)
    assert proc.returncode == 0, proc.stderr
    # Only its own progress lines: nothing from torch's profiler (Kineto's stages, a CUDA build's
    # "gpuGetDeviceCount failed" on a CPU) or inductor.
    assert [line for line in proc.stderr.splitlines() if not line.startswith("[check-workload] tiny: ")] == []
    rows = parse_table(proc.stdout)
    assert rows["accumulation exact"][0] == "ok" and rows["deterministic"][0] == "ok"
    assert rows["loss is a mean"][0] == rows["samples independent"][0] == rows["loss is a scalar"][0] == "ok"
    assert rows["FLOPs per sample"] == ("ok", "8960 (forward + backward, torch's FlopCounterMode)")
    assert rows["FP8 layers"][0] == "ok" and rows["FP8 layers"][1].startswith("1 of 2 linear layers convert (0)")
    assert rows["planner estimate"][0] == "ok" and "1.000x the real step" in rows["planner estimate"][1]
    assert rows["precision fp32"][0] == rows["precision half-bf16"][0] == "ok"
    assert rows["precision fp8-tensorwise"][0] == "unsupported"


@pytest.mark.slow
def test_check_workload_says_batchnorm_makes_accumulation_inexact_by_design(user_dir):
    proc = run(trainkit_cmd("check-workload", "--model", "usermodels:tiny_bn", "--device", "cpu",
                            "--precision", "fp32"), user_dir)
    assert proc.returncode == 0, proc.stderr
    verdict, detail = parse_table(proc.stdout)["accumulation exact"]
    assert verdict == "expected" and detail.startswith("BatchNorm: statistics per micro-batch")


@pytest.mark.parametrize("spec, message", [
    ("usermodels:not_a_workload", "returned a Linear, not a trainkit.engine.workloads.Workload"),
    ("nosuch:fn", "no module named 'nosuch' in the current directory"),
    ("setup", "setup.py does not define build, loss, batch (the minimal form), so it is not run"),
])
@pytest.mark.parametrize("command", ["run", "check-workload"])
def test_a_bad_spec_is_one_line_and_exit_2(user_dir, command, spec, message):
    write_user_module(user_dir, "setup", "raise SystemExit('setup.py ran')\n")
    proc = run(trainkit_cmd(command, "--model", spec, "--device", "cpu"), user_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_plan_plans_a_user_workload(in_user_dir):
    # What is tested is that plan finds and plans a user's workload by name, not the search: it probes
    # up to micro-batch 128 (not until out of memory, a minute of probes), to 10 %, with 1-step probes,
    # measures 2 candidates and runs each on one thread.
    assert trainkit_main(["plan", "--model", "usermodels:tiny", "--precision", "fp32", "--target-batch", "64",
                          "--device", "cpu", "--memory-limit-gb", "2", "--search-limit", "128", "--resolution", "0.1",
                          "--probe-steps", "1", "--measure", "2", "--steps", "3", "--warmup-steps", "1",
                          "--cpu-threads", "1", "--output", "plan.json", "--quiet"]) == 0
    with open(in_user_dir / "plan.json") as f:
        plan = json.load(f)
    assert plan["model"] == "tiny" and plan["config"]["workload"] == "usermodels:tiny"
    assert plan["precisions"]["fp32"]["max_batch"] > 64
    fastest = plan["fastest"]
    assert fastest["cell_id"].startswith("tiny-fp32-") and fastest["micro_batch"] * fastest["grad_accum"] == 64


@pytest.mark.slow
def test_parity_judges_a_user_workload_by_its_name(in_user_dir):
    assert trainkit_main(["parity", "--model", "usermodels:tiny", "--precision", "amp-bf16", "--seeds", "2",
                          "--steps", "10", "--device", "cpu", "--output", "parity.json", "--quiet"]) == 0
    with open(in_user_dir / "parity.json") as f:
        doc = json.load(f)
    block = doc["models"]["tiny"]
    assert block["config"]["workload"] == "usermodels:tiny" and block["config"]["optimizer"] == "adamw"
    assert set(block["precisions"]) == {"fp32", "amp-bf16"}
    assert block["precisions"]["amp-bf16"]["verdict"] in ("equivalent", "worse", "better", "inconclusive")


@pytest.mark.slow
def test_nightly_runs_a_user_workload_from_the_directory_it_was_started_in(in_user_dir):
    # nightly's matrix is bench in a subprocess, which must find the module where nightly was started
    assert nightly_main(["run", "--out", "night", "--preset", "tiny", "--device", "cpu", "--", "--model",
                         "usermodels:tiny", "--precision", "fp32", "--grad-accum", "1", "--steps", "2",
                         "--warmup-steps", "1", "--rounds", "2"]) == 0
    with open(in_user_dir / "night" / "results.jsonl") as f:
        cells = [json.loads(line) for line in f]
    assert {c["cell_id"] for c in cells} == {"tiny-fp32-bs16-ga1-gpus1"}  # each of nightly's repeats
    assert all(c["status"] == "ok" and c["config"]["workload"] == "usermodels:tiny" for c in cells)
