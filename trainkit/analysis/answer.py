"""The answer: which precision, micro-batch and accumulation to train with, and why. Pure: evidence
in (each candidate's route from the plan, its speed against fp32 from interleaved paired rounds,
its loss parity against fp32 from paired seeds), a typed decision out. `python -m trainkit
recommend` gathers the evidence (trainkit.commands.recommend_run); the matrix report builds it
from records (trainkit.analysis.answer_records). No torch, no scipy here.

The rule (docs/how-to/recommend.md states it in words; tests/test_answer.py holds it):

1. A candidate is **rejected** when it cannot run here, when no micro-batch of it fits, when its
   parity verdict is `worse` (never recommended), when it is `better` (the numerics changed: never
   recommended, shown with the diagnostic parity names), when its throughput interval against fp32
   lies below 1x (slower), or when it fits with less than MIN_HEADROOM_FRACTION of the memory left.
2. A candidate is **eligible** when its verdict is `equivalent` at the margin and its effective
   speedup to fp32's target loss (throughput ratio x fp32's steps to target / its own, with its
   interval) is known. Eligible candidates whose effective-speedup interval lies above 1x win; the
   recommendation is the one with the highest effective speedup. An eligible candidate whose
   interval holds 1x or lies below it is no win: it says so.
3. Otherwise a candidate is **undecided** (no verdict yet, `inconclusive`, too few rounds for an
   interval, its target not reached). An undecided candidate matters only if it could still win:
   its throughput interval lies above 1x, or it has no interval yet.
4. The answer: **recommend** the winner if there is one (undecided candidates that could still beat
   it are listed under what is not known); else **can't tell yet** when an undecided candidate
   could still win, with exactly what would decide each (more seeds, more rounds, longer runs, a
   GPU) and the command that runs it; else **stay with fp32**, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ANSWER_SCHEMA = "trainkit.answer/1"
REFERENCE = "fp32"
RECOMMEND, STAY, CANT_TELL = "recommend", "stay with fp32", "can't tell yet"
KINDS = (RECOMMEND, STAY, CANT_TELL)
MIN_HEADROOM_FRACTION = 0.05
"""A route that leaves less than this share of the memory it fits into is rejected: a longer
sequence, a fragmented allocator or another process would end it out of memory (the plan's safety
factor already took 10% off the largest micro-batch that ran; this is what is left after it)."""
NOT_MEASURED = "not measured"
"""A candidate's loss verdict before its parity ran."""


@dataclass(frozen=True)
class Ratio:
    """A speedup against fp32 (above 1: faster) with its interval; `low`/`high` null with `reason`."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    """Rounds (throughput) or seed pairs (steps to target) it is over."""
    method: str
    reason: str | None = None

    @property
    def above_one(self) -> bool:
        return self.low is not None and self.low > 1.0

    @property
    def below_one(self) -> bool:
        return self.high is not None and self.high < 1.0


@dataclass(frozen=True)
class Route:
    """How one precision reaches the target batch: the plan's fastest micro-batch x accumulation x ranks."""

    precision: str
    micro_batch: int
    """Samples per rank per micro-batch."""
    grad_accum: int
    ranks: int
    peak_bytes: int | None
    """The plan's measured peak of this route (its `peak_measure`)."""
    peak_measure: str | None
    headroom_bytes: int | None
    """The memory the plan fits into minus the peak."""
    headroom_fraction: float | None
    throughput_samples_per_s: float | None
    """Median over the speed rounds of this route's global samples per second."""
    cells: tuple[str, ...] = ()
    """The plan's cell ids behind the route's memory figures."""


@dataclass(frozen=True)
class Loss:
    """A candidate's loss parity against fp32 (trainkit.analysis.parity's verdict and its figures)."""

    verdict: str
    """equivalent, better, worse, inconclusive, no-verdict or `not measured`."""
    margin_loss: float | None
    difference: float | None
    """Mean over seeds of this precision's eval loss minus fp32's."""
    difference_low: float | None
    difference_high: float | None
    confidence: float | None
    seeds: tuple[int, ...]
    more_seeds_to_decide: int | None = None
    diagnostic: str | None = None
    """Under better or worse: the first diagnostic that stands out against fp32's."""
    reason: str | None = None
    """Why there is no verdict (a crash, too few seeds, not run within the budget)."""
    steps_ratio: Ratio | None = None
    """fp32's steps to the target loss over this precision's, per seed pair (geometric mean)."""
    cells: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """Everything known of one candidate precision against fp32."""

    precision: str
    route: Route | None
    """None: no micro-batch fits (`route_note` says why)."""
    speed: Ratio | None
    """Throughput ratio to fp32 (each at its own route), from interleaved paired rounds; None: not measured."""
    loss: Loss
    effective: Ratio | None
    """Effective speedup to fp32's target loss: speed x loss.steps_ratio (module docstring)."""
    unsupported: str | None = None
    """Why this device cannot run the precision (it was not run)."""
    route_note: str | None = None
    speed_cells: tuple[str, ...] = ()
    """Cell ids of the speed rounds, the candidate's and fp32's."""
    skipped: str | None = None
    """Why nothing of it ran (the budget did not afford its plan): it is undecided, not rejected."""


