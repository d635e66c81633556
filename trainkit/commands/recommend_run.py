"""What `python -m trainkit recommend` runs, in the order the decision needs it, within a budget:

1. **The plan** (trainkit.commands.plan.make_plan), one precision at a time, fp32 first: per candidate
   the largest micro-batch that fits (searched up to the target per rank) and the fastest measured
   route to the target batch, with its peak memory and headroom.
2. **Speed** in interleaved paired rounds: every route (fp32 at its own) runs as a short fresh cell,
   round after round, the order reversed every other round, so a machine's drift moves every
   route of a round alike (trainkit.analysis.paired: the median of the per-round ratios with its
   interval over rounds). From the first round with an interval (MIN_ROUNDS_FOR_INTERVAL) on, a
   candidate whose interval lies below 1x stops;
   the rounds stop when every interval lies off 1x, or at `rounds`.
3. **Loss**: paired parity against fp32 (trainkit.analysis.parity) for the candidates whose speed
   could still win, fastest first, seed-major (fp32's seed s, then each candidate's). Seeds come in
   LOOKS looks: FIRST_SEEDS, then as many more as the inconclusive verdicts ask (up to `seeds`);
   each look is judged at confidence 1 - (1 - c) / LOOKS (Bonferroni), so stopping at the first
   look that settles a verdict keeps the chance of a wrong settled verdict within 1 - c. A
   candidate stops as soon as its verdict is settled, or it cannot beat a winner already found.
4. **The decision**: trainkit.analysis.answer.decide.

Every cell's record goes to RECORDS in the output directory with its purpose, round or seed. Given
records (`--from`: an earlier answer's directory or records, a matrix's results, a parity document's
records, a plan), a cell whose config they hold is not run again: its record is reused, and counted.
Before each step the budget is checked against what that step's cells took so far; what it cannot
afford is listed in the answer, and the decision then says what would decide it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..analysis.answer import (
    ANSWER_SCHEMA,
    NOT_MEASURED,
    REFERENCE,
    RULES,
    Answer,
    Budget,
    Candidate,
    Loss,
    Ratio,
    Route,
    decide,
    time_to_train,
)
from ..analysis.paired import MIN_ROUNDS_FOR_INTERVAL, PairedRatio, paired_ratio
from ..analysis.parity.document import TASK_SEED, Margin
from ..engine.spec.config import RunConfig
from ..engine.spec.precision_facts import precision_names, unsupported_reason

RECORDS = "records.jsonl"
PLAN = "plan.json"
FIRST_SEEDS = 3
"""Seeds of the first look: a paired t interval on 2 degrees of freedom."""
LOOKS = 2
SPEED_STEPS = {"cpu": (2, 10), "cuda": (5, 30)}
"""(warmup, timed) steps of a speed round's cell: enough timed steps for a median on a CPU's ~10-100 ms
steps, and past cuDNN's autotuning and the caching allocator's first growth on a GPU."""

PLAN_SAFETY = 1.0
PLAN_MEASURED = 1
"""Routes the plan measures per precision: the largest micro-batch that fits and divides the target per
rank, the fewest accumulation steps (each micro-batch pays a forward and a backward launch). Its memory
is what the plan measures; its speed the rounds measure, against fp32's."""

CellRunner = Callable[[RunConfig, str], dict[str, Any]]
"""Runs a cell for a purpose (probe, plan, speed, parity) and returns its record."""
Say = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Request:
    """What to answer, checked: the command's options (trainkit.commands.recommend)."""

    base: RunConfig
    """The recipe every cell shares (model, workload, optimizer, lr, steps of a parity cell)."""
    model_spec: str
    target_batch: int
    world_size: int
    device: str
    precisions: tuple[str, ...] | None
    """The candidates; None: every mode the device runs (precision_facts)."""
    margin: Margin
    confidence: float
    budget_s: float | None
    memory_limit_bytes: int | None
    seeds: int
    """Most seeds a parity verdict may take."""
    rounds: int
    """Most speed rounds."""
    train_samples: float | None = None
    train_tokens: float | None = None
    price_per_hour: float | None = None
    output_dir: str = "."
    rerun: str = "python -m trainkit recommend"


def cell_key(config: dict[str, Any]) -> str:
    """A cell's identity for reuse: every RunConfig field, the device as its type."""
    values = RunConfig.from_dict(config).to_dict()
    values["device"] = str(values.get("device") or "").split(":")[0]
    return json.dumps(values, sort_keys=True, default=str)


