"""The overhead bench (`pytest bench --benchmark-only --overhead -k overhead`), run for real, short."""

from __future__ import annotations

import json

import pytest

from .conftest import inprocess_pytest


@pytest.mark.slow
def test_the_overhead_bench_runs_and_records_its_ratio(tmp_path):
    """Both cases, two interleaved blocks each, no bar on the ratio: this checks that the command the
    README gives runs end to end (a shared 2-core CPU is no place to judge a 2% difference)."""
    out = tmp_path / "bench.json"
    proc = inprocess_pytest(["bench/test_overhead.py", "--benchmark-only", "--overhead", "-k", "overhead", "-p",
                             "no:randomly", "--overhead-blocks", "2", "--overhead-min-ratio", "0", "--no-report",
                             "--report-dir", str(tmp_path / "out"), "--benchmark-json", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout
    benchmarks = {b["params"]["model"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert set(benchmarks) == {"mlp", "resnet18"}
    for bench in benchmarks.values():
        info = bench["extra_info"]
        assert bench["stats"]["rounds"] == 2 == len(info["trainkit_step_s"]) == len(info["hand_step_s"])
        assert info["throughput_ratio"] > 0
        assert bench["stats"]["mean"] == pytest.approx(sum(info["trainkit_step_s"]) / 2)


@pytest.mark.slow
def test_a_ratio_below_the_bar_is_one_failure_naming_the_bar(tmp_path):
    proc = inprocess_pytest(["bench/test_overhead.py", "--benchmark-only", "--overhead", "-k", "mlp", "-p",
                             "no:randomly", "--overhead-blocks", "1", "--overhead-min-ratio", "1000", "--no-report",
                             "--report-dir", str(tmp_path / "out")])
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 failed" in proc.stdout and "error" not in proc.stdout.splitlines()[-1]
    assert "of the hand-written loop's throughput (< 1000.0)" in proc.stdout