@dataclass(frozen=True)
class Verdict:
    """What the rule made of one candidate."""

    precision: str
    status: str
    """winner, no-win, rejected or undecided."""
    why: str
    category: str
    """unsupported, no-fit, worse, changed-numerics, slower, no-headroom, equivalent-no-gain, holds-one,
    winner, no-verdict, inconclusive, few-rounds, target-not-reached, not-run."""
    could_win: bool = False
    diagnostic: str | None = None


@dataclass(frozen=True)
class Need:
    """One thing that would decide what the evidence cannot, and the command that runs it."""

    precision: str
    what: str
    command: str


@dataclass(frozen=True)
class Decision:
    """The answer and its reasons."""

    kind: str
    """recommend, `stay with fp32` or `can't tell yet`."""
    precision: str | None
    """The recommendation (fp32 when staying); None when it cannot be told yet."""
    reason: str
    runner_up: Verdict | None
    """The next best candidate and why it lost."""
    verdicts: tuple[Verdict, ...]
    """Every candidate's, best first."""
    unknown: tuple[str, ...]
    """What is not known (and could change the answer)."""
    needs: tuple[Need, ...] = ()
    """Under can't tell yet (and for candidates that could still beat a recommendation): what decides."""


def _fmt(ratio: Ratio | None) -> str:
    if ratio is None or ratio.value is None:
        return "not measured"
    if ratio.low is None:
        return f"{ratio.value:.2f}x ({ratio.reason or 'no interval'})"
    return f"{ratio.value:.2f}x [{ratio.low:.2f}, {ratio.high:.2f}]"


def judge_candidate(c: Candidate, min_headroom: float = MIN_HEADROOM_FRACTION) -> Verdict:
    """Step 1-3 of the rule for one candidate (module docstring)."""
    p, loss = c.precision, c.loss
    if c.unsupported:
        return Verdict(p, "rejected", f"not run: {c.unsupported}", "unsupported")
    if c.skipped:
        return Verdict(p, "undecided", f"not run: {c.skipped}", "not-run", could_win=True)
    if c.route is None:
        return Verdict(p, "rejected", f"no micro-batch fits: {c.route_note or 'the plan found none'}", "no-fit")
    if loss.verdict == "worse":
        return Verdict(p, "rejected", f"its loss is worse than fp32's beyond the margin "
                                      f"({_difference(loss)})", "worse", diagnostic=loss.diagnostic)
    if loss.verdict == "better":
        return Verdict(p, "rejected", f"its loss is better than fp32's beyond the margin ({_difference(loss)}): "
                                      "the numerics changed, which is never a win", "changed-numerics",
                       diagnostic=loss.diagnostic)
    if c.speed is not None and c.speed.below_one:
        return Verdict(p, "rejected", f"slower than fp32: throughput {_fmt(c.speed)}", "slower")
    headroom = c.route.headroom_fraction
    if headroom is not None and headroom < min_headroom:
        return Verdict(p, "rejected", f"fits with {headroom:.1%} of the memory left, under the "
                                      f"{min_headroom:.0%} the rule asks", "no-headroom")
    # Only a candidate that is (or may yet be shown) faster than fp32 can change the answer.
    could = c.speed is None or c.speed.low is None or c.speed.above_one
    if c.speed is None or c.speed.low is None:
        return Verdict(p, "undecided", f"throughput {_fmt(c.speed)}: more rounds would give an interval",
                       "few-rounds", could_win=could)
    if loss.verdict in (NOT_MEASURED, "inconclusive", "no-verdict") and not c.speed.above_one:
        # its throughput interval holds 1x: no loss verdict would make it a win
        return Verdict(p, "no-win", f"throughput {_fmt(c.speed)} holds 1x: it is not shown faster than fp32",
                       "holds-one")
    if loss.verdict == "equivalent":
        if c.effective is None or c.effective.value is None or c.effective.low is None:
            why = (c.effective.reason if c.effective is not None and c.effective.reason else
                   "no effective speedup (a seed did not reach the target)")
            return Verdict(p, "undecided", f"equivalent, but {why}", "target-not-reached", could_win=could)
        if c.effective.above_one:
            return Verdict(p, "winner", f"equivalent at the margin, effective speedup {_fmt(c.effective)}", "winner")
        where = "lies below" if c.effective.below_one else "holds"
        return Verdict(p, "no-win", f"equivalent, but its effective speedup interval {where} 1x: "
                                    f"{_fmt(c.effective)}", "equivalent-no-gain")
    if loss.verdict == "inconclusive":
        more = (f"{loss.more_seeds_to_decide} more seeds would decide it" if loss.more_seeds_to_decide
                else loss.reason or "more seeds would narrow it")
        return Verdict(p, "undecided", f"loss inconclusive at the margin ({_difference(loss)}); {more}",
                       "inconclusive", could_win=could)
    return Verdict(p, "undecided", f"loss parity {loss.verdict}: {loss.reason or 'not run'}", "no-verdict",
                   could_win=could)