class Store:
    """The records given (`--from`) and those run, by cell; counts what was reused."""

    def __init__(self, given: Sequence[dict[str, Any]], device_type: str, records_path: str | None) -> None:
        self.device_type = device_type
        self.given: dict[str, list[dict[str, Any]]] = {}
        for record in given:
            config = record.get("config")
            if not isinstance(config, dict):
                continue
            try:
                key = cell_key(config)
            except (TypeError, ValueError):
                continue  # a record of a config this version cannot build
            self.given.setdefault(key, []).append(record)
        self.records_path = records_path
        self.ran = 0
        self.reused = 0
        self.seconds: dict[str, list[float]] = {}

    def has(self, config: RunConfig) -> bool:
        """Whether a given record of this config is left to reuse."""
        return bool(self.given.get(cell_key(config.replace(device=self.device_type).to_dict())))

    def to_run(self, configs: Sequence[RunConfig], purpose: str, fallback: float) -> float:
        """Seconds the cells among `configs` that no given record covers would take (reused ones are free)."""
        return sum(self.cost(purpose, fallback) for c in configs if not self.has(c))

    def take(self, config: RunConfig, purpose: str) -> dict[str, Any] | None:
        """A given record of this config not yet used, or None."""
        found = self.given.get(cell_key(config.replace(device=self.device_type).to_dict()))
        if found:
            self.reused += 1
            return found.pop(0)
        return None

    def keep(self, record: dict[str, Any], purpose: str, seconds: float | None, **tags: Any) -> dict[str, Any]:
        record = {**record, "answer_purpose": purpose, **tags}
        if seconds is not None:
            self.seconds.setdefault(purpose, []).append(seconds)
        if self.records_path:
            with open(self.records_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(record, default=str) + "\n")
        return record

    def obtain(self, config: RunConfig, purpose: str, run: CellRunner,
               clock: Clock, **tags: Any) -> dict[str, Any]:
        """A given record of this config when one is left, else a run of it timed on `clock`; kept
        either way, tagged with its purpose and `tags`."""
        record = self.take(config, purpose)
        if record is not None:
            return self.keep(record, purpose, None, reused=True, **tags)
        began = clock.now()
        record = run(config, purpose)
        self.ran += 1
        return self.keep(record, purpose, clock.now() - began, **tags)

    def cost(self, purpose: str, fallback: float) -> float:
        """Seconds one cell of this purpose has taken (the median so far), else `fallback`."""
        seen = self.seconds.get(purpose)
        return statistics.median(seen) if seen else fallback


class Clock:
    """The budget: what has been spent, and whether a step of `seconds` still fits."""

    def __init__(self, now: Callable[[], float], budget_s: float | None) -> None:
        self.now, self.budget_s, self.started = now, budget_s, now()
        self.not_afforded: list[str] = []

    @property
    def spent(self) -> float:
        return self.now() - self.started

    def affords(self, seconds: float, what: str) -> bool:
        if seconds <= 0 or self.budget_s is None or self.spent + seconds <= self.budget_s:
            return True
        self.not_afforded.append(f"{what} (~{seconds:.0f} s; {max(self.budget_s - self.spent, 0):.0f} s of the "
                                 f"budget left)")
        return False


# --- 1. the plan ---------------------------------------------------------------------------------------

