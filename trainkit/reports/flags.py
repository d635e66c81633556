"""Figures that cannot be right, and differences the noise does not support, flagged per cell.

The summary prints a figure plainly only when nothing speaks against it. A row's `flags` say why
it should not be believed as printed:

    implausible   a weak-scaling efficiency above IMPLAUSIBLE_EFFICIENCY (N ranks cannot do more
                  than N times one rank's work; more means the 1-rank cell was slowed), except
                  where the ranks split the 1-rank cell's CPU threads (a CPU's cores shared among
                  its ranks: then N single-thread ranks may well beat one rank of N threads on
                  small ops, and the row says so instead); a speedup
                  beyond what the device's peaks allow (speedup_bound); a peak memory that falls
                  (beyond MEMORY_FALL_TOLERANCE) below the cell that differs only in a smaller
                  batch. A flat peak is no fault: the optimizer phase or the weights hold the peak
                  of a small model at every batch (the estimator gives the MLP under amp-bf16 the
                  same peak at batch 16, 32 and 64), so only a fall says the figure is wrong
    conditions    other processes taking CPU time from the cell's cores while its threads waited
                  (never the cell's own ranks, threads, launcher or fork server), the host loaded
                  beyond its cores and the cell's threads, CPU steal, more threads than cores,
                  other processes on the GPUs (trainkit.engine.measure.conditions.condition_flags), of the
                  cell or of the cell it is compared with; a step so short that trainkit's own
                  overhead is more than 1 % of it (the record's harness_overhead_flag)
    within noise  a speedup or efficiency whose interval holds 1: the difference it states is
                  smaller than the noise of the two cells it compares

Figures and intervals rest on one statistic, the median step time. A cell's throughput is its
effective batch over the median of its step times (its ok repeats pooled), and its interval is that
median's order-statistic interval (trainkit.engine.measure.conditions.median_interval), null below 6 steps.
A ratio of two cells (a speedup, a weak-scaling efficiency, compiled over eager) is, where both ran
in the same rounds (bench --repeats N: every cell once, then every cell again), the median of its
per-round ratios with the interval of that median over rounds (trainkit.analysis.paired.paired_ratio;
none below 6 rounds): a machine that slowed during a round slows both cells and cancels. Without
rounds it is the ratio of the two medians with their intervals combined on the log scale
(paired.unpaired_ratio). Older records without conditions are judged on what they have: an
efficiency of 2445 % is implausible whatever the host did. The page says what share of
rows carries each kind of flag (flag_shares): a flag on every row is the machine's, not the row's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from trainkit.analysis.paired import MIN_ROUNDS_FOR_INTERVAL, paired_ratio, unpaired_ratio
from trainkit.engine.measure.conditions import MIN_STEPS_FOR_INTERVAL, condition_flags, median_intervals
from trainkit.engine.measure.flops import peak_flops_per_s
from trainkit.engine.spec.precision_facts import DTYPE_BYTES, PRECISION_FACTS

IMPLAUSIBLE_EFFICIENCY = 1.05
"""Weak-scaling efficiency above this is implausible: a few per cent of measurement slack, no more."""
SPLIT_THREADS_EFFICIENCY = 4.0
"""The bound where N ranks split the 1-rank cell's CPU threads: on a quiet 2-core host, one rank of 2
threads ran tiny half-precision GPT steps up to 2.3x slower per sample than a rank of 1 thread (weak
scaling 231 %); beyond 400 % the 1-rank cell was slowed (a loaded host gave 2,517 %)."""
IMPLAUSIBLE_SCALING = "implausible: weak scaling"
"""How a weak-scaling flag begins (the scaling chart counts rows by it)."""
NOT_COPIES = "not N copies of the 1-rank cell"
"""How the note of ranks that split the 1-rank cell's threads begins."""
PEAK_TOLERANCE = 1.05
"""A speedup may exceed speedup_bound by this factor (clock boost, measurement slack) before it is flagged."""
IMPLAUSIBLE_NOTE = (f"Implausible: a weak-scaling efficiency above {IMPLAUSIBLE_EFFICIENCY:.0%} (N ranks cannot do "
                    "more than N times one rank's work: the 1-rank cell was slowed; "
                    f"{SPLIT_THREADS_EFFICIENCY:.0%} where N ranks split one rank's CPU threads), a speedup beyond "
                    "what the "
                    "device's peak FLOP/s and bytes allow, a peak memory that falls as the batch grows.")
