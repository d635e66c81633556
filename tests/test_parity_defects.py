"""Loss parity's confirmed defects, each held by a test that failed before its fix (issue 24): a null
eval loss, seeds fp32 did not run, one shared seed, a second run over the same output, a steps-to-
target interval below zero, and a page that said the loss had flattened when it had not."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from trainkit.analysis.parity.document import NO_VERDICT
from trainkit.analysis.parity.stats import geometric_interval
from trainkit.analysis.parity.verdicts import judge, judge_model
from trainkit.commands import parity as command
from trainkit.commands.cli import build_parser

STEPS = 40


def record(precision: str, seed: int, eval_loss: float | None = 1.0, status: str = "ok", drop: float = 1.0,
           tail: float = 0.0, step_s: float = 0.01) -> dict:
    """A parity cell's record: a curve falling from 2 by `drop` over the first three quarters, then by
    `tail` over the last, and its eval loss."""
    three_quarters = STEPS * 3 // 4
    curve = [2.0 - drop * min(t, three_quarters) / three_quarters
             - tail * max(0, t - three_quarters) / (STEPS - three_quarters) for t in range(STEPS)]
    return {"cell_id": f"mlp-{precision}-s{seed}", "status": status, "status_detail": "",
            "config": {"model": "mlp", "precision": precision, "seed": seed, "device": "cpu"},
            "loss": {"eval": eval_loss, "final": curve[-1], "curve": curve},
            "step_time_s": {"median": step_s}, "memory": {}, "diagnostics": {}}


def fp32(seeds=(0, 1, 2, 3, 4), **kw) -> list[dict]:
    return [record("fp32", s, eval_loss=1.0 + 0.01 * s, **kw) for s in seeds]


def test_an_ok_cell_with_a_null_eval_loss_gets_no_verdict_with_the_reason_not_a_crash():
    candidates = [record("amp-bf16", s, eval_loss=1.0 + 0.01 * s) for s in range(5)]
    candidates[2]["loss"]["eval"] = None
    entry = judge(fp32(), {"amp-bf16": candidates}).precisions["amp-bf16"]
    assert entry.verdict == NO_VERDICT and "seed 2" in entry.reason and "without an eval loss" in entry.reason


def test_from_records_judges_a_null_eval_loss_without_a_traceback(tmp_path, capsys):
    records = fp32() + [record("amp-bf16", s, eval_loss=None if s == 1 else 1.0 + 0.01 * s) for s in range(5)]
    path = tmp_path / "parity.records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = build_parser().parse_args(["parity", "--from-records", str(path), "-q", "-o", str(tmp_path / "p.json")])
    assert command.main(args) == 1  # a precision without a verdict: exit 1, the document written
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["models"]["mlp"]["precisions"]["amp-bf16"]["verdict"] == NO_VERDICT


def test_a_non_finite_eval_loss_in_an_ok_cell_is_diverged():
    candidates = [record("amp-fp16", s, eval_loss=1.0 + 0.01 * s) for s in range(5)]
    candidates[3]["loss"]["eval"] = math.inf
    entry = judge(fp32(), {"amp-fp16": candidates}).precisions["amp-fp16"]
    assert entry.verdict == "worse" and entry.decided_by == "divergence" and "seed 3" in entry.reason


def test_seeds_fp32_did_not_run_are_judged_and_shown():
    # Five paired seeds equal to fp32's; five more, that fp32 never ran, three times the loss.
    candidates = [record("half-fp16", s, eval_loss=1.0 + 0.01 * s) for s in range(5)]
    candidates += [record("half-fp16", s, eval_loss=3.4 + 0.01 * s) for s in (5, 6, 7, 8, 9)]
    entry = judge(fp32(), {"half-fp16": candidates}).precisions["half-fp16"]
    assert entry.verdict != "equivalent"
    assert entry.loss.unpaired_seeds == (5, 6, 7, 8, 9) and entry.loss.unpaired is not None
    assert entry.loss.unpaired.verdict == "worse" and entry.verdict == "worse"
    line = command._row(entry)
    assert "seeds 5, 6, 7, 8, 9 fp32 did not run" in line and "worse" in line
    from trainkit.reports.parity import rows, table

    doc = {"models": {"mlp": dataclasses.asdict(judge(fp32(), {"half-fp16": candidates}))}}
    shown = table(rows(doc))
    (cell,) = [c for c in shown["seeds fp32 did not run"] if c != "–"]
    assert cell.startswith("5, 6, 7, 8, 9: +2.4") and cell.endswith("(Welch t) worse")


def test_too_few_seeds_fp32_did_not_run_are_no_welch_test_but_keep_equivalence_from_being_claimed():
    # Three unpaired seeds, below WELCH_MIN_SEEDS: no interval over them, and, lying far beyond the
    # margin, they keep the pairs' "equivalent" from standing.
    candidates = [record("half-fp16", s, eval_loss=1.0 + 0.01 * s) for s in range(5)]
    candidates += [record("half-fp16", s, eval_loss=3.4 + 0.01 * s) for s in (5, 6, 7)]
    entry = judge(fp32(), {"half-fp16": candidates}).precisions["half-fp16"]
    assert entry.loss.unpaired_seeds == (5, 6, 7) and entry.loss.unpaired is None
    assert entry.verdict == "inconclusive"


def test_exactly_one_shared_seed_gives_a_coherent_answer():
    # fp32 ran seeds 0-4; this precision 4-8: one pair only. Judged as independent sets, and said so.
    candidates = [record("amp-bf16", s, eval_loss=1.0 + 0.01 * (s - 4)) for s in range(4, 9)]
    entry = judge(fp32(), {"amp-bf16": candidates}).precisions["amp-bf16"]
    assert entry.verdict != NO_VERDICT and entry.loss.test == "Welch t"
    assert entry.loss.seeds == (4, 5, 6, 7, 8) and "1 seed shared" in entry.decided_by


def test_a_second_run_with_the_same_output_keeps_the_first_runs_records(tmp_path, monkeypatch):
    output = tmp_path / "parity.json"
    records = tmp_path / "parity.records.jsonl"

    def fake_run(models, precisions, seeds, *, records_path, **kw):
        with open(records_path, "a") as f:
            f.write(json.dumps({"run": len(list(tmp_path.glob("parity.records*.jsonl")))}) + "\n")
        raise SystemExit(0)

    monkeypatch.setattr(command, "run", fake_run)
    for _ in range(2):
        args = build_parser().parse_args(["parity", "--model", "mlp", "--device", "cpu", "-q", "-o", str(output)])
        with pytest.raises(SystemExit):
            command.main(args)
    kept = sorted(tmp_path.glob("parity.records*.jsonl"))
    assert len(kept) == 2 and all(p.read_text().strip() for p in kept)
    assert records.exists() and records.read_text().count("\n") == 1


def test_steps_to_target_never_has_a_negative_bound():
    # Seeds whose loss drops at steps 3, 4 and 35 reach the target after 4, 5 and 36 steps: the
    # arithmetic t interval of those counts went below zero.
    candidates = []
    for seed, at in zip(range(3), (3, 4, 35)):
        r = record("amp-bf16", seed)
        r["loss"]["curve"] = [2.0 if t < at else 0.5 for t in range(STEPS)]
        candidates.append(r)
    steps = judge(fp32(), {"amp-bf16": candidates}).precisions["amp-bf16"].timing.steps_to_target
    assert steps.low > 0 and steps.low < steps.mean < steps.high and "logarithm" in steps.method


@pytest.mark.parametrize("n", [3, 4, 5, 8, 20])
def test_the_steps_to_target_interval_covers_its_figure_95_percent_of_the_time(n):
    """2,000 simulated sets of seeds whose steps to target are log-normal (a count's spread grows with
    it): the interval of the geometric mean covers the true median (exp of the log mean) 93-97 %."""
    rng = np.random.default_rng(n)
    true_median = 40.0
    covered = 0
    draws = 2000
    for _ in range(draws):
        steps = np.maximum(1, np.round(true_median * np.exp(rng.normal(0, 0.4, n))))
        iv = geometric_interval(list(steps))
        covered += iv.low <= true_median <= iv.high
    assert 0.93 <= covered / draws <= 0.97, covered / draws


def test_the_page_says_whether_fp32s_loss_had_flattened_from_the_curve():
    from trainkit.reports.parity import run_length_sentence

    still_falling = judge_model(fp32(tail=0.15) + [record("amp-bf16", s, tail=0.15) for s in range(5)])
    flat = judge_model(fp32(tail=0.0) + [record("amp-bf16", s) for s in range(5)])
    falling_text = run_length_sentence(json.loads(json.dumps(dataclasses.asdict(still_falling))))
    flat_text = run_length_sentence(json.loads(json.dumps(dataclasses.asdict(flat))))
    share = still_falling.reference.flatness.last_quarter_share
    assert share > 0.1 and "flattened" not in falling_text and "still falling" in falling_text
    assert f"{share * 100:.1f} % of its total drop in the last quarter" in falling_text
    assert "flattened" in flat_text and f"{STEPS} optimizer steps" in flat_text