def candidates_for(request: Request, hardware: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The candidates (every mode the facts table says the device runs, or those asked) and the
    modes left out with why: derived from precision_facts, never a list of names here."""
    capability = tuple(hardware["capability"]) if hardware.get("capability") else None
    asked = request.precisions or precision_names()
    reasons = {p: unsupported_reason(p, hardware["device"], capability, hardware.get("gpu_name")) for p in asked}
    runnable = [p for p in asked if p != REFERENCE and reasons[p] is None]
    return runnable, {p: r for p, r in reasons.items() if r}


def _plan_one(request: Request, hardware: dict[str, Any], precision: str, store: Store, clock: Clock,
              run: CellRunner, estimate: Any, say: Say) -> dict[str, Any]:
    """One precision's part of the plan: make_plan over cells the store may already hold."""
    from .plan import make_plan
    from .plan_options import DEFAULT_RESOLUTION, PROBE_WARMUP_STEPS, PlanOptions

    def cell(config: RunConfig) -> dict[str, Any]:
        purpose = "probe" if config.warmup_steps == PROBE_WARMUP_STEPS and config.grad_accum == 2 else "plan"
        found = store.take(config, purpose)
        if found is not None:
            return store.keep(found, purpose, None, reused=True)
        began = clock.now()
        record = run(config, purpose)
        store.ran += 1
        return store.keep(record, purpose, clock.now() - began)

    per_rank = request.target_batch // request.world_size
    warmup, steps = SPEED_STEPS.get(hardware["device"], SPEED_STEPS["cuda"])
    # the plan's measured routes are short cells, like a speed round's: their memory, not their loss, counts
    base = request.base.replace(world_size=request.world_size, steps=steps, warmup_steps=warmup)
    # No micro-batch above the target per rank is a route to it, so the search stops there. The plan's
    # safety factor is 1: the answer's rule asks for headroom at the route itself (MIN_HEADROOM_FRACTION
    # of the memory left, measured), which spares the probe above the target a factor would need.
    options = PlanOptions(base=base, precisions=(precision,),
                          target_batch=request.target_batch, gpus=(request.world_size,), device=request.device,
                          memory_limit_bytes=request.memory_limit_bytes, safety=PLAN_SAFETY,
                          search_limit=per_rank, resolution=DEFAULT_RESOLUTION,
                          probe_steps=2, measure=PLAN_MEASURED, cell_timeout_s=None, output=os.devnull)
    return make_plan(options, hardware, cell, estimate, say)


def _route(precision: str, entry: dict[str, Any] | None) -> tuple[Route | None, str | None]:
    best = (entry or {}).get("recommendation")
    if not best:
        return None, (entry or {}).get("recommendation_note") or "not planned"
    return Route(precision=precision, micro_batch=best["micro_batch"], grad_accum=best["grad_accum"],
                 ranks=best["gpus"], peak_bytes=best.get("peak_bytes"), peak_measure=best.get("peak_measure"),
                 headroom_bytes=best.get("headroom_bytes"), headroom_fraction=best.get("headroom_fraction"),
                 throughput_samples_per_s=best.get("throughput_samples_per_s"),
                 cells=tuple(c for c in [best.get("cell_id")] if c)), None


# --- 2. speed ---------------------------------------------------------------------------------------------

def route_config(request: Request, route: Route) -> RunConfig:
    return request.base.replace(precision=route.precision, batch_size=route.micro_batch,
                                grad_accum=route.grad_accum, world_size=route.ranks)


def _paired(figures: dict[str, list[float | None]], precision: str, confidence: float) -> PairedRatio:
    """A candidate's throughput over fp32's, paired by round: a candidate stopped early has the first rounds."""
    mine = figures[precision]
    return paired_ratio(figures[REFERENCE][:len(mine)], mine, confidence=confidence)


def _ratio(paired: PairedRatio) -> Ratio:
    return Ratio(paired.ratio, paired.low, paired.high, paired.n_rounds, paired.method, paired.reason)


def speed_rounds(request: Request, hardware: dict[str, Any], routes: dict[str, Route], store: Store, clock: Clock,
                 run: CellRunner, say: Say) -> tuple[dict[str, list[float | None]], dict[str, list[str]]]:
    """Interleaved rounds of every route (module docstring, 2): per route its throughput per round."""
    warmup, steps = SPEED_STEPS.get(hardware["device"], SPEED_STEPS["cuda"])
    configs = {p: route_config(request, r).replace(steps=steps, warmup_steps=warmup) for p, r in routes.items()}
    figures: dict[str, list[float | None]] = {p: [] for p in routes}
    cells: dict[str, list[str]] = {p: [] for p in routes}
    live = [p for p in routes if p != REFERENCE]
    for index in range(request.rounds):
        if not live:
            break
        arms = [REFERENCE, *live]
        order = arms if index % 2 == 0 else arms[::-1]
        cost = store.to_run([configs[p] for p in order], "speed", 2.0)
        if not clock.affords(cost, f"speed round {index + 1} of {', '.join(order)}"):
            break
        for precision in order:
            config = configs[precision]
            record = store.obtain(config, "speed", run, clock, round=index)
            figures[precision].append(record.get("throughput_samples_per_s") if record.get("status") == "ok" else None)
            cells[precision].append(f"{record.get('cell_id', config.cell_id)}@round{index}")
        if index + 1 >= MIN_ROUNDS_FOR_INTERVAL:
            ratios = {p: _paired(figures, p, request.confidence) for p in live}
            for p, r in ratios.items():
                if r.high is not None and r.high < 1:
                    say(f"{p}: slower than fp32 after {index + 1} rounds ({r.ratio:.2f}x [{r.low:.2f}, {r.high:.2f}]): "
                        "stopped")
            live = [p for p in live if not (ratios[p].high is not None and ratios[p].high < 1)]
            if all(ratios[p].low is not None and (ratios[p].low > 1 or ratios[p].high < 1) for p in live):
                break
        say(f"speed round {index + 1}: " + ", ".join(
            f"{p} {f[-1]:,.0f}/s" if f and f[-1] else f"{p} -" for p, f in figures.items() if len(f) == index + 1))
    return figures, cells


# --- 3. loss ----------------------------------------------------------------------------------------------

def _parity_config(request: Request, route: Route, seed: int) -> RunConfig:
    return route_config(request, route).replace(seed=seed, task_seed=TASK_SEED)


def _loss(entry: Any, reference: Any, confidence: float, cells: list[str]) -> Loss:
    """A candidate's Loss from its parity entry (trainkit.analysis.parity.document.PrecisionParity) and fp32's."""
    from ..analysis.parity.stats import geometric_interval  # scipy: the analysis extra

    test = entry.loss
    ratio = None
    if entry.timing is not None and reference.timing is not None:
        ref = {t.seed: t.steps_to_target for t in reference.timing.per_seed}
        pairs = [(ref.get(t.seed), t.steps_to_target) for t in entry.timing.per_seed]
        if pairs and all(a and b for a, b in pairs):
            iv = geometric_interval([a / b for a, b in pairs], confidence)  # type: ignore[operator]
            ratio = Ratio(iv.mean, iv.low, iv.high, iv.n, "fp32's steps to target / this precision's, per seed "
                          f"pair; {iv.method}", iv.note)
        else:
            missing = sum(1 for a, b in pairs if not (a and b))
            ratio = Ratio(None, None, None, len(pairs), "fp32's steps to target / this precision's",
                          f"the target was not reached in {missing} of {len(pairs)} seed pairs")
    return Loss(verdict=entry.verdict, margin_loss=test.margin_loss if test else None,
                difference=test.difference.mean if test else None,
                difference_low=test.difference.low if test else None,
                difference_high=test.difference.high if test else None,
                confidence=confidence, seeds=tuple(test.seeds) if test else (),
                more_seeds_to_decide=test.more_seeds_to_decide if test else None, diagnostic=entry.named,
                reason=entry.reason or (test.more_seeds_note if test else None), steps_ratio=ratio,
                cells=tuple(cells))


def effective(speed: Ratio | None, steps: Ratio | None) -> Ratio | None:
    """Throughput ratio x steps ratio, their log intervals' half-widths added in quadrature (the rounds
    and the seeds are independent measurements)."""
    if speed is None or steps is None or speed.value is None or steps.value is None:
        why = "no throughput ratio" if speed is None or speed.value is None else (steps.reason if steps else None)
        return Ratio(None, None, None, 0, "throughput ratio x steps ratio", why or "no steps to target")
    method = ("throughput ratio (rounds) x steps ratio (seeds); interval: the two log intervals' half-widths "
              "added in quadrature")
    value = speed.value * steps.value
    if None in (speed.low, speed.high, steps.low, steps.high):
        return Ratio(value, None, None, min(speed.n, steps.n), method, speed.reason or steps.reason)
    centre = (math.log(speed.low) + math.log(speed.high) + math.log(steps.low) + math.log(steps.high)) / 2  # type: ignore[arg-type]
    half = math.hypot((math.log(speed.high) - math.log(speed.low)) / 2,  # type: ignore[arg-type]
                      (math.log(steps.high) - math.log(steps.low)) / 2)  # type: ignore[arg-type]
    return Ratio(value, math.exp(centre - half), math.exp(centre + half), min(speed.n, steps.n), method)


def _parity_prior(request: Request, store: Store, hardware_device: str) -> float:
    """Seconds a parity cell is expected to take before one ran: a speed cell's time scaled by the steps
    (a parity cell runs the recipe's steps where a speed cell runs a few), and a fifth more for the
    held-out loss and the diagnostics pass."""
    warmup, steps = SPEED_STEPS.get(hardware_device, SPEED_STEPS["cuda"])
    speed_cell = store.cost("speed", 2.0)
    return 1.2 * speed_cell * (request.base.steps + request.base.warmup_steps) / (steps + warmup)


def parity(request: Request, routes: dict[str, Route], speeds: dict[str, Ratio], store: Store, clock: Clock,
           run: CellRunner, say: Say) -> dict[str, Loss]:
    """Seed-major paired parity of the candidates whose speed could still win (module docstring, 3)."""
    from ..analysis.parity.verdicts import judge  # scipy: the analysis extra

    look_confidence = 1 - (1 - request.confidence) / LOOKS
    # Only a candidate whose throughput interval lies above 1x (or has none yet) can win: one whose interval
    # holds 1x or lies below it is no win whatever its loss, so its parity would not change the answer.
    live = sorted((p for p in routes if p != REFERENCE and p in speeds
                   and (speeds[p].above_one or speeds[p].low is None)),
                  key=lambda p: (speeds[p].low is None, -(speeds[p].value or 0)))
    records: dict[str, list[dict[str, Any]]] = {p: [] for p in routes}
    cells: dict[str, list[str]] = {p: [] for p in routes}
    losses: dict[str, Loss] = {}
    seeds_done = 0
    wanted = min(FIRST_SEEDS, request.seeds)
    prior = _parity_prior(request, store, hardware_device=store.device_type)
    # A verdict needs two seed pairs: the first look starts only if two seeds fit in the budget.
    if live and not clock.affords(2 * store.to_run([_parity_config(request, routes[p], 0) for p in [REFERENCE, *live]],
                                                   "parity", prior),
                                  f"parity (two seeds) of {', '.join([REFERENCE, *live])}"):
        live = []
    for _look in range(LOOKS):
        while live and seeds_done < wanted:
            seed = seeds_done
            arms = [REFERENCE, *live]
            cost = store.to_run([_parity_config(request, routes[p], seed) for p in arms], "parity", prior)
            if not clock.affords(cost, f"parity seed {seed} of {', '.join(arms)}"):
                break
            for precision in arms:
                config = _parity_config(request, routes[precision], seed)
                record = store.obtain(config, "parity", run, clock, seed=seed)
                records[precision].append(record)
                cells[precision].append(f"{record.get('cell_id', config.cell_id)}@seed{seed}")
            seeds_done += 1
        if seeds_done < 2:
            break
        judged = judge(records[REFERENCE], {p: records[p] for p in [REFERENCE, *live]}, margin=request.margin,
                       confidence=look_confidence)
        reference = judged.precisions[REFERENCE]
        for p in live:
            losses[p] = _loss(judged.precisions[p], reference, look_confidence, cells[p])
            say(f"{p}: parity after {seeds_done} seeds: {losses[p].verdict}")
        # a verdict settled stops its candidate; one that cannot beat a winner already found stops too
        winners = [effective(speeds.get(p), losses[p].steps_ratio) for p in live if losses[p].verdict == "equivalent"]
        floor = max((w.low for w in winners if w and w.low is not None and w.low > 1), default=None)
        live = [p for p in live if losses[p].verdict in ("inconclusive",)
                and not (floor is not None and speeds.get(p) and speeds[p].high is not None and speeds[p].high < floor)]
        more = [losses[p].more_seeds_to_decide for p in live if losses[p].more_seeds_to_decide]
        if not live or not more:
            break
        wanted = min(request.seeds, seeds_done + max(more))
        if wanted <= seeds_done:
            break
    for p in routes:
        if p != REFERENCE and p not in losses:
            speed = speeds.get(p)
            if speed is not None and speed.below_one:
                why = "slower than fp32: parity not run"
            elif speed is not None and speed.low is not None and not speed.above_one:
                why = "its throughput interval holds 1x: parity would not change the answer"
            else:
                why = "not run within the budget"
            losses[p] = Loss(NOT_MEASURED, None, None, None, None, None, (), reason=why)
    return losses


# --- 4. the answer ----------------------------------------------------------------------------------------

def answer(request: Request, hardware: dict[str, Any], run: CellRunner, estimate: Any, *,
           given: Sequence[dict[str, Any]] = (), plan: dict[str, Any] | None = None,
           now: Callable[[], float], say: Say = lambda line: None) -> tuple[Answer, dict[str, Any]]:
    """The answer document and the plan it used (module docstring): `run` runs a cell, `estimate`
    answers the plan's estimate requests, `given` are records to reuse, `plan` a plan to reuse."""
    clock = Clock(now, request.budget_s)
    os.makedirs(request.output_dir, exist_ok=True)
    records_path = os.path.join(request.output_dir, RECORDS)
    open(records_path, "w").close()
    store = Store(given, hardware["device"], records_path)
    runnable, unsupported = candidates_for(request, hardware)
    planned: dict[str, Any] = dict(plan["precisions"]) if plan else {}
    header: dict[str, Any] = {k: v for k, v in (plan or {}).items() if k != "precisions"}
    unplanned: set[str] = set()
    for precision in [REFERENCE, *runnable]:
        if precision in planned:
            continue
        # fp32's plan always runs (every speed is against its route); a candidate's costs its probes and route
        fallback = 3 * store.cost("plan", 4.0) if precision != REFERENCE else 0.0
        if precision != REFERENCE and not clock.affords(fallback, f"the plan of {precision}"):
            unplanned.add(precision)
            continue
        doc = _plan_one(request, hardware, precision, store, clock, run, estimate, say)
        header = header or {k: v for k, v in doc.items() if k != "precisions"}
        planned.update(doc["precisions"])
    plan_doc = {**header, "precisions": planned, "fastest": None}
    routes: dict[str, Route] = {}
    notes: dict[str, str] = {}
    for precision in [REFERENCE, *runnable]:
        route, note = _route(precision, planned.get(precision))
        if route is not None:
            routes[precision] = route
        else:
            notes[precision] = note or "not planned"
    if REFERENCE not in routes:
        raise RuntimeError(f"fp32 has no route to the target batch {request.target_batch}: {notes.get(REFERENCE)}")
    figures, speed_cells = speed_rounds(request, hardware, routes, store, clock, run, say)
    speeds = {p: _ratio(_paired(figures, p, request.confidence)) for p in routes if p != REFERENCE and figures[p]}
    losses = parity(request, routes, speeds, store, clock, run, say)
    throughput = {p: statistics.median([f for f in fs if f]) if any(fs) else None for p, fs in figures.items()}
    routes = {p: dataclasses.replace(r, throughput_samples_per_s=throughput.get(p)) for p, r in routes.items()}
    candidates = []
    for precision in [*runnable, *unsupported]:
        if precision == REFERENCE:
            continue
        if precision in unsupported:
            candidates.append(Candidate(precision, None, None, Loss(NOT_MEASURED, None, None, None, None, None, ()),
                                        None, unsupported=unsupported[precision]))
            continue
        if precision in unplanned:
            candidates.append(Candidate(precision, None, None, Loss(NOT_MEASURED, None, None, None, None, None, (),
                                                                    reason="not run within the budget"),
                                        None, skipped="its plan was not afforded within the budget"))
            continue
        speed = speeds.get(precision)
        loss = losses.get(precision) or Loss(NOT_MEASURED, None, None, None, None, None, (), reason="no route")
        candidates.append(Candidate(precision, routes.get(precision), speed, loss,
                                    effective(speed, loss.steps_ratio) if loss.verdict == "equivalent" else None,
                                    route_note=notes.get(precision),
                                    speed_cells=tuple(speed_cells.get(precision, ()))))
    decision = decide(candidates, rerun=request.rerun)
    chosen = routes.get(decision.precision or "") if decision.precision else None
    ttt, ttt_note = time_to_train(chosen.throughput_samples_per_s if chosen else None, samples=request.train_samples,
                                  tokens=request.train_tokens, tokens_per_sample=_tokens_per_sample(records_path),
                                  price_per_hour=request.price_per_hour,
                                  basis=f"the median throughput of {decision.precision}'s speed rounds"
                                  if chosen else "")
    budget = Budget(budget_s=request.budget_s, spent_s=round(clock.spent, 1), cells_run=store.ran,
                    cells_reused=store.reused, not_afforded=tuple(clock.not_afforded)
                    + ((f"time to train: {ttt_note}",) if ttt_note and chosen else ()))
    doc = Answer(schema=ANSWER_SCHEMA, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 model=request.base.model, device=hardware["device"], gpu_name=hardware.get("gpu_name"),
                 world_size=request.world_size, target_batch=request.target_batch,
                 margin=request.margin.describe(), confidence=request.confidence, decision=decision,
                 reference=routes[REFERENCE], candidates=tuple(candidates), time_to_train=ttt, budget=budget,
                 rules=dict(RULES), files={"records": RECORDS, "plan": PLAN},
                 config={k: v for k, v in request.base.to_dict().items()
                         if k not in ("precision", "batch_size", "grad_accum", "world_size", "seed")},
                 elapsed_s=round(clock.spent, 1))
    return doc, plan_doc


def _tokens_per_sample(records_path: str) -> int | None:
    """tokens_per_sample from the run's records (the worker's derived config), or None."""
    try:
        with open(records_path, encoding="utf-8") as lines:
            for line in lines:
                value = (json.loads(line).get("config") or {}).get("tokens_per_sample")
                if value:
                    return int(value)
    except OSError:
        return None
    return None
