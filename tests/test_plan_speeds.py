"""The plan's "fastest" rests on speeds measured as speeds are everywhere else (issue 24): candidates run
uncapped (the --memory-limit-gb cap roughly halves a CPU cell's throughput), each with its interval and
its conditions' flags, and the plan does not rank precisions whose speeds the noise or a flag does not
separate."""

from __future__ import annotations

from tests.test_plan import fake_estimates, fake_record, plan_options
from trainkit.commands.plan import make_plan

HARDWARE = {"device": "cpu", "gpu_count": 0, "capability": None, "gpu_name": None, "cpu_count": 2, "env": {}}
BOUNDARY = {"fp32": 40, "amp-bf16": 100}


def timed(record: dict, spread: float, conditions: dict | None = None) -> dict:
    """The record with a median step time of 0.1 s and an interval of +-`spread` of it."""
    if record["status"] == "ok":
        record["noise"] = {"median_ci_low_s": 0.1 * (1 - spread), "median_ci_high_s": 0.1 * (1 + spread)}
        record["conditions"] = conditions
    return record


def plan_with(tmp_path, throughput, spread=0.02, conditions=None):
    capped, uncapped = [], []

    def run(config):  # probes: under the cap
        capped.append(config)
        return fake_record(config, {}, BOUNDARY)

    def measure(config):  # candidates: uncapped
        uncapped.append(config)
        return timed(fake_record(config, throughput, BOUNDARY), spread, conditions)

    plan = make_plan(plan_options(tmp_path), HARDWARE, run, fake_estimates, measure_run=measure)
    return plan, capped, uncapped


def test_candidates_are_measured_uncapped_with_an_interval_and_probes_under_the_cap(tmp_path):
    plan, capped, uncapped = plan_with(tmp_path, {("fp32", 16, 4): 800.0, ("amp-bf16", 64, 1): 400.0})
    measured = [c for e in plan["precisions"].values() for c in e["candidates"] if c["measured"]]
    assert len(uncapped) == len(measured) == 6 and all(c.grad_accum != 64 for c in uncapped)
    assert capped and not set(map(id, capped)) & set(map(id, uncapped))
    best = plan["precisions"]["fp32"]["recommendation"]
    assert best["throughput_low_samples_per_s"] < 800.0 < best["throughput_high_samples_per_s"]
    assert best["throughput_low_samples_per_s"] == 800.0 * 0.1 / (0.1 * 1.02)
    assert plan["candidate_cells"]["memory_capped"] is False
    assert plan["fastest"]["ranked"] and plan["fastest"]["precision"] == "fp32"


def test_precisions_whose_intervals_overlap_are_not_ranked(tmp_path):
    plan, _, _ = plan_with(tmp_path, {("fp32", 16, 4): 800.0, ("amp-bf16", 64, 1): 790.0})
    fastest = plan["fastest"]
    assert fastest["ranked"] is False and "overlap" in fastest["note"]
    assert "fp32" in fastest["note"] and "amp-bf16" in fastest["note"]


def test_a_flagged_speed_is_not_ranked(tmp_path):
    loaded = {"others_cpu_share": 0.4, "others_cpu_share_resolution": 0.01, "cell_wait_share": 0.3, "cell_cores": 2}
    plan, _, _ = plan_with(tmp_path, {("fp32", 16, 4): 800.0, ("amp-bf16", 64, 1): 400.0}, conditions=loaded)
    best = plan["precisions"]["fp32"]["recommendation"]
    assert best["flags"] and best["flags"][0].startswith("CPU contention")
    assert plan["fastest"]["ranked"] is False and "CPU contention" in plan["fastest"]["note"]


def test_the_page_says_when_it_does_not_rank(tmp_path):
    from trainkit.reports.plan import section

    plan, _, _ = plan_with(tmp_path, {("fp32", 16, 4): 800.0, ("amp-bf16", 64, 1): 790.0})
    page = section([plan])
    assert "Fastest: not ranked" in page and "Fastest: fp32" not in page
