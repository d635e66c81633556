"""Figures that cannot be right are flagged, not printed plainly (issue 17): the summary, the page and
the Markdown mark implausible figures, figures from a loaded host, and differences within noise."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest

pytest.importorskip("pandas")
pytest.importorskip("plotly")

from trainkit.reports.build import build_report  # noqa: E402
from trainkit.reports.load import to_frame  # noqa: E402
from trainkit.reports.summary import FLAG_MARK, formatted, summary  # noqa: E402

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "reports", "examples", "cpu-frontier", "results.jsonl")
A100 = "NVIDIA A100-SXM4-80GB"  # fp32 19.5, bf16 312 dense TFLOP/s: a peak ratio of 16


def example_records() -> list[dict]:
    with open(EXAMPLE) as f:
        return [json.loads(line) for line in f]


def cell(precision: str = "fp32", batch: int = 32, gpus: int = 1, step_s: float = 0.1, spread: float = 0.01,
         memory_mib: float = 100.0, gpu: str | None = None, conditions: dict | None = None) -> dict:
    """A record of the committed example, reshaped: its steps take step_s, give or take `spread` of it."""
    record = copy.deepcopy(next(r for r in example_records() if r["cell_id"] == "gpt-fp32-bs32-ga1-gpus1"))
    record["config"].update(precision=precision, batch_size=batch, world_size=gpus, effective_batch=batch * gpus)
    record["cell_id"] = f"gpt-{precision}-bs{batch}-ga1-gpus{gpus}"
    times = [step_s * (1 + spread * sign) for sign in (-1, 1, -1, 1, -1, 1, 0, 0)]
    record["step_time_s"] = {**record["step_time_s"], "values": times, "median": step_s}
    record["throughput_samples_per_s"] = batch * gpus * len(times) / sum(times)
    record["memory"]["host_rss_growth_bytes"] = int(memory_mib * 2**20)
    if gpu:
        record["env"]["gpu_name"] = gpu
    if conditions is not None:
        record["conditions"] = conditions
    return record


def rows(records: list[dict]) -> dict[str, dict]:
    table = summary(to_frame(records))
    shown = formatted(table)
    return {f"{p}-bs{b}-gpus{g}": {**t, "shown": s} for p, b, g, t, s in zip(
        table["precision"], table["batch_size"], table["gpus"], table.to_dict("records"),
        shown.to_dict("records"))}


def test_the_committed_examples_implausible_scaling_is_flagged_in_the_page_and_the_markdown(tmp_path):
    paths = build_report([EXAMPLE], str(tmp_path / "x.html"))
    with open(paths["markdown"]) as f:
        markdown = f.read()
    with open(paths["html"]) as f:
        page = f.read()
    # 2517 % (at the median step time; 2445 % at the mean): its 1-rank cell shared two cores with other jobs.
    # Its 2-rank cells split the 1-rank cell's 2 threads (1 each), so their bound is 400 %, not 105 %.
    line = next(line for line in markdown.splitlines() if "| 2517%" in line)
    assert f"{FLAG_MARK} |" in line and "implausible: weak scaling 2517% > 400% even with its 2 ranks x 1" in line
    assert "| 2517% |" not in markdown
    assert '<td class="suspect">2517%' in page and "implausible: weak scaling 2152% &gt; 400%" in page
    assert '<p class="bad">5 rows hold figures in doubt' in page
    assert "5 points are implausible, above 105% (400% where the ranks split the threads; up to 2517%)" in page
    # 200 % at 1 thread a rank against 2 in one: a row that says why, with no figure in doubt.
    line = next(line for line in markdown.splitlines() if "| 200%" in line)
    assert "not N copies of the 1-rank cell" in line and f"200% {FLAG_MARK}" not in line
    with open(paths["csv"]) as f:
        assert "implausible: weak scaling 2517% > 400%" in f.read()


def test_a_speedup_beyond_the_peak_ratio_is_implausible_one_within_it_is_not():
    fp32 = cell("fp32", step_s=2.0, gpu=A100)
    table = rows([fp32, cell("amp-bf16", step_s=2.0 / 20, gpu=A100), cell("half-bf16", step_s=2.0 / 10, gpu=A100)])
    assert "implausible: 20.00× fp32, beyond the 16.0× its peaks allow" in table["amp-bf16-bs32-gpus1"]["flags"]
    assert table["amp-bf16-bs32-gpus1"]["shown"]["vs fp32"].endswith(FLAG_MARK)
    assert table["half-bf16-bs32-gpus1"]["flags"] == ""  # 10x: within the peaks
    # A CPU has no peak table: its speedups are not judged against one.
    assert rows([cell("fp32", step_s=2.0), cell("amp-bf16", step_s=0.1)])["amp-bf16-bs32-gpus1"]["flags"] == ""


def test_a_difference_within_the_intervals_is_flagged_as_noise_and_not_marked():
    table = rows([cell("fp32", step_s=1.0, spread=0.3), cell("amp-bf16", step_s=0.95, spread=0.3),
                  cell("half-bf16", step_s=0.5)])
    noisy, clear = table["amp-bf16-bs32-gpus1"], table["half-bf16-bs32-gpus1"]
    assert noisy["speedup_vs_fp32_low"] < 1 < noisy["speedup_vs_fp32_high"]
    assert noisy["flags"].startswith("within noise: vs fp32 interval") and FLAG_MARK not in noisy["shown"]["vs fp32"]
    assert clear["flags"] == "" and clear["speedup_vs_fp32_low"] > 1
    assert clear["shown"]["vs fp32"] == (f"{clear['speedup_vs_fp32']:.2f}× ({clear['speedup_vs_fp32_low']:.2f}–"
                                         f"{clear['speedup_vs_fp32_high']:.2f})")


def test_a_memory_peak_that_falls_as_the_batch_grows_is_implausible():
    table = rows([cell(batch=32, memory_mib=100), cell(batch=64, memory_mib=90), cell(batch=128, memory_mib=180)])
    assert table["fp32-bs64-gpus1"]["flags"] == ("implausible: peak memory falls as the batch grows "
                                                 "(batch 32: 100.0 MiB, batch 64: 90.0 MiB)")
    assert table["fp32-bs64-gpus1"]["shown"]["peak MiB (host RSS growth)"] == f"90 {FLAG_MARK}"
    assert table["fp32-bs32-gpus1"]["flags"] == table["fp32-bs128-gpus1"]["flags"] == ""


def test_a_flat_memory_peak_is_no_flag_nor_a_fall_within_the_tolerance():
    # The estimator gives amp-bf16's MLP the same peak at batch 16, 32 and 64 (the optimizer phase
    # holds it): a flat peak is physics, not a fault; neither is a fall within the reading's noise.
    table = rows([cell(batch=16, memory_mib=100), cell(batch=32, memory_mib=100), cell(batch=64, memory_mib=97)])
    assert [table[f"fp32-bs{b}-gpus1"]["flags"] for b in (16, 32, 64)] == ["", "", ""]


def test_the_page_says_what_share_of_rows_carry_each_flag(tmp_path):
    from trainkit.reports.flags import flag_shares

    records = [cell(batch=32, memory_mib=100), cell(batch=64, memory_mib=80), cell(batch=128, memory_mib=180),
               cell("amp-bf16", batch=32, step_s=0.1)]
    table = summary(to_frame(records))
    assert flag_shares(table) == [("implausible", 1, 4), ("within noise", 1, 4)]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    built = build_report([str(path)], str(tmp_path / "x.html"))
    for key in ("html", "markdown"):
        with open(built[key]) as f:
            text = f.read()
        assert "Rows with each flag: implausible 1 of 4 (25 %); within noise 1 of 4 (25 %)." in text


def test_a_cell_from_a_loaded_host_marks_its_timing_figures_and_those_compared_with_it():
    loaded = {"load_avg_1m_start": 6.9, "load_avg_1m_end": 4.6, "host_cores": 2, "usable_cores": 2,
              "threads_on_busiest_host": 2, "cpu_steal_share": 0.0, "gpu_other_processes": None}
    quiet = {**loaded, "load_avg_1m_start": 0.5, "load_avg_1m_end": 0.4}
    table = rows([cell("fp32", step_s=1.0, conditions=loaded), cell("amp-bf16", step_s=0.5, conditions=quiet),
                  cell("fp32", gpus=2, step_s=1.0, conditions=quiet)])
    fp32 = table["fp32-bs32-gpus1"]
    assert fp32["flags"] == "host loaded: load average 6.9 on 2 cores"
    assert fp32["shown"]["samples/s"].endswith(FLAG_MARK)
    bf16 = table["amp-bf16-bs32-gpus1"]
    assert bf16["flags"] == "its fp32 reference: host loaded: load average 6.9 on 2 cores"
    assert bf16["shown"]["vs fp32"].endswith(FLAG_MARK) and not bf16["shown"]["samples/s"].endswith(FLAG_MARK)
    two = table["fp32-bs32-gpus2"]
    assert "its 1-rank reference: host loaded" in two["flags"] and two["shown"]["weak scaling"].endswith(FLAG_MARK)


def test_old_records_without_conditions_or_noise_get_intervals_from_their_step_times():
    old = [cell("fp32", step_s=1.0), cell("amp-bf16", step_s=0.5)]
    for record in old:
        record.pop("conditions", None), record.pop("noise", None)
    bf16 = rows(old)["amp-bf16-bs32-gpus1"]
    assert bf16["step_time_ci_low_s"] <= 0.5 <= bf16["step_time_ci_high_s"]
    assert 1.6 < bf16["speedup_vs_fp32_low"] < bf16["speedup_vs_fp32"] < bf16["speedup_vs_fp32_high"] < 2.5


def test_the_pareto_front_keeps_a_cell_whose_speed_difference_is_within_noise():
    import pandas as pd

    from trainkit.reports.sections.frontier import pareto_front

    points = pd.DataFrame({"cell": ["lean", "fast", "slow"], "peak_mib": [100.0, 90.0, 80.0],
                           "throughput": [100.0, 110.0, 50.0], "throughput_low": [80.0, 105.0, 45.0],
                           "throughput_high": [120.0, 115.0, 55.0]})
    # "fast" needs less memory and runs faster than "lean", but inside lean's interval: lean stays.
    assert list(pareto_front(points)["cell"]) == ["slow", "fast", "lean"]
    resolved = points.assign(throughput_high=[102.0, 115.0, 55.0])
    assert list(pareto_front(resolved)["cell"]) == ["slow", "fast"]
    point_only = points.assign(throughput_low=float("nan"), throughput_high=float("nan"))
    assert list(pareto_front(point_only)["cell"]) == ["slow", "fast"]  # no interval: the point decides


def test_one_slow_step_in_eight_moves_neither_the_speedup_nor_its_interval_apart():
    """Equal medians, one step in eight ten times slower: the old page printed 0.47x (0.46-0.48) from a
    mean-based speedup beside a median's interval. Figure and interval now rest on the median."""
    slow = cell("amp-bf16", step_s=1.0)
    slow["step_time_s"]["values"][0] = 10.0
    slow["throughput_samples_per_s"] = 32 * 8 / sum(slow["step_time_s"]["values"])
    bf16 = rows([cell("fp32", step_s=1.0), slow])["amp-bf16-bs32-gpus1"]
    assert bf16["speedup_vs_fp32"] == pytest.approx(1.0, abs=0.02)
    assert bf16["speedup_vs_fp32_low"] <= 1.0 <= bf16["speedup_vs_fp32_high"] and bf16["speedup_vs_fp32_rounds"] == 0
    assert bf16["flags"].startswith("within noise")


