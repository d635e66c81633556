"""The answer from a matrix's records (and parity documents, when given): the card a matrix report
opens on. Pure; trainkit.analysis.answer's rule decides.

Per model and device, the effective batch where fp32 and the most other precisions ran (the largest
on a tie) is the one answered; each precision's route there is its fastest cell (micro-batch x
accumulation x ranks). Speed: where the records carry their round (`round`, the matrix's
interleaved rounds), the paired ratio over rounds (trainkit.analysis.paired); else the ratio of the
two cells' throughputs, with no interval and the reason. Loss: a parity document's verdict for the
model, if one is given, with the steps-to-target ratio of its seeds; else `not measured`, with the
command that measures it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from .answer import ANSWER_SCHEMA, NOT_MEASURED, REFERENCE, RULES, Answer, Budget, Candidate, Loss, Ratio, Route, decide
from .paired import paired_ratio

ROUND_KEYS = ("round", "repeat_round")
"""Where a record says which interleaved round it ran in."""


def _round(record: dict[str, Any]) -> int | None:
    for key in ROUND_KEYS:
        value = record.get(key)
        if isinstance(value, int):
            return value
    return None


def _effective_batch(config: dict[str, Any]) -> int:
    return int(config.get("effective_batch") or
               config.get("batch_size", 1) * config.get("grad_accum", 1) * config.get("world_size", 1))


def _route_key(config: dict[str, Any]) -> tuple[int, int, int]:
    return int(config.get("batch_size", 0)), int(config.get("grad_accum", 1)), int(config.get("world_size", 1))


def _peak(record: dict[str, Any]) -> tuple[int | None, str | None]:
    from ..engine.spec.schema import headline_memory

    memory = record.get("memory") or {}
    measure = headline_memory([memory])
    return (int(memory[measure]), measure) if measure else (None, None)


def _steps_ratio(block: dict[str, Any], precision: str) -> Ratio | None:
    from .parity.stats import geometric_interval  # scipy: the analysis extra

    mine, ref = block["precisions"].get(precision), block["precisions"].get(REFERENCE)
    if not mine or not ref or not mine.get("timing") or not ref.get("timing"):
        return None
    steps = {t["seed"]: t["steps_to_target"] for t in ref["timing"]["per_seed"]}
    pairs = [(steps.get(t["seed"]), t["steps_to_target"]) for t in mine["timing"]["per_seed"]]
    if not pairs or not all(a and b for a, b in pairs):
        return Ratio(None, None, None, len(pairs), "fp32's steps to target / this precision's",
                     "the target was not reached in every seed pair")
    iv = geometric_interval([a / b for a, b in pairs], block.get("confidence", 0.95))
    return Ratio(iv.mean, iv.low, iv.high, iv.n, f"fp32's steps to target / this precision's, per seed; {iv.method}",
                 iv.note)


def _loss(docs: Sequence[dict[str, Any]], model: str, precision: str, command: str) -> Loss:
    for doc in docs:
        block = (doc.get("models") or {}).get(model)
        entry = (block or {}).get("precisions", {}).get(precision) if block else None
        if not entry:
            continue
        test = entry.get("loss") or {}
        diff = test.get("difference") or {}
        return Loss(verdict=entry["verdict"], margin_loss=test.get("margin_loss"), difference=diff.get("mean"),
                    difference_low=diff.get("low"), difference_high=diff.get("high"),
                    confidence=block.get("confidence"), seeds=tuple(test.get("seeds") or ()),
                    more_seeds_to_decide=test.get("more_seeds_to_decide"), diagnostic=entry.get("named"),
                    reason=entry.get("reason"), steps_ratio=_steps_ratio(block, precision),
                    cells=tuple(c["cell_id"] for c in entry.get("cells") or ()))
    return Loss(NOT_MEASURED, None, None, None, None, None, (), reason=f"loss parity not measured: run {command}")


def _effective(speed: Ratio | None, steps: Ratio | None) -> Ratio | None:
    if speed is None or steps is None or speed.value is None or steps.value is None:
        return None
    return Ratio(speed.value * steps.value, None, None, min(speed.n, steps.n),
                 "matrix throughput ratio x parity's steps ratio",
                 "the matrix's cells and parity's seeds are not paired: no interval")


def answers_from_records(records: Sequence[dict[str, Any]], parity_docs: Sequence[dict[str, Any]] = (),
                         sources: Sequence[str] = ()) -> list[Answer]:
    """One answer per (model, device) of the records that has fp32 cells (module docstring)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        config = r.get("config") or {}
        if r.get("status") == "ok" and config.get("model") and r.get("throughput_samples_per_s"):
            device = str(config.get("device") or "?")
            gpu = (r.get("env") or {}).get("gpu_name")
            groups.setdefault((str(config["model"]), f"{device} · {gpu}" if gpu else device), []).append(r)
    answers = []
    for (model, hardware), mine in sorted(groups.items()):
        by_batch: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for r in mine:
            by_batch.setdefault(_effective_batch(r["config"]), {}).setdefault(r["config"]["precision"], []).append(r)
        options = [(len(ps), batch) for batch, ps in by_batch.items() if REFERENCE in ps]
        if not options:
            continue
        _, batch = max(options)
        spec = mine[0]["config"].get("workload") or model
        command = (f"python -m trainkit recommend --model {spec} --target-batch {batch} --device "
                   f"{hardware.split(' ')[0]} --output answer" + "".join(f" --from {s}" for s in sources))
        answers.append(_answer(model, hardware, batch, by_batch[batch], parity_docs, command))
    return answers


