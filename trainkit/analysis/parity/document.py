"""The parity document's types: what `trainkit.analysis.parity.verdicts` returns and `python -m trainkit parity`
writes (as JSON, `dataclasses.asdict`), and what reports/parity.py reads back.

No statistics library and no torch here, so a page can be built from a document with the
`reports` extra alone. Losses are the model's training objective (cross-entropy in nats); `_s`
fields are seconds; `_bytes` bytes; a speedup is a ratio (fp32's time over this precision's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PARITY_SCHEMA = "trainkit.parity/2"
"""/2: verdicts from the seed-paired eval-loss differences and an equivalence margin; /1 judged a
seed mean against fp32's mean +- 2 sd band and cannot be read as /2 (its records can be re-judged:
`python -m trainkit parity --from-records FILE.records.jsonl -o new.json`)."""
OLD_SCHEMAS = ("trainkit.parity/1",)
REFERENCE = "fp32"
CONFIDENCE = 0.95
DEFAULT_MARGIN_RELATIVE = 0.005
"""Default equivalence margin (`--margin`): 0.5% of fp32's seed-mean eval loss. Peers gate loss parity at about
this size: an FP8 run within 0.01 of bf16's loss (marin#7298), "expect loss diff < 1e-2"
(Megatron-LM#1152), at losses of 2-3 nats (0.3-0.5%)."""
TARGET_FRACTION = 0.8
"""Default target: each seed's fp32 smoothed training loss this far into the run (`--target-fraction`)."""
TASK_SEED = 0
"""The synthetic task (teacher and held-out set) every cell of a parity run learns."""
VERDICTS = ("equivalent", "better", "worse", "inconclusive")
"""`equivalent`: the interval of the difference from fp32 lies inside +- margin; `worse` / `better`:
entirely beyond it (`better` means the numerics changed, never a win); `inconclusive`: it straddles
the margin (more seeds would decide, `loss.more_seeds_to_decide` says how many)."""
NO_VERDICT = "no-verdict"
"""A precision that could not be judged (a seed crashed, ran out of memory or timed out, or fewer
than 2 seeds could be compared); its `reason` says why."""
REFERENCE_VERDICT = "reference"
"""fp32's own row: it is what the others are compared with."""


@dataclass(frozen=True)
class Margin:
    """The equivalence margin as asked: a share of fp32's seed-mean eval loss, or a loss."""

    relative: float | None = DEFAULT_MARGIN_RELATIVE
    absolute_loss: float | None = None

    def loss(self, reference_eval_loss: float) -> float:
        """The margin in loss, for a reference (fp32) seed-mean eval loss."""
        if self.absolute_loss is not None:
            return self.absolute_loss
        return (self.relative or 0.0) * abs(reference_eval_loss)

    def describe(self) -> str:
        if self.absolute_loss is not None:
            return f"{self.absolute_loss:g} in loss"
        return f"{(self.relative or 0.0):.2%} of fp32's seed-mean eval loss"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its confidence interval; `low`/`high` are null with `note` saying why
    when no interval can be made (one value, or none)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    """Values the mean is over (seeds, or seed pairs)."""
    confidence: float
    """Coverage of [low, high], e.g. 0.95."""
    method: str
    """How the interval was made, in words (e.g. `Student t on 4 degrees of freedom`)."""
    note: str | None = None


@dataclass(frozen=True)
class LossTest:
    """One precision's eval loss against fp32's, seed by seed: the test behind the verdict."""

    test: str
    """`paired t` (every seed of this precision has an fp32 twin: same initial weights, same
    samples) or `Welch t` (no seed in common: two independent sets)."""
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    """Per seed (paired) this precision's eval loss minus fp32's; empty for Welch."""
    difference: Interval
    """Mean difference from fp32 (this minus fp32) with its interval."""
    difference_sd: float | None
    """Sample standard deviation of the paired differences (of the two sets' pooled error for Welch)."""
    relative_difference: float | None
    """The mean difference over fp32's seed-mean eval loss."""
    t_statistic: float | None
    p_value: float | None
    """Two-sided, against no difference at all (a shift can be detectable and still inside the margin)."""
    margin_loss: float
    """The equivalence margin, in loss: a difference within +- this is equivalent."""
    verdict: str
    more_seeds_to_decide: int | None
    """For `inconclusive`: seeds to add (to this precision and fp32 alike) for the interval to decide,
    if the differences keep their mean and sd; null with `more_seeds_note` when it cannot be said."""
    more_seeds_note: str | None = None
    unpaired_seeds: tuple[int, ...] = ()
    """Seeds of this precision that fp32 did not run: no twin to pair with."""
    unpaired: LossTest | None = None
    """Those seeds judged as an independent set against fp32's (Welch t), beside the paired test; the
    verdict is the more cautious of the two (a precision is equivalent only where both say so)."""


@dataclass(frozen=True)
class SeedTiming:
    """One seed's way to the target loss."""

    seed: int
    target_loss: float | None
    steps_to_target: int | None
    """1-based optimizer steps until the seed's smoothed training loss first reached the target; null:
    not reached within the run."""
    step_time_s: float | None
    """Median step time of this seed's cell."""
    time_to_target_s: float | None


@dataclass(frozen=True)
class TimeToTarget:
    """Steps and time to the target loss over seeds, and the speedups they give against fp32."""

    seeds: int
    seeds_reached: int
    """Seeds whose smoothed training loss reached the target within the run."""
    steps_to_target: Interval
    """Mean over seeds, with a t interval."""
    time_to_target_s: Interval
    """Geometric mean over seeds, with the t interval of the logarithms (times are positive)."""
    throughput_speedup: Interval
    """Geometric mean over seed pairs of fp32's step time over this precision's, with its interval."""
    effective_speedup: Interval
    """Geometric mean over seed pairs of fp32's time to target over this precision's: with every seed
    reaching it at fp32's step, this equals the throughput speedup."""
    per_seed: tuple[SeedTiming, ...]
    note: str | None = None
    """Why a figure is null: `not reached in 2 of 5 seeds`, no fp32 twin, ..."""


@dataclass(frozen=True)
class Flag:
    """A diagnostic that stands out against fp32's (trainkit.analysis.parity.diagnostics)."""

    name: str
    text: str


@dataclass(frozen=True)
class MemoryFigures:
    """What the weights, the fp32 master copy and the optimizer state take, and the cells' peak."""

    param_bytes: int | None
    master_bytes: int | None
    optimizer_state_bytes: int | None
    param_dtype: str | None
    master_dtype: str | None
    optimizer_state_dtype: str | None
    peak_bytes: float | None
    """Median over seeds of `peak_measure`."""
    peak_measure: str | None
    peak_measure_name: str | None


@dataclass(frozen=True)
class Cell:
    """One (precision, seed) cell as its record ended."""

    seed: int
    status: str
    status_detail: str
    eval_loss: float | None
    final_loss: float | None
    step_time_s: float | None
    cell_id: str


@dataclass(frozen=True)
class PrecisionParity:
    """One precision's verdict against fp32, and what it cost in time and memory."""

    precision: str
    verdict: str
    decided_by: str | None
    """`paired eval-loss differences`, `eval-loss difference of independent sets`, `divergence`; null
    without a verdict."""
    reason: str | None
    eval_loss_mean: float | None
    eval_loss_sd: float | None
    eval_losses: tuple[float, ...]
    loss: LossTest | None
    timing: TimeToTarget | None
    curve: tuple[float | None, ...]
    """Seed-mean smoothed training loss per optimizer step."""
    diagnostics: dict[str, Any]
    """Seed means of trainkit.engine.cell.diagnostics' figures (keys as there), with `skipped_share`."""
    flags: tuple[Flag, ...]
    named: str | None
    """Under `better` or `worse`: the first diagnostic that stands out, in causal order."""
    memory: MemoryFigures | None
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class CurveSpread:
    """Per optimizer step, fp32's seed-mean smoothed training loss and mean +- 2 sample sd: the seeds'
    spread drawn under the curves, not a test (null where a seed has no value)."""

    mean: list[float | None]
    low: list[float | None]
    high: list[float | None]


@dataclass(frozen=True)
class Flatness:
    """How flat fp32's seed-mean smoothed training loss got: its drop over the run and over the last quarter."""

    drop_total: float
    drop_last_quarter: float
    last_quarter_share: float | None
    """drop_last_quarter / drop_total (null when the loss did not drop)."""


@dataclass(frozen=True)
class MarginUsed:
    """The equivalence margin as asked and in loss."""

    relative: float | None
    """Share of fp32's seed-mean eval loss (null when a loss was given)."""
    absolute_loss: float | None
    described: str
    loss: float | None
    """The margin in loss; null when fp32 gave no seed-mean eval loss."""


@dataclass(frozen=True)
class Reference:
    """fp32's seeds: the loss the others are compared with, and their spread."""

    precision: str
    seeds: int
    eval_loss_mean: float | None
    eval_loss_sd: float | None
    curve_band: CurveSpread | None
    flatness: Flatness | None
    """How much of fp32's loss drop came in the last quarter of the run (is it flat?)."""
    diagnostics: dict[str, Any]
    error: str | None = None


@dataclass(frozen=True)
class Target:
    """The loss every precision's seeds race to."""

    loss_per_seed: dict[str, float | None]
    """Seed (as text, a JSON key) to target loss."""
    fraction: float | None
    """Default: each seed's target is its fp32 twin's smoothed training loss this far into the run."""
    given: bool
    basis: str


@dataclass(frozen=True)
class ModelParity:
    """One model's parity: the reference, the target and one entry per precision."""

    steps: int | None
    smoothing_steps: int | None
    margin: MarginUsed
    confidence: float
    reference: Reference
    target: Target | None
    precisions: dict[str, PrecisionParity]
    config: dict[str, Any] = field(default_factory=dict)
    """The run options every cell of this model shares."""


@dataclass(frozen=True)
class ParityDocument:
    """The parity document `python -m trainkit parity` writes."""

    schema: str
    created_at: str
    device: str
    env: dict[str, Any] | None
    seeds: list[int]
    task_seed: int
    timing_note: str
    rules: dict[str, str]
    elapsed_s: float | None
    cells_cpu_s: float | None
    models: dict[str, ModelParity]
    records_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
