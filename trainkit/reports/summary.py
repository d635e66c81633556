"""The summary table: one row per cell, medians over its ok repeats, compared with fp32 and with 1 GPU.

Columns (CSV names; units in the names):

    model, hardware, gpus, batch_size, grad_accum, effective_batch, precision, variant
    status                    ok when any repeat finished, else the status of the last one
    repeats                   ok records combined (median) into the row
    throughput_samples_per_s  global samples per second at the median step time: the effective batch over
                              the median of the cell's step times (its ok repeats pooled), the statistic
                              its interval is of (a mean would let one slow step move it)
    speedup_vs_fp32           throughput over that of the fp32 cell of the same shape; measured in rounds
                              (bench --repeats N), the median of the per-round ratios (trainkit.reports.flags)
    loss_steps                optimizer steps the cell's loss curve holds (warmup included): the losses
                              below are "after N steps", and headers say so
    final_loss, loss_diff_vs_fp32   loss of the last step, and minus the fp32 cell's; the difference is
                              left out (NaN) for cells shorter than MIN_LOSS_COMPARISON_STEPS, where it
                              measures how fast a loss falls, not where it ends. It is one seed either way:
                              loss parity between precisions, against fp32's seed noise, is the job of
                              `python -m trainkit parity` (PARITY_POINTER)
    peak_memory_mib, memory_measure  the headline memory measure of the cell's ok records, the one the
                              gate compares (trainkit.engine.spec.schema.headline_memory); MiB = 2**20 B
    skipped_steps             optimizer steps GradScaler skipped (modes with dynamic loss scaling only)
    weak_scaling_efficiency   thr_N / (N * thr_1) for the same per-GPU batch and accumulation (N > 1), per
                              round where both ran in rounds
    speedup_vs_fp32_low, _high, weak_scaling_efficiency_low, _high   their 95 % intervals (trainkit.reports.flags);
                              empty below 6 rounds (paired) or 6 steps a cell (unpaired)
    speedup_vs_fp32_rounds    the rounds the speedup is paired over (0: the cells ran in no common rounds)
    step_time_median_s, step_time_ci_low_s, step_time_ci_high_s   the median of the cell's step times
                              (its ok repeats pooled) and its order-statistic interval
    flags                     why a figure of the row should not be believed as printed: implausible,
                              measured on a loaded host, or within noise (trainkit.reports.flags), "; "-joined
    flagged_figures           the columns those flags put in doubt (marked ⚠ in the page and Markdown)

Columns only present when some record has them (a CPU run has no MFU and no energy):

    speedup_vs_tf32           when tf32 cells exist: NVIDIA's published AMP speedups are over TF32
    mfu                       model FLOPs utilisation: achieved FLOP/s over the device's peak for the dtype
    energy_j_per_sample       joules per training sample over the timed steps (all GPUs of the cell)
    phase_data_s, phase_forward_s, phase_backward_s, phase_optimizer_s, data_share
                              the phase breakdown: median seconds per optimizer step spent waiting for
                              data, in forward, backward and the optimizer step, and data's share of
                              the step (CSV only: the page draws them in its profile section)

"Same shape" = same model, hardware, GPU count, micro-batch, accumulation and shared variant.
"""

from __future__ import annotations

import math

import pandas as pd

from trainkit.engine.spec.precision_facts import display_rank
from trainkit.engine.spec.schema import HEADLINE_MEMORY, MEMORY_NAMES, headline_memory

from . import flags as judged
from .load import PHASES

MIB = 2**20
MIN_LOSS_COMPARISON_STEPS = 200
"""Fewest optimizer steps of a cell whose loss the summary compares with fp32's: before it the
synthetic tasks' losses still fall steeply (`trainkit parity` trains 250-300 steps on a CPU to
flatten them), so a difference says which precision descends faster, and pure fp16 Adam, whose
second moment underflows into a larger step, looks better than fp32."""
PARITY_POINTER = ("Losses are one seed's, after the optimizer steps the header gives; the difference from fp32 is "
                  f"left out for cells of fewer than {MIN_LOSS_COMPARISON_STEPS} steps, and is no verdict even then. "
                  "Whether a precision reaches fp32's loss, against fp32's seed noise, and how fast in wall-clock "
                  "time: `python -m trainkit parity` (README, \"Loss parity\").")
