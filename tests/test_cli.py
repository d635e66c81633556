"""The command line: one cell end to end, and every kind of bad input refused with exit 2."""

import dataclasses
import json
import subprocess

import pytest

from trainkit.commands.cli import main
from trainkit.commands.config_options import CHOICES, choices_of
from trainkit.engine.config import RunConfig
from trainkit.engine.precision_facts import precision_names
from trainkit.engine.result import check_record

from .conftest import REPO, trainkit_cmd

SMALL = ["--batch-size", "8", "--steps", "3", "--warmup-steps", "1", "--device", "cpu", "--quiet"]


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
    proc = subprocess.run(trainkit_cmd("run", "--model", "gpt", "--seq-len", "16", "--batch-size", "8",
                                       "--steps", "800", "--warmup-steps", "1", "--device", "cpu",
                                       "-o", str(tmp_path / "r.json")),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "starting 1 rank(s)" in proc.stderr
    assert "step " in proc.stderr and "left" in proc.stderr
    assert "samples/s" in proc.stderr.splitlines()[-1]
