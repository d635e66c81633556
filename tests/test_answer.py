"""The answer's rule (trainkit.analysis.answer) on planted cases, the paired speed ratio, and the
command's orchestration (trainkit.commands.recommend_run) over a fake cell runner and clock: what
runs, what `--from` spares, what the budget cuts. Milliseconds each; the real command runs in
tests/test_recommend.py."""

from __future__ import annotations

import json
import math
import random

import pytest

from trainkit.analysis.answer import (
    CANT_TELL,
    RECOMMEND,
    STAY,
    Candidate,
    Loss,
    Ratio,
    Route,
    decide,
    time_to_train,
)
from trainkit.analysis.parity.document import Margin
from trainkit.commands import recommend_run as rr
from trainkit.engine.spec.config import RunConfig
from trainkit.reports.answer.card import card, markdown
from trainkit.reports.html import esc

# --- the rule, planted --------------------------------------------------------------------------------


def _route(p: str, headroom: float = 0.5) -> Route:
    return Route(p, 256, 1, 1, 40 * 2**20, "host_vm_growth_bytes", int(headroom * 2**30), headroom, 1000.0,
                 cells=(f"mlp-{p}-bs256",))


def _ratio(value: float, low: float | None, high: float | None, n: int = 5) -> Ratio:
    return Ratio(value, low, high, n, "test", None if low is not None else "too few rounds")


def _loss(verdict: str, diagnostic: str | None = None, more: int | None = None) -> Loss:
    return Loss(verdict, 0.01, 0.0, -0.005, 0.005, 0.975, (0, 1, 2), more_seeds_to_decide=more, diagnostic=diagnostic)


def _cand(p: str, speed: Ratio | None, verdict: str, effective: Ratio | None = None, **loss: object) -> Candidate:
    return Candidate(p, _route(p), speed, _loss(verdict, **loss), effective)  # type: ignore[arg-type]


def test_a_faster_candidate_judged_worse_is_not_recommended() -> None:
    fast_worse = _cand("half-bf16", _ratio(1.8, 1.6, 2.0), "worse", diagnostic="updates rounded away")
    equal = _cand("amp-bf16", _ratio(1.3, 1.2, 1.4), "equivalent", _ratio(1.3, 1.15, 1.45))
    d = decide([fast_worse, equal])
    assert d.kind == RECOMMEND and d.precision == "amp-bf16"
    worse = next(v for v in d.verdicts if v.precision == "half-bf16")
    assert worse.status == "rejected" and worse.category == "worse"
    # alone, the faster worse one still is not recommended: fp32 stays
    alone = decide([fast_worse])
    assert alone.kind == STAY and alone.precision == "fp32" and "worse" in alone.reason


def test_better_is_changed_numerics_never_recommended_and_its_diagnostic_is_shown() -> None:
    # The GPT with pure fp16 and Adam: the second moment underflows, so the loss moves unlike fp32's.
    diag = "Adam's second moment is zero in 38% of its entries (fp32: 0%): it underflowed in float16"
    better = _cand("half-fp16", _ratio(2.0, 1.8, 2.2), "better", _ratio(2.4, 2.1, 2.7), diagnostic=diag)
    d = decide([better])
    assert d.kind != RECOMMEND and d.precision != "half-fp16"
    verdict = d.verdicts[0]
    assert verdict.category == "changed-numerics" and verdict.diagnostic == diag
    doc = _doc(d, [better])
    assert esc(diag) in card(doc) and "changed" in card(doc) and diag in markdown(doc)


def test_an_equivalent_but_slower_candidate_is_not_recommended() -> None:
    slow = _cand("half-bf16-master", _ratio(0.7, 0.6, 0.8), "equivalent", _ratio(0.7, 0.6, 0.8))
    d = decide([slow])
    assert d.kind == STAY and d.verdicts[0].category == "slower"
    # slower to the target though its throughput holds 1x: still no win
    slower_to_target = _cand("amp-bf16", _ratio(1.0, 0.95, 1.05), "equivalent", _ratio(0.8, 0.7, 0.9))
    d = decide([slower_to_target])
    assert d.kind == STAY and d.verdicts[0].category == "equivalent-no-gain" and "below" in d.verdicts[0].why


