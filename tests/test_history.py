"""The run store and `python -m reports history` end to end: forty nights built from real CPU records
(tests/history_data), idempotent ingest, cut-off files, schema migrations, a reader beside a writer
in another process, and the trend page in headless Chromium."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from tests.history_nights import NIGHTS, STEP_CELL, base_records, commit, night_records, write_nights
from tests.test_reports import rendered_dom
from trainkit.reports.cli import main
from trainkit.reports.history import store

from .conftest import REPO


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    """Forty nights ingested one by one, each with a link to its report."""
    folder = tmp_path_factory.mktemp("forty")
    db = str(folder / "history.db")
    for path in write_nights(folder / "nights"):
        url = f"https://ci.example/{path.stem}"
        assert main(["history", "ingest", str(path), "--db", db, "--report-url", url]) == 0
    return {"db": db, "folder": folder}


def changes_json(db, capsys, *extra):
    capsys.readouterr()
    assert main(["history", "changes", "--db", db, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_forty_nights_name_the_stepped_cell_between_nights_24_and_26_and_no_other(forty, capsys):
    out = changes_json(forty["db"], capsys)
    assert out["nights"] == NIGHTS and out["series"] == 4 * 3  # four cells x throughput, memory, loss
    (change,) = out["change_points"]
    assert change["cell_id"] == STEP_CELL and change["metric"] == "throughput" and change["kind"] == "regression"
    assert 24 <= change["night_before"] < change["night_after"] <= 26
    assert change["commit_before"] == commit(change["night_before"])
    assert change["commit_after"] == commit(change["night_after"])
    assert -0.20 < change["magnitude"] < -0.10 and change["p_value"] < 1e-3


def test_the_table_gives_the_change_with_its_commit_range(forty, capsys):
    capsys.readouterr()
    assert main(["history", "changes", "--db", forty["db"]]) == 0
    text = capsys.readouterr().out
    assert text.startswith("1 change point(s) in 12 series over 40 night(s)")
    assert f"nights 24->25  commits {commit(24)[:12]}..{commit(25)[:12]}" in text


def test_since_a_reference_adds_the_drift_of_the_stepped_cell_only(forty, capsys):
    out = changes_json(forty["db"], capsys, "--since", commit(5)[:8])
    assert [(d["cell_id"], d["metric"]) for d in out["drifts"]] == [(STEP_CELL, "throughput")]
    assert out["drifts"][0]["reference_night"] == 5
    later = changes_json(forty["db"], capsys, "--since", "2026-11-01")  # night 32: after the step
    assert later["change_points"] == [] and later["drifts"] == []


def test_the_trend_page_renders_in_chromium_with_the_change_marked(forty, tmp_path):
    page = forty["folder"] / "trend.html"
    assert main(["history", "trend", "--db", forty["db"], "-o", str(page)]) == 0
    text = page.read_text()
    dom = rendered_dom(str(page), tmp_path)  # asserts no console error
    assert dom.count('class="plot-container') == text.count('<div class="chart">') == 4
    assert f"{commit(24)[:8]}..{commit(25)[:8]}" in dom  # the change point's label on its chart
    # ... and its row in the table, the nights linked to their reports
    assert '24</a> → <a href="https://ci.example/night-25">25</a>' in dom and "regression" in dom
    assert "https://ci.example/night-07" in text.replace("\\u002f", "/")  # ... and each point to its own
    assert "t-test p&lt;0.001" in dom or "t-test p<0.001" in dom  # the detector's parameters on the chart


def test_the_page_filters_to_changed_series_and_sorts_the_most_unstable_first(forty, tmp_path):
    page = forty["folder"] / "trend-filters.html"
    assert main(["history", "trend", "--db", forty["db"], "-o", str(page)]) == 0
    dom = rendered_dom(str(page), tmp_path, "#only=changed")
    sections = re.findall(r'<section id="s\d+" data-model="[^"]*" data-precision="[^"]*" data-hardware="[^"]*" '
                          r'data-changed="(\d)" data-noise="([\d.]+)"[^>]*?(?: class="(off)?")?>', dom)
    assert len(sections) == 4 and all((changed == "1") == (off == "") for changed, _, off in sections)
    dom = rendered_dom(str(page), tmp_path, "#sort=unstable")
    noises = [float(n) for _, n, _ in re.findall(r'<section id="s\d+" data-model="[^"]*" data-precision="[^"]*" '
                                                 r'data-hardware="[^"]*" data-changed="(\d)" data-noise="([\d.]+)"'
                                                 r'[^>]*?(?: class="(off)?")?>', dom)]
    assert len(noises) == 4 and noises == sorted(noises, reverse=True) and len(set(noises)) == 4


def test_show_lists_a_cells_nights_with_the_change(forty, capsys):
    capsys.readouterr()
    assert main(["history", "show", STEP_CELL, "--db", forty["db"], "--json"]) == 0
    blocks = {b["metric"]: b for b in json.loads(capsys.readouterr().out)}
    assert blocks["throughput"]["change_nights"] == [25] and len(blocks["throughput"]["nights"]) == NIGHTS
    assert blocks["loss"]["change_nights"] == [] and blocks["loss"]["method"] == "exact"


def count(db: str, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_ingesting_a_night_twice_or_as_both_of_its_files_adds_it_once(tmp_path, capsys):
    night = night_records(1, np.random.default_rng(0))
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in night))
    bench = tmp_path / "benchmark.json"  # bench's pytest-benchmark JSON of the same cells
    bench.write_text(json.dumps({"benchmarks": [{"name": r["cell_id"], "stats": {}, "extra_info": r} for r in night],
                                 "commit_info": {"id": "feedbeef" * 5, "branch": "main"},
                                 "datetime": "2026-10-01T02:17:00+00:00"}))
    db = str(tmp_path / "h.db")
    assert main(["history", "ingest", str(results), str(bench), "--db", db]) == 0
    assert (count(db, "runs"), count(db, "records")) == (1, 4)
    assert main(["history", "ingest", str(bench), "--db", db]) == 0
    assert main(["history", "ingest", str(results), "--db", db, "--commit", "abc", "--date", "2026-10-02"]) == 0
    assert (count(db, "runs"), count(db, "records")) == (1, 4)
    assert capsys.readouterr().out.count("nothing added") == 2


def test_a_file_of_more_records_than_sqlite_takes_parameters_at_once_ingests_once(tmp_path, capsys):
    rng = np.random.default_rng(0)
    many = [r for night in range(1, 151) for r in night_records(night, rng)]  # 600 records, one file
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in many))
    db = str(tmp_path / "h.db")
    assert main(["history", "ingest", str(path), "--db", db]) == 0
    assert main(["history", "ingest", str(path), "--db", db]) == 0
    assert count(db, "records") == 600 and "600 record(s) added" in capsys.readouterr().out


def test_an_old_pytest_benchmark_file_brings_its_commit_and_date(tmp_path):
    records = night_records(3, np.random.default_rng(0))
    old = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit" / "0001_abc_20261003.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"benchmarks": [{"name": "x", "stats": {"min": 1}, "extra_info": r} for r in records],
                               "commit_info": {"id": "c0ffee" * 6, "branch": "release"},
                               "datetime": "2026-10-03T05:00:00"}))
    db = str(tmp_path / "h.db")
    assert main(["history", "ingest", str(tmp_path / ".benchmarks"), "--db", db]) == 0
    with store.opened(db, readonly=True) as conn:
        (run,) = store.runs(conn)
    assert (run.commit, run.branch, run.date) == ("c0ffee" * 6, "release", "2026-10-03T05:00:00+00:00")


def test_a_cut_off_results_file_is_read_up_to_the_cut_with_one_warning(tmp_path, capsys):
    lines = [json.dumps(r) for r in night_records(1, np.random.default_rng(0))]
    cut = tmp_path / "results.jsonl"
    cut.write_text("\n".join(lines[:3]) + "\n" + lines[3][:200])  # a run killed while appending its last cell
    db = str(tmp_path / "h.db")
    assert main(["history", "ingest", str(cut), "--db", db]) == 0
    assert count(db, "records") == 3
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "line 4 is cut off" in err


def test_a_store_of_the_older_schema_is_migrated_with_its_runs(tmp_path):
    db = str(tmp_path / "old.db")
    with store.connect(db, target=1) as conn:  # a store as the first schema version wrote it
        conn.execute("INSERT INTO runs (run_key, commit_sha, date, ingested_at) VALUES ('k', 'c1', '2026-01-01', 'x')")
    conn.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    with pytest.raises(store.StoreError, match=f"schema version 1, this trainkit reads {store.SCHEMA_VERSION}"):
        store.connect(db, readonly=True)  # a reader never migrates
    path = tmp_path / "night.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in base_records()))
    assert main(["history", "ingest", str(path), "--db", db]) == 0
    with store.opened(db, readonly=True) as conn:
        assert [r.commit for r in store.runs(conn)][0] == "c1" and store.acks(conn) == []
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION


@pytest.mark.parametrize("setup, message", [
    ("PRAGMA user_version = 99", "schema version 99 is newer than this trainkit reads"),
    ("CREATE TABLE other (x)", "an SQLite file, but not a trainkit run store"),
])
def test_a_newer_or_foreign_store_is_refused_in_one_line(tmp_path, capsys, setup, message):
    db = str(tmp_path / "x.db")
    with sqlite3.connect(db) as conn:
        conn.execute(setup)
    path = tmp_path / "night.jsonl"
    path.write_text(json.dumps(base_records()[0]) + "\n")
    assert main(["history", "ingest", str(path), "--db", db]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path, capsys):
    db = tmp_path / "notes.db"
    db.write_text("not a database\n")
    assert main(["history", "changes", "--db", str(db)]) == 2
    assert main(["history", "ingest", str(tmp_path), "--db", str(db)]) == 2  # (no results there either)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {db}: not a run store (file is not a database)" and len(err) == 2


def test_the_store_is_append_only(tmp_path):
    db = str(tmp_path / "h.db")
    path = tmp_path / "night.jsonl"
    path.write_text(json.dumps(base_records()[0]) + "\n")
    assert main(["history", "ingest", str(path), "--db", db]) == 0
    with store.opened(db) as conn:
        for statement in ("UPDATE records SET status = 'oom'", "DELETE FROM runs"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)


@pytest.mark.parametrize("argv, message", [
    (["changes", "--db", "missing.db"], "no such run store"),
    (["ingest", "x.jsonl", "--db", "h.db", "--date", "yesterday"], "'yesterday' is not ISO 8601"),
    (["changes", "--db", "h.db", "--max-pvalue", "2"], "max_pvalue 2.0 is not a p-value in (0, 1]"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["history", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_ack_names_a_cell_the_store_lacks(forty, capsys):
    argv = ["history", "ack", "mlp", "--db", forty["db"], "--metric", "throughput", "--who", "a", "--why", "b"]
    assert main(argv) == 2
    assert "no record of cell 'mlp'" in capsys.readouterr().err


def test_a_reference_that_names_no_run_says_what_the_store_holds(forty, capsys):
    assert main(["history", "changes", "--db", forty["db"], "--since", "nonsense"]) == 2
    assert "'nonsense' names no run" in capsys.readouterr().err


WRITER = """
import json, sys, time
from trainkit.reports.history import store
db, ready, nights = sys.argv[1], sys.argv[2], int(sys.argv[3])
records = [json.loads(line) for line in open(sys.argv[4])]
conn = store.connect(db)
for night in range(nights):
    night_records = [{**r, "finished_at": f"2026-10-{night + 1:02d}T02:17:00+00:00"} for r in records]
    conn.execute("BEGIN IMMEDIATE")  # the write lock, held while the reader reads
    conn.execute("INSERT INTO runs (run_key, date, ingested_at) VALUES (?, ?, 'now')", (f"held{night}", "2026-09-01"))
    if night == 0:  # the lock is held until the reader has read: a reader that waited for it never would
        open(ready, "w").write("locked")
        deadline = time.monotonic() + 60
        while open(ready).read() != "read":
            assert time.monotonic() < deadline, "the reader never read while the lock was held"
            time.sleep(0.01)
    conn.execute("ROLLBACK")
    store.add_run(conn, {"date": f"2026-10-{night + 1:02d}T02:17:00+00:00", "commit": str(night)}, night_records,
                  [{"cpu": "x", "torch": "t"}] * len(night_records))