def _best_route(records: list[dict[str, Any]]) -> tuple[tuple[int, int, int], list[dict[str, Any]]]:
    routes: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for r in records:
        routes.setdefault(_route_key(r["config"]), []).append(r)
    return max(routes.items(), key=lambda kv: statistics.median(x["throughput_samples_per_s"] for x in kv[1]))


def _to_route(precision: str, key: tuple[int, int, int], cells: list[dict[str, Any]]) -> Route:
    peak, measure = _peak(cells[0])
    return Route(precision=precision, micro_batch=key[0], grad_accum=key[1], ranks=key[2], peak_bytes=peak,
                 peak_measure=measure, headroom_bytes=None, headroom_fraction=None,
                 throughput_samples_per_s=statistics.median(c["throughput_samples_per_s"] for c in cells),
                 cells=tuple(dict.fromkeys(str(c.get("cell_id")) for c in cells)))


def _speed(ref: list[dict[str, Any]], mine: list[dict[str, Any]]) -> Ratio:
    ref_rounds = {_round(r): r["throughput_samples_per_s"] for r in ref if _round(r) is not None}
    my_rounds = {_round(r): r["throughput_samples_per_s"] for r in mine if _round(r) is not None}
    shared = sorted(set(ref_rounds) & set(my_rounds))
    if shared:
        p = paired_ratio([ref_rounds[i] for i in shared], [my_rounds[i] for i in shared])
        return Ratio(p.ratio, p.low, p.high, p.n_rounds, p.method, p.reason)
    value = (statistics.median(r["throughput_samples_per_s"] for r in mine)
             / statistics.median(r["throughput_samples_per_s"] for r in ref))
    return Ratio(value, None, None, 1, "ratio of the cells' median throughputs",
                 "not measured in interleaved rounds (run the matrix with --repeats 3)")


def _answer(model: str, hardware: str, batch: int, by_precision: dict[str, list[dict[str, Any]]],
            parity_docs: Sequence[dict[str, Any]], command: str) -> Answer:
    ref_key, ref_cells = _best_route(by_precision[REFERENCE])
    candidates = []
    for precision, records in by_precision.items():
        if precision == REFERENCE:
            continue
        key, cells = _best_route(records)
        speed = _speed(ref_cells, cells)
        loss = _loss(parity_docs, model, precision, command)
        effective = _effective(speed, loss.steps_ratio) if loss.verdict == "equivalent" else None
        candidates.append(Candidate(precision, _to_route(precision, key, cells), speed, loss, effective,
                                    speed_cells=tuple(str(c.get("cell_id")) for c in cells)))
    decision = decide(candidates, rerun=command)
    return Answer(schema=ANSWER_SCHEMA, created_at="", model=model, device=hardware, gpu_name=None,
                  world_size=ref_key[2], target_batch=batch,
                  margin=next((d["models"][model]["margin"]["described"] for d in parity_docs
                               if model in (d.get("models") or {})), "not measured"),
                  confidence=0.95, decision=decision, reference=_to_route(REFERENCE, ref_key, ref_cells),
                  candidates=tuple(candidates), time_to_train=None, budget=Budget(None, 0.0, 0, 0),
                  rules=dict(RULES))
