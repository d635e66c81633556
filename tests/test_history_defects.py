"""The run store's confirmed defects, each held by a test that failed before its fix (issue 24): a NaN
in an ingested file, lone slow nights at a series' ends, figures printed for what was not measured,
a missing store, a gate without history."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from tests.history_nights import base_records, write_nights
from trainkit.reports.cli import main
from trainkit.reports.history import store
from trainkit.reports.history.detect import analyse
from trainkit.reports.history.latest import check_night
from trainkit.reports.history.quality import EDGE_NIGHTS, Score, score
from trainkit.reports.history.series import noise

from .test_history_detect import RUNS, series


def _night_with_a_nan(tmp_path):
    records = base_records()
    records[0]["loss"]["curve"][-1] = math.nan  # a diverged step's loss, as Python's json writes it: NaN
    records[1]["throughput_samples_per_s"] = math.inf
    path = tmp_path / "night.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert "NaN" in path.read_text()
    return path, records


def test_a_nan_in_an_ingested_file_is_stored_as_null_and_the_store_stays_readable(tmp_path, capsys):
    db = str(tmp_path / "h.db")
    path, records = _night_with_a_nan(tmp_path)
    assert main(["history", "ingest", str(path), "--db", db]) == 0
    assert main(["history", "changes", "--db", db, "--json"]) == 0
    with store.opened(db, readonly=True) as conn:
        (text,) = conn.execute("SELECT record FROM records WHERE cell_id = ?", (records[0]["cell_id"],)).fetchone()
        assert conn.execute("SELECT count(*) FROM records WHERE json_valid(record) = 0").fetchone() == (0,)
    assert json.loads(text)["loss"]["curve"][-1] is None


def test_a_store_an_earlier_version_filled_with_nan_tokens_is_repaired_by_a_migration(tmp_path, capsys):
    db = str(tmp_path / "old.db")
    path, records = _night_with_a_nan(tmp_path)
    conn = store.connect(db, target=2)  # the schema that kept records as text with NaN tokens
    conn.execute("INSERT INTO runs (run_key, commit_sha, date, ingested_at) VALUES ('k', 'c1', '2026-01-01', 'x')")
    conn.executemany("INSERT INTO records (run_id, record_key, fingerprint, cell_id, status, memory, step_times_s, "
                     "record) VALUES (1, ?, '{}', ?, 'ok', ?, ?, ?)",
                     [(f"k{i}", r["cell_id"], json.dumps(r.get("memory")),
                       json.dumps([math.nan, *r["step_time_s"]["values"]]), json.dumps(r))
                      for i, r in enumerate(records)])
    conn.close()
    with sqlite3.connect(db) as raw:
        with pytest.raises(sqlite3.OperationalError, match="malformed JSON"):
            raw.execute("SELECT json_extract(record, '$.config.model') FROM records").fetchall()
    store.connect(db).close()  # a writer migrates
    with store.opened(db, readonly=True) as conn:
        assert conn.execute("SELECT count(*) FROM records WHERE json_valid(record) = 0 OR "
                            "json_valid(step_times_s) = 0").fetchone() == (0,)
        assert len(store.record_rows(conn)) == len(records)
    with store.opened(db) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET status = 'oom'")  # the triggers are back
    assert main(["history", "changes", "--db", db, "--json"]) == 0


@pytest.mark.parametrize("night", EDGE_NIGHTS)
def test_a_lone_slow_night_at_either_end_of_a_series_is_no_change_point(night):
    rng = np.random.default_rng(night)
    found = 0
    for _ in range(50):
        values = 100 * np.exp(rng.normal(0, 0.02, 40))
        values[night - 1] *= 0.7
        found += bool(analyse(series(values), RUNS).change_points)
    assert found == 0


def test_a_real_step_of_three_nights_at_the_end_is_still_found():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(20):
        values = 100 * np.exp(rng.normal(0, 0.02, 40))
        values[37:] *= 0.8
        hits += [c.index for c in analyse(series(values), RUNS).change_points] == [37]
    assert hits >= 19


def test_quality_scores_lone_nights_at_the_edges():
    s = score(0.02, 0.10, repeats=10, seed=0)
    assert s.series == 5 * 10  # step, none, outlier, edge, drift
    assert s.false_positives <= 1


def test_precision_is_not_applicable_when_nothing_was_found(capsys):
    empty = Score(0.02, 0.0, 0, 0, 0, 0, 0, 0, 10)
    assert empty.precision is None and empty.recall is None
    assert main(["history", "quality", "--repeats", "1", "--max-pvalue", "1e-300"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2%")]
    assert rows and all("| n/a |" in line for line in rows)
    assert "1.00" not in "".join(rows)


def test_show_says_n_a_for_the_noise_of_a_series_too_short_to_measure(tmp_path, capsys):
    assert noise([100.0, 101.0]) is None and noise([100.0, 0.0, 101.0]) is None
    db = str(tmp_path / "h.db")
    paths = write_nights(tmp_path / "nights", nights=2)
    assert main(["history", "ingest", *map(str, paths), "--db", db]) == 0
    capsys.readouterr()
    cell = base_records()[0]["cell_id"]
    assert main(["history", "show", cell, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "noise n/a" in out and "noise 0.0%" not in out
    assert main(["history", "show", cell, "--db", db, "--json"]) == 0
    assert {block["noise"] for block in json.loads(capsys.readouterr().out)} == {None}


@pytest.mark.parametrize("command", [["changes"], ["trend", "-o", "t.html"], ["show", "mlp"],
                                     ["ack", "mlp", "--metric", "throughput", "--who", "a", "--why", "b"]])
def test_a_store_path_that_does_not_exist_is_an_error_for_every_reading_command(tmp_path, capsys, monkeypatch,
                                                                                 command):
    monkeypatch.chdir(tmp_path)
    assert main(["history", *command, "--db", "missing.db"]) == 2
    err = capsys.readouterr().err
    assert "missing.db: no such run store" in err and err.count("\n") == 1
    assert not (tmp_path / "missing.db").exists()


def test_the_gate_says_when_it_had_no_history(tmp_path):
    db = str(tmp_path / "h.db")
    paths = write_nights(tmp_path / "nights", nights=2)
    assert main(["history", "ingest", *map(str, paths), "--db", db]) == 0
    tonight = [json.loads(line) for line in paths[-1].read_text().splitlines()]
    check = check_night(db, tonight, ("throughput",))
    assert check.warning and "no history to judge" in check.warning and "1 earlier night" in check.warning


def test_the_gates_line_says_it_had_no_history(tmp_path):
    from tests.test_history_gate import gate, night
    from trainkit.reports.history.store import connect

    rng = np.random.default_rng(5)
    db = str(tmp_path / "history.db")
    connect(db).close()
    paths = []
    for n in (1, 2):
        path = tmp_path / f"night-{n:02d}" / "results.jsonl"
        path.parent.mkdir()
        path.write_text("".join(json.dumps(r) + "\n" for r in night(n, False, rng, 0.15)))
        assert main(["history", "ingest", str(path), "--db", db]) == 0
        paths.append(str(path))
    status, stage = gate({"tmp": tmp_path, "root": str(tmp_path / "baselines")}, paths[-1], "--history", db)
    assert "history: " in stage["line"] and "no history to judge tonight by" in stage["line"]
