"""The command line: one cell end to end, and every kind of bad input refused with exit 2."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from trainkit.commands.cli import main
from trainkit.commands.config_options import CHOICES, choices_of
from trainkit.engine.cell.record import check_record
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import precision_names

from .conftest import REPO, trainkit_cmd

# One intra-op thread: the suite runs two xdist workers on two cores, and two-thread ranks beside them
# stall every op on a straggler thread (timings moved by factors, runs took minutes).
SMALL = ["--batch-size", "8", "--steps", "3", "--warmup-steps", "1", "--device", "cpu", "--quiet", "--cpu-threads", "1"]


def _bad_values(field: dataclasses.Field) -> list[str]:
    kind = str(field.type)
    if field.name in CHOICES:
        return ["bogus"]
    if kind.startswith("int"):
        return ["abc", "1.5", "-1"]
    if kind.startswith("float"):
        return ["abc", "-1"]
    return []


BAD_OPTIONS = [(f.name, value) for f in dataclasses.fields(RunConfig) for value in _bad_values(f)]


@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS)
def test_every_invalid_option_value_exits_2_with_one_clear_line(field, value, capsys):
    flag = "--" + field.replace("_", "-")
    assert main(["run", f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert value in err and (flag in err or field in err), err
    if field in CHOICES:
        assert ", ".join(choices_of(field)) in err


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--shuffle=yes"], "--shuffle"),
    (["run", "--no-such-option", "1"], "unrecognized arguments: --no-such-option"),
    (["run", "--batch-size"], "--batch-size: expected one argument"),
    (["run", "--data", "mnist", "--data-root", "/no/such/dir"], "'/no/such/dir' is not a directory"),
    (["run", "--data", "cifar10", "--model", "resnet18"], "data_root"),
    (["run", "--resume-from", "/no/such.pt"], "'/no/such.pt' is not a file"),
    (["run", "--checkpoint-dir", "/tmp/x"], "checkpoint_every and checkpoint_dir go together"),
    (["run", "--output", "/no/such/dir/r.json"], "does not exist"),
    (["run", "--cell-timeout", "0"], "--cell-timeout: must be > 0"),
    (["run", "--memory-limit-gb", "x"], "--memory-limit-gb: not a number: 'x'"),
    (["run", "--memory-limit-gb", "2", "--device", "cuda"], "--memory-limit-gb caps a CPU worker's address space"),
    (["run", "--model", "gpt", "--gpt-width", "30", "--gpt-heads", "4"], "gpt_width=30 must be divisible"),
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "choose a command"),
    (["repro", "/no/such/record.json"], "not a readable result record"),
])
def test_bad_input_exits_2_with_one_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_bad_input_in_a_real_process_has_no_traceback():
    proc = subprocess.run(trainkit_cmd("run", "--precision", "fp8"), cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: trainkit run: argument --precision: invalid choice: 'fp8' "
                                   f"(choose from {', '.join(precision_names())})")


def test_run_writes_the_record_and_exits_0(tmp_path):
    out = tmp_path / "gpt.json"
    proc = subprocess.run(trainkit_cmd("run", "--model", "gpt", "--precision", "amp-bf16", "--grad-accum", "2",
                                       "--seq-len", "16", *SMALL, "--output", str(out)),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert check_record(record) == []
    assert record["status"] == "ok" and record["cell_id"] == "gpt-amp-bf16-bs8-ga2-gpus1"
    assert record["config"]["compute_dtype"] == "torch.bfloat16" and record["config"]["effective_batch"] == 16
    assert record["step_time_s"]["n"] == 3 and len(record["loss"]["curve"]) == 4
    assert record["throughput_samples_per_s"] == pytest.approx(16 * 3 / sum(record["step_time_s"]["values"]))
    assert record["tokens_per_s"] == pytest.approx(record["throughput_samples_per_s"] * 16)


def test_a_non_ok_cell_writes_its_record_and_exits_1(tmp_path):
    out = tmp_path / "tf32.json"
    assert main(["run", "--precision", "tf32", *SMALL, "--output", str(out)]) == 1
    record = json.loads(out.read_text())
    assert record["status"] == "unsupported"
    assert "tf32 needs a CUDA GPU" in record["status_detail"]


def test_repro_reruns_a_records_config_with_overrides(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["run", "--model", "mlp", "--grad-accum", "2", "--seed", "7", *SMALL, "-o", str(first)]) == 0
    assert main(["repro", str(first), "--steps", "2", "-q", "-o", str(second)]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert b["config"]["seed"] == 7 and b["config"]["grad_accum"] == 2 and b["config"]["steps"] == 2
    assert b["loss"]["curve"] == a["loss"]["curve"][:3]  # same seed: the same first steps


def test_progress_is_shown_on_stderr(tmp_path):
    # A report after every step: the run's length on this host's clock does not decide the test.
    env = {**os.environ, "TRAINKIT_PROGRESS_INTERVAL_S": "0"}
    proc = subprocess.run(trainkit_cmd("run", "--model", "mlp", "--batch-size", "8", "--steps", "20",
                                       "--warmup-steps", "1", "--device", "cpu", "-o", str(tmp_path / "r.json")),
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "starting 1 rank(s)" in proc.stderr
    assert "step 11/21" in proc.stderr and "left" in proc.stderr  # the warmup step counts
    assert "samples/s" in proc.stderr.splitlines()[-1]


# --- JSON files every command reads: a broken one is named in one line, exit 2 ---------------------------

def test_a_broken_nightly_state_is_named_in_one_line_not_a_traceback(tmp_path, capsys):
    """nightly.json cut off (a disk that filled up while it was written by hand, say) was a
    JSONDecodeError traceback out of every nightly command that reads the run."""
    from trainkit.nightly.cli import main as nightly_main

    (tmp_path / "nightly.json").write_text('{"schema": "trainkit.nightly/1", "stages": {')
    assert nightly_main(["status", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'nightly.json'}: not a readable nightly run state" in err, err


# --- outputs are checked as they are parsed, before any cell runs ------------------------------------------

def _command_main(command: str):
    """The in-process entry point of a command (each prints one line and returns 2 for bad input)."""
    if command == "reports":
        from trainkit.reports.cli import main as reports_main

        return reports_main
    if command == "nightly":
        from trainkit.nightly.cli import main as nightly_main

        return nightly_main
    return main


CPU_PLAN = ["plan", "--model", "mlp", "--precision", "fp32", "--device", "cpu", "--memory-limit-gb", "1"]
# Each command that writes a file, with {bad} where the place it writes goes; {ok} is a good file.
WRITERS = [
    ("trainkit", ["run", *SMALL, "--output", "{bad}"]),
    ("trainkit", ["repro", "{ok}", "--output", "{bad}"]),
    ("trainkit", ["run", *SMALL, "--profile", "--profile-dir", "{bad_dir}"]),
    ("trainkit", [*CPU_PLAN, "--output", "{bad}"]),
    ("trainkit", [*CPU_PLAN, "--output", "{ok}", "--report", "{bad}"]),
    ("trainkit", ["parity", "--device", "cpu", "--output", "{bad}"]),
    ("trainkit", ["parity", "--device", "cpu", "--output", "{ok}", "--records", "{bad}"]),
    ("trainkit", ["parity", "--device", "cpu", "--output", "{ok}", "--report", "{bad}"]),
    ("reports", ["build", "{ok}", "-o", "{bad}"]),
    ("reports", ["plan", "{ok}", "--output", "{bad}"]),
    ("reports", ["compare", "{ok}", "{ok}", "-o", "{bad}"]),
    ("nightly", ["status", "--out", "{bad_dir}"]),
    ("nightly", ["run", "--device", "cpu", "--out", "{bad_dir}"]),
    ("nightly", ["gpu-check", "--device", "cpu", "--out", "{bad_dir}"]),
    ("nightly", ["promote", "{ok}", "--baselines", "{bad_dir}"]),
    ("nightly", ["history", "--out", "{ok_dir}", "--history", "{bad}"]),
    ("reports", ["history", "trend", "--db", "{ok}", "-o", "{bad}"]),
]


@pytest.mark.parametrize(("command", "argv"), WRITERS, ids=lambda v: v if isinstance(v, str) else " ".join(v[:1]))
def test_an_output_that_is_a_directory_is_refused_before_anything_runs(command, argv, tmp_path, capsys):
    """An existing directory named as an output file passed validation and failed with
    IsADirectoryError after every cell had run; an existing file named as an output directory
    likewise. Now the option's type refuses it: one line naming it, exit 2, nothing written."""
    directory, file = tmp_path / "a_directory", tmp_path / "a_file.json"
    directory.mkdir()
    file.write_text("{}")
    values = {"bad": str(directory), "bad_dir": str(file), "ok": str(file), "ok_dir": str(tmp_path / "run")}
    argv = [arg.format(**values) for arg in argv]
    assert _command_main(command)(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (f"{directory}' is a directory" in err) or (f"{file}' is not a directory" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory", "a_file.json"]  # and no run directory
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["run", *SMALL, "--output", "{file}/r.json"],
    ["parity", "--device", "cpu", "--output", "{missing}/p.json"],
    [*CPU_PLAN, "--output", "{missing}/plan.json"],
])
def test_an_output_in_a_missing_or_impossible_directory_is_refused(argv, tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("")
    argv = [arg.format(file=file, missing=tmp_path / "missing") for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("does not exist" in err or "is not a directory" in err), err


def test_reports_make_the_missing_directories_of_their_output(tmp_path, capsys):
    """reports create the directories of their page (as they always did): a missing one is fine,
    an impossible one (under a file) is refused as it is parsed."""
    from trainkit.reports.cli import main as reports_main

    file = tmp_path / "a_file"
    file.write_text("")
    assert reports_main(["build", str(tmp_path / "none.jsonl"), "-o", str(file / "deeper" / "r.html")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert reports_main(["build", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "new" / "r.html")]) == 2
    assert "none.jsonl: no such file" in capsys.readouterr().err  # past the output check, to the input


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only directory")
def test_an_output_in_a_read_only_directory_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["run", *SMALL, "--output", str(locked / "r.json")]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(("flag", "value"), [("--results-file", "{dir}"), ("--report-dir", "{file}"),
                                             ("--profile-dir", "{file}")])
def test_bench_refuses_its_outputs_as_usage_errors_before_any_cell(flag, value, tmp_path):
    """bench's options are pytest's: a bad output is pytest's usage error (exit 4), one line, and
    no cell runs."""
    directory, file = tmp_path / "a_directory", tmp_path / "a_file"
    directory.mkdir()
    file.write_text("")
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "-p",
                           "no:randomly", "--preset", "tiny", flag, value.format(dir=directory, file=file)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert f"argument {flag}: '" in proc.stderr and "directory" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and list(directory.iterdir()) == []