def _difference(loss: Loss) -> str:
    if loss.difference is None:
        return "no difference measured"
    shown = f"eval loss {loss.difference:+.4g}"
    if loss.difference_low is not None:
        shown += f" [{loss.difference_low:+.4g}, {loss.difference_high:+.4g}]"
    return shown + (f" vs +-{loss.margin_loss:.4g}" if loss.margin_loss is not None else "")


def _rank(c: Candidate) -> float:
    """Ordering key: effective speedup, else throughput ratio, else nothing."""
    for ratio in (c.effective, c.speed):
        if ratio is not None and ratio.value is not None:
            return ratio.value
    return 0.0


def _need(c: Candidate, v: Verdict, rerun: str) -> Need:
    """What would decide an undecided candidate, and the command (`rerun` reuses what ran)."""
    if v.category == "not-run":
        return Need(c.precision, "its plan, speed rounds and parity (not afforded within the budget)",
                    f"{rerun} --precision {c.precision} --budget 30m")
    if v.category == "few-rounds":
        return Need(c.precision, "more speed rounds (too few paired rounds for an interval)",
                    f"{rerun} --precision {c.precision} --rounds 10")
    if v.category == "inconclusive" and c.loss.more_seeds_to_decide:
        total = len(c.loss.seeds) + c.loss.more_seeds_to_decide
        return Need(c.precision, f"{c.loss.more_seeds_to_decide} more seeds ({total} in all)",
                    f"{rerun} --precision {c.precision} --seeds {total}")
    if v.category == "target-not-reached":
        return Need(c.precision, "longer runs, so every seed reaches fp32's target loss",
                    f"{rerun} --precision {c.precision} --steps 1000")
    if c.loss.verdict == NOT_MEASURED and c.loss.reason and "budget" not in c.loss.reason:
        return Need(c.precision, c.loss.reason.split(": run ")[0], f"{rerun} --precision {c.precision}")
    return Need(c.precision, "its loss parity against fp32 (not run within the budget)",
                f"{rerun} --precision {c.precision} --budget 30m")


def decide(candidates: Sequence[Candidate], *, rerun: str = "python -m trainkit recommend",
           min_headroom: float = MIN_HEADROOM_FRACTION) -> Decision:
    """The answer from every candidate's evidence (the rule in the module docstring). `rerun` is the
    command line that reruns this answer reusing what ran (`--from DIR`); the needs extend it."""
    ordered = sorted(candidates, key=_rank, reverse=True)
    verdicts = {c.precision: judge_candidate(c, min_headroom) for c in ordered}
    by_name = {c.precision: c for c in ordered}
    winners = [verdicts[c.precision] for c in ordered if verdicts[c.precision].status == "winner"]
    open_ = [c for c in ordered if verdicts[c.precision].status == "undecided" and verdicts[c.precision].could_win]
    # What is not known: each undecided candidate (one the budget did not plan is said by the budget's list),
    # and a loss parity a matrix did not measure, once.
    unknown = [f"{v.precision}: {v.why}" for v in verdicts.values()
               if v.status == "undecided" and v.category != "not-run"]
    unknown += list(dict.fromkeys(c.loss.reason for c in ordered if c.loss.verdict == NOT_MEASURED and c.loss.reason
                                  and c.loss.reason.startswith("loss parity not measured")
                                  and verdicts[c.precision].status == "undecided"))
    listed = list(verdicts.values())
    # An equivalent candidate whose interval holds 1x but points above it: more rounds could show it faster.
    narrower = tuple(Need(c.precision, f"more speed rounds: its effective speedup {_fmt(c.effective)} holds 1x",
                          f"{rerun} --precision {c.precision} --rounds 10")
                     for c in ordered if verdicts[c.precision].category == "equivalent-no-gain"
                     and c.effective is not None and (c.effective.value or 0) > 1 and not c.effective.below_one)
    if winners:
        best = winners[0]
        top = _rank(by_name[best.precision])
        rivals = [c for c in open_ if _rank(c) > top or c.effective is None]
        needs = tuple(_need(c, verdicts[c.precision], rerun) for c in rivals)
        others = [v for v in listed if v.precision != best.precision]
        reason = (f"{best.precision} is equivalent to fp32 at the margin and the fastest to fp32's target loss: "
                  f"effective speedup {_fmt(by_name[best.precision].effective)}")
        return Decision(RECOMMEND, best.precision, reason, others[0] if others else None, tuple(listed),
                        tuple(unknown), needs)
    if open_:
        needs = tuple(_need(c, verdicts[c.precision], rerun) for c in open_)
        names = ", ".join(c.precision for c in open_)
        reason = (f"the evidence cannot decide: {names} may yet be shown faster than fp32 with an equivalent "
                  f"loss ({'; '.join(c.precision + ': ' + verdicts[c.precision].why for c in open_)})")
        return Decision(CANT_TELL, None, reason, None, tuple(listed), tuple(unknown), needs)
    if not listed:
        reason = "no candidate precision to compare with fp32"
    else:
        reason = ("no candidate's speedup interval lies above 1x with an equivalent loss: "
                  + "; ".join(f"{v.precision} {v.why}" for v in listed))
    return Decision(STAY, REFERENCE, reason, listed[0] if listed else None, tuple(listed), tuple(unknown), narrower)


