"""Records -> one tidy pandas frame: one row per record, dot-flattened keys ("memory.host_rss_peak_bytes").

A few short columns are added so the tables and figures read plainly:

    model, precision, batch_size, grad_accum, gpus, effective_batch   the matrix axes (from config)
    hardware          GPU model or "CPU <model>" (see records.hardware)
    variant           config fields besides the axes where a record departs from the usual value
                      among the records of its model ("lr=1e+06", "steps=10", "timing_method=window":
                      every field that changes a figure, and how the steps were timed, so a 10-step run
                      is never averaged with a 300-step one, nor `trainkit run`'s windows with bench's
                      rounds), else ""; precision_variant: the
                      same for fields that only one precision reads (init_scale of amp-fp16). The
                      axes after the first five (trainkit.engine.spec.axes) lead it where they are not at
                      their defaults ("compiled ac alloc=expandable_segments:True"), so charts and
                      comparisons keep compiled and eager, checkpointed and not, apart
    compiled, activation_checkpointing, alloc_conf   those axes, one column each (older records: the defaults)
    eager_variant     the variant without "compiled": a compiled cell's eager twin has it too
    cell              cell_id plus the variants: the key that repeats of one cell share
    peak_memory_bytes the record's headline memory measure, named in memory_measure
                      (trainkit.engine.spec.schema.headline_memory; the summary picks one per cell the same way)
    run, source       which input file the record came from

The profile of a cell flattens the same way ("profile.phases_s.data", "profile.trace_file",
"gpu_samples.sm_clock_mhz.median"); a record profiled with no result has only "profile.error",
and one not profiled has none of them (the columns exist, empty).

Every numeric field may be null (a cell that failed has no throughput; a CPU run has no GPU
memory), so numeric columns are floats with NaN, and code downstream never assumes a value.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from trainkit.engine.spec import axes
from trainkit.engine.spec.precision_facts import loss_scaling_of
from trainkit.engine.spec.schema import HEADLINE_MEMORY, headline_memory

from .records import UNKNOWN_HARDWARE, Run, all_records, hardware
from .verdict import timing_method

# The phases of an optimizer step, in the order they run (trainkit.engine.cell.profile.PHASES, without its
# torch import).
PHASES = ("data", "forward", "backward", "optimizer")
NUMERIC = ("throughput_samples_per_s", "effective_throughput_samples_per_s", "tokens_per_s",
           "step_time_s.median", "step_time_s.iqr", "loss.final", "loss.initial", "loss.eval",
           "scaler.final_scale", "scaler.init_scale", "scaler.skipped_steps", "scaler.skipped_steps_total",
           "mfu", "peak_flops_per_s", "energy_j_per_sample", *(f"memory.{m}" for m in HEADLINE_MEMORY),
           *(f"profile.phases_s.{p}" for p in PHASES), "profile.phase_total_s", "profile.phase_steps",
           "profile.data_share", "profile.reduced_precision_share", "profile.trace_steps",
           *(f"gpu_samples.sm_clock_mhz.{s}" for s in ("min", "median", "max")), "gpu_samples.temperature_c_max",
           "gpu_samples.power_w_mean", "compile.compile_time_s", "compile.recompiles", "compile.graphs",
           "precision_details.converted_linear_flop_share", "memory.allocator.fragmentation_bytes",
           "memory.allocator.num_alloc_retries", "memory.allocator.num_ooms")
# Other columns the report reads; created empty when no record has them (a file of refused cells).
OTHER = ("cell_id", "status", "status_detail", "finished_at", "run", "source", "loss.curve", "memory.nvml_method",
         "scaler.enabled", "energy_method", "throttled", "gpu_samples.throttle_reasons", "profile.error",
         "profile.phase_method", "profile.data_bound", "profile.top_ops", "profile.time_basis", "profile.trace_file",
         "profile.memory_snapshot_file", "profile.memory_snapshot_note", "compile.mode", "compile.compile_time_method",
         "precision_details.recipe", "precision_details.converted_layers", "precision_details.skipped_layers",
         "memory.allocator.settings_in_effect", "memory.allocator.method", "what_ran.rows")


# Config fields that change the work besides the five axes, with the records they matter to: a
# field outside its scope (init_scale of an fp32 cell, seq_len of a ResNet) never splits cells.
SHARED_FIELDS = {
    "optimizer": None, "lr": None, "weight_decay": None, "schedule": None, "clip_grad_norm": None,
    "data": None, "momentum": lambda r: r.get("config.optimizer") == "sgd",
    "resolved_image_size": lambda r: r.get("model") != "gpt",
    **{k: (lambda r: r.get("model") == "gpt") for k in ("seq_len", "vocab_size", "gpt_layers", "gpt_heads",
                                                         "gpt_width")},
    # Fields that move a figure as much as the work does (trainkit.reports.verdict.FIGURE_FIELDS):
    # the steps and seed the final loss, main gradients memory and speed, cuDNN's autotuning the
    # kernels, the threads a CPU cell's speed; and how the steps were timed (bench's rounds or
    # trainkit run's windows), which is the record's, not the config's.
    **{k: None for k in ("steps", "warmup_steps", "seed", "fp32_main_grads", "cudnn_benchmark", "cpu_threads")},
    "timing_method": lambda r: isinstance(r.get("config.timing_method"), str),  # a cell that ran was timed
}
# Fields that only one precision reads: they split cells of that precision, but its comparison
# with fp32 still pairs it with the fp32 cell of the same shared variant.
PRECISION_FIELDS = {
    "init_scale": lambda r: loss_scaling_of(r.get("precision")) == "dynamic",
    "static_loss_scale": lambda r: loss_scaling_of(r.get("precision")) == "static",
}


def _label(key: str, value: Any) -> str:
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"


def _variants(frame: pd.DataFrame, fields: dict[str, Any]) -> pd.Series:
    """Per record, "field=value" for each field (in scope) where the record departs from the most
    common value among the records of its model; "" for the usual records."""
    columns = ["model", "precision", "config.optimizer", *(f"config.{f}" for f in fields)]
    rows = frame[[c for c in dict.fromkeys(columns) if c in frame]].to_dict("records")
    labels: list[list[str]] = [[] for _ in rows]
    for model in frame["model"].dropna().unique():
        members = [i for i, r in enumerate(rows) if r["model"] == model]
        for field, in_scope in fields.items():
            column = f"config.{field}"
            scoped = [i for i in members if column in rows[i] and (in_scope is None or in_scope(rows[i]))]
            values = Counter(repr(rows[i][column]) for i in scoped)
            if len(values) > 1:
                usual = values.most_common(1)[0][0]  # the usual value goes without saying
                for i in scoped:
                    if repr(rows[i][column]) != usual:
                        labels[i].append(_label(field, rows[i][column]))
    return pd.Series([" ".join(parts) for parts in labels], index=frame.index, dtype=object)


def _flatten(record: dict[str, Any], prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"memory": {"host_rss_peak_bytes": 1}} -> {"memory.host_rss_peak_bytes": 1}; lists stay whole.
    (pandas.json_normalize does the same, but deep-copies every record: seconds for 1,000.)"""
    out = {} if out is None else out
    for key, value in record.items():
        if key == "nvml_samples":
            continue  # long, and not read by the report
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        else:
            out[prefix + key] = value
    return out


