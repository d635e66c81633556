"""The real bench output feeds the reports: `pytest bench` writes pytest-benchmark JSON and a results
file, builds its report through trainkit.reports.build.build_report, and compare reads both kinds."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("pandas", reason="reports need the `reports` extra (pandas, plotly)")

from trainkit.reports.cli import main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """A small real matrix: mlp in fp32 and amp-bf16, and tf32, which a CPU skips at collection."""
    if not os.path.exists(os.path.join(REPO, "bench", "conftest.py")):
        pytest.skip("bench/ is not in this checkout")
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "pytest", "bench/test_train.py", "--benchmark-only", "--preset", "tiny",
               "--model", "mlp", "--precision", "fp32,amp-bf16,tf32", "--grad-accum", "1", "--steps", "3",
               "--warmup-steps", "1", "--device", "cpu", "--report-dir", str(out / "report"),
               "--benchmark-json", str(out / "bench.json"), "-p", "no:cacheprovider", "-q"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = glob.glob(str(out / "report" / "results-*.jsonl"))
    assert len(results) == 1, os.listdir(out / "report")
    with open(out / "bench.json") as f:
        benchmark = json.load(f)
    return {"dir": out, "results": results[0], "bench": str(out / "bench.json"), "benchmark": benchmark}


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_bench_builds_its_report_with_build_report(bench_run):
    report = bench_run["dir"] / "report"
    assert (report / "report.html").exists() and (report / "report.md").exists()
    rows = {f"{r['model']}-{r['precision']}-bs{r['batch_size']}-ga{r['grad_accum']}-gpus{r['gpus']}": r
            for r in read_csv(report / "report.csv")}
    entries = bench_run["benchmark"]["benchmarks"]
    assert {e["extra_info"]["config"]["precision"] for e in entries} == {"fp32", "amp-bf16"}
    for entry in entries:
        record = entry["extra_info"]
        row = rows[record["cell_id"]]
        at_median = record["config"]["effective_batch"] / record["step_time_s"]["median"]  # the summary's statistic
        assert float(row["throughput_samples_per_s"]) == pytest.approx(at_median)
        # The CPU's headline memory: the cell's own RSS growth over its worker's inherited pages.
        assert float(row["peak_memory_mib"]) == pytest.approx(record["memory"]["host_rss_growth_bytes"] / 2**20)
    assert rows["mlp-tf32-bs16-ga1-gpus1"]["status"] == "unsupported"  # skipped at collection, still a result


def test_both_files_of_a_session_make_one_report_without_double_counting(bench_run, tmp_path):
    assert main(["build", bench_run["bench"], bench_run["results"], "-o", str(tmp_path / "r.html")]) == 0
    rows = read_csv(tmp_path / "r.csv")
    assert [r["repeats"] for r in rows if r["status"] == "ok"] == ["1"] * len(bench_run["benchmark"]["benchmarks"])
    page = (tmp_path / "r.html").read_text()
    failures = page[page.index('<section id="failures">'):page.index('<section id="environment">')]
    assert "mlp-tf32-bs16-ga1-gpus1" in failures and "compute capability &gt;= 8.0" in failures
    environment = page[page.index('<section id="environment">'):]
    assert "bench.json" in environment and os.path.basename(bench_run["results"]) in environment


def test_compare_reads_bench_json_and_warns_when_it_hides_failures(bench_run, tmp_path, capsys):
    bench, results = bench_run["bench"], bench_run["results"]
    assert main(["compare", bench, bench, "-o", str(tmp_path / "same.html")]) == 0
    # The results file also holds the skipped tf32 cell; the pytest-benchmark JSON cannot.
    # A baseline cell with no record in the candidate is unseen: the gate says inconclusive (3), never pass.
    assert main(["compare", results, bench, "-o", str(tmp_path / "c.html")]) == 3
    captured = capsys.readouterr()
    assert "warning: 1 cell(s) of the baseline are missing from the candidate" in captured.err
    assert main(["compare", results, bench, "-o", str(tmp_path / "c.html"), "--fail-on-removed"]) == 1
