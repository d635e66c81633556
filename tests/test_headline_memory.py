"""One headline memory measure everywhere: `trainkit run`'s closing line, bench's closing table, the
report's summary and the regression gate show the same number, named, for a GPU record (PyTorch
reserved) and a CPU record (the cell's own RSS growth, or the worker's RSS in older records)."""

from __future__ import annotations

import pytest

from trainkit.bench.runner import TABLE_HEADER, table_row
from trainkit.commands.run import summary_line
from trainkit.engine.spec.schema import (
    HEADLINE_MEMORY,
    MEMORY_KEYS,
    MEMORY_NAMES,
    SCHEMA,
    check_record,
    headline_memory,
)
from trainkit.reports.verdict import compare_records

MiB, GiB = 2**20, 2**30
GPU = {"torch_max_allocated_bytes": 3 * GiB, "torch_max_reserved_bytes": 4 * GiB, "nvml_process_peak_bytes": 5 * GiB,
       "nvml_context_baseline_bytes": GiB // 2, "host_rss_peak_bytes": 6 * GiB}
CPU = {"torch_max_allocated_bytes": None, "torch_max_reserved_bytes": None, "nvml_process_peak_bytes": None,
       "nvml_context_baseline_bytes": None, "host_rss_growth_bytes": 150 * MiB, "host_rss_peak_bytes": 900 * MiB}
CPU_BEFORE_GROWTH = {k: v for k, v in CPU.items() if k != "host_rss_growth_bytes"}  # records written before it
CASES = [(GPU, "torch_max_reserved_bytes"), (CPU, "host_rss_growth_bytes"),
         (CPU_BEFORE_GROWTH, "host_rss_peak_bytes")]


def record(memory: dict, finished: str = "2026-01-01T00:00:00+00:00") -> dict:
    """An ok record with the fields the four readers use (the real schema's keys)."""
    gpu = memory["torch_max_reserved_bytes"] is not None
    env = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "575.51.03", "cuda": "12.8", "torch": "2.7.0"} if gpu \
        else {"gpu_name": None, "cpu": "AMD EPYC", "torch": "2.7.0"}
    return {"schema": SCHEMA, "cell_id": "mlp-fp32-bs64-ga1-gpus1", "status": "ok", "status_detail": "",
            "config": {"model": "mlp", "precision": "fp32", "batch_size": 64, "grad_accum": 1, "world_size": 1,
                       "effective_batch": 64, "lr": 0.01, "optimizer": "sgd"},
            "throughput_samples_per_s": 1000.0,
            "step_time_s": {"median": 0.064, "iqr": 0.001, "n": 5, "values": [0.064] * 5},
            "memory": dict(memory), "loss": {"final": 2.0, "curve": [2.0]}, "scaler": {"enabled": False},
            "mfu": None, "flops_per_sample": None, "energy_j_per_sample": None, "env": env, "finished_at": finished}


@pytest.mark.parametrize("memory, measure", CASES)
def test_the_cli_line_the_bench_table_and_the_gate_show_the_same_measure(memory, measure):
    rec = record(memory)
    assert headline_memory([rec["memory"]]) == measure
    shown = f"{memory[measure] / MiB:.1f}"
    assert f"peak {MEMORY_NAMES[measure]} {shown} MiB," in summary_line(rec)
    row = table_row(rec)
    assert row.endswith(f"  {MEMORY_NAMES[measure]}") and f" {shown} " in row
    assert TABLE_HEADER.endswith("memory measure  flags")
    (cell,) = compare_records([rec], [rec]).cells
    assert cell.memory_measure == measure and cell.metrics["memory"].baseline == memory[measure]


def test_the_bench_table_gives_the_step_times_interval_and_the_hosts_flags():
    rec = record(CPU)
    assert " - " in table_row(rec)  # an older record: no interval, no conditions
    rec["noise"] = {"median_ci_low_s": 0.062, "median_ci_high_s": 0.067}
    rec["conditions"] = {"load_avg_1m_start": 5.1, "load_avg_1m_end": 6.9, "host_cores": 2}
    row = table_row(rec)
    assert " 64.00     ±4% " in row and row.endswith("  host RSS growth  host loaded: load average 6.9 on 2 cores")


@pytest.mark.parametrize("memory, measure", CASES)
def test_the_reports_summary_shows_the_same_measure(memory, measure):
    pytest.importorskip("pandas", reason="reports need the `reports` extra (pandas, plotly)")
    from trainkit.reports.load import to_frame
    from trainkit.reports.summary import summary

    (row,) = summary(to_frame([record(memory)])).to_dict("records")
    assert row["memory_measure"] == measure and row["peak_memory_mib"] == memory[measure] / MiB


def test_a_cell_whose_repeats_disagree_on_the_measures_is_shown_in_one_they_all_have():
    """A CPU cell measured before and after records carried the RSS growth: the report and the gate
    both fall back to the worker's RSS, which every repeat has, rather than mixing the two."""
    pytest.importorskip("pandas", reason="reports need the `reports` extra (pandas, plotly)")
    from trainkit.reports.load import to_frame
    from trainkit.reports.summary import summary

    repeats = [record(CPU, "2026-01-01T00:00:01+00:00"), record(CPU_BEFORE_GROWTH, "2026-01-01T00:00:02+00:00")]
    (row,) = summary(to_frame(repeats)).to_dict("records")
    (cell,) = compare_records(repeats, repeats).cells
    assert row["memory_measure"] == cell.memory_measure == "host_rss_peak_bytes"
    assert row["peak_memory_mib"] == 900 and cell.metrics["memory"].baseline == 900 * MiB


def test_headline_memory_takes_only_finite_numbers_every_record_has():
    assert headline_memory([]) is None and headline_memory([None]) is None
    assert headline_memory([{"torch_max_reserved_bytes": float("nan"), "host_rss_peak_bytes": 7}]) == \
        "host_rss_peak_bytes"  # pandas reads a missing value back as NaN
    assert headline_memory([{"torch_max_reserved_bytes": True, "host_rss_peak_bytes": 7}]) == "host_rss_peak_bytes"
    assert headline_memory([GPU, CPU]) == "host_rss_peak_bytes"  # the only measure both have
    assert set(MEMORY_NAMES) == set(HEADLINE_MEMORY)


def test_the_rss_growth_is_optional_in_a_record():
    assert "host_rss_growth_bytes" not in MEMORY_KEYS
    assert check_record(record(CPU_BEFORE_GROWTH)) == [] and check_record(record(CPU)) == []