KEYS = ["model", "hardware", "variant", "gpus", "batch_size", "grad_accum", "effective_batch",
        "precision", "precision_variant", "cell"]
SHAPE = ["model", "hardware", "variant", "gpus", "batch_size", "grad_accum"]
GROUP = ["model", "hardware", "gpus"]  # one table per group in HTML and Markdown
COLUMNS = ["model", "hardware", "gpus", "batch_size", "grad_accum", "effective_batch", "precision", "variant",
           "status", "repeats", "throughput_samples_per_s", "speedup_vs_fp32", "loss_steps", "final_loss",
           "loss_diff_vs_fp32",
           "peak_memory_mib", "memory_measure", "skipped_steps", "weak_scaling_efficiency",
           "speedup_vs_fp32_low", "speedup_vs_fp32_high", "speedup_vs_fp32_rounds", "weak_scaling_efficiency_low",
           "weak_scaling_efficiency_high", "step_time_median_s", "step_time_ci_low_s", "step_time_ci_high_s",
           "flags", "flagged_figures"]
PHASE_COLUMNS = [*(f"phase_{p}_s" for p in PHASES), "data_share"]


def _precision_rank(precision: pd.Series) -> pd.Series:
    return precision.map(display_rank)


def _memory(records: pd.DataFrame) -> pd.Series:
    """The headline memory measure of one cell's ok records (the one the gate compares: a measure
    every repeat has) and its median."""
    memories = [dict(zip(HEADLINE_MEMORY, values)) for values in records.itertuples(index=False)]
    measure = headline_memory(memories)
    peak = records[f"memory.{measure}"].median() if measure else math.nan
    return pd.Series({"memory_measure": measure, "peak_memory_bytes": peak}, dtype=object)


