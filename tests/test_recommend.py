"""`python -m trainkit recommend` as a user runs it: bad input in one line, a real run on a tiny budget
whose answer.html opens on the card inside the first screen (the command's function, in this
process), a user's workload from outside the repository and a tiny Llama through `hf:`. The rule's
planted cases are tests/test_answer.py's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainkit.commands.cli import main as trainkit_main

from .conftest import REPO, trainkit_cmd
from .test_reports import SCREEN, card_box
from .test_workload import write_user_module
from .test_workload_cli import env_with


def recommend(*args: str, cwd=REPO, env=None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(trainkit_cmd("recommend", *args), cwd=cwd, env=env or env_with(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--budget", "soon"], "'soon': give seconds above 0"),
    (["--world-size", "3"], "--target-batch 32 is not a multiple of --world-size 3"),
    (["--from", "/no/such/answer"], "--from '/no/such/answer': no such file or directory"),
    (["--price-per-hour", "2"], "--price-per-hour needs --train-samples or --train-tokens"),
    (["--precision", "fp64"], "'fp64'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = recommend("--model", "mlp", "--target-batch", "32", "--device", "cpu", "--output", str(tmp_path / "a"),
                     *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help_lists_every_option():
    proc = recommend("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--target-batch", "--budget", "--from", "--margin", "--world-size", "--train-tokens",
                   "--price-per-hour", "--memory-limit-gb"):
        assert option in proc.stdout


def _tiny_args(model: str, out, *extra: str, rounds: int = 3, steps: int = 12, budget_s: int = 300) -> list[str]:
    return ["--model", model, "--target-batch", "32", "--device", "cpu", "--precision", "amp-bf16", "--rounds",
            str(rounds), "--seeds", "2", "--steps", str(steps), "--train-samples", "1e6", "--price-per-hour", "3",
            "--budget", str(budget_s), "--output", str(out), *extra]


def _tiny(tmp_path, model: str, cwd=REPO, env=None, *extra: str, rounds: int = 3, steps: int = 12,
          budget_s: int = 300) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "answer"
    proc = recommend(*_tiny_args(model, out, *extra, rounds=rounds, steps=steps, budget_s=budget_s), cwd=cwd, env=env)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    with open(out / "answer.json") as f:
        return proc, json.load(f)


@pytest.mark.slow
def test_a_tiny_run_writes_the_answer_and_its_card_is_in_the_first_screen(tmp_path):
    # The command's own function in this process: a fresh interpreter (~5 s here) adds nothing to what is
    # checked, and the subprocess path is the tests below. Two speed rounds: the second reverses the first.
    out = tmp_path / "answer"
    status = trainkit_main(["recommend", *_tiny_args("mlp", out, rounds=2)])
    assert status in (0, 1)
    doc = json.loads((out / "answer.json").read_text())
    assert doc["schema"] == "trainkit.answer/1" and doc["decision"]["kind"] in ("recommend", "stay with fp32",
                                                                                  "can't tell yet")
    assert (status == 1) == (doc["decision"]["kind"] == "can't tell yet")
    assert {p.name for p in out.iterdir()} >= {"answer.json", "answer.md", "answer.html", "plan.json", "records.jsonl"}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    purposes = {r["answer_purpose"] for r in records}
    assert purposes >= {"probe", "speed"}, purposes
    speed = [r for r in records if r["answer_purpose"] == "speed"]
    assert [r["config"]["precision"] for r in speed[:4]] == ["fp32", "amp-bf16", "amp-bf16", "fp32"]  # ABBA
    candidate = doc["candidates"][0]
    # the budget bounds the run on a loaded machine: at least one round ran, each named by its cells
    assert candidate["precision"] == "amp-bf16" and candidate["speed"]["n"] >= 1
    assert len(candidate["speed_cells"]) == candidate["speed"]["n"]
    ttt = doc["time_to_train"]
    if ttt:  # a price and samples give the cost at the answer's throughput
        assert ttt["cost"] == pytest.approx(ttt["seconds"] / 3600 * 3)
    box = card_box(str(out / "answer.html"), tmp_path)
    assert box is not None
    top, bottom, left, right = box
    assert 0 <= top < bottom <= SCREEN[1] and right <= SCREEN[0], box
    # again from its own directory, with no time to run anything: the plan and every cell the records
    # cover are reused (a reused cell costs nothing of the budget), none runs, and the answer is the same
    again = trainkit_main(["recommend", "--model", "mlp", "--target-batch", "32", "--device", "cpu", "--precision",
                           "amp-bf16", "--rounds", "2", "--seeds", "2", "--steps", "12", "--budget", "1", "--from",
                           str(out), "--output", str(tmp_path / "again"), "--quiet"])
    assert again in (0, 1)
    second = json.loads((tmp_path / "again" / "answer.json").read_text())
    ran = [r for r in records if r["answer_purpose"] in ("speed", "parity")]
    assert second["budget"]["cells_run"] == 0 and second["budget"]["cells_reused"] == len(ran)
    assert second["decision"]["kind"] == doc["decision"]["kind"]


@pytest.mark.slow
def test_a_user_workload_from_outside_the_repository(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    write_user_module(user)
    # What is tested is that the workload is found from the directory the command runs in, through its
    # plan, probes and cells, not the answer's rounds: one round of 4-step cells.
    proc, doc = _tiny(tmp_path, "usermodels:tiny", user, env_with(str(user)), rounds=1, steps=4)
    assert doc["model"] == "tiny" and doc["config"]["workload"] == "usermodels:tiny"
    assert doc["candidates"][0]["speed"]["n"] >= 1


def test_the_fork_server_preloads_the_transformers_models_this_process_resolved(monkeypatch):
    """What keeps an hf: cell cheap: transformers imports a model's module lazily (Llama's ~1.7 s, once
    per cell unless the fork server has it), so the modules the command imported while resolving the
    spec are preloaded with transformers; others of the model's package are not needed."""
    from types import ModuleType

    from trainkit.engine.cell.launch import preloaded_modules

    for name in ("transformers", "transformers.models.made_up", "transformers.models.made_up.modeling_made_up",
                 "transformers.models.made_up.configuration_made_up"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or ModuleType(name))
    preloaded = preloaded_modules()
    assert "transformers" in preloaded and "transformers.models.made_up.modeling_made_up" in preloaded
    assert "transformers.models.made_up.configuration_made_up" not in preloaded
    assert preloaded[0] == "trainkit.engine.cell.worker"


@pytest.mark.slow
def test_a_tiny_llama_through_hf(tmp_path):
    pytest.importorskip("transformers")
    spec = ("hf:llama?hidden_size=32&num_hidden_layers=1&num_attention_heads=2&vocab_size=128&intermediate_size=64"
            "&max_position_embeddings=16&seq_len=16&name=tiny-llama")
    # What is tested is that an `hf:` spec goes through recommend (its plan, probes and cells), not the
    # answer's rounds: one speed round of 4-step parity cells, within a smaller budget.
    proc, doc = _tiny(tmp_path, spec, rounds=1, steps=4, budget_s=120)
    assert doc["config"]["workload"] == spec and doc["candidates"][0]["route"] is not None
    if doc["decision"]["kind"] != "can't tell yet":  # an answer is timed at its throughput
        assert doc["time_to_train"]["samples"] == 1e6