INTERVAL_NOTE = ("Throughput: the effective batch over the median step time; intervals: 95 %, of that median "
                 f"(order statistics, from {MIN_STEPS_FOR_INTERVAL} steps). A ratio measured in rounds (--repeats N) "
                 "is the median of its per-round ratios with that median's interval over rounds (from "
                 f"{MIN_ROUNDS_FOR_INTERVAL} rounds), else the ratio of the two medians with their intervals "
                 "combined. They hold the noise the steps and rounds show, not a whole run slowed by a loaded host: "
                 "the flags say that.")
NOISE_COLUMNS = ["step_time_median_s", "step_time_ci_low_s", "step_time_ci_high_s", "throughput_median",
                 "throughput_low", "throughput_high", "round_throughputs", "cell_flags"]
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


def _rounds(parts: pd.DataFrame, keys: list[str], index: pd.Index) -> pd.Series:
    """Each cell's throughput per round: effective batch over the round record's median step time
    (the median of them, should a round hold two records of the cell); None for a cell without rounds."""
    out = pd.Series(None, index=index, dtype=object)
    rounds = pd.to_numeric(parts["round"], errors="coerce")
    figure = pd.to_numeric(parts["batch"], errors="coerce") / pd.to_numeric(parts["median"], errors="coerce")
    usable = rounds.notna() & figure.gt(0) & np.isfinite(figure)
    if not usable.any():  # records from before rounds, or a run without --repeats: nothing to pair
        return out
    for cell, positions in parts[usable].groupby(keys, dropna=False, sort=False).indices.items():
        per_round: dict[int, list[float]] = {}
        for r, value in zip(rounds[usable].iloc[positions], figure[usable].iloc[positions]):
            per_round.setdefault(int(r), []).append(float(value))
        out[cell] = {r: statistics.median(v) for r, v in sorted(per_round.items())}
    return out


