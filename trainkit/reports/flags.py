"""Figures that cannot be right, and differences the noise does not support, flagged per cell.

The summary prints a figure plainly only when nothing speaks against it. A row's `flags` say why
it should not be believed as printed:

    implausible   a weak-scaling efficiency above IMPLAUSIBLE_EFFICIENCY (N ranks cannot do more
                  than N times one rank's work; more means the 1-rank cell was slowed); a speedup
                  beyond what the device's peaks allow (speedup_bound); a peak memory that does
                  not grow with the batch, against the cell that differs only in a smaller batch
    conditions    the host loaded beyond its cores, CPU steal, more threads than cores, other
                  processes on the GPUs (trainkit.engine.measure.conditions.condition_flags), of the cell
                  or of the cell it is compared with; a step so short that trainkit's own overhead
                  is more than 1 % of it (the record's harness_overhead_flag)
    within noise  a speedup or efficiency whose interval holds 1: the difference it states is
                  smaller than the noise of the two cells it compares

Intervals: each cell's step times (all its ok repeats, pooled) give a bootstrap interval of their
median (trainkit.engine.measure.conditions.noise_of); a throughput ratio's interval takes the worst case of
its two cells' intervals (INTERVAL_NOTE). Older records without conditions are judged on what they
have: an efficiency of 2445 % is implausible whatever the host did.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import pandas as pd

from trainkit.engine.measure.conditions import condition_flags, median_intervals
from trainkit.engine.measure.flops import peak_flops_per_s
from trainkit.engine.spec.precision_facts import DTYPE_BYTES, PRECISION_FACTS

IMPLAUSIBLE_EFFICIENCY = 1.05
"""Weak-scaling efficiency above this is implausible: a few per cent of measurement slack, no more."""
PEAK_TOLERANCE = 1.05
"""A speedup may exceed speedup_bound by this factor (clock boost, measurement slack) before it is flagged."""
IMPLAUSIBLE_NOTE = (f"Implausible: a weak-scaling efficiency above {IMPLAUSIBLE_EFFICIENCY:.0%} (N ranks cannot do "
                    "more than N times one rank's work: the 1-rank cell was slowed), a speedup beyond what the "
                    "device's peak FLOP/s and bytes allow, a peak memory that does not grow with the batch.")
INTERVAL_NOTE = ("Intervals: 95 % bootstrap interval of each cell's median step time (its steps pooled over "
                 "repeats); a ratio's interval combines the two cells' intervals worst case. They hold the "
                 "step-to-step noise within a run, not a whole run slowed by a loaded host: the flags say that.")
NOISE_COLUMNS = ["step_time_median_s", "step_time_ci_low_s", "step_time_ci_high_s", "cell_flags"]
"""Columns cell_noise adds to each cell, and that a comparison carries from its reference cell."""


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _record_flags(ok: pd.DataFrame) -> list[list[str]]:
    """condition_flags of each record, from the tidy frame's flattened `conditions.` columns, and its
    harness_overhead_flag (an older record without them has none)."""
    harness = [[] if _missing(flag) or not flag else [str(flag)]
               for flag in (ok["harness_overhead_flag"] if "harness_overhead_flag" in ok else [None] * len(ok))]
    columns = [c for c in ok.columns if c.startswith("conditions.")]
    if not columns:
        return harness
    rows = ok[columns].rename(columns=lambda c: c.split(".", 1)[1]).to_dict("records")
    return [condition_flags({k: v for k, v in row.items() if not _missing(v)} or None) + own
            for row, own in zip(rows, harness)]


def _pooled(runs: pd.Series) -> list[float]:
    return [float(v) for run in runs if isinstance(run, list) for v in run if v is not None]


def cell_noise(ok: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell (`keys`) of ok records: the median of its step times, that median's interval, and the
    condition flags any of its records carries (NOISE_COLUMNS), indexed by the keys. A cell of one
    record that carries its interval keeps it; the others (older records, repeats pooled) are
    bootstrapped here, all in one go (median_intervals)."""
    def column(name: str) -> Any:
        return ok[name] if name in ok else pd.Series(None, index=ok.index, dtype=object)

    parts = ok[keys].assign(values=column("step_time_s.values"), low=column("noise.median_ci_low_s"),
                            high=column("noise.median_ci_high_s"), flags=_record_flags(ok))
    cells = parts.groupby(keys, dropna=False, sort=False).agg(
        times=("values", _pooled), records=("values", "size"), low=("low", "first"), high=("high", "first"),
        cell_flags=("flags", lambda s: list(dict.fromkeys(f for record in s for f in record))))
    lows, highs = pd.to_numeric(cells["low"], errors="coerce"), pd.to_numeric(cells["high"], errors="coerce")
    bounds = list(zip(lows, highs))
    redo = [i for i, (n, low, high) in enumerate(zip(cells["records"], lows, highs))
            if n != 1 or math.isnan(low) or math.isnan(high)]
    for i, (low, high) in zip(redo, median_intervals([cells["times"].iloc[i] for i in redo])):
        bounds[i] = (math.nan if low is None else low, math.nan if high is None else high)
    return pd.DataFrame({"step_time_median_s": [statistics.median(t) if t else math.nan for t in cells["times"]],
                         "step_time_ci_low_s": [low for low, _ in bounds],
                         "step_time_ci_high_s": [high for _, high in bounds],
                         "cell_flags": cells["cell_flags"]}, index=cells.index)


