"""The report's profile section, built from real profiled cells on the CPU: the phase bars and the
CSV hold the records' phases, trace links resolve (relative inside the report's directory, so it
can move), MFU and energy appear only where a record has them, and cells without a profile, with a
failed one or with null fields leave the page whole, in a real browser too."""

from __future__ import annotations

import base64
import copy
import csv
import html
import json
import os
import pickle
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas", reason="reports need the `reports` extra (pandas, plotly)")
pytest.importorskip("plotly", reason="reports need the `reports` extra (pandas, plotly)")

from trainkit.engine.cell.launch import run_cell  # noqa: E402
from trainkit.engine.measure.flops import mfu, peak_flops_per_s  # noqa: E402
from trainkit.engine.spec.config import ProfileConfig, RunConfig  # noqa: E402
from trainkit.reports.build import build_report  # noqa: E402
from trainkit.reports.figures import MAX_BARS  # noqa: E402
from trainkit.reports.sections.profiles import NOT_PROFILED  # noqa: E402
from trainkit.reports.summary import mfu_text  # noqa: E402

from .conftest import REPO, SMALL, trainkit_cmd  # noqa: E402
from .datasets import write_mnist  # noqa: E402
from .test_reports import (  # noqa: E402
    assert_every_chart_renders,
    read_built,
    rendered_dom,
    synthesize,
    write_results,
)

PHASES = ("data", "forward", "backward", "optimizer")
# One intra-op thread per rank: with two, a busy neighbour stalls each op on its straggler thread, and
# the shares this module reads (data-bound, bf16 operator time) moved with the host's load.
FAST = dict(steps=3, warmup_steps=1, device="cpu", cpu_threads=1)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """Real cells, one worker process each, profiled after their timed steps:
    fp32, bf16, ddp  traces under the report's directory (bench's layout: REPORT_DIR/profiles);
                     fp32 asked for a memory snapshot too, which a CPU cannot take
    gpt              its trace outside it
    mnist            phases only, over an MNIST-format data set read with no worker: data-bound
    failed           a profile directory that cannot be made (a path through a regular file)
    none             not profiled at all"""
    out = tmp_path_factory.mktemp("profiled")
    site = out / "site"
    inside = ProfileConfig(phase_steps=3, trace_steps=1, output_dir=str(site / "profiles"))
    snapshot = ProfileConfig(phase_steps=3, trace_steps=1, snapshot_steps=1, output_dir=str(site / "profiles"))
    outside = ProfileConfig(phase_steps=3, trace_steps=1, output_dir=str(out / "elsewhere"))
    (out / "a-file").write_text("not a directory")
    cells = {
        "fp32": (dict(model="mlp", precision="fp32", batch_size=16), snapshot),
        "bf16": (dict(model="mlp", precision="amp-bf16", batch_size=16), inside),
        "ddp": (dict(model="mlp", precision="fp32", batch_size=16, world_size=2), inside),
        "gpt": (dict(model="gpt", precision="amp-bf16", batch_size=4, **SMALL["gpt"]), outside),
        "mnist": (dict(model="mlp", precision="fp32", batch_size=64, data="mnist", num_workers=0,
                       data_root=str(write_mnist(out / "data", 512))), ProfileConfig(phase_steps=3)),
        "failed": (dict(model="mlp", precision="half-bf16", batch_size=16),
                   ProfileConfig(phase_steps=2, trace_steps=1, output_dir=str(out / "a-file" / "profiles"))),
        "none": (dict(model="mlp", precision="fp32", batch_size=32), None),
    }
    records = {name: run_cell(RunConfig(**FAST, **config), timeout_s=300, profile=profile)
               for name, (config, profile) in cells.items()}
    for _ in range(2):  # compute slows down a lot more than loading when other processes share the 2 cores
        if records["mnist"]["profile"]["data_bound"]:
            break
        records["mnist"] = run_cell(RunConfig(**FAST, **cells["mnist"][0]), timeout_s=300, profile=cells["mnist"][1])
    assert {name: r["status"] for name, r in records.items()} == dict.fromkeys(cells, "ok")
    results = write_results(list(records.values()), str(out / "results.jsonl"))
    paths = build_report([results], str(site / "report.html"))
    return {"out": out, "site": site, "records": records, "paths": paths, **read_report(paths)}


def read_report(paths: dict[str, str]) -> dict:
    built = read_built(paths)
    page = built["html"]
    return {**built, "section": page[page.index('<section id="profile">'):page.index('<section id="failures">')]}


def cell_label(record: dict) -> str:
    """The report's cell: the cell id, plus the config fields where it departs from its model's usual."""
    return record["cell_id"] + (" data=mnist" if record["config"]["data"] == "mnist" else "")


