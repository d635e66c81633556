"""Sentences of the report computed from the data they speak of (issue 24): the accumulation note when
accumulating cells ran, and the CPU banner when half precision is the fastest row on a CPU that has
native bf16 instructions."""

from __future__ import annotations

import pytest

pytest.importorskip("pandas")
pytest.importorskip("plotly")

from tests.test_reports_flags import cell  # noqa: E402
from trainkit.reports.build import cpu_banner  # noqa: E402
from trainkit.reports.figures import accumulation  # noqa: E402
from trainkit.reports.load import to_frame  # noqa: E402
from trainkit.reports.summary import cells, summary  # noqa: E402


def accumulating(precision: str = "fp32", batch: int = 32, accum: int = 1, **kw) -> dict:
    record = cell(precision, batch=batch, **kw)
    record["config"].update(grad_accum=accum, effective_batch=batch * accum)
    record["cell_id"] = f"gpt-{precision}-bs{batch}-ga{accum}-gpus1"
    return record


def test_the_accumulation_note_says_accumulating_cells_ran_when_none_shares_an_effective_batch():
    # The quick preset's shape: micro-batch 32 at accumulation 1 and 4 (effective 32 and 128).
    frame = to_frame([accumulating(accum=1), accumulating(accum=4)])
    chart = accumulation(cells(frame))
    assert chart.figure is None and "No effective batch was measured" not in chart.note
    assert chart.note.startswith("1 cell(s) ran with accumulation 4, but no effective batch")
    assert "accumulation 1: effective batch 32; accumulation 4: effective batch 128" in chart.note
    none = accumulation(cells(to_frame([accumulating(accum=1), accumulating(batch=64, accum=1)])))
    assert none.note == "No cell ran with two or more accumulation steps."
    compared = accumulation(cells(to_frame([accumulating(batch=32, accum=1), accumulating(batch=8, accum=4)])))
    assert compared.figure is not None


def _cpu_records(flags: list[str], bf16_step_s: float) -> list[dict]:
    records = [cell("fp32", step_s=0.1), cell("amp-bf16", step_s=bf16_step_s)]
    for record in records:
        record["env"]["cpu_flags"] = flags
    return records


def test_the_cpu_banner_says_what_this_cpu_has_and_which_precision_was_fastest():
    records = _cpu_records(["avx2", "avx512f", "avx512_bf16", "amx_bf16"], bf16_step_s=0.05)
    frame = to_frame(records)
    text = cpu_banner(summary(frame), frame)
    assert "emulated or slow" not in text and "emulated" not in text
    assert "has amx_bf16, avx512_bf16: its half-precision math runs natively" in text
    assert "fastest per shape: amp-bf16 in 1 of 1" in text
    records = _cpu_records(["avx2"], bf16_step_s=0.3)
    frame = to_frame(records)
    text = cpu_banner(summary(frame), frame)
    assert "has none of avx512_bf16, amx_bf16, avx512_fp16: its half-precision math is emulated" in text
    assert "fastest per shape: fp32 in 1 of 1" in text