def rounds_of(precision: str, step_s: list[float], gpus: int = 1) -> list[dict]:
    """One record of a cell per round (bench --repeats N), its steps in round r taking step_s[r]."""
    records = []
    for r, step in enumerate(step_s):
        record = cell(precision, step_s=step, gpus=gpus)
        record.update(round=r, repeat=r)
        records.append(record)
    return records


def test_a_speedup_measured_in_rounds_is_the_median_of_per_round_ratios():
    # The machine halves its speed in rounds 2 and 5 for both cells: paired by round, the 1.25x stands.
    machine = [1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 1.0]
    table = rows(rounds_of("fp32", [m * 1.0 for m in machine]) + rounds_of("amp-bf16", [m * 0.8 for m in machine]))
    bf16 = table["amp-bf16-bs32-gpus1"]
    assert bf16["speedup_vs_fp32"] == pytest.approx(1.25) and bf16["speedup_vs_fp32_rounds"] == 7
    assert bf16["speedup_vs_fp32_low"] == pytest.approx(1.25) == bf16["speedup_vs_fp32_high"]
    assert bf16["flags"] == "" and bf16["shown"]["vs fp32"] == "1.25× (1.25–1.25, 7 rounds)"
    assert table["fp32-bs32-gpus1"]["shown"]["vs fp32"] == "1.00×"  # the reference itself
    # With 3 rounds the figure is still paired, and there is no interval to judge it by.
    three = rows(rounds_of("fp32", machine[:3]) + rounds_of("amp-bf16", [m * 0.8 for m in machine[:3]]))
    assert three["amp-bf16-bs32-gpus1"]["speedup_vs_fp32"] == pytest.approx(1.25)
    assert math.isnan(three["amp-bf16-bs32-gpus1"]["speedup_vs_fp32_low"])
    assert three["amp-bf16-bs32-gpus1"]["shown"]["vs fp32"] == "1.25× (3 rounds, no interval)"
    # Weak scaling is paired by round too: 2 ranks at the 1-rank step time are 100 % efficient.
    scaling = rows(rounds_of("fp32", machine) + rounds_of("fp32", machine, gpus=2))["fp32-bs32-gpus2"]
    assert scaling["weak_scaling_efficiency"] == pytest.approx(1.0) and scaling["flags"].startswith("within noise")
