"""Loss parity: does a precision still train to fp32's loss, and how fast in wall-clock time?

    python -m trainkit parity --model gpt,mlp --seeds 5 --output parity.json --report parity.html

A loss difference after a few steps of one seed says nothing: seeds alone move the loss, and a
precision that changes the optimizer (pure fp16 Adam, whose second moment underflows) can look
*better*. So each model is trained to a flattened loss in every precision and seed, each (precision,
seed) a real cell in fresh workers, and judged against the noise of fp32's seeds:

- **Task and seeds.** Every cell of a model learns one synthetic task (`task_seed`, the teacher and
  the held-out set); seed s changes the initial weights and the training samples drawn. Seeds are
  0..S-1 for every precision, so each precision sees the same starts and samples as fp32.
- **Bands.** fp32's eval-loss band is mean +- BAND_SDS sample standard deviations of its seeds'
  eval losses. Its curve band is the same, per step, over its seeds' smoothed training-loss
  curves (the record's per-step loss, a trailing mean over SMOOTH_FRACTION of the run).
- **Verdicts.** A precision's seed-mean eval loss above the band is `worse`, below it `better`;
  its distance past the band's edge is given in band widths (0 inside). When the eval loss is
  inside, its seed-mean curve decides: outside the curve band, on one side, for at least
  CURVE_SHARE of the steps after the first SKIP_FRACTION, it trained on another path (`better`:
  faster, `worse`: slower), else `within-noise`. `better` is never a win: it means the numerics
  changed, and the diagnostic that stands out is named (below).
- **Time to target.** The target loss is fp32's seed-mean smoothed training loss at a fraction of
  the run (TARGET_FRACTION), or one given. Steps to target: the first step at which a
  precision's seed-mean smoothed curve reaches it. Time to target: those steps times the median
  step time of that precision's cells on this device. Effective speedup: fp32's time to target
  over this one's = throughput speedup x fp32's steps to target / its steps to target.
- **Diagnostics.** Each cell records trainkit.engine.diagnostics (one extra step after its figures);
  a precision's are the mean over its seeds, beside fp32's, and the ones that stand out are
  flagged, in causal order (DIAGNOSTIC_RULES): the first one is named with a `better` or `worse`.

CPU step times say nothing about a GPU (half precision is emulated on most CPUs): a CPU parity
run's times to target are this machine's, and its verdicts are the part that carries over.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..engine.config import RunConfig
from ..engine.precision_facts import SHORT_DTYPE, display_rank, precision_names
from ..engine.schema import MEMORY_NAMES, append_jsonl, headline_memory

PARITY_SCHEMA = "trainkit.parity/1"
REFERENCE = "fp32"
BAND_SDS = 2.0
"""Half-width of a band, in sample standard deviations of the reference seeds."""
SMOOTH_FRACTION = 0.05
"""Trailing window of the curve smoothing, as a share of the run's steps (at least 1 step)."""
SKIP_FRACTION = 0.1
"""The first steps the curve comparison leaves out: every curve starts at the same loss and the
first steps' band is mostly the initial weights."""
CURVE_SHARE = 0.25
"""Share of the compared steps a seed-mean curve must spend outside the curve band, on one side,
to make a verdict of its own."""
TARGET_FRACTION = 0.8
"""Default target: fp32's seed-mean smoothed training loss this far into the run."""
DEFAULT_SEEDS = 5
TASK_SEED = 0
VERDICTS = ("within-noise", "better", "worse")
"""The loss verdicts; a precision that could not be judged has `no-verdict` with the reason."""
NO_VERDICT = "no-verdict"
TIMING_NOTE = ("Step times are this machine's: on a CPU, half precision is emulated or slow, so a CPU "
               "parity run's times to target and speedups are not GPU claims; its verdicts are what carries over.")


@dataclass(frozen=True)
class ParitySetup:
    """One model's parity recipe on one kind of device: the run options and the length."""

    options: dict[str, Any]
    steps: int
    """Timed optimizer steps after `warmup_steps`; the curve holds warmup + steps steps."""
    warmup_steps: int = 2
    why: str = ""