def test_every_interval_holding_one_means_fp32_with_the_reason() -> None:
    holds = [_cand("amp-bf16", _ratio(1.1, 0.9, 1.3), "equivalent", _ratio(1.1, 0.9, 1.3)),
             _cand("half-bf16-master", _ratio(0.98, 0.8, 1.2), "equivalent", _ratio(0.98, 0.8, 1.2))]
    d = decide(holds)
    assert d.kind == STAY and d.precision == "fp32"
    assert "holds 1x" in d.reason and "amp-bf16" in d.reason and "half-bf16-master" in d.reason
    # the one that points above 1x is named with the rounds that could show it
    assert [n.precision for n in d.needs] == ["amp-bf16"] and "--rounds" in d.needs[0].command


def test_the_highest_effective_speedup_wins_and_the_runner_up_says_why_it_lost() -> None:
    a = _cand("amp-bf16", _ratio(1.3, 1.2, 1.4), "equivalent", _ratio(1.3, 1.2, 1.4))
    b = _cand("half-bf16-master", _ratio(1.6, 1.5, 1.7), "equivalent", _ratio(1.6, 1.45, 1.75))
    d = decide([a, b])
    assert d.precision == "half-bf16-master" and d.runner_up is not None and d.runner_up.precision == "amp-bf16"
    assert "1.30x" in d.runner_up.why


def test_no_headroom_and_no_fit_and_unsupported_are_rejected_with_reasons() -> None:
    tight = Candidate("amp-bf16", _route("amp-bf16", headroom=0.01), _ratio(1.5, 1.4, 1.6), _loss("equivalent"),
                      _ratio(1.5, 1.4, 1.6))
    nofit = Candidate("half-fp16", None, None, _loss("not measured"), None, route_note="no micro-batch fits")
    gpu = Candidate("tf32", None, None, _loss("not measured"), None, unsupported="tf32 needs a CUDA GPU")
    d = decide([tight, nofit, gpu])
    cats = {v.precision: v.category for v in d.verdicts}
    assert cats == {"amp-bf16": "no-headroom", "half-fp16": "no-fit", "tf32": "unsupported"}
    assert d.kind == STAY and "CUDA GPU" in next(v.why for v in d.verdicts if v.precision == "tf32")


def test_a_candidate_whose_throughput_holds_one_is_no_win_whatever_its_loss() -> None:
    d = decide([_cand("amp-fp16", _ratio(0.85, 0.55, 1.21), "not measured")])
    assert d.kind == STAY and d.verdicts[0].status == "no-win" and d.verdicts[0].category == "holds-one"
    assert d.unknown == () and d.needs == ()


def test_an_exhausted_budget_gives_cant_tell_yet_with_the_commands_that_decide() -> None:
    no_rounds = _cand("amp-bf16", _ratio(1.4, None, None, n=1), "not measured")
    no_parity = Candidate("half-bf16-master", _route("half-bf16-master"), _ratio(1.5, 1.3, 1.7),
                          Loss("not measured", None, None, None, None, None, (), reason="not run within the budget"),
                          None)
    open_seeds = _cand("amp-fp16", _ratio(1.2, 1.1, 1.3), "inconclusive", more=4)
    unplanned = Candidate("half-fp16", None, None, Loss("not measured", None, None, None, None, None, ()), None,
                          skipped="its plan was not afforded within the budget")
    d = decide([no_rounds, no_parity, open_seeds, unplanned], rerun="python -m trainkit recommend --from d")
    assert d.kind == CANT_TELL and d.precision is None
    needs = {n.precision: n for n in d.needs}
    assert "--rounds" in needs["amp-bf16"].command
    assert "--budget" in needs["half-bf16-master"].command
    assert "--seeds 7" in needs["amp-fp16"].command and "4 more seeds" in needs["amp-fp16"].what
    # a candidate the budget did not even plan is undecided, never "does not fit"
    assert "--budget" in needs["half-fp16"].command
    assert next(v for v in d.verdicts if v.precision == "half-fp16").category == "not-run"
    assert all(n.command.startswith("python -m trainkit recommend --from d") for n in d.needs)