def cells(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (KEYS): medians over its ok records; cells with no ok record keep NaN."""
    # Only dynamic loss scaling can skip a step; elsewhere "0 skipped" would suggest a scaler exists.
    frame = frame.assign(skipped=frame["scaler.skipped_steps_total"].where(frame["scaler.enabled"].eq(True)),
                         loss_steps=frame["loss.curve"].map(lambda c: len(c) if isinstance(c, list) else math.nan))
    if "config.torch_num_threads" not in frame:  # records that do not say (a GPU stand-in, older files)
        frame = frame.assign(**{"config.torch_num_threads": math.nan})
    latest = frame.sort_values("finished_at", na_position="first").groupby(KEYS, dropna=False, sort=False)
    table = latest.agg(last_status=("status", "last"), any_ok=("status", lambda s: bool((s == "ok").any())))
    ok = frame[frame["status"] == "ok"]
    medians = ok.groupby(KEYS, dropna=False, sort=False).agg(
        repeats=("status", "size"),
        final_loss=("loss.final", "median"),
        loss_steps=("loss_steps", "max"),
        skipped_steps=("skipped", "median"),
        mfu=("mfu", "median"),
        energy_j_per_sample=("energy_j_per_sample", "median"),
        data_share=("profile.data_share", "median"),
        threads_per_rank=("config.torch_num_threads", "median"),
        **{f"phase_{p}_s": (f"profile.phases_s.{p}", "median") for p in PHASES},
    )
    memory = (ok.groupby(KEYS, dropna=False, sort=False)[[f"memory.{m}" for m in HEADLINE_MEMORY]].apply(_memory)
              .reindex(columns=["memory_measure", "peak_memory_bytes"]))  # the columns, also with no ok record
    table = table.join(medians).join(memory).join(judged.cell_noise(ok, KEYS)).reset_index()
    table["throughput_samples_per_s"] = table["throughput_median"]  # the statistic its interval is of
    table["peak_memory_bytes"] = pd.to_numeric(table["peak_memory_bytes"], errors="coerce")
    table["status"] = table["last_status"].where(~table["any_ok"], "ok")
    table["repeats"] = table["repeats"].fillna(0).astype(int)
    table["peak_memory_mib"] = table["peak_memory_bytes"] / MIB
    table["loss_steps"] = pd.to_numeric(table["loss_steps"], errors="coerce").astype("Int64")
    return table.drop(columns=["last_status", "any_ok"])


def _versus(table: pd.DataFrame, on: list[str], where: pd.Series, suffix: str) -> pd.DataFrame:
    """Each row joined with the reference row (the row matching `where`) of the same `on` keys."""
    reference = table.loc[where, on + ["final_loss", "loss_steps", "cell", "threads_per_rank", *judged.NOISE_COLUMNS]]
    reference = reference.drop_duplicates(subset=on)  # precision variants of the reference: first wins
    return table.merge(reference, on=on, how="left", suffixes=("", suffix))


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The summary table (module docstring) of a tidy frame, sorted for reading."""
    table = cells(frame)
    fp32 = (table["precision"] == "fp32") & (table["status"] == "ok")
    table = _versus(table, SHAPE, fp32, "_fp32")
    _ratio(table, "speedup_vs_fp32", "_fp32")
    shortest = table[["loss_steps", "loss_steps_fp32"]].astype(float).min(axis=1, skipna=False)
    long_enough = shortest >= MIN_LOSS_COMPARISON_STEPS  # NaN (a cell without a curve) is not
    table["loss_diff_vs_fp32"] = (table["final_loss"] - table["final_loss_fp32"]).where(long_enough)
    columns = list(COLUMNS)
    tf32 = (table["precision"] == "tf32") & (table["status"] == "ok")
    if tf32.any():
        table = _versus(table, SHAPE, tf32, "_tf32")
        _ratio(table, "speedup_vs_tf32", "_tf32")
        columns.insert(columns.index("speedup_vs_fp32") + 1, "speedup_vs_tf32")
        at = columns.index("speedup_vs_fp32_high") + 1
        columns[at:at] = ["speedup_vs_tf32_low", "speedup_vs_tf32_high"]
    one_gpu = (table["gpus"] == 1) & (table["status"] == "ok")
    per_gpu = ["model", "hardware", "variant", "batch_size", "grad_accum", "precision", "precision_variant"]
    table = _versus(table, per_gpu, one_gpu, "_1gpu")
    _ratio(table, "weak_scaling_efficiency", "_1gpu", per=table["gpus"].astype(float))
    for column in ("weak_scaling_efficiency", "weak_scaling_efficiency_low", "weak_scaling_efficiency_high"):
        table[column] = table[column].where(table["gpus"] > 1)
    table = _judge(table, columns)
    table["variant"] = (table["variant"] + " " + table["precision_variant"]).str.strip()
    # Present when any cell has them: a CPU run has neither MFU nor energy, a run with
    # --phase-steps 0 no phases; a column of blanks would say "measured, nothing there".
    for column, before in (("mfu", "loss_steps"), ("energy_j_per_sample", "skipped_steps")):
        if table[column].notna().any():
            columns.insert(columns.index(before), column)
    columns += [c for c in PHASE_COLUMNS if table[c].notna().any()]
    table = table.assign(_rank=_precision_rank(table["precision"]))
    table = table.sort_values(["model", "hardware", "gpus", "batch_size", "grad_accum", "_rank", "variant"])
    return table[columns].reset_index(drop=True)


def _ratio(table: pd.DataFrame, column: str, suffix: str, per: pd.Series | None = None) -> None:
    """`column` and its `_low`, `_high` and `_rounds`: the row's throughput over its reference's
    (judged.compare: paired by round where both ran in rounds), divided by `per` (N ranks' ideal)."""
    ratio = judged.compare(table, suffix)
    scale = 1.0 if per is None else per
    table[column], table[f"{column}_low"], table[f"{column}_high"] = (
        ratio["ratio"] / scale, ratio["low"] / scale, ratio["high"] / scale)
    compared = ratio["ratio"].notna() & (table["cell"] != table[f"cell{suffix}"])  # the reference's own row: none
    table[f"{column}_rounds"] = ratio["rounds"].where(compared)


def _judge(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each row's flags (trainkit.reports.flags)."""
    same_but_batch = ["model", "hardware", "variant", "gpus", "grad_accum", "precision", "precision_variant"]
    table["memory_flat"] = judged.memory_flat(table, same_but_batch)
    verdicts = [judged.judge(row) for row in table.to_dict("records")]
    table["flags"] = [judged.FLAG_SEPARATOR.join(flags) for flags, _ in verdicts]
    table["flagged_figures"] = [" ".join(sorted(c for c in suspect if c in columns)) for _, suspect in verdicts]
    return table


# --- formatting, shared by the HTML page and the Markdown file ---------------------------------

TEXT_HEADERS = ("precision", "variant", "status", "measured as", "flags")  # left-aligned; the rest are numbers
FLAG_MARK = "⚠"
"""Follows a figure that the row's flags put in doubt: implausible, or measured on a loaded host."""
FLAG_LEGEND = (f"{FLAG_MARK} marks a figure its row's flags put in doubt (physically implausible, or measured "
               "on a loaded host); a ratio's 95 % interval follows it in brackets, and a difference whose "
               f"interval holds no difference is flagged within noise. {judged.IMPLAUSIBLE_NOTE} "
               f"{judged.INTERVAL_NOTE}")
INTERVAL_COLUMNS = ("speedup_vs_fp32", "speedup_vs_tf32", "weak_scaling_efficiency")
"""Figures printed with their interval (their `_low` and `_high` columns)."""
HEADERS = {
    "batch_size": "batch", "grad_accum": "accum", "effective_batch": "eff. batch",
    "throughput_samples_per_s": "samples/s", "speedup_vs_fp32": "vs fp32", "speedup_vs_tf32": "vs tf32",
    "final_loss": "final loss", "loss_diff_vs_fp32": "Δ loss vs fp32", "loss_steps": "steps",
    "peak_memory_mib": "peak MiB",
    "memory_measure": "measured as", "skipped_steps": "skipped steps",
    "weak_scaling_efficiency": "weak scaling", "mfu": "MFU", "energy_j_per_sample": "J/sample",
}


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def mfu_text(value: float) -> str:
    """MFU as a percentage to three digits: a small model's MFU can be far below 1 %."""
    return f"{value * 100:.3g}%" if value >= 1e-4 else "<0.01%"


def _fmt(column: str, value: object) -> str:
    if _missing(value):
        return "–"
    if column == "throughput_samples_per_s":
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    if column.startswith("speedup"):
        return f"{value:.2f}×"
    if column == "final_loss":
        return f"{value:.4f}"
    if column == "loss_diff_vs_fp32":
        return f"{value:+.4f}"
    if column == "peak_memory_mib":
        return f"{value:,.0f}"
    if column == "weak_scaling_efficiency":
        return f"{value:.0%}"
    if column == "mfu":
        return mfu_text(value)
    if column == "energy_j_per_sample":
        return f"{value:.3g}"
    if column in ("skipped_steps", "loss_steps"):
        return f"{value:g}"
    if column == "memory_measure":
        return MEMORY_NAMES.get(str(value), str(value))
    return str(value)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as display strings, under short headers, without the group columns and the phase
    columns (the page's profile section draws those). Columns with nothing to say in these rows are
    left out, and a memory measure shared by all rows moves into the header."""
    headers = dict(HEADERS)
    measures = table["memory_measure"].dropna().unique()
    hidden = set(GROUP) | set(PHASE_COLUMNS)
    if len(measures) <= 1:
        hidden.add("memory_measure")
        if len(measures) == 1:
            headers["peak_memory_mib"] = f"peak MiB ({_fmt('memory_measure', measures[0])})"
    if not (table["variant"] != "").any():
        hidden.add("variant")
    steps = table["loss_steps"].dropna().unique()
    if len(steps) == 1:  # one length for every row: the loss headers say it, no column needed
        hidden.add("loss_steps")
        headers["final_loss"] = f"loss after {steps[0]:g} steps"
        headers["loss_diff_vs_fp32"] = f"Δ loss vs fp32 after {steps[0]:g} steps"
    else:
        headers["final_loss"] = "loss after steps"
    for column in ("skipped_steps", "weak_scaling_efficiency", "speedup_vs_tf32", "mfu", "energy_j_per_sample",
                   "loss_diff_vs_fp32"):
        if column in table and table[column].isna().all():  # no dynamic scaler, one GPU count, no tf32, a CPU
            hidden.add(column)
    hidden |= {c for c in table.columns if c.endswith(("_low", "_high", "_rounds")) or c.startswith("step_time_")}
    hidden.add("flagged_figures")
    if "flags" in table and not table["flags"].astype(bool).any():
        hidden.add("flags")
    shown = [c for c in table.columns if c not in hidden]
    return pd.DataFrame({headers.get(c, c): _texts(table, c) for c in shown}, index=table.index)


def _texts(table: pd.DataFrame, column: str) -> list[str]:
    """A column's display strings: a ratio with its interval, a figure in doubt with FLAG_MARK."""
    texts = [_fmt(column, v) for v in table[column]]
    if column in INTERVAL_COLUMNS and f"{column}_low" in table:
        bound = "{:.0%}" if column == "weak_scaling_efficiency" else "{:.2f}"
        rounds = table[f"{column}_rounds"] if f"{column}_rounds" in table else [math.nan] * len(table)
        texts = [_with_interval(text, bound, low, high, n)
                 for text, low, high, n in zip(texts, table[f"{column}_low"], table[f"{column}_high"], rounds)]
    if "flagged_figures" in table and table["flagged_figures"].str.contains(column, regex=False).any():
        texts = [f"{text} {FLAG_MARK}" if column in str(doubted).split() else text
                 for text, doubted in zip(texts, table["flagged_figures"])]
    return texts


def _with_interval(text: str, bound: str, low: object, high: object, rounds: object) -> str:
    """A ratio's text with its interval and, when paired by round, the rounds: "1.25× (1.20–1.31, 8
    rounds)", "0.65× (3 rounds, no interval)"."""
    paired = not _missing(rounds) and rounds > 0
    if not _missing(low) and not _missing(high):
        return f"{text} ({bound.format(low)}–{bound.format(high)}{f', {int(rounds)} rounds' if paired else ''})"
    return f"{text} ({int(rounds)} rounds, no interval)" if paired and text else text


def groups(table: pd.DataFrame) -> list[tuple[dict[str, object], pd.DataFrame]]:
    """(model, hardware, gpus) groups in reading order, each with its rows."""
    out = []
    for key, rows in table.groupby(GROUP, sort=False, dropna=False):
        out.append((dict(zip(GROUP, key)), rows))
    return out


def ranks_label(gpus: object, hardware: object) -> str:
    """ "2 GPUs", or "2 ranks" on a CPU, where the ranks are processes."""
    unit = "rank" if str(hardware).startswith("CPU") else "GPU"
    return f"{gpus} {unit}{'' if gpus == 1 else 's'}"


def group_title(group: dict[str, object]) -> str:
    return f"{group['model']} · {group['hardware']} · {ranks_label(group['gpus'], group['hardware'])}"


def to_markdown(table: pd.DataFrame) -> str:
    """The summary as Markdown: a heading and a table per group (for READMEs and issue comments)."""
    parts = ["# trainkit summary", "", PARITY_POINTER, "", FLAG_LEGEND, "", judged.flag_share_sentence(table), ""]
    for group, rows in groups(table):
        shown = formatted(rows)
        parts += [f"## {group_title(group)}", "",
                  "| " + " | ".join(shown.columns) + " |",
                  "|" + "|".join("---" if c in TEXT_HEADERS else "---:" for c in shown.columns) + "|"]
        parts += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
        parts.append("")
    return "\n".join(parts)