# Measured on a 2-core CPU so that gpt and mlp x 6 precisions x 5 seeds stay within 10 minutes
# and fp32's loss has flattened (README, "Loss parity"): the GPT is the test suite's smallest,
# since pure fp16 and bf16 matmuls are emulated on a CPU without AVX-512 FP16/BF16 (~5x slower).
CPU_SETUPS = {
    "gpt": ParitySetup({"gpt_layers": 1, "gpt_width": 32, "gpt_heads": 2, "seq_len": 16, "vocab_size": 64,
                        "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "batch_size": 16}, steps=298,
                       why="AdamW at 3e-3: the loss flattens in 300 steps"),
    "mlp": ParitySetup({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 32}, steps=348,
                       why="the seeds' SGD recipe; by 350 steps its held-out loss has flattened (the training "
                           "loss keeps falling slowly as it memorises the 4,096-sample pool)"),
}
# On a GPU: bench's recipes and its smaller GPU GPT; their lengths are first guesses, and every
# parity document says how flat fp32's loss got (`reference.flatness`).
GPU_SETUPS = {
    "gpt": ParitySetup({"gpt_layers": 6, "gpt_width": 512, "gpt_heads": 8, "seq_len": 512, "vocab_size": 32768,
                        "optimizer": "adamw", "lr": 6e-4, "weight_decay": 0.1, "batch_size": 16}, steps=1000,
                       warmup_steps=5),
    "mlp": ParitySetup({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 256}, steps=500, warmup_steps=5),
    "resnet50": ParitySetup({"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 64, "image_size": 64},
                            steps=1000, warmup_steps=5),
}
DEFAULT_MODELS = {"cpu": ("gpt", "mlp"), "cuda": ("gpt", "resnet50")}
CPU_PRECISIONS = ("fp32", "amp-bf16", "half-fp16", "half-bf16", "half-fp16-master", "half-bf16-master")
"""The CPU default: amp-fp16's autocast is slow and adds nothing a CPU can say that these do not."""


def default_precisions(device_type: str) -> tuple[str, ...]:
    return CPU_PRECISIONS if device_type == "cpu" else precision_names()


def setups_for(device_type: str) -> dict[str, ParitySetup]:
    """The models with a parity recipe on this kind of device, and their recipes."""
    return CPU_SETUPS if device_type == "cpu" else GPU_SETUPS


# --- the analysis: records in, verdicts out (no torch) -----------------------------------------------

def smooth(curve: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing mean over `window` steps (fewer at the start); None from the first missing value on
    (a diverged cell's curve ends there)."""
    out: list[float | None] = []
    total, values = 0.0, []
    for value in curve:
        if value is None or not math.isfinite(value) or (out and out[-1] is None):
            out.append(None)
            continue
        values.append(value)
        total += value
        if len(values) > window:
            total -= values[-window - 1]
        out.append(total / min(len(values), window))
    return out


def window_of(steps: int) -> int:
    return max(1, round(steps * SMOOTH_FRACTION))


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _per_step(curves: list[list[float | None]]) -> list[list[float]]:
    """Per step, the values the curves have there (a curve that ended gives none)."""
    length = max((len(c) for c in curves), default=0)
    return [[c[t] for c in curves if t < len(c) and c[t] is not None] for t in range(length)]  # type: ignore[misc]


def mean_curve(curves: list[list[float | None]]) -> list[float | None]:
    """Seed mean per step, None where any seed has no value (a diverged seed ends the mean)."""
    n = len(curves)
    return [statistics.fmean(v) if len(v) == n and n else None for v in _per_step(curves)]


def curve_band(curves: list[list[float | None]]) -> dict[str, list[float | None]]:
    low, high, mean = [], [], []
    for values in _per_step(curves):
        if len(values) < len(curves) or not values:
            low.append(None), high.append(None), mean.append(None)
            continue
        m, sd = _mean_sd(values)
        low.append(m - BAND_SDS * sd), high.append(m + BAND_SDS * sd), mean.append(m)
    return {"mean": mean, "low": low, "high": high}


def steps_to(curve: Sequence[float | None], target: float) -> int | None:
    """1-based count of optimizer steps until the curve first reaches the target, or None."""
    for t, value in enumerate(curve):
        if value is not None and value <= target:
            return t + 1
    return None


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


DIAGNOSTIC_FIGURES = ("grad_zero_share", "grad_subnormal_share", "grad_underflow_share", "grad_nonfinite_count",
                      "second_moment_zero_share", "unchanged_share", "update_over_lr_median", "update_over_lr_p90",
                      "update_to_weight_median", "update_to_weight_p90", "loss_scale")


def mean_diagnostics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed mean of each diagnostic figure, with the dtypes and the skipped steps of the run."""
    diags = [r.get("diagnostics") or {} for r in records]
    out: dict[str, Any] = {k: _mean([d.get(k) for d in diags]) for k in DIAGNOSTIC_FIGURES}
    for key in ("grad_dtype", "second_moment_dtype", "trained_dtype", "second_moment_note"):
        out[key] = next((d[key] for d in diags if d.get(key)), None)
    errors = sorted({d["error"] for d in diags if d.get("error")})
    if errors:
        out["errors"] = errors
    steps = [len(r["loss"]["curve"]) for r in records if r.get("loss")]
    skipped = [(r.get("scaler") or {}).get("skipped_steps_total") or 0 for r in records]
    out["skipped_steps_mean"] = _mean(skipped)
    out["skipped_share"] = _mean([s / n for s, n in zip(skipped, steps) if n])
    curves = [(r.get("scaler") or {}).get("scale_curve") for r in records]
    curves = [c for c in curves if c]
    out["loss_scale_curve"] = curves[0] if curves else None
    out["method"] = next((d.get("method") for d in diags if d.get("method")), None)
    return out


def _short(dtype: str | None) -> str:
    name = (dtype or "").split(",")[0].replace("torch.", "")
    return SHORT_DTYPE.get(name, name or "?")


def _pct(value: float) -> str:
    return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


DiagnosticRule = Callable[[dict[str, Any], dict[str, Any]], str | None]


def _nonfinite(p: dict[str, Any], ref: dict[str, Any]) -> str | None:
    count, share = p.get("grad_nonfinite_count") or 0, p.get("skipped_share") or 0
    if count <= (ref.get("grad_nonfinite_count") or 0) and share < 0.05:
        return None
    return (f"inf/NaN gradients: {count:g} non-finite gradient elements in the diagnostic step, "
            f"{share:.0%} of the steps skipped by the loss scaler")


STANDS_OUT = 0.05
"""A share this much above fp32's (5 points) is named as the diagnostic that stands out."""


def _share_rule(key: str, describe: Callable[[dict[str, Any], str, str], str]) -> DiagnosticRule:
    """A rule on a share fp32 keeps near 0: named when this precision's is STANDS_OUT above fp32's;
    `describe(p, share, fp32_share)` words it."""
    def rule(p: dict[str, Any], ref: dict[str, Any]) -> str | None:
        share, base = p.get(key), ref.get(key) or 0.0
        if share is None or share - base < STANDS_OUT:
            return None
        return describe(p, _pct(share), _pct(base))
    return rule


_second_moment = _share_rule("second_moment_zero_share", lambda p, share, base: (
    f"optimizer-state underflow: {share} of Adam's second moment (exp_avg_sq, "
    f"{_short(p.get('second_moment_dtype'))}) is exactly 0 (fp32: {base}), so those updates are lr * m / eps"))
_grad_underflow = _share_rule("grad_underflow_share", lambda p, share, base: (
    f"gradient underflow: {share} of gradient elements are zero or subnormal in "
    f"{_short(p.get('grad_dtype'))} (fp32: {base})"))
_rounded_away = _share_rule("unchanged_share", lambda p, share, base: (
    f"updates rounded away: a step left {share} of the {_short(p.get('trained_dtype'))} weights "
    f"unchanged (fp32: {base})"))


def _ratio_rule(key: str, what: str) -> DiagnosticRule:
    def rule(p: dict[str, Any], ref: dict[str, Any]) -> str | None:
        mine, base = p.get(key), ref.get(key)
        if not mine or not base:
            return None
        ratio = mine / base
        if 0.5 < ratio < 2.0:
            return None
        return f"update size: the 90th percentile of {what} is {mine:.3g}, {ratio:.2g}x fp32's ({base:.3g})"

    return rule


DIAGNOSTIC_RULES: tuple[tuple[str, DiagnosticRule], ...] = (
    ("inf/NaN gradients", _nonfinite),
    ("optimizer-state underflow", _second_moment),
    ("gradient underflow", _grad_underflow),
    ("updates rounded away", _rounded_away),
    ("update size", _ratio_rule("update_to_weight_p90", "|update| / |weight|")),
    ("update size", _ratio_rule("update_over_lr_p90", "|update| / lr")),
)
"""What can stand out, in causal order (an underflowing second moment is why updates grow; a
skipped step is why nothing moved), each with its rule: a precision's seed means against fp32's.
Shares stand out 5 points above fp32's; update sizes at 2x or 0.5x fp32's."""


def flags(p: dict[str, Any], ref: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for name, rule in DIAGNOSTIC_RULES:
        text = rule(p, ref)
        if text and name not in {f["name"] for f in out}:
            out.append({"name": name, "text": text})
    return out


def _memory(records: list[dict[str, Any]]) -> dict[str, Any]:
    config = records[0]["config"]
    memories = [r.get("memory") for r in records]
    measure = headline_memory(memories)
    peak = _median([m[measure] for m in memories]) if measure else None  # type: ignore[index]
    return {"param_bytes": config.get("param_bytes"), "master_bytes": config.get("master_bytes"),
            "optimizer_state_bytes": config.get("optimizer_state_bytes"),
            "param_dtype": config.get("param_dtype"), "master_dtype": config.get("master_dtype"),
            "optimizer_state_dtype": config.get("optimizer_state_dtype"),
            "peak_bytes": peak, "peak_measure": measure, "peak_measure_name": MEMORY_NAMES.get(measure or "")}


def _verdict(eval_mean: float, band: tuple[float, float], share_below: float, share_above: float,
             curve_ok: bool) -> tuple[str, str, float]:
    """(verdict, what decided it, distance past the eval band's edge in band widths)."""
    low, high = band
    width = high - low
    if eval_mean > high:
        return "worse", "eval loss", (eval_mean - high) / width if width > 0 else math.inf
    if eval_mean < low:
        return "better", "eval loss", (eval_mean - low) / width if width > 0 else -math.inf
    if curve_ok and share_below >= CURVE_SHARE and share_below >= share_above:
        return "better", "loss curve", 0.0
    if curve_ok and share_above >= CURVE_SHARE:
        return "worse", "loss curve", 0.0
    return "within-noise", "eval loss and loss curve", 0.0


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def judge_model(records: list[dict[str, Any]], *, target_fraction: float = TARGET_FRACTION,
                target_loss: float | None = None) -> dict[str, Any]:
    """The parity of one model: records of its cells (every precision and seed) in, the reference's
    bands and target and one entry per precision out (module docstring)."""
    by_precision: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: display_rank(r["config"]["precision"])):
        by_precision.setdefault(record["config"]["precision"], []).append(record)
    return judge(by_precision.get(REFERENCE, []), by_precision, target_fraction=target_fraction,
                 target_loss=target_loss)


def judge(reference_records: list[dict[str, Any]], candidates: dict[str, list[dict[str, Any]]], *,
          target_fraction: float = TARGET_FRACTION, target_loss: float | None = None) -> dict[str, Any]:
    """The reference's bands and target from its records, and an entry for each named set of
    candidate records (a precision's seeds, or any other variant judged against the same band)."""
    refs = [r for r in reference_records if r["status"] == "ok"]
    if len(refs) < 2:
        reason = f"{len(refs)} {REFERENCE} seed(s) finished; a band needs at least 2"
        return {"reference": {"precision": REFERENCE, "error": reason},
                "precisions": {p: {**_empty(), "verdict": NO_VERDICT, "reason": reason, "cells": _cells(rs)}
                               for p, rs in candidates.items()}}
    steps = len(refs[0]["loss"]["curve"])
    window = window_of(steps)
    skip = int(steps * SKIP_FRACTION)
    ref_evals = [r["loss"]["eval"] for r in refs]
    ref_mean, ref_sd = _mean_sd(ref_evals)
    band = (ref_mean - BAND_SDS * ref_sd, ref_mean + BAND_SDS * ref_sd)
    ref_curves = [smooth(r["loss"]["curve"], window) for r in refs]
    cband = curve_band(ref_curves)
    ref_mean_curve = mean_curve(ref_curves)
    at = min(steps, max(1, math.ceil(target_fraction * steps))) - 1
    target = target_loss if target_loss is not None else ref_mean_curve[at]
    ref_diag = mean_diagnostics(refs)
    ref_step_s = _median([r["step_time_s"]["median"] for r in refs])
    ref_steps_to_target = steps_to(ref_mean_curve, target) if target is not None else None
    flatness = None
    quarter = steps - max(1, steps // 4)
    if None not in (ref_mean_curve[0], ref_mean_curve[quarter], ref_mean_curve[-1]):
        total = ref_mean_curve[0] - ref_mean_curve[-1]
        last = ref_mean_curve[quarter] - ref_mean_curve[-1]
        flatness = {"drop_total": total, "drop_last_quarter": last,
                    "last_quarter_share": last / total if total > 0 else None}
    ref_time = ref_steps_to_target * ref_step_s if ref_steps_to_target and ref_step_s else None

    entries: dict[str, Any] = {}
    for precision, cells in candidates.items():
        ok = [r for r in cells if r["status"] == "ok"]
        entry: dict[str, Any] = {"cells": _cells(cells)}
        failed = [r for r in cells if r["status"] != "ok"]
        diverged = [r for r in failed if r["status"] == "diverged"]
        if diverged:
            entry.update(verdict="worse", decided_by="divergence",
                         reason=f"diverged in {len(diverged)} of {len(cells)} seeds: {diverged[0]['status_detail']}")
        if failed and not diverged:
            entry.update(verdict=NO_VERDICT, reason=f"{len(failed)} of {len(cells)} seeds ended "
                                                    f"{failed[0]['status']}: {failed[0]['status_detail']}")
        if not ok or (failed and not diverged):
            entries[precision] = {**_empty(), **entry}
            continue
        evals = [r["loss"]["eval"] for r in ok]
        eval_mean, eval_sd = _mean_sd(evals)
        curves = [smooth(r["loss"]["curve"], window) for r in ok]
        mean = mean_curve(curves)
        compared = [(m, lo, hi) for m, lo, hi in zip(mean[skip:], cband["low"][skip:], cband["high"][skip:])
                    if m is not None and lo is not None]
        below = sum(1 for m, lo, _ in compared if m < lo) / len(compared) if compared else 0.0
        above = sum(1 for m, _, hi in compared if m > hi) / len(compared) if compared else 0.0
        verdict, decided_by, distance = _verdict(eval_mean, band, below, above, bool(compared))
        step_s = _median([r["step_time_s"]["median"] for r in ok])
        to_target = steps_to(mean, target) if target is not None else None
        time_to_target = to_target * step_s if to_target and step_s else None
        speedup = ref_step_s / step_s if ref_step_s and step_s else None
        diag = mean_diagnostics(ok)
        standing_out = flags(diag, ref_diag) if cells is not reference_records else []
        entry.update({
            "verdict": entry.get("verdict", verdict),
            "decided_by": entry.get("decided_by", decided_by),
            "eval_loss": eval_mean, "eval_loss_sd": eval_sd, "eval_losses": evals,
            "band": list(band), "difference": eval_mean - ref_mean,
            "distance_band_widths": _finite(distance),
            "curve_below_band_share": below, "curve_above_band_share": above,
            "curve": mean,
            "steps_to_target": to_target,
            "steps_to_target_per_seed": [steps_to(c, target) if target is not None else None for c in curves],
            "step_time_s": step_s, "time_to_target_s": time_to_target,
            "throughput_speedup": speedup,
            "effective_speedup": ref_time / time_to_target if ref_time and time_to_target else None,
            "diagnostics": diag, "flags": standing_out,
            "memory": _memory(ok),
        })
        final_verdict = entry["verdict"]
        if final_verdict in ("better", "worse"):
            entry["named"] = (standing_out[0]["text"] if standing_out
                              else "none of the diagnostics stands out against fp32's")
        entries[precision] = entry
    return {
        "steps": steps, "smoothing_steps": window, "compared_from_step": skip + 1,
        "reference": {"precision": REFERENCE, "seeds": len(refs), "eval_loss_mean": ref_mean,
                      "eval_loss_sd": ref_sd, "band": list(band), "band_width": band[1] - band[0],
                      "curve_band": cband, "flatness": flatness, "diagnostics": ref_diag},
        "target": {"loss": target, "fraction": None if target_loss is not None else target_fraction,
                   "given": target_loss is not None,
                   "basis": (f"training loss curve (each step's mean loss over the effective batch), trailing "
                             f"mean over {window} steps, mean over seeds")},
        "precisions": entries,
    }


def _empty() -> dict[str, Any]:
    return dict.fromkeys(("eval_loss", "band", "steps_to_target", "time_to_target_s", "effective_speedup"))


def _cells(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"seed": r["config"]["seed"], "status": r["status"], "status_detail": r["status_detail"],
             "eval_loss": (r.get("loss") or {}).get("eval"), "final_loss": (r.get("loss") or {}).get("final"),
             "step_time_s": (r.get("step_time_s") or {}).get("median"), "cell_id": r["cell_id"]}
            for r in sorted(records, key=lambda r: r["config"]["seed"])]


RULES = {
    "band": f"fp32 seeds' mean +- {BAND_SDS:g} sample standard deviations, of the eval loss and, per step, "
            "of the smoothed training-loss curve",
    "verdict": (f"eval loss (seed mean) above the band: worse, below: better; inside, the seed-mean curve "
                f"decides when it runs outside the curve band on one side for >= {CURVE_SHARE:.0%} of the "
                f"steps after the first {SKIP_FRACTION:.0%}; else within-noise. A diverged seed makes it worse; "
                "a seed that crashed, ran out of memory or timed out leaves the precision without a verdict"),
    "distance_band_widths": "how far the seed-mean eval loss lies past the band's edge, in band widths "
                            "(0 inside; negative below)",
    "smoothing": f"trailing mean over {SMOOTH_FRACTION:.0%} of the run's steps",
    "target": "fp32's seed-mean smoothed training loss at target.fraction of the run, unless given",
    "time_to_target": "steps to target x the median step time of the precision's cells on this device",
    "effective_speedup": "fp32's time to target / this precision's = throughput speedup x fp32's steps to "
                         "target / its steps to target",
    "diagnostics": "seed means of trainkit.engine.diagnostics beside fp32's; a share stands out 5 points above "
                   "fp32's, an update size at 2x or 0.5x; the first that stands out, in causal order, is named",
}


def document(models: dict[str, dict[str, Any]], *, seeds: list[int], device: str, env: dict[str, Any] | None,
             configs: dict[str, dict[str, Any]], elapsed_s: float | None = None,
             cells_cpu_s: float | None = None) -> dict[str, Any]:
    """The parity document: one block per model (judge_model's), with how it was made."""
    return {"schema": PARITY_SCHEMA,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "env": env, "seeds": seeds, "task_seed": TASK_SEED,
            "timing_note": TIMING_NOTE, "rules": RULES, "elapsed_s": elapsed_s,
            "cells_cpu_s": cells_cpu_s,
            "models": {m: {"config": configs[m], **block} for m, block in models.items()}}


# --- the run: every (model, precision, seed) a cell in fresh workers ----------------------------------

def cell_configs(model: str, precisions: Sequence[str], seeds: Sequence[int], device: str, device_type: str,
                 steps: int | None = None, warmup_steps: int | None = None,
                 overrides: dict[str, Any] | None = None) -> list[RunConfig]:
    """Every cell of one model's parity run, seed-major: each seed runs every precision in turn, so a
    machine whose speed drifts slows every precision alike."""
    setup = setups_for(device_type)[model]
    options = {**setup.options, **(overrides or {})}
    base = RunConfig(model=model, device=device, task_seed=TASK_SEED,
                     steps=steps if steps is not None else setup.steps,
                     warmup_steps=warmup_steps if warmup_steps is not None else setup.warmup_steps, **options)
    return [base.replace(precision=p, seed=s) for s in seeds for p in precisions]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def run(models: Sequence[str], precisions: Sequence[str] | None, seeds: int, *, device: str = "auto",
        steps: int | None = None, warmup_steps: int | None = None, overrides: dict[str, Any] | None = None,
        target_fraction: float = TARGET_FRACTION, target_loss: float | None = None,
        records_path: str | None = None, timeout_s: float | None = None, jobs: int = 1,
        show: Callable[[str], None] | None = None, hw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the cells of every model (fresh workers each; `jobs` at a time on a CPU, each with its
    share of the cores), write each record to `records_path` as it ends, and return the parity
    document. `hw` is the device probe's answer (asked here if None)."""
    from ..engine.config import ProfileConfig
    from ..engine.launch import DEFAULT_CELL_TIMEOUT_S, probe, run_cell
    from ..engine.precision import policy_class

    started = time.monotonic()
    hw = hw or probe(device)
    device_type = hw["device"]
    if jobs > 1 and device_type != "cpu":
        raise ValueError(f"jobs={jobs}: cells run side by side only on a CPU (each would share the GPU)")
    chosen = tuple(precisions) if precisions else default_precisions(device_type)
    if REFERENCE not in chosen:
        chosen = (REFERENCE, *chosen)
    capability = tuple(hw["capability"]) if hw["capability"] else None
    reasons = {p: policy_class(p).unsupported_on(device_type, capability, hw["gpu_name"]) for p in chosen}
    runnable = [p for p in chosen if reasons[p] is None]
    seed_list = list(range(seeds))
    overrides = dict(overrides or {})
    if jobs > 1:  # side by side, each cell takes its share of the cores instead of all of them
        overrides.setdefault("cpu_threads", max(1, hw["cpu_count"] // jobs))
    plan = [(m, c) for m in models
            for c in cell_configs(m, runnable, seed_list, device_type, device_type, steps, warmup_steps, overrides)]
    profile = ProfileConfig(phase_steps=0, diagnostics=True)
    lock = threading.Lock()
    done = 0

    def one(item: tuple[str, RunConfig]) -> dict[str, Any]:
        nonlocal done
        model, config = item
        record = run_cell(config, timeout_s=timeout_s or DEFAULT_CELL_TIMEOUT_S, profile=profile)
        with lock:  # one writer of the records file and of the progress lines
            if records_path:
                append_jsonl(record, records_path)
            done += 1
            if show is not None:
                elapsed = time.monotonic() - started
                left = elapsed / done * (len(plan) - done)
                what = (f"eval {record['loss']['eval']:.4f}, {record['step_time_s']['median'] * 1e3:.1f} ms/step"
                        if record["status"] == "ok" else f"{record['status']}: {record['status_detail']}")
                show(f"[parity] {done}/{len(plan)} {model} {config.precision} seed {config.seed}: {what} "
                     f"({_clock(elapsed)} elapsed, ~{_clock(left)} left)")
        return record

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each thread only waits on its cell's workers
        records = list(pool.map(one, plan))
    blocks, configs = {}, {}
    for model in models:
        cells = [(config, record) for (m, config), record in zip(plan, records) if m == model]
        block = judge_model([r for _, r in cells], target_fraction=target_fraction, target_loss=target_loss)
        for precision in chosen:
            if reasons[precision] is not None:
                block["precisions"][precision] = {**_empty(), "verdict": NO_VERDICT, "cells": [],
                                                  "reason": f"unsupported: {reasons[precision]}"}
        blocks[model] = block
        common = cells[0][0].to_dict() if cells else {}
        for key in ("precision", "seed"):
            common.pop(key, None)
        configs[model] = common
    cpu_s = sum(r.get("cpu_time_s") or 0.0 for r in records)
    return document(blocks, seeds=seed_list, device=device_type, env=hw.get("env"), configs=configs,
                    elapsed_s=time.monotonic() - started, cells_cpu_s=cpu_s)


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The parity table in plain text, a line per (model, precision)."""
    lines = []
    for model, block in doc["models"].items():
        ref = block["reference"]
        if "error" in ref:
            lines.append(f"{model}: no verdicts: {ref['error']}")
            continue
        lines.append(f"{model}: fp32 eval {ref['eval_loss_mean']:.4f} +- {ref['eval_loss_sd']:.4f} "
                     f"(band {ref['band'][0]:.4f}..{ref['band'][1]:.4f}), target {block['target']['loss']:.4f}")
        for precision, e in block["precisions"].items():
            if e.get("eval_loss") is None:
                lines.append(f"  {precision:18} {e['verdict']}: {e.get('reason', '')}")
                continue
            speed = (f"{e['effective_speedup']:.2f}x effective" if e.get("effective_speedup")
                     else "target not reached")
            named = f"  [{e['named']}]" if e.get("named") else ""
            lines.append(f"  {precision:18} {e['verdict']:12} eval {e['eval_loss']:.4f} "
                         f"({e['distance_band_widths'] or 0:+.1f} band widths), "
                         f"{e['steps_to_target'] or '-'} steps to target, {speed}{named}")
    return lines


def print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr, flush=True)

# --- `python -m trainkit parity` ------------------------------------------------------------------

def add_arguments(parser: Any) -> None:
    """The options of `python -m trainkit parity` (validated where they are parsed)."""
    from ..engine.options import (
        CELL_TIMEOUT,
        DEVICE,
        LR,
        MODELS_LIST,
        OUTPUT,
        PRECISIONS_LIST,
        QUIET,
        REPORT,
        STEPS,
        WARMUP_STEPS,
        fraction,
        integer,
        number,
        output_file,
    )

    MODELS_LIST.add(parser, help="models to judge (default: gpt,mlp on a CPU, gpt,resnet50 on a GPU; the ones with a "
                                 "parity recipe: " + "; ".join(f"{d}: {', '.join(s)}" for d, s in
                                                               (("cpu", CPU_SETUPS), ("cuda", GPU_SETUPS))) + ")")
    PRECISIONS_LIST.add(parser, help=f"precisions to judge against fp32, which always runs (default on a CPU: "
                                     f"{','.join(CPU_PRECISIONS)}; on a GPU every mode it can run)")
    parser.add_argument("--seeds", type=integer(2), default=DEFAULT_SEEDS, metavar="S",
                        help=f"seeds per precision, 0..S-1 (default {DEFAULT_SEEDS}; fp32's make the noise band)")
    STEPS.add(parser, help="timed optimizer steps per cell after the warmup (default: each model's recipe, "
                           "long enough for fp32's loss to flatten)")
    WARMUP_STEPS.add(parser, help="untimed optimizer steps first (default: the recipe's); they are in the loss curve")
    parser.add_argument("--batch-size", type=integer(1), default=None, metavar="N",
                        help="micro-batch size of every cell (default: each model's recipe)")
    LR.add(parser)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-fraction", type=fraction, default=TARGET_FRACTION, metavar="F",
                        help=f"target loss: fp32's seed-mean smoothed training loss this far into the run "
                             f"(default {TARGET_FRACTION:g})")
    target.add_argument("--target-loss", type=number(0, above=True), default=None, metavar="X",
                        help="target loss, given")
    DEVICE.add(parser, help="where the cells run (default: auto)")
    parser.add_argument("--jobs", "-j", type=integer(1), default=1, metavar="N",
                        help="cells run side by side on a CPU, each with its share of the cores (default 1; the "
                             "step times are then measured beside another cell)")
    OUTPUT.add(parser, required=True, metavar="FILE.json", help="the parity document")
    parser.add_argument("--records", type=output_file(), metavar="FILE.jsonl", default=None,
                        help="every cell's result record (default: beside the output, OUTPUT.records.jsonl)")
    REPORT.add(parser, help="also write the HTML report of the parity run (needs trainkit[reports])")
    CELL_TIMEOUT.add(parser)
    QUIET.add(parser)


def main(args: Any) -> int:
    """`python -m trainkit parity`: exit 0 when every precision got a verdict, 1 when one did not
    (the document is still written), 2 for bad input."""
    import os

    from ..engine.options import UsageError
    from ..engine.schema import write_json

    if not 0 < args.target_fraction <= 1:
        raise UsageError(f"--target-fraction {args.target_fraction:g} must be in (0, 1]")
    for path, what in ((args.output, "--output"), (args.report, "--report"), (args.records, "--records")):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"{what} {path!r}: directory {os.path.dirname(os.path.abspath(path))!r} does not exist")
    if args.report:
        try:
            import pandas  # noqa: F401
            import plotly  # noqa: F401
        except ImportError as exc:
            raise UsageError(f"--report needs the reports extra (pip install 'trainkit[reports]'): {exc}") from None
    from ..engine.launch import probe

    # On a CPU the options are checked before anything starts; elsewhere the probe says which device.
    try:
        hw = None if args.device == "cpu" else probe(args.device)
    except RuntimeError as exc:  # no such device here: the probe says why
        raise UsageError(f"--device {args.device}: {exc}") from None
    device_type = hw["device"] if hw else "cpu"
    models = args.model or DEFAULT_MODELS[device_type]
    if args.jobs > 1 and device_type != "cpu":
        raise UsageError(f"--jobs {args.jobs}: cells run side by side only on a CPU (the device is {device_type})")
    missing = [m for m in models if m not in setups_for(device_type)]
    if missing:
        raise UsageError(f"--model: no parity recipe for {', '.join(missing)} on {device_type}; choose from "
                         f"{', '.join(setups_for(device_type))}")
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    records = args.records or os.path.splitext(args.output)[0] + ".records.jsonl"
    open(records, "w").close()  # this run's records, appended as each cell ends
    show = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    doc = run(models, args.precision, args.seeds, device=args.device, steps=args.steps,
              warmup_steps=args.warmup_steps, overrides=overrides, target_fraction=args.target_fraction,
              target_loss=args.target_loss, records_path=records, timeout_s=args.cell_timeout, jobs=args.jobs,
              show=show, hw=hw)
    doc["records_file"] = os.path.abspath(records)
    write_json(args.output, doc)
    written = [args.output, records]
    if args.report:
        from reports.build import build_report

        written += list(build_report([args.output], args.report, title="trainkit loss parity").values())
    if not args.quiet:
        print_lines(summary_lines(doc))
        print(f"[parity] {_clock(doc['elapsed_s'])} elapsed; the cells used {doc['cells_cpu_s']:.1f} CPU seconds; "
              f"wrote {', '.join(written)}", file=sys.stderr, flush=True)
    judged = all(e["verdict"] in VERDICTS for block in doc["models"].values() for e in block["precisions"].values())
    return 0 if judged else 1