# --- the document --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimeToTrain:
    """The time (and cost) to train the given samples or tokens at the answer's measured throughput."""

    samples: float
    tokens: float | None
    """As given (`--train-tokens`); samples are tokens / tokens_per_sample then."""
    throughput_samples_per_s: float
    seconds: float
    price_per_hour: float | None
    cost: float | None
    basis: str


@dataclass(frozen=True)
class Budget:
    """The wall time the run planned within, what it spent, and what it could not afford."""

    budget_s: float | None
    spent_s: float
    cells_run: int
    cells_reused: int
    """Cells the given records (`--from`) covered: not run again."""
    not_afforded: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """The answer document (answer.json): the decision, its evidence and how it was made."""

    schema: str
    created_at: str
    model: str
    device: str
    gpu_name: str | None
    world_size: int
    target_batch: int
    margin: str
    """The equivalence margin as asked, in words."""
    confidence: float
    decision: Decision
    reference: Route | None
    """fp32's route: what every speedup is against."""
    candidates: tuple[Candidate, ...]
    time_to_train: TimeToTrain | None
    budget: Budget
    rules: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)
    """The evidence's files: records (every cell's result record, with its purpose, round and seed), plan."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run options every cell shares (the recipe)."""
    elapsed_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def candidate(self, precision: str) -> Candidate | None:
        return next((c for c in self.candidates if c.precision == precision), None)


RULES = {
    "rejected": ("not runnable here; no micro-batch fits; parity worse (never recommended); parity better (the "
                 "numerics changed: never recommended, shown with its diagnostic); throughput interval against "
                 f"fp32 below 1x; under {MIN_HEADROOM_FRACTION:.0%} of the memory left"),
    "eligible": ("parity equivalent at the margin, and an effective speedup to fp32's target loss: the throughput "
                 "ratio from interleaved paired rounds x fp32's steps to target / the candidate's (per seed pair)"),
    "recommend": "among eligible candidates whose effective-speedup interval lies above 1x, the highest",
    "stay": "no eligible candidate's interval lies above 1x, and no undecided one could still win",
    "cant_tell": ("no winner, and a candidate whose throughput interval lies above 1x (or has none yet) has no "
                  "settled verdict: the answer lists what decides it and the command"),
}


def time_to_train(throughput_samples_per_s: float | None, *, samples: float | None = None,
                  tokens: float | None = None, tokens_per_sample: int | None = None,
                  price_per_hour: float | None = None, basis: str = "") -> tuple[TimeToTrain | None, str | None]:
    """The time to train `samples` (or `tokens`) at a throughput, with the cost at a price; (None, why) when it
    cannot be said."""
    if samples is None and tokens is None:
        return None, None
    if not throughput_samples_per_s:
        return None, "no measured throughput"
    if tokens is not None:
        if not tokens_per_sample:
            return None, "--train-tokens needs a model whose samples are token sequences (tokens_per_sample)"
        samples = tokens / tokens_per_sample
    assert samples is not None
    seconds = samples / throughput_samples_per_s
    cost = seconds / 3600 * price_per_hour if price_per_hour is not None else None
    return TimeToTrain(samples=samples, tokens=tokens, throughput_samples_per_s=throughput_samples_per_s,
                       seconds=seconds, price_per_hour=price_per_hour, cost=cost, basis=basis), None
