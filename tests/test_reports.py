"""Reports built from real trainkit output on the CPU: the tables hold the records' numbers, the page
renders in a real browser, and a 1,000-cell report stays fast and small."""

from __future__ import annotations

import copy
import csv
import functools
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("pandas", reason="reports need the `reports` extra (pandas, plotly)")
pytest.importorskip("plotly", reason="reports need the `reports` extra (pandas, plotly)")

from trainkit.engine.cell.launch import run_cell  # noqa: E402
from trainkit.engine.cell.record import append_jsonl  # noqa: E402
from trainkit.engine.spec.config import RunConfig  # noqa: E402
from trainkit.engine.spec.schema import CutOffLineWarning  # noqa: E402
from trainkit.reports.build import build_report  # noqa: E402
from trainkit.reports.summary import FLAG_MARK  # noqa: E402

# A small matrix that exercises every part of the page: precisions x batch sizes, accumulation at a
# fixed effective batch of 64, two rank counts, a GradScaler that must skip steps (a 2**30 initial
# scale overflows), and three ways not to finish.
CELLS = (
    [dict(model="mlp", precision=p, batch_size=b) for p in ("fp32", "amp-bf16", "amp-fp16", "half-bf16")
     for b in (16, 64)]
    + [dict(model="mlp", precision=p, batch_size=64 // a, grad_accum=a) for p in ("fp32", "amp-bf16") for a in (2, 4)]
    + [dict(model="gpt", precision=p, batch_size=4, world_size=w) for p in ("fp32", "amp-bf16") for w in (1, 2)]
    + [dict(model="gpt", precision="amp-fp16", batch_size=4, init_scale=2.0**30)]
    + [dict(model="mlp", precision="tf32", batch_size=16),  # unsupported on a CPU
       dict(model="mlp", precision="amp-fp16", batch_size=16, lr=1e6)]  # diverged
)
GPT_SMALL = dict(seq_len=16, vocab_size=64, gpt_layers=1, gpt_heads=2, gpt_width=32)


@functools.cache
def real_records() -> tuple[dict, ...]:
    """Records of CELLS from the real launcher (one worker process per cell), made once per session."""
    records = []
    for cell in CELLS:
        shape = GPT_SMALL if cell["model"] == "gpt" else {}
        config = RunConfig(steps=4, warmup_steps=1, device="cpu", **shape, **cell)
        records.append(run_cell(config, timeout_s=300))
    return tuple(records)


def at_median(record: dict) -> float:
    """A record's global samples per second at its median step time (the summary's throughput)."""
    return record["config"]["effective_batch"] / record["step_time_s"]["median"]


def by_cell(records) -> dict[str, dict]:
    """Records of the usual cells by cell id (the diverged lr=1e6 cell shares its id with an ok one)."""
    return {r["cell_id"]: r for r in records if r["config"]["lr"] == 0.01}


def write_results(records, path: str, torn: bool = False) -> str:
    for record in records:
        append_jsonl(record, path)
    if torn:  # a run killed while appending its next cell
        with open(path, "a") as f:
            f.write(json.dumps(records[0])[:100])
    return path


def write_benchmark_json(records, path: str) -> str:
    """The shape pytest-benchmark writes with --benchmark-json: ok cells only, the record in extra_info."""
    ok = [r for r in records if r["status"] == "ok"]
    doc = {"machine_info": {"node": "test", "trainkit_env": ok[0]["env"]}, "commit_info": {"id": "test"},
           "datetime": "2026-01-01T00:00:00", "version": "5.1.0",
           "benchmarks": [{"group": None, "name": f"test_train[{r['cell_id']}]", "fullname": "bench/x.py::test_train",
                           "params": {"cell": r["cell_id"]}, "extra_info": r,
                           "stats": {k: r["step_time_s"][k] for k in ("min", "max", "mean", "median", "iqr")}
                           | {"rounds": r["step_time_s"]["n"], "stddev": 0.0}} for r in ok]}
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


@pytest.fixture(scope="session")
def records():
    return real_records()


@pytest.fixture(scope="session")
def report(records, tmp_path_factory):
    """A report of the real records, given both as a results file (torn last line) and as
    pytest-benchmark JSON, the way bench leaves them."""
    out = tmp_path_factory.mktemp("report")
    results = write_results(records, str(out / "results.jsonl"), torn=True)
    bench = write_benchmark_json(records, str(out / "bench.json"))
    cut_off = f"line {len(records) + 1} is cut off .*; read the {len(records)} complete records before it"
    with pytest.warns(CutOffLineWarning, match=cut_off):
        paths = build_report([results, bench], str(out / "site" / "report.html"))
    return {"paths": paths, **read_built(paths), "results": results}


def read_built(paths: dict[str, str]) -> dict:
    """What build_report wrote: the page, the CSV rows and the Markdown."""
    with open(paths["html"]) as f:
        page = f.read()
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    with open(paths["markdown"]) as f:
        markdown = f.read()
    return {"html": page, "rows": rows, "markdown": markdown}


def row_of(rows, cell_id: str, variant: str = "") -> dict:
    match = [r for r in rows if f"{r['model']}-{r['precision']}-bs{r['batch_size']}-ga{r['grad_accum']}-gpus{r['gpus']}"
             == cell_id and r["variant"] == variant]
    assert len(match) == 1, (cell_id, variant, match)
    return match[0]


def test_the_cells_ended_as_designed(records):
    statuses = {(r["cell_id"], r["config"]["lr"]): r["status"] for r in records}
    assert statuses[("mlp-tf32-bs16-ga1-gpus1", 0.01)] == "unsupported"
    assert statuses[("mlp-amp-fp16-bs16-ga1-gpus1", 1e6)] == "diverged"
    assert sum(s == "ok" for s in statuses.values()) == len(CELLS) - 2
    assert by_cell(records)["gpt-amp-fp16-bs4-ga1-gpus1"]["scaler"]["skipped_steps_total"] > 0


def test_writes_html_csv_and_markdown_beside_each_other(report):
    paths = report["paths"]
    assert set(paths) == {"html", "csv", "markdown"}
    assert os.path.dirname(paths["csv"]) == os.path.dirname(paths["html"]) == os.path.dirname(paths["markdown"])
    assert paths["csv"].endswith("report.csv") and paths["markdown"].endswith("report.md")


def test_the_page_is_self_contained(report):
    page = report["html"]
    # The library inlined once, not once per chart: the basic bundle (every trace drawn is a scatter or
    # a bar), a quarter of the whole library's size.
    assert page.count("* plotly.js (basic - minified) v") == 1 and "* plotly.js v" not in page
    assert len(page.encode()) < 2_000_000
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=", page)
    assert "cdn.plot.ly" not in page.replace("https://cdn.plot.ly", "")  # no script fetched from the CDN


def test_summary_figures_are_the_records_numbers(report, records):
    rows, cells = report["rows"], by_cell(records)
    for cell_id, record in cells.items():
        row = row_of(rows, cell_id)
        assert row["status"] == record["status"]
        if record["status"] != "ok":
            assert row["throughput_samples_per_s"] == "" and row["repeats"] == "0"
            continue
        assert row["repeats"] == "1"  # the same cell in both input files counts once
        # Samples per second at the median step time: the statistic the step time's interval is of.
        assert float(row["throughput_samples_per_s"]) == pytest.approx(at_median(record))
        assert float(row["final_loss"]) == pytest.approx(record["loss"]["final"])
        # A CPU run has host memory only: the cell's own growth over its worker's inherited pages.
        assert float(row["peak_memory_mib"]) == pytest.approx(record["memory"]["host_rss_growth_bytes"] / 2**20)
        assert row["memory_measure"] == "host_rss_growth_bytes"
        fp32 = cells[cell_id.replace(record["config"]["precision"], "fp32", 1)]
        assert float(row["speedup_vs_fp32"]) == pytest.approx(
            fp32["step_time_s"]["median"] / record["step_time_s"]["median"])
        # 5 steps, far fewer than MIN_LOSS_COMPARISON_STEPS: the loss is said to be after 5 steps and
        # is not compared with fp32's (test_a_loss_difference_needs_a_long_enough_run below).
        assert row["loss_steps"] == str(len(record["loss"]["curve"])) == "5" and row["loss_diff_vs_fp32"] == ""
        if record["config"]["precision"] == "amp-fp16":
            assert float(row["skipped_steps"]) == record["scaler"]["skipped_steps_total"]
        else:
            assert row["skipped_steps"] == ""  # no loss scaler, so nothing to skip


def test_a_loss_difference_needs_a_long_enough_run(report, records):
    """The summary says how many steps its losses are after, compares a cell's loss with fp32's
    only from MIN_LOSS_COMPARISON_STEPS on, and points to the parity run."""
    from trainkit.reports.load import to_frame
    from trainkit.reports.summary import MIN_LOSS_COMPARISON_STEPS, formatted, summary

    assert "after 5 steps" in report["markdown"] and "Δ loss" not in report["markdown"]
    assert "python -m trainkit parity" in report["markdown"] and "python -m trainkit parity" in report["html"]
    long = copy.deepcopy([r for r in by_cell(records).values() if r["status"] == "ok"])
    for record in long:  # the same records, as if their curves held MIN_LOSS_COMPARISON_STEPS steps
        record["loss"]["curve"] = [record["loss"]["final"]] * MIN_LOSS_COMPARISON_STEPS
    table = summary(to_frame(long))
    cells = by_cell(long)
    for row in table.itertuples():
        cell_id = f"{row.model}-{row.precision}-bs{row.batch_size}-ga{row.grad_accum}-gpus{row.gpus}"
        fp32 = cells[cell_id.replace(row.precision, "fp32", 1)]
        assert row.loss_diff_vs_fp32 == pytest.approx(cells[cell_id]["loss"]["final"] - fp32["loss"]["final"])
    shown = formatted(table)
    assert f"Δ loss vs fp32 after {MIN_LOSS_COMPARISON_STEPS} steps" in shown.columns
    assert f"loss after {MIN_LOSS_COMPARISON_STEPS} steps" in shown.columns


def test_weak_scaling_efficiency_is_thr_n_over_n_thr_1(report, records):
    cells = by_cell(records)
    for precision in ("fp32", "amp-bf16"):
        one, two = cells[f"gpt-{precision}-bs4-ga1-gpus1"], cells[f"gpt-{precision}-bs4-ga1-gpus2"]
        row = row_of(report["rows"], f"gpt-{precision}-bs4-ga1-gpus2")
        expected = at_median(two) / (2 * at_median(one))
        assert float(row["weak_scaling_efficiency"]) == pytest.approx(expected)
        assert row_of(report["rows"], f"gpt-{precision}-bs4-ga1-gpus1")["weak_scaling_efficiency"] == ""


def test_a_cell_with_another_learning_rate_is_its_own_row(report, records):
    diverged = next(r for r in records if r["status"] == "diverged")
    row = row_of(report["rows"], diverged["cell_id"], variant="lr=1e+06")
    assert row["status"] == "diverged" and row["speedup_vs_fp32"] == ""


def test_markdown_has_a_table_per_model_and_rank_count(report, records):
    markdown = report["markdown"]
    for title in ("## mlp · CPU", "## gpt · CPU"):
        assert title in markdown
    assert re.search(r"## gpt · CPU .* · 2 ranks", markdown)
    throughput = at_median(by_cell(records)["mlp-fp32-bs64-ga1-gpus1"])
    shown = f"{throughput:,.0f}" if throughput >= 100 else f"{throughput:.3g}"
    # A figure from this shared machine may carry the mark of a loaded host.
    assert re.search(rf"\| {re.escape(shown)}( {FLAG_MARK})? \|", markdown)
    assert "peak MiB (host RSS growth)" in markdown


def test_page_lists_unfinished_cells_with_their_reason(report, records):
    page = report["html"]
    section = page[page.index('<section id="failures">'):page.index('<section id="environment">')]
    for record in records:
        if record["status"] != "ok":
            assert record["status"] in section
            assert html.escape(record["status_detail"]) in section


def test_page_says_which_memory_measures_a_cpu_run_lacks(report):
    lacks = "Not measured in these cells: PyTorch allocator peak, PyTorch reserved peak, NVML process peak"
    assert lacks in report["html"]


def test_page_shows_the_environment_of_each_run(report, records):
    page = report["html"]
    section = page[page.index('<section id="environment">'):]
    env = by_cell(records)["mlp-fp32-bs16-ga1-gpus1"]["env"]
    assert f"torch={env['torch']}" in section and "results.jsonl" in section
    assert env["git_commit"][:12] in section


def test_every_chart_of_the_matrix_is_drawn(report):
    page = report["html"]
    for section in ("throughput", "memory", "accumulation", "loss", "scaler", "scaling"):
        body = page[page.index(f'<section id="{section}">'):]
        body = body[:body.index("</section>")]
        assert 'class="chart"' in body, section


def test_a_gpu_record_reports_reserved_memory_and_every_measure(records, tmp_path):
    """No GPU here: real records given the memory fields a GPU run fills (the numbers are the
    record's host RSS scaled, so each measure is distinct and checkable)."""
    gpu = []
    for record in copy.deepcopy([r for r in records if r["status"] == "ok" and r["config"]["model"] == "mlp"]):
        rss = record["memory"]["host_rss_peak_bytes"]
        record["env"].update(gpu_name="NVIDIA H100 80GB HBM3", driver="580.65", cuda="13.0")
        record["memory"].update(torch_max_allocated_bytes=rss // 4, torch_max_reserved_bytes=rss // 2,
                                nvml_process_peak_bytes=rss, nvml_method="per-process")
        gpu.append(record)
    paths = build_report([write_results(gpu, str(tmp_path / "gpu.jsonl"))], str(tmp_path / "gpu.html"))
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["hardware"] for r in rows} == {"NVIDIA H100 80GB HBM3"}
    for record in gpu:
        row = row_of(rows, record["cell_id"])
        assert row["memory_measure"] == "torch_max_reserved_bytes"
        assert float(row["peak_memory_mib"]) == pytest.approx(record["memory"]["torch_max_reserved_bytes"] / 2**20)
    with open(paths["html"]) as f:
        page = f.read()
    memory = page[page.index('<section id="memory">'):page.index('<section id="accumulation">')]
    assert "Not measured" not in memory
    for title in ("PyTorch allocator peak", "PyTorch reserved peak", "NVML process peak", "host RSS peak"):
        assert title in memory
    assert "1 GPU" in page and "CPU rows are correctness" not in page


def test_one_run_whose_cells_landed_on_two_gpu_models_is_grouped_by_each_records_environment(records, tmp_path):
    """Cluster jobs of one run may land on different GPUs: each record's own environment places it,
    so a cell has a row per GPU model, fp32 speedups are taken within a model, and the environment
    table lists both fingerprints with their records."""
    run = []
    for gpu, driver, node, scale in (("NVIDIA H100 80GB HBM3", "580.65", "gpu017", 1.0),
                                     ("NVIDIA A100-SXM4-80GB", "550.54", "gpu203", 0.5)):
        for record in copy.deepcopy([r for r in records if r["status"] == "ok" and r["config"]["model"] == "mlp"
                                     and r["config"]["grad_accum"] == 1]):
            record["env"].update(gpu_name=gpu, driver=driver, cuda="12.8", hostname=node)
            record["throughput_samples_per_s"] *= scale
            record["step_time_s"].update(values=[v / scale for v in record["step_time_s"]["values"]],
                                         median=record["step_time_s"]["median"] / scale)
            run.append(record)
    paths = build_report([write_results(run, str(tmp_path / "results.jsonl"))], str(tmp_path / "report.html"))
    built = read_built(paths)
    rows = built["rows"]
    assert {r["hardware"] for r in rows} == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"}
    fp32 = [r for r in rows if r["precision"] == "fp32" and r["batch_size"] == "16"]
    assert sorted(float(r["throughput_samples_per_s"]) for r in fp32) == pytest.approx(
        sorted(at_median(r) * s for r in records for s in (1.0, 0.5)
               if r["cell_id"] == "mlp-fp32-bs16-ga1-gpus1" and r["config"]["lr"] == 0.01))
    assert {float(r["speedup_vs_fp32"]) for r in fp32} == {1.0}  # each model against its own fp32
    page = built["html"]
    assert "<h3>mlp · NVIDIA H100 80GB HBM3</h3>" in page and "<h3>mlp · NVIDIA A100-SXM4-80GB</h3>" in page
    section = page[page.index('<section id="environment">'):]
    assert "gpu_name=NVIDIA H100 80GB HBM3, driver=580.65" in section
    assert "gpu_name=NVIDIA A100-SXM4-80GB, driver=550.54" in section


# --- in a real browser --------------------------------------------------------------------------

def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("TRAINKIT_REQUIRE_CHROMIUM") == "1":
            pytest.fail("TRAINKIT_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); set TRAINKIT_REQUIRE_CHROMIUM=1 to fail")
    return found


def headless(browser: str, profile: str, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rendered_dom(page_path: str, tmp_path, fragment: str = "") -> str:
    """The DOM of the page after headless Chromium ran it offline; no console error allowed."""
    url = "file://" + os.path.abspath(page_path) + fragment
    done = headless(chromium(), str(tmp_path / "profile"), url, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]
    assert console == []
    return done.stdout


def assert_every_chart_renders(page_path: str, page_html: str, tmp_path) -> None:
    """One plot-container per chart: each chart drawn by plotly.js."""
    dom = rendered_dom(page_path, tmp_path)
    assert dom.count('class="plot-container') == page_html.count('<div class="chart">')


def test_the_page_renders_offline_in_chromium_without_console_errors(report, tmp_path):
    assert report["html"].count('<div class="chart">') >= 6
    assert_every_chart_renders(report["paths"]["html"], report["html"], tmp_path)


def test_filters_in_the_url_hide_other_models_and_precisions(report, tmp_path):
    dom = rendered_dom(report["paths"]["html"], tmp_path, "#model=gpt&precision=fp32")
    blocks = re.findall(r'<div data-model="(\w+)"[^>]*?( hidden(?:="")?)?>', dom)
    assert {m for m, hidden in blocks if not hidden} == {"gpt"}
    assert {m for m, hidden in blocks if hidden} == {"mlp"}
    rows = re.findall(r'<tr data-precision="([\w-]+)"( hidden(?:="")?)?>', dom)
    assert {p for p, hidden in rows if not hidden} == {"fp32"} and len({p for p, _ in rows}) > 1
    legend = re.findall(r'class="legendtext"[^>]*>([^<]*)<', dom)
    assert legend and set(legend) == {"fp32"}  # the other precisions' traces are hidden in every chart


SCREEN = (1400, 1000)
BOX_SCRIPT = ("<script>window.addEventListener('load', () => { const c = document.querySelector('.answer-card'); "
              "const r = c ? c.getBoundingClientRect() : null; document.body.setAttribute('data-card', r ? "
              "[r.top, r.bottom, r.left, r.right].join(',') : 'none'); });</script>")


def card_box(page_path: str, tmp_path) -> tuple[float, float, float, float] | None:
    """Where headless Chromium lays out the page's first answer card in a 1400x1000 window (top, bottom,
    left, right in CSS pixels), or None without one: the page is copied with a script that measures it."""
    with open(page_path, encoding="utf-8") as f:
        text = f.read()
    probe = tmp_path / "measured.html"
    probe.write_text(text.replace("</body>", BOX_SCRIPT + "</body>"), encoding="utf-8")
    done = headless(chromium(), str(tmp_path / "profile"), "file://" + str(probe), "--dump-dom",
                    f"--window-size={SCREEN[0]},{SCREEN[1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-card="([^"]*)"', done.stdout)
    assert found, "the measuring script did not run"
    if found.group(1) == "none":
        return None
    top, bottom, left, right = (float(v) for v in found.group(1).split(","))
    return top, bottom, left, right


def test_the_matrix_report_opens_on_the_answer_card_inside_the_first_screen(report, tmp_path):
    page = report["html"]
    body = page[page.index("<body>"):]
    assert body.index('class="answer-card') < body.index('id="summary"')
    # without parity records the card gives the speed and memory answer and says how to measure the loss
    assert "fastest vs fp32" in body
    assert "loss parity not measured: run python -m trainkit recommend --model mlp" in body
    box = card_box(report["paths"]["html"], tmp_path)
    assert box is not None
    top, bottom, left, right = box
    assert 0 <= top < bottom <= SCREEN[1] and 0 <= left < right <= SCREEN[0], box


# --- size and speed ------------------------------------------------------------------------------

def synthesize(records, n: int) -> list[dict]:
    """n distinct cells made by varying real records: axes, throughput, memory and loss curve."""
    templates = [r for r in records if r["status"] == "ok"]
    out = []
    precisions = ("fp32", "amp-bf16", "amp-fp16", "half-bf16", "tf32")
    shapes = [(m, p, 2**b, 2**a, 2**g) for m in ("mlp", "gpt", "cnn", "resnet18") for p in precisions
              for b in range(2, 9) for a in range(3) for g in range(3)]
    for i, (model, precision, batch, accum, gpus) in enumerate(shapes[:n]):
        record = copy.deepcopy(templates[i % len(templates)])
        config = record["config"]
        config.update(model=model, precision=precision, batch_size=batch, grad_accum=accum, world_size=gpus,
                      effective_batch=batch * accum * gpus)
        record["cell_id"] = f"{model}-{precision}-bs{batch}-ga{accum}-gpus{gpus}"
        scale = 1 + (i % 17) / 10
        record["throughput_samples_per_s"] *= scale
        if record["step_time_s"]:
            record["step_time_s"].update(values=[v / scale for v in record["step_time_s"]["values"]],
                                         median=record["step_time_s"]["median"] / scale)
        for key in ("host_rss_peak_bytes", "host_rss_growth_bytes"):
            record["memory"][key] = int(record["memory"][key] * scale)
        record["loss"]["curve"] = [v * (1 + j / 400) for j in range(8) for v in record["loss"]["curve"]][:50]
        if i % 41 == 0:
            record.update(status="oom", status_detail="CUDA out of memory (synthetic)", throughput_samples_per_s=None)
        out.append(record)
    return out


def test_a_thousand_cells_build_in_under_10_s_and_15_mb(records, tmp_path):
    many = synthesize(records, 1000)
    assert len({r["cell_id"] for r in many}) == 1000
    results = write_results(many, str(tmp_path / "results.jsonl"))
    started = time.process_time()  # CPU time: a busy neighbour cannot inflate it
    paths = build_report([results], str(tmp_path / "report.html"))
    elapsed_s = time.process_time() - started
    size_mb = os.path.getsize(paths["html"]) / 1e6
    print(f"1,000 cells: built in {elapsed_s:.2f} s of CPU, {size_mb:.1f} MB")
    assert elapsed_s < 10
    assert size_mb < 15
    with open(paths["csv"]) as f:
        assert sum(1 for _ in f) == 1001  # header + one row per cell


def test_the_command_line_builds_the_same_summary_from_the_results_file_alone(report, tmp_path):
    done = subprocess.run([sys.executable, "-m", "reports", "build", report["results"], "-o", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "r.csv") as f:
        assert list(csv.DictReader(f)) == report["rows"]


def test_a_chart_the_basic_bundle_cannot_draw_gets_the_whole_library():
    import plotly.graph_objects as go

    from trainkit.reports import html as report_html
    from trainkit.reports.figures import Chart

    def page_of(figure) -> str:
        return report_html.page("t", "", report_html.chart(Chart("t", figure), "c1"))

    assert "(basic - minified)" in page_of(go.Figure(go.Bar(x=[1], y=[2])))
    whole = page_of(go.Figure(go.Heatmap(z=[[1, 2]])))
    assert "(basic - minified)" not in whole and whole.count("* plotly.js v") == 1