def test_time_and_cost_to_train() -> None:
    ttt, why = time_to_train(1000.0, samples=3.6e6, price_per_hour=2.0)
    assert why is None and ttt is not None and ttt.seconds == pytest.approx(3600) and ttt.cost == pytest.approx(2.0)
    ttt, why = time_to_train(1000.0, tokens=64e6, tokens_per_sample=64)
    assert ttt is not None and ttt.samples == pytest.approx(1e6)
    assert time_to_train(1000.0, tokens=1e6)[0] is None


# --- the orchestration, with a fake cell runner and clock ------------------------------------------------

SPEED = {"fp32": 1000.0, "amp-bf16": 1500.0, "half-bf16": 1600.0, "half-bf16-master": 700.0}
LOSS_SHIFT = {"fp32": 0.0, "amp-bf16": 0.0, "half-bf16": 0.2, "half-bf16-master": 0.0}


class FakeCells:
    """Records like the worker's, from the config: throughput by precision (with a round's drift), a loss
    curve shifted by precision and jittered by seed; a clock that moves `seconds` per cell."""

    def __init__(self, seconds: float = 2.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.t = 0.0
        self.seconds = seconds
        self.rng = random.Random(1)

    def now(self) -> float:
        return self.t

    def __call__(self, config: RunConfig, purpose: str) -> dict:
        self.calls.append((config.cell_id, purpose))
        self.t += self.seconds
        drift = math.exp(self.rng.gauss(0, 0.02))
        jitter = 0.01 * ((config.seed * 7919) % 13) / 13
        shift = LOSS_SHIFT[config.precision]
        curve = [2.0 * math.exp(-i / 20) + 0.5 + shift + jitter for i in range(config.steps + config.warmup_steps)]
        return {"cell_id": config.cell_id, "status": "ok", "status_detail": "",
                "config": {**config.to_dict(), "device": "cpu"},
                "throughput_samples_per_s": SPEED[config.precision] * drift,
                "step_time_s": {"median": config.batch_size * config.grad_accum / (SPEED[config.precision] * drift)},
                "loss": {"curve": curve, "eval": curve[-1] + 0.01 * self.rng.random() * 0.01, "final": curve[-1]},
                "memory": {"host_vm_growth_bytes": 40 * 2**20}}


def _plan(precisions: list[str]) -> dict:
    return {"schema": "trainkit.plan/1", "model": "mlp", "target_batch": 256, "precisions": {
        p: {"recommendation": {"micro_batch": 256, "grad_accum": 1, "gpus": 1, "peak_bytes": 40 * 2**20,
                               "peak_measure": "host_vm_growth_bytes", "headroom_bytes": 2**30,
                               "headroom_fraction": 0.9, "throughput_samples_per_s": SPEED[p],
                               "cell_id": f"mlp-{p}-bs256-ga1-gpus1"}} for p in precisions}}


def _request(tmp_path, budget: float | None = None, **extra: object) -> rr.Request:
    base = RunConfig(model="mlp", device="cpu", task_seed=0, steps=40, warmup_steps=2, optimizer="sgd", lr=0.01)
    values = dict(base=base, model_spec="mlp", target_batch=256, world_size=1, device="cpu",
                  precisions=("amp-bf16", "half-bf16", "half-bf16-master"), margin=Margin(), confidence=0.95,
                  budget_s=budget, memory_limit_bytes=2**31, seeds=4, rounds=8, output_dir=str(tmp_path),
                  rerun=f"python -m trainkit recommend --from {tmp_path}")
    values.update(extra)
    return rr.Request(**values)  # type: ignore[arg-type]


HARDWARE = {"device": "cpu", "capability": None, "gpu_name": None}


def _no_estimate(requests: list) -> list:
    raise AssertionError("the plan was given: no estimate is asked")


def test_the_orchestration_recommends_the_fastest_equivalent_and_stops_the_slower_ones(tmp_path) -> None:
    cells = FakeCells()
    doc, _ = rr.answer(_request(tmp_path), HARDWARE, cells, _no_estimate,
                       plan=_plan(["fp32", "amp-bf16", "half-bf16", "half-bf16-master"]), now=cells.now)
    assert doc.decision.kind == RECOMMEND and doc.decision.precision == "amp-bf16", doc.decision
    by = {c.precision: c for c in doc.candidates}
    assert by["half-bf16"].loss.verdict == "worse"
    assert by["half-bf16-master"].speed.below_one and by["half-bf16-master"].loss.verdict == "not measured"
    # the slower one never ran a parity cell; speed rounds ran fp32 and the live candidates alternately
    assert not [c for c in cells.calls if c[1] == "parity" and "master" in c[0]]
    speed = [cid for cid, purpose in cells.calls if purpose == "speed"]
    assert speed[0] == "mlp-fp32-bs256-ga1-gpus1" and len(set(speed[:4])) == 4
    assert speed[4:8] == speed[:4][::-1]  # round 2 runs in the reverse order
    records = [json.loads(line) for line in (tmp_path / rr.RECORDS).read_text().splitlines()]
    assert {r["answer_purpose"] for r in records} == {"speed", "parity"}
    assert all("round" in r for r in records if r["answer_purpose"] == "speed")


def test_from_records_no_covered_cell_runs_again(tmp_path) -> None:
    first = FakeCells()
    plan = _plan(["fp32", "amp-bf16", "half-bf16", "half-bf16-master"])
    rr.answer(_request(tmp_path / "a"), HARDWARE, first, _no_estimate, plan=plan, now=first.now)
    given = [json.loads(line) for line in (tmp_path / "a" / rr.RECORDS).read_text().splitlines()]
    again = FakeCells()
    doc, _ = rr.answer(_request(tmp_path / "b"), HARDWARE, again, _no_estimate, given=given, plan=plan,
                       now=again.now)
    assert again.calls == []  # every cell the records cover was reused
    assert doc.budget.cells_run == 0 and doc.budget.cells_reused == len(first.calls) == len(given)
    # with one more seed asked, only the cells the records lack run
    partial = [r for r in given if not (r["answer_purpose"] == "parity" and r["seed"] == 2)]
    third = FakeCells()
    rr.answer(_request(tmp_path / "c"), HARDWARE, third, _no_estimate, given=partial, plan=plan, now=third.now)
    assert third.calls and all(purpose == "parity" and cid for cid, purpose in third.calls)
    assert len(third.calls) == len(given) - len(partial)


def test_an_exhausted_budget_cuts_the_run_and_says_what_it_could_not_afford(tmp_path) -> None:
    cells = FakeCells(seconds=10.0)
    doc, _ = rr.answer(_request(tmp_path, budget=85.0), HARDWARE, cells, _no_estimate,
                       plan=_plan(["fp32", "amp-bf16", "half-bf16", "half-bf16-master"]), now=cells.now)
    assert doc.decision.kind == CANT_TELL
    assert doc.budget.not_afforded and cells.t <= 85.0 + 10.0
    assert any(n.command.startswith(f"python -m trainkit recommend --from {tmp_path}") for n in doc.decision.needs)
    text = markdown(_as_dict(doc))
    assert "not afforded" in text and "--from" in text


def _as_dict(doc) -> dict:
    return json.loads(json.dumps(doc.to_dict(), default=str))


def _doc(decision, candidates) -> dict:
    from trainkit.analysis.answer import Answer, Budget

    doc = Answer(schema="trainkit.answer/1", created_at="", model="gpt", device="cpu", gpu_name=None, world_size=1,
                 target_batch=64, margin="0.50%", confidence=0.95, decision=decision, reference=_route("fp32"),
                 candidates=tuple(candidates), time_to_train=None, budget=Budget(None, 1.0, 1, 0), rules={})
    return _as_dict(doc)