def csv_row(rows: list[dict], record: dict) -> dict:
    config = record["config"]
    match = [r for r in rows if (r["model"], r["precision"], r["batch_size"], r["gpus"]) ==
             (config["model"], config["precision"], str(config["batch_size"]), str(config["world_size"]))
             and r["variant"] == cell_label(record)[len(record["cell_id"]):].strip()]
    assert len(match) == 1, (record["cell_id"], match)
    return match[0]


def figure_data(page: str, div_id: str) -> list[dict]:
    """The traces plotly draws in one chart, as the page hands them to Plotly.newPlot."""
    start = re.search(r'Plotly\.newPlot\(\s*"' + div_id + '",', page).end()
    start = page.index("[", start)
    traces, _ = json.JSONDecoder().raw_decode(page[start:])
    return traces


def phase_charts(page: str) -> list[list[dict]]:
    return [figure_data(page, div_id) for div_id in re.findall(r'id="(profile-\d+)" class="plotly-graph-div"', page)]


def values(array: list | dict) -> list:
    """A trace's array as plotly writes it: a list, or numbers packed as base64 with their dtype."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return array


def bar_value(charts: list[list[dict]], record: dict, phase: str) -> float:
    """The ms drawn for one phase of a record's cell, found by the cell in the bar's hover data."""
    values_ = [x for chart in charts for trace in chart if trace.get("name") == phase and trace.get("meta")
               for x, data in zip(values(trace["x"]), trace["customdata"]) if data[2] == cell_label(record)]
    assert len(values_) == 1, (record["cell_id"], phase, values_)
    return values_[0]


def links(section: str) -> dict[str, list[tuple[str, str]]]:
    """{file the record names: [(href, text)]} of every link to a profile file."""
    out: dict[str, list[tuple[str, str]]] = {}
    for href, title, text in re.findall(r'<a href="([^"]+)" title="([^"]+)">([^<]+)</a>', section):
        out.setdefault(title, []).append((href, text))
    return out


def test_the_cells_profiled_as_designed(profiled):
    records = profiled["records"]
    for name in ("fp32", "bf16", "ddp", "gpt"):
        assert os.path.isfile(records[name]["profile"]["trace_file"]) and records[name]["profile"]["top_ops"]
    assert records["mnist"]["profile"]["data_bound"] is True  # a real pipeline, no worker: data dominates
    assert not any(records[n]["profile"]["data_bound"] for n in ("fp32", "bf16", "ddp", "gpt"))
    failed = records["failed"]["profile"]
    assert set(failed) == {"error"} and "NotADirectoryError" in failed["error"]
    assert records["none"]["profile"] is None


def test_the_phases_in_the_csv_the_bars_and_the_table_are_the_records(profiled):
    charts = phase_charts(profiled["html"])
    assert len(charts) == 2  # one per (model, hardware): mlp and gpt on this CPU
    for name in ("fp32", "bf16", "ddp", "gpt", "mnist"):
        record = profiled["records"][name]
        phases = record["profile"]["phases_s"]
        row = csv_row(profiled["rows"], record)
        for phase in PHASES:
            assert float(row[f"phase_{phase}_s"]) == pytest.approx(phases[phase])
            assert bar_value(charts, record, phase) == pytest.approx(phases[phase] * 1e3)
        assert float(row["data_share"]) == pytest.approx(record["profile"]["data_share"])
        shown = " / ".join(f"{phases[p] * 1e3:.3g}" for p in PHASES)
        assert f">{shown}<" in profiled["section"]
    for name in ("failed", "none"):  # no phases: blank in the CSV, no bar
        row = csv_row(profiled["rows"], profiled["records"][name])
        assert row["phase_data_s"] == "" and row["data_share"] == ""
        assert not any(d[2] == cell_label(profiled["records"][name]) for chart in charts for t in chart
                       for d in t.get("customdata") or [])


def test_the_data_bound_cell_is_flagged_in_the_bars_and_the_table(profiled):
    labels = {d[2]: y for chart in phase_charts(profiled["html"]) for t in chart if t.get("meta")
              for y, d in zip(t["y"], t["customdata"])}
    flagged = {cell for cell, label in labels.items() if "data-bound" in label}
    assert flagged == {cell_label(profiled["records"]["mnist"])}
    share = profiled["records"]["mnist"]["profile"]["data_share"]
    assert f"data-bound: waiting for data {share:.0%} of the step" in profiled["section"]


def test_the_top_operators_are_listed_with_their_time_per_step(profiled):
    record = profiled["records"]["gpt"]
    first = record["profile"]["top_ops"][0]
    section = profiled["section"]
    assert f'title="{first["name"]}"' in section
    assert f"{first['self_time_s'] * 1e3:.3g} ms" in section
    assert "Top operators by self CPU time per optimizer step" in section
    share = record["profile"]["reduced_precision_share"]
    assert share > 0.2 and f">{share:.0%}<" in section  # autocast ran the gpt's matmuls in bf16
    assert profiled["records"]["fp32"]["profile"]["reduced_precision_share"] == 0


def test_trace_links_are_relative_inside_the_report_directory_and_survive_a_move(profiled, tmp_path):
    found = links(profiled["section"])
    for name in ("fp32", "bf16"):
        trace = profiled["records"][name]["profile"]["trace_file"]
        [(href, text)] = found[trace]
        assert text == "trace" and not href.startswith(("file:", "/"))
        assert os.path.samefile(profiled["site"] / urllib.parse.unquote(href), trace)
    moved = tmp_path / "moved"
    shutil.copytree(profiled["site"], moved)
    for name in ("fp32", "bf16"):
        [(href, _)] = found[profiled["records"][name]["profile"]["trace_file"]]
        with open(moved / urllib.parse.unquote(href)) as f:
            assert json.load(f)["traceEvents"]  # the Chrome trace itself, inside the moved copy


def test_a_trace_outside_the_report_directory_gets_an_absolute_link(profiled):
    trace = profiled["records"]["gpt"]["profile"]["trace_file"]
    [(href, _)] = links(profiled["section"])[trace]
    assert href == Path(trace).as_uri() and href.startswith("file:///")
    assert "ui.perfetto.dev" in profiled["section"] and "pytorch.org/memory_viz" in profiled["section"]


def test_every_rank_of_a_ddp_cell_has_its_trace_linked(profiled):
    rank0 = profiled["records"]["ddp"]["profile"]["trace_file"]
    assert os.path.basename(rank0) == "rank0.trace.json"
    [(href0, text0)] = links(profiled["section"])[rank0]
    rank1 = os.path.join(os.path.dirname(rank0), "rank1.trace.json")
    [(href1, text1)] = links(profiled["section"])[rank1]
    assert (text0, text1) == ("rank 0", "1")
    assert os.path.samefile(profiled["site"] / urllib.parse.unquote(href1), rank1)


def test_a_trace_written_beside_the_run_is_linked_relative_to_a_report_beside_it(tmp_path):
    """`trainkit run -o x.json --profile` records its trace by absolute path; a report in the same
    directory links it relatively, so the directory can move as a whole."""
    done = subprocess.run(trainkit_cmd("run", "--model", "mlp", "--batch-size", "16", "--steps", "2",
                                       "--warmup-steps", "1", "--device", "cpu", "--profile", "--quiet",
                                       "-o", "x.json"), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "x.json") as f:
        trace = json.load(f)["profile"]["trace_file"]
    assert os.path.isabs(trace) and os.path.isfile(trace)
    report = read_report(build_report([str(tmp_path / "x.json")], str(tmp_path / "report.html")))
    [(href, _)] = links(report["section"])[trace]  # the link's title: the file found
    assert href == urllib.parse.quote(os.path.relpath(trace, tmp_path))


def test_a_directory_of_results_and_traces_reads_as_its_results(profiled, tmp_path):
    """bench leaves traces (JSON too) under its report directory; reading the directory skips them."""
    paths = build_report([str(profiled["out"])], str(tmp_path / "r.html"))
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(profiled["records"])


def test_cpu_records_have_no_mfu_or_energy_columns(profiled):
    assert profiled["records"]["fp32"]["mfu"] is None and profiled["records"]["fp32"]["energy_j_per_sample"] is None
    header = list(profiled["rows"][0])
    assert "mfu" not in header and "energy_j_per_sample" not in header
    assert "MFU" not in profiled["markdown"] and "J/sample" not in profiled["markdown"]
    assert ">MFU<" not in profiled["html"] and ">J/sample<" not in profiled["html"]
    # A CPU snapshot request records why there is none; the table says so instead of a link.
    assert profiled["records"]["fp32"]["profile"]["memory_snapshot_file"] is None
    assert "No memory snapshot: allocator snapshots need a CUDA device." in profiled["section"]
    assert "memory snapshot</a>" not in profiled["section"]


def gpu_shaped(record: dict, root: Path, throttled: bool) -> dict:
    """A real record given what a GPU run adds: MFU from its own FLOPs and throughput against an
    H100's peak, energy from a mean power over its own throughput, NVML samples, device-time
    operators and an allocator snapshot file (the empty history torch.cuda.memory._snapshot()
    returns before any allocation) under `root`."""
    record = copy.deepcopy(record)
    gpu = "NVIDIA H100 80GB HBM3"
    peak = peak_flops_per_s(gpu, record["config"]["precision"])
    power_w = 350.0 if throttled else 300.0
    record["env"].update(gpu_name=gpu, gpu_count=1, driver="580.65", cuda="13.0")
    record.update(peak_flops_per_s=peak, throttled=throttled,
                  mfu=mfu(record["flops_per_sample"], record["throughput_samples_per_s"], peak, 1),
                  energy_j_per_sample=power_w / record["throughput_samples_per_s"],
                  energy_method="NVML energy counter over the timed steps",
                  gpu_samples={"samples": 12, "interval_s": 0.1,
                               "sm_clock_mhz": {"min": 1410, "median": 1755, "max": 1980},
                               "temperature_c_max": 71, "power_w_mean": power_w,
                               "throttle_reasons": ["SwPowerCap"] if throttled else [], "throttled": throttled})
    snapshot = root / "profiles" / record["cell_id"] / "rank0.memory.pickle"
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_bytes(pickle.dumps({"segments": [], "device_traces": [[]]}))
    record["profile"].pop("memory_snapshot_note", None)
    record["profile"].update(time_basis="device (kernel) time", phase_method="cuda-events",
                             memory_snapshot_file=str(snapshot), memory_snapshot_steps=1)
    return record


def test_gpu_shaped_records_show_mfu_energy_clocks_and_the_snapshot(profiled, tmp_path):
    site = tmp_path / "gpu"
    gpu = [gpu_shaped(profiled["records"]["fp32"], site, throttled=False),
           gpu_shaped(profiled["records"]["bf16"], site, throttled=True)]
    cpu = profiled["records"]["gpt"]
    paths = build_report([write_results([*gpu, cpu], str(tmp_path / "gpu.jsonl"))], str(site / "report.html"))
    report = read_report(paths)
    header = list(report["rows"][0])
    assert header.index("mfu") == header.index("speedup_vs_fp32") + 1
    for record in gpu:
        row = csv_row(report["rows"], record)
        assert row["hardware"] == "NVIDIA H100 80GB HBM3"
        assert float(row["mfu"]) == pytest.approx(record["mfu"])
        assert float(row["energy_j_per_sample"]) == pytest.approx(record["energy_j_per_sample"])
        assert f"| {mfu_text(record['mfu'])} |" in report["markdown"]
        assert f"| {record['energy_j_per_sample']:.3g} |" in report["markdown"]
        [(href, text)] = links(report["section"])[record["profile"]["memory_snapshot_file"]]
        assert text == "memory snapshot" and os.path.samefile(site / urllib.parse.unquote(href),
                                                              record["profile"]["memory_snapshot_file"])
    assert csv_row(report["rows"], cpu)["mfu"] == ""  # a CPU cell beside them: blank, not zero
    cpu_table = report["markdown"].split("## gpt · CPU")[1].split("## ")[0]
    assert "MFU" not in cpu_table and "J/sample" not in cpu_table
    section = report["section"]
    assert ">1,410 / 1,755 / 1,980<" in section and ">yes<" in section and ">no<" in section
    assert "throttled: SwPowerCap" in section
    assert "Energy: NVML energy counter over the timed steps." in section
    peaks = sorted({r["peak_flops_per_s"] for r in gpu})
    assert "(" + ", ".join(f"{p / 1e12:,.0f} TFLOP/s" for p in peaks) + ")" in section
    assert "self CPU time / device (kernel) time" not in section  # one note per table
    assert "Top operators by self device (kernel) time" in section


def test_a_failed_profile_and_no_profile_leave_the_page_whole(profiled):
    section = profiled["section"]
    failed = profiled["records"]["failed"]
    assert html.escape(f"profiling failed: {failed['profile']['error']}") in section
    assert "The profiling pass failed in 1 record " in section
    none = profiled["records"]["none"]
    assert csv_row(profiled["rows"], none)["status"] == "ok"  # in the summary, not in the profile
    rows = re.findall(r'<tr data-precision="([\w-]+)">((?:(?!</tr>).)*)</tr>', section)
    assert len(rows) == 6  # every record but the unprofiled one
    assert not any(">32<" in cells for _, cells in rows)  # batch 32 is the unprofiled cell


def test_only_a_failed_or_no_profile_says_so_plainly(profiled, tmp_path):
    records = profiled["records"]
    paths = build_report([write_results([records["none"]], str(tmp_path / "none.jsonl"))], str(tmp_path / "n.html"))
    report = read_report(paths)
    assert NOT_PROFILED in report["section"] and "plotly-graph-div" not in report["section"]
    assert not any(c.startswith("phase_") for c in report["rows"][0])
    paths = build_report([write_results([records["failed"], records["none"]], str(tmp_path / "f.jsonl"))],
                         str(tmp_path / "f.html"))
    section = read_report(paths)["section"]
    assert "No cell here recorded a phase breakdown" in section and "plotly-graph-div" not in section
    assert "profiling failed: NotADirectoryError" in section


def test_null_fields_in_a_profile_never_break_the_report(profiled, tmp_path):
    record = copy.deepcopy(profiled["records"]["bf16"])
    record["profile"].update(phases_s={"data": None, "forward": 0.001, "backward": None, "optimizer": None},
                             phase_total_s=None, data_share=None, data_bound=None, top_ops=None,
                             reduced_precision_share=None, trace_file=None)
    record.update(mfu=None, gpu_samples={"samples": 2, "interval_s": 0.1, "sm_clock_mhz": None,
                                         "temperature_c_max": None, "power_w_mean": None,
                                         "throttle_reasons": [], "throttled": False}, throttled=False)
    other = copy.deepcopy(profiled["records"]["fp32"])
    other["profile"]["top_ops"] = [{"name": "aten::mm", "self_time_s": None, "calls": None}, {"calls": 3}]
    paths = build_report([write_results([record, other], str(tmp_path / "nulls.jsonl"))], str(tmp_path / "r.html"))
    report = read_report(paths)
    [chart] = phase_charts(report["html"])
    assert {d[2] for t in chart if t.get("meta") for d in t["customdata"]} == {other["cell_id"]}
    assert ">no<" in report["section"] and "aten::mm</code> –" in report["section"]


# --- in a real browser --------------------------------------------------------------------------

def test_the_page_with_its_profile_section_renders_without_console_errors(profiled, tmp_path):
    assert profiled["section"].count('<div class="chart">') == 2  # the phase bars render with the rest
    assert_every_chart_renders(profiled["paths"]["html"], profiled["html"], tmp_path)


def test_the_precision_filter_drops_the_other_precisions_bars(profiled, tmp_path):
    """fp32 only: the mlp chart loses its amp-bf16 bar, which sits between fp32 bars, with no empty row left."""
    dom = rendered_dom(profiled["paths"]["html"], tmp_path, "#precision=fp32")
    chart = dom[dom.index('id="profile-1"'):]  # mlp: pairs are in (model, hardware) order
    chart = chart[:chart.index("<details")]  # the chart, up to its table
    ticks = re.findall(r'class="ytick"><text[^>]*>(.*?)</text>', chart)
    assert [re.sub(r"<[^>]+>", "", t) for t in reversed(ticks)] == [  # drawn from the bottom up
        "bs16 ga1 ×1 fp32", "bs64 ga1 ×1 fp32 data=mnist data-bound", "bs16 ga1 ×2 fp32"]
    legend = re.findall(r'class="legendtext"[^>]*>([^<]*)<', chart)
    assert legend == list(PHASES)  # the phases stay in the legend under any filter


# --- size and speed ------------------------------------------------------------------------------

def test_a_thousand_profiled_cells_build_in_under_10_s_and_15_mb(profiled, tmp_path):
    templates = [profiled["records"][n] for n in ("fp32", "bf16", "gpt", "mnist")]
    many = synthesize(templates, 1000)
    for record in many:
        if record["status"] != "ok":
            record["profile"] = None  # a cell that ran out of memory never reached its profiling pass
    assert sum(bool(r["profile"] and r["profile"].get("top_ops")) for r in many) > 700
    results = write_results(many, str(tmp_path / "results.jsonl"))
    started = time.process_time()  # CPU time: a busy neighbour cannot inflate it
    paths = build_report([results], str(profiled["site"] / "many.html"))
    elapsed_s = time.process_time() - started
    size_mb = os.path.getsize(paths["html"]) / 1e6
    print(f"1,000 profiled cells: built in {elapsed_s:.2f} s of CPU, {size_mb:.1f} MB")
    assert elapsed_s < 10
    assert size_mb < 15
    page = read_report(paths)["section"]
    assert page.count("<tr data-precision=") == 1000 - sum(r["status"] != "ok" for r in many)
    shown = [int(n) for n in re.findall(r"Showing (\d+) of \d+ cells", page)]
    assert shown and max(shown) <= MAX_BARS  # the bars stop at MAX_BARS; the table holds every cell
