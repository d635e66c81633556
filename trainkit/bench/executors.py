"""Where the matrix's cells run: here (--executor local), or as submitit jobs (slurm, submitit-local).

The rest of bench does not change with the executor: the same cells, ids and skip rules, one
pytest-benchmark entry per cell whose statistics are the cell's timed steps, the record in
extra_info, the results file and the report. With a job executor:

    first cell's test   every cell still to run is submitted (SLURM: one job array per resource shape)
    each cell's test    waits for its own job; meanwhile every job that ends has its record appended
                        to the results file at once, whichever test is waiting, so a driver that dies
                        loses nothing that ended
    the record          comes back from the job (trainkit.engine.cluster.run_cell_job), or is made from how
                        the job ended (sacct: TIMEOUT -> timeout, OUT_OF_MEMORY -> oom, NODE_FAIL,
                        PREEMPTED, CANCELLED, FAILED -> crashed)
    pytest-benchmark    the job's first `rounds` timed step times, replayed through benchmark.pedantic
                        on bench's worker clock: the same statistics the local executor records

--resume RESULTS continues a run: its recorded cells are skipped (and stay in the results file and
the report), and results of jobs that ended after their driver died are taken from the job
directory instead of being run again.

conftest calls in at five places: add_options, probe_hardware, arrange, results_file and start.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import warnings
from dataclasses import replace
from typing import Any

import pytest

from trainkit.engine import cluster
from trainkit.engine.cluster import CellJob, ExecutorOptions
from trainkit.engine.spec.schema import CutOffLineWarning, parse_jsonl, read_jsonl, replacing

from .clock import advance
from .matrix import CellSpec
from .runner import BenchSession, _clock, outcome, timestamp

OPTIONS = pytest.StashKey[ExecutorOptions]()
RESULTS = pytest.StashKey[str]()

POLL_S = {"slurm": (1.0, 30.0), "submitit-local": (0.2, 1.0)}
"""First and longest pause between looks at the jobs: sacct is asked at most this often."""
HEARTBEAT_S = 300.0
"""A progress line at least this often while a test waits, though nothing changed (a queue wait)."""


def _results(text: str) -> str:
    """An argparse type: a results file to resume."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such results file: {text!r}")
    return text


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("trainkit-executor", "trainkit: where the cells run (see README, "
                                                 "'Running on a SLURM cluster')")
    cluster.add_options(group.addoption)
    group.addoption("--resume", dest="tk_resume", type=_results, default=None, metavar="RESULTS",
                    help="continue the run that wrote RESULTS: its recorded cells are skipped, new records "
                         "are appended to it")


def options(config: pytest.Config) -> ExecutorOptions:
    if OPTIONS not in config.stash:
        config.stash[OPTIONS] = cluster.from_namespace(config.option)
    return config.stash[OPTIONS]


def results_file(config: pytest.Config, report_dir: str) -> str:
    """The session's results file: --resume's, --results-file, or a new one in the report dir."""
    if RESULTS not in config.stash:
        resume, given = config.getoption("tk_resume"), config.getoption("tk_results_file")
        config.stash[RESULTS] = resume or given or os.path.join(report_dir, f"results-{timestamp()}.jsonl")
    return config.stash[RESULTS]


def job_dir(config: pytest.Config) -> str:
    """Where jobs write their scripts, logs and results: beside the results file unless --job-dir."""
    given = options(config).job_dir
    if given:
        return given
    results = results_file(config, config.getoption("tk_report_dir"))
    return os.path.splitext(results)[0] + ".jobs"


def probe_hardware(config: pytest.Config, probe: Any) -> dict[str, Any]:
    """What the cells will run on: this machine (probed in a fresh worker, as always), or with
    --executor slurm a node of the cluster, probed by a one-task job. Raises RuntimeError (one line)."""
    o, device = options(config), config.getoption("tk_device")
    if o.executor != "slurm":
        return probe(device)
    info = cluster.probe_on_cluster(o, device, os.path.join(job_dir(config), "probe"), say=_say(config))
    # A cell takes as many nodes as its ranks need (trainkit.engine.cluster.job_shape): the cluster, not
    # the probe's node, bounds how many GPUs a cell may have.
    return dict(info, gpu_count=sys.maxsize, cpu_count=sys.maxsize)


def _say(config: pytest.Config) -> Any:
    """A line on the terminal while pytest collects (its capture would hold it until the end)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if terminal is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                terminal.write_line(line)

    return say


def _key(record: dict[str, Any]) -> str:
    """A record's cell id as bench names it (CellSpec.id)."""
    return record["cell_id"] + (f"-rep{record['repeat']}" if record.get("repeat") else "")