open(ready, "w").write("done")
"""

READER = """
import sys, time
from trainkit.reports.history import store
db, ready = sys.argv[1], sys.argv[2]
while open(ready).read() != "locked":
    time.sleep(0.01)
seen, started = [], time.monotonic()
with store.opened(db, readonly=True) as conn:
    first = time.monotonic() - started
    while True:
        seen.append(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
        if len(seen) == 1:
            open(ready, "w").write("read")
        if open(ready).read() == "done" and seen[-1] == int(sys.argv[3]):
            break
        time.sleep(0.005)
print(f"{first:.3f} {seen[0]} {seen[-1]} {int(seen == sorted(seen))}")
"""


def test_a_reader_reads_while_a_writer_holds_the_lock_in_another_process(tmp_path):
    db, ready = str(tmp_path / "h.db"), tmp_path / "ready"
    ready.write_text("")
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in base_records()))
    store.connect(db).close()  # created (and in WAL mode) before either starts
    env = {"PYTHONPATH": REPO, "PATH": "/usr/bin:/bin"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, db, str(ready), "20", str(data)], env=env)
    reader = subprocess.run([sys.executable, "-c", READER, db, str(ready), "20"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert writer.wait(timeout=120) == 0 and reader.returncode == 0, reader.stderr
    _, first, last, monotonic = reader.stdout.split()
    # The writer let go of its lock only once the reader had read (see WRITER): the reader read while
    # the lock was held, without waiting for it; the held run was never visible, every commit was.
    assert first == "0" and last == "20" and monotonic == "1"


def test_the_reader_is_not_refused_while_the_writer_is_open_in_this_process(tmp_path):
    db = str(tmp_path / "h.db")
    writer = store.connect(db)
    writer.execute("BEGIN IMMEDIATE")
    # The writer holds its lock throughout: a reader that waited for it would end in "database is
    # locked" after the busy timeout, so a count read here is a read that did not wait.
    with store.opened(db, readonly=True) as reader:
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    writer.execute("ROLLBACK")
    writer.close()