def ratio_interval(table: pd.DataFrame, value: str, suffix: str) -> tuple[pd.Series, pd.Series]:
    """The interval of a throughput ratio (`value`: this cell over its reference, whose columns carry
    `suffix`): throughput goes as 1 / step time, so the ratio moves by median/high .. median/low of
    this cell and the inverse of the reference's. NaN where either cell has no interval."""
    def factor(col_suffix: str, bound: str) -> pd.Series:
        median = pd.to_numeric(table[f"step_time_median_s{col_suffix}"], errors="coerce")
        return median / pd.to_numeric(table[f"step_time_ci_{bound}_s{col_suffix}"], errors="coerce")

    low = table[value] * factor("", "high") / factor(suffix, "low")
    high = table[value] * factor("", "low") / factor(suffix, "high")
    self_compared = table["cell"] == table[f"cell{suffix}"]  # the reference itself: no difference to judge
    return low.where(~self_compared), high.where(~self_compared)


def speedup_bound(hardware: object, precision: object, reference: str) -> float | None:
    """The largest speedup of `precision` over `reference` the device's physics allows: the ratio of
    their dense peak FLOP/s (trainkit.engine.measure.flops), or of the bytes their math reads where a
    memory-bound reference gains more from halving them (roofline: t = max(FLOPs/peak, bytes/bandwidth)).
    None where a peak is unknown (a CPU, an unlisted GPU): nothing to judge against."""
    if not isinstance(precision, str) or precision not in PRECISION_FACTS:
        return None
    peak, ref_peak = peak_flops_per_s(str(hardware), precision), peak_flops_per_s(str(hardware), reference)
    if peak is None or ref_peak is None:
        return None
    bytes_ratio = DTYPE_BYTES[PRECISION_FACTS[reference].compute_dtype] / DTYPE_BYTES[
        PRECISION_FACTS[precision].compute_dtype]
    return max(peak / ref_peak, bytes_ratio)


def memory_flat(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per row, a flag when its peak memory does not grow over the cell that differs from it only in
    the next smaller batch size (activations grow with the batch); else ""."""
    out = pd.Series("", index=table.index, dtype=object)
    measured = table[table["peak_memory_mib"].notna()].sort_values([*keys, "batch_size"])
    smaller = measured.groupby(keys, dropna=False, sort=False)[["batch_size", "peak_memory_mib"]].shift(1)
    grew = measured["peak_memory_mib"] > smaller["peak_memory_mib"]
    flat = (measured["batch_size"] > smaller["batch_size"]).fillna(False).astype(bool) & ~grew
    for index, batch, mib, smaller_batch, smaller_mib in zip(
            measured.index[flat], measured.loc[flat, "batch_size"], measured.loc[flat, "peak_memory_mib"],
            smaller.loc[flat, "batch_size"], smaller.loc[flat, "peak_memory_mib"]):
        out[index] = (f"implausible: peak memory does not grow with the batch (batch {int(smaller_batch)}: "
                      f"{smaller_mib:,.1f} MiB, batch {int(batch)}: {mib:,.1f} MiB)")
    return out


TIMING_COLUMNS = ("throughput_samples_per_s", "speedup_vs_fp32", "speedup_vs_tf32", "weak_scaling_efficiency")


def _ratio_flags(row: Mapping[str, Any], column: str, reference: str) -> list[tuple[str, set[str]]]:
    value, low, high = row.get(column), row.get(f"{column}_low"), row.get(f"{column}_high")
    if _missing(value):
        return []
    flags = []
    bound = speedup_bound(row["hardware"], row["precision"], reference) if column.startswith("speedup") else None
    if bound is not None and value > bound * PEAK_TOLERANCE:
        flags.append((f"implausible: {value:.2f}× {reference}, beyond the {bound:.1f}× its peaks allow", {column}))
    if not _missing(low) and not _missing(high) and low <= 1.0 <= high:
        what = (f"weak scaling interval {low:.0%}–{high:.0%} holds 100 %" if column == "weak_scaling_efficiency"
                else f"vs {reference} interval {low:.2f}–{high:.2f}× holds 1×")
        flags.append((f"within noise: {what}", set()))  # not in doubt, only not a difference: no mark
    return flags


def judge(row: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """Every flag of one summary row (module docstring), implausible ones first, and the columns
    whose figure they put in doubt (the page and the Markdown mark those)."""
    flags: list[tuple[str, set[str]]] = []
    efficiency = row.get("weak_scaling_efficiency")
    if not _missing(efficiency) and efficiency > IMPLAUSIBLE_EFFICIENCY:
        flags.append((f"implausible: weak scaling {efficiency:.0%} > {IMPLAUSIBLE_EFFICIENCY:.0%}",
                      {"weak_scaling_efficiency"}))
    flags += _ratio_flags(row, "speedup_vs_fp32", "fp32")
    flags += _ratio_flags(row, "speedup_vs_tf32", "tf32")
    flags += _ratio_flags(row, "weak_scaling_efficiency", "1 rank")
    if row.get("memory_flat"):
        flags.append((row["memory_flat"], {"peak_memory_mib"}))
    own = row.get("cell_flags")
    flags += [(flag, set(TIMING_COLUMNS)) for flag in (own if isinstance(own, list) else [])]
    for suffix, name, column in (("_fp32", "fp32", "speedup_vs_fp32"), ("_1gpu", "1-rank", "weak_scaling_efficiency")):
        reference = row.get(f"cell_flags{suffix}")
        if isinstance(reference, list) and reference and row.get(f"cell{suffix}") != row.get("cell"):
            flags.append((f"its {name} reference: {reference[0]}", {column}))
    flags.sort(key=lambda f: not f[0].startswith("implausible"))
    return [text for text, _ in flags], {c for _, columns in flags for c in columns}