def _same_config(record: dict[str, Any], cell: CellSpec) -> str | None:
    """The first run option in which a record differs from the cell, or None."""
    want = json.loads(json.dumps(cell.config.to_dict()))
    got = record.get("config") or {}
    return next((f"{k}={got.get(k)!r} (this run: {v!r})" for k, v in want.items() if got.get(k) != v), None)


def _mend(config: pytest.Config, path: str) -> None:
    """A results file to resume whose last line was cut off (its run killed while writing it) loses
    that line: the records this run appends must follow complete ones. Raises ResultsFileError (a
    ValueError) when another line is not JSON: not a results file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with warnings.catch_warnings(record=True) as cut:
        warnings.simplefilter("always", CutOffLineWarning)
        parsed = parse_jsonl(text, path)
    if cut:
        lines = text.splitlines()
        with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
            f.writelines(lines[n - 1] + "\n" for n, _ in parsed)
        _say(config)(f"--resume: {cut[0].message}; that line was removed")


def arrange(config: pytest.Config, cells: list[CellSpec]) -> list[CellSpec]:
    """The matrix as the executor sees it: with slurm, a cell whose ranks cannot be laid out over
    whole nodes is skipped with the reason. With --resume, the recorded cells must be the cells
    this run would run (the same options); raises ValueError naming the first difference."""
    o = options(config)
    arranged = [replace(c, skip_reason=c.skip_reason or cluster.placement_problem(c.config, o)) for c in cells]
    resume, given = config.getoption("tk_resume"), config.getoption("tk_results_file")
    if resume and given and os.path.abspath(resume) != os.path.abspath(given):
        raise ValueError(f"--resume {resume} and --results-file {given} name different files; give one")
    if resume:
        _mend(config, resume)
        by_id = {c.id: c for c in arranged}
        for record in read_jsonl(resume):
            cell = by_id.get(_key(record))
            differs = _same_config(record, cell) if cell is not None else None
            if differs:
                raise ValueError(f"--resume: {resume} recorded {cell.id} with {differs}; resume with the options "
                                 "of the run that wrote it")
    return arranged


def _harvest(folder: str, waiting: dict[str, CellSpec]) -> list[tuple[CellSpec, dict[str, Any]]]:
    """Records that jobs of an earlier driver returned after it died: rank 0's result files in the
    job directory whose cell this run still needs, with the same options."""
    from submitit.core.utils import pickle_load  # submitit: the optional cluster extra, only on slurm

    found = []
    for path in sorted(glob.glob(os.path.join(folder, "*_0_result.pkl"))):
        try:
            kind, record = pickle_load(path)
        except Exception:  # a result being written, or not submitit's: the cell runs again
            continue
        if kind != "success" or not isinstance(record, dict) or "cell_id" not in record:
            continue
        cell = waiting.get(_key(record))
        if cell is not None and _same_config(record, cell) is None:
            job_id = os.path.basename(path)[:-len("_0_result.pkl")]
            record["executor"] = {**record.pop("job", {}), "job_id": job_id, "harvested_from": path}
            found.append((cell, record))
            del waiting[cell.id]
    return found


def start(config: pytest.Config, bench: BenchSession, items: list[Any], cells: list[CellSpec]) -> list[CellSpec]:
    """Resume what RESULTS recorded (skipping those cells' tests) and set up the jobs of the others;
    returns the cells this session runs or records as skipped."""
    resume = config.getoption("tk_resume")
    o = options(config)
    recorded: dict[str, dict[str, Any]] = {}
    if resume:
        recorded = {_key(r): r for r in read_jsonl(resume)}
        selected = {c.id for c in cells}
        bench.records.extend(r for k, r in recorded.items() if k in selected)
        if o.remote and os.path.isdir(job_dir(config)):
            waiting = {c.id: c for c in cells if c.id not in recorded and not c.skip_reason}
            for cell, record in _harvest(job_dir(config), waiting):
                bench.keep(bench.complete(record, cell))
                recorded[cell.id] = record
        for item in items:
            record = recorded.get(getattr(getattr(item, "callspec", None), "id", None))
            if record is not None:
                item.add_marker(pytest.mark.skip(reason=f"recorded in {resume} ({record['status']})"))
    remaining = [c for c in cells if c.id not in recorded]
    if o.remote and not resume:
        # A new run of this results file (which starts empty): an earlier run's results in the job
        # directory are not this run's, and a local job's id (its pid) may come round again.
        for stale in glob.glob(os.path.join(job_dir(config), "*_result.pkl")):
            os.remove(stale)
    if o.remote:
        runnable = [c for c in remaining if not c.skip_reason]
        bench.remote = RemoteCells(bench, cluster.make_jobs(o, job_dir(config), bench.options.cell_timeout_s),
                                   runnable)
        config.add_cleanup(bench.remote.close)
    return remaining


class RemoteCells:
    """The session's cells as jobs: all submitted at the first cell's test; each record kept (in
    the results file) the moment its job ends, whichever cell's test is waiting."""

    def __init__(self, bench: BenchSession, jobs: cluster.Jobs, cells: list[CellSpec]) -> None:
        self.bench, self.jobs, self.cells = bench, jobs, cells
        o = bench.options
        self.cell_jobs = [CellJob(c.id, c.config, c.repeat, o.cell_timeout_s, o.memory_limit_bytes, o.profile,
                                  single_steps=min(o.rounds, c.config.steps)) for c in cells]
        self.by_id = {c.id: c for c in cells}
        self.records: dict[str, dict[str, Any]] = {}
        self.submitted_at: float | None = None
        self.first_poll_s, self.longest_poll_s = POLL_S[jobs.options.executor]

    def _submit(self) -> None:
        self.submitted_at = time.monotonic()
        self.jobs.submit(self.cell_jobs)

    def _state(self) -> str:
        counts = self.jobs.counts()
        elapsed = time.monotonic() - (self.submitted_at or time.monotonic())
        left = ""
        if counts.done and counts.done < counts.total:
            left = f", ~{_clock(elapsed / counts.done * (counts.total - counts.done))} left"
        return (f"{counts.done}/{counts.total} done, {counts.running} running, {counts.pending} pending "
                f"(elapsed {_clock(elapsed)}{left})")

    def _collect(self, waiting_for: str) -> bool:
        """Keep the records of the jobs that ended; True when any did."""
        ended = self.jobs.poll()
        for cell_job, record in ended:
            cell = self.by_id[cell_job.key]
            self.bench.keep(self.bench.complete(record, cell))
            self.records[cell.id] = record
            if cell.id != waiting_for:
                self.bench.write(f"\n    {cell.id} -> {outcome(record)}; {self._state()}")
        return bool(ended)

    def run(self, cell: CellSpec, benchmark: Any) -> dict[str, Any]:
        """Wait for the cell's job, then give pytest-benchmark its timed steps."""
        if cell.id not in self.by_id:
            raise RuntimeError(f"{cell.id} was not submitted")
        if self.submitted_at is None:
            self._submit()
        position = self.cells.index(cell) + 1
        self.bench.write(f"\n[cell {position}/{len(self.cells)}] {cell.id}: {self._state()} ")
        pause, last_line, shown = self.first_poll_s, time.monotonic(), self.jobs.counts()
        while True:
            ended = self._collect(cell.id)
            if cell.id in self.records:
                break
            counts = self.jobs.counts()
            if ended:  # _collect said so, with the counts
                shown, last_line = counts, time.monotonic()
            elif counts != shown or time.monotonic() - last_line > HEARTBEAT_S:
                self.bench.write(f"\n    waiting for {cell.id}: {self._state()} ")
                shown, last_line = counts, time.monotonic()
            time.sleep(pause)
            # Soon after a job ends the next often does (an array's tasks start together).
            pause = self.first_poll_s if ended else min(pause * 1.5, self.longest_poll_s)
        record = self.records[cell.id]
        replay(benchmark, record)
        return record

    def close(self) -> None:
        """At the session's end: cancel the jobs that have not ended (pytest stopped early)."""
        if self.submitted_at is not None and self.jobs.counts().done < len(self.cell_jobs):
            self.jobs.cancel()


def replay(benchmark: Any, record: dict[str, Any]) -> None:
    """Give pytest-benchmark the first `bench_rounds` timed steps the job measured, on bench's
    worker clock: its statistics are those steps, as with the local executor. A cell that failed
    before its timed steps has none (as locally, the fixture then stays unused)."""
    values = ((record.get("step_time_s") or {}).get("values") or [])[:record["bench_rounds"]]
    if values:
        steps = iter(values)
        benchmark.pedantic(lambda: advance(next(steps)), rounds=len(values), iterations=1, warmup_rounds=0)