def _hardware(frame: pd.DataFrame, records: list[dict[str, Any]]) -> pd.Series:
    """records.hardware per record; a record without an environment (a cell refused before its
    worker reported one) takes the hardware of the other records of its run, when they agree."""
    labels = pd.Series([hardware(r.get("env")) for r in records], index=frame.index, dtype=object)
    known = labels != UNKNOWN_HARDWARE
    for run, group in labels[known].groupby(frame.loc[known, "run"]):
        if group.nunique() == 1:
            labels[(frame["run"] == run) & ~known] = group.iloc[0]
    return labels


def to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The tidy frame of a list of records (see the module docstring)."""
    frame = pd.DataFrame([_flatten(r) for r in records])
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else float("nan")
    for column in OTHER:
        if column not in frame:
            frame[column] = None
    config = {**{axis.name: f"config.{axis.field}" for axis in axes.AXES[:axes.FIXED_PART]},
              "effective_batch": "config.effective_batch"}
    for short, column in config.items():
        frame[short] = frame[column] if column in frame else None
    for short in ("batch_size", "grad_accum", "gpus", "effective_batch"):
        frame[short] = pd.to_numeric(frame[short], errors="coerce").astype("Int64")
    frame["hardware"] = _hardware(frame, records)
    frame["config.timing_method"] = pd.Series([timing_method(r) if r.get("status") == "ok" else None
                                               for r in records], index=frame.index, dtype=object)
    # A field that is also a matrix axis (a plugin's) is labelled once, by its axis (_axes).
    axis_fields = {axis.field for axis in axes.optional_axes()}
    frame["variant"] = _variants(frame, {k: v for k, v in SHARED_FIELDS.items() if k not in axis_fields})
    frame["precision_variant"] = _variants(frame, PRECISION_FIELDS)
    label = (frame["variant"] + " " + frame["precision_variant"]).str.strip()
    frame["cell"] = frame["cell_id"].where(label == "", frame["cell_id"] + " " + label)
    _axes(frame)  # after `cell`: the cell id names these axes already

    measures = [headline_memory([r.get("memory")]) for r in records]
    frame["memory_measure"] = pd.Series(measures, index=frame.index, dtype=object)
    frame["peak_memory_bytes"] = [frame.at[i, f"memory.{m}"] if m else float("nan")
                                  for i, m in zip(frame.index, measures)]
    return frame


def _config_values(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Each record's config values by field, None where the record has none (NaN in the frame), and
    each axis's default where a record from before the axis existed lacks it."""
    columns = [c for c in frame.columns if c.startswith("config.")]
    rows = [{k[len("config."):]: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in frame[columns].to_dict("records")]
    for row in rows:
        row.update({axis.field: axis.value(row) for axis in axes.AXES})
    return rows


def _axes(frame: pd.DataFrame) -> None:
    """The axes after the id's fixed part (trainkit.engine.spec.axes) as columns, and their words in the
    variant; eager_variant leaves out the compile axis's, so a compiled cell and its eager twin share it."""
    rows = _config_values(frame)
    words, eager_words = [[] for _ in rows], [[] for _ in rows]
    for axis in axes.optional_axes():
        values = [row[axis.field] for row in rows]
        kind = bool if isinstance(axis.default, bool) else object
        frame[axis.report_column] = pd.Series([kind(v) if kind is bool else v for v in values], index=frame.index,
                                              dtype=kind)
        for row, own, eager in zip(rows, words, eager_words):
            label = axis.label(row)
            own.append(label)
            if axis.name != "compile":
                eager.append(label)
    frame["eager_variant"] = pd.Series([" ".join(filter(None, [*e, v])) for e, v in zip(eager_words, frame["variant"])],
                                       index=frame.index, dtype=object)
    frame["variant"] = pd.Series([" ".join(filter(None, [*w, v])) for w, v in zip(words, frame["variant"])],
                                 index=frame.index, dtype=object)


def pooling(frame: pd.DataFrame) -> str:
    """What a report pooled: the cells whose repeats come from more than one input file, and the
    cell ids kept apart because their records differ in a field that changes a figure; "" when
    every cell's records come from one file and no id was split."""
    parts = []
    files = frame.groupby("cell")["source"].nunique()
    pooled = sorted(files[files > 1].index)
    if pooled:
        parts.append(f"{len(pooled)} cell(s) pool repeats from several files (same config and timing), "
                     f"e.g. {pooled[0]} from {files[pooled[0]]} files")
    split = frame.groupby("cell_id")["cell"].nunique()
    apart = sorted(split[split > 1].index)
    if apart:
        first = sorted(frame.loc[frame["cell_id"] == apart[0], "cell"].unique())
        parts.append(f"{len(apart)} cell id(s) kept apart as different cells, their records differing in a field "
                     f"that changes a figure, e.g. {' | '.join(first)}")
    return "; ".join(parts)


def load(runs: list[Run]) -> pd.DataFrame:
    return to_frame(all_records(runs))