def cell_noise(ok: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell (`keys`) of ok records: the median of its step times (its records pooled) and that
    median's interval, the throughput they give (effective batch over the median, and over the
    interval's ends), its throughput per round where its records carry a round (bench --repeats N),
    and the condition flags any of its records carries (NOISE_COLUMNS), indexed by the keys. The
    intervals are made here from the step times, all cells alike (median_intervals)."""
    def column(name: str) -> Any:
        return ok[name] if name in ok else pd.Series(None, index=ok.index, dtype=object)

    parts = ok[keys].assign(values=column("step_time_s.values"), flags=_record_flags(ok),
                            round=column("round"), batch=column("config.effective_batch"),
                            median=column("step_time_s.median"))
    grouped = parts.groupby(keys, dropna=False, sort=False)
    cells = grouped.agg(times=("values", _pooled), batch=("batch", "first"),
                        cell_flags=("flags", lambda s: list(dict.fromkeys(f for record in s for f in record))))
    bounds = median_intervals(list(cells["times"]))
    median = pd.Series([statistics.median(t) if t else math.nan for t in cells["times"]], index=cells.index)
    low = pd.Series([math.nan if b[0] is None else b[0] for b in bounds], index=cells.index)
    high = pd.Series([math.nan if b[1] is None else b[1] for b in bounds], index=cells.index)
    batch = pd.to_numeric(cells["batch"], errors="coerce")
    rounds = _rounds(parts, keys, cells.index)
    return pd.DataFrame({"step_time_median_s": median, "step_time_ci_low_s": low, "step_time_ci_high_s": high,
                         "throughput_median": batch / median, "throughput_low": batch / high,
                         "throughput_high": batch / low, "round_throughputs": rounds,
                         "cell_flags": cells["cell_flags"]}, index=cells.index)


def compare(table: pd.DataFrame, suffix: str) -> pd.DataFrame:
    """Each row's throughput over that of its reference (whose columns carry `suffix`), with the
    ratio's interval: `ratio`, `low`, `high`, `rounds` (the rounds it is paired over, 0 unpaired) and
    `interval_note` (why there is no interval). Paired by round where the two cells share two rounds
    or more (paired.paired_ratio), else the ratio of their medians (paired.unpaired_ratio). NaN where
    either cell has no figure; a row compared with itself (the reference) has none to judge."""
    unpaired, low, high = unpaired_ratio(
        pd.to_numeric(table[f"throughput_median{suffix}"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(table[f"throughput_low{suffix}"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(table[f"throughput_high{suffix}"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(table["throughput_median"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(table["throughput_low"], errors="coerce").to_numpy(dtype=float),
        pd.to_numeric(table["throughput_high"], errors="coerce").to_numpy(dtype=float))
    out = pd.DataFrame({"ratio": unpaired, "low": low, "high": high, "rounds": 0, "interval_note": None},
                       index=table.index)
    out["interval_note"] = out["interval_note"].astype(object)
    for i, (own, reference) in enumerate(zip(table["round_throughputs"], table[f"round_throughputs{suffix}"])):
        shared = sorted(set(own) & set(reference)) if isinstance(own, dict) and isinstance(reference, dict) else []
        if len(shared) < 2:
            if not np.isnan(unpaired[i]) and np.isnan(low[i]):
                out.iloc[i, out.columns.get_loc("interval_note")] = (
                    f"no interval: a cell has fewer than {MIN_STEPS_FOR_INTERVAL} timed steps")
            continue
        paired = paired_ratio([reference[r] for r in shared], [own[r] for r in shared])
        out.iloc[i, :4] = [paired.ratio, np.nan if paired.low is None else paired.low,
                           np.nan if paired.high is None else paired.high, paired.n_rounds]
        out.iloc[i, 4] = paired.reason
    self_compared = table["cell"] == table[f"cell{suffix}"]  # the reference itself: no difference to judge
    out.loc[self_compared, ["low", "high"]] = np.nan
    out.loc[self_compared, "interval_note"] = None
    return out


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


MEMORY_FALL_TOLERANCE = 0.05
"""A larger batch's peak may read this share below a smaller one's before it is flagged: host RSS and
the allocator's block rounding move by a few per cent between processes."""
MEMORY_FALL_FLOOR_MIB = 1.0
"""...and by at least this much: a fall of less than a MiB is the reading's rounding, not a fault."""


def memory_flat(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Per row, a flag when its peak memory falls beyond the tolerance (MEMORY_FALL_TOLERANCE,
    MEMORY_FALL_FLOOR_MIB) below the cell that differs from it only in the next smaller batch size: a
    larger batch holds at least the smaller one's tensors; else "". A peak that stays flat is not
    flagged (module docstring)."""
    out = pd.Series("", index=table.index, dtype=object)
    measured = table[table["peak_memory_mib"].notna()].sort_values([*keys, "batch_size"])
    smaller = measured.groupby(keys, dropna=False, sort=False)[["batch_size", "peak_memory_mib"]].shift(1)
    fall = smaller["peak_memory_mib"] - measured["peak_memory_mib"]
    allowed = (smaller["peak_memory_mib"] * MEMORY_FALL_TOLERANCE).clip(lower=MEMORY_FALL_FLOOR_MIB)
    fell = (measured["batch_size"] > smaller["batch_size"]).fillna(False).astype(bool) & (fall > allowed).fillna(False)
    for index, batch, mib, smaller_batch, smaller_mib in zip(
            measured.index[fell], measured.loc[fell, "batch_size"], measured.loc[fell, "peak_memory_mib"],
            smaller.loc[fell, "batch_size"], smaller.loc[fell, "peak_memory_mib"]):
        out[index] = (f"implausible: peak memory falls as the batch grows (batch {int(smaller_batch)}: "
                      f"{smaller_mib:,.1f} MiB, batch {int(batch)}: {mib:,.1f} MiB)")
    return out


FLAG_SEPARATOR = "; "
"""Joins a row's flags in its `flags` column (no flag text holds it)."""


def flag_kind(flag: str) -> str:
    """The kind of one flag text, as the page counts them: its words before the first colon, the
    GPU-process flag by what it says, a reference's flag as the reference's."""
    if flag.startswith("its ") and " reference: " in flag:
        return "reference measured under load"
    if "on its GPUs" in flag:
        return "other processes on its GPUs"
    return flag.split(":", 1)[0] if ":" in flag else flag.split(" ", 2)[0] + " " + flag.split(" ", 2)[1]


def flag_shares(table: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(kind, rows carrying it, rows) for each flag kind some row carries, most frequent first: the
    page says how common each flag is, so a flag on every row reads as the machine's, not the row's."""
    counts: dict[str, int] = {}
    for joined in table["flags"].fillna("").astype(str) if "flags" in table else []:
        for kind in dict.fromkeys(flag_kind(f) for f in joined.split(FLAG_SEPARATOR) if f):
            counts[kind] = counts.get(kind, 0) + 1
    return sorted(((kind, n, len(table)) for kind, n in counts.items()), key=lambda k: (-k[1], k[0]))


def flag_share_sentence(table: pd.DataFrame) -> str:
    """One sentence: the share of rows carrying each flag kind (flag_shares), or that none carries one."""
    shares = flag_shares(table)
    if not shares:
        return f"Rows with each flag: none of the {len(table)} rows carries a flag."
    return "Rows with each flag: " + "; ".join(f"{kind} {n} of {total} ({n / total:.0%})".replace("%)", " %)")
                                               for kind, n, total in shares) + "."


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


def _threads_split(row: Mapping[str, Any]) -> str | None:
    """How the ranks split the 1-rank cell's CPU threads ("2 ranks x 1 thread against 1 x 2"), or None
    where each rank has as many threads as the 1-rank cell (or either count is unknown)."""
    mine, reference, ranks = row.get("threads_per_rank"), row.get("threads_per_rank_1gpu"), row.get("gpus")
    if _missing(mine) or _missing(reference) or _missing(ranks) or mine >= reference:
        return None
    return f"its {ranks:.0f} ranks x {mine:.0f} thread(s) split the 1-rank cell's {reference:.0f} threads"


def judge(row: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """Every flag of one summary row (module docstring), implausible ones first, and the columns
    whose figure they put in doubt (the page and the Markdown mark those)."""
    flags: list[tuple[str, set[str]]] = []
    efficiency = row.get("weak_scaling_efficiency")
    if not _missing(efficiency) and efficiency > IMPLAUSIBLE_EFFICIENCY:
        split = _threads_split(row)
        if split and efficiency <= SPLIT_THREADS_EFFICIENCY:  # a cause the row shows, no figure in doubt
            flags.append((f"{NOT_COPIES}: {split}, so weak scaling {efficiency:.0%} has no "
                          "100 % bound", set()))
        elif split:
            flags.append((f"{IMPLAUSIBLE_SCALING} {efficiency:.0%} > {SPLIT_THREADS_EFFICIENCY:.0%} even with "
                          f"{split}", {"weak_scaling_efficiency"}))
        else:
            flags.append((f"{IMPLAUSIBLE_SCALING} {efficiency:.0%} > {IMPLAUSIBLE_EFFICIENCY:.0%}",
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
