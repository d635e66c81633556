"""The matrix: bench's pytest-benchmark suite, every cell repeated in fresh worker processes.

The nightly runs exactly what a person would run (`pytest --benchmark-only -p trainkit.bench`),
in a subprocess, so bench's options, progress and skip reasons are the usual ones. Cells that end
oom, diverged or crashed are results, not errors (bench records and xfails them); the matrix
"could not run" (an infrastructure failure) when pytest itself fails or the GPUs vanish mid-run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field

from trainkit.engine.cluster import ExecutorOptions, command_line
from trainkit.engine.spec.schema import ResultsFileError, read_jsonl

from . import BAD_INPUT, INFRASTRUCTURE, PASS, preflight
from .rundir import BENCH_JSON, RESULTS, ROOT, RunDir, Stage

# The matrix as the plugin runs it without paths (its own tests), so the nightly runs the same in a
# checkout and from the wheel; only the cells' test: the opt-in overhead benchmark stays out.
BENCH_TEST = ("-p", "trainkit.bench", "--benchmark-only", "-k", "test_train")
PYTEST_USAGE_ERRORS = (4,)  # bench's options are pytest's: a bad value is its usage error
PYTEST_TESTS_FAILED, PYTEST_NO_TESTS = 1, 5


@dataclass(frozen=True, kw_only=True)
class MatrixOptions:
    """What to run. Every field is a `python -m nightly matrix` option."""

    preset: str = "nightly"
    """bench's preset: nightly is the GPU matrix (1, 2, 4 and 8 GPUs where the runner has them);
    tiny, quick and full also run on a CPU."""
    repeats: int = 3
    """Runs of every cell, each in fresh worker processes; the gate needs 3 to tell noise from change."""
    device: str = "auto"
    """auto, cpu or cuda: where the cells run."""
    bench_args: tuple[str, ...] = ()
    """Further bench options, as given after `--` (--model mlp, --cell-timeout 600, --steps 20, ...)."""
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    """Where the cells run: here, or one SLURM (or submitit-local) job per cell (bench's --executor)."""

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats} must be >= 1")


def bench_command(options: MatrixOptions, run: RunDir) -> list[str]:
    """The pytest command line; the report is the report stage's job (--no-report)."""
    return [sys.executable, "-m", "pytest", *BENCH_TEST, "-p", "no:cacheprovider",
            "--preset", options.preset, "--repeats", str(options.repeats), "--device", options.device,
            "--report-dir", os.path.abspath(run.root), "--results-file", os.path.abspath(run.path(RESULTS)),
            "--benchmark-json", os.path.abspath(run.path(BENCH_JSON)), "--no-report",
            *command_line(options.executor), *options.bench_args]


def run_matrix(options: MatrixOptions, run: RunDir) -> Stage:
    """Run bench (its output streams through), then read what it recorded."""
    os.makedirs(run.root, exist_ok=True)
    command = bench_command(options, run)
    details = {"preset": options.preset, "repeats": options.repeats, "device": options.device, "command": command}
    for stale in (RESULTS, BENCH_JSON):  # a refused run must not leave an earlier run's results to judge
        if run.exists(stale):
            os.remove(run.path(stale))
    sys.stdout.flush()
    # bench runs where this command was started; a workload's module (--model MODULE:FUNCTION) imports
    # from that directory, so it goes on the subprocess's path.
    path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    returncode = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": path}).returncode
    details["pytest_exit_status"] = returncode
    try:
        records = read_jsonl(run.path(RESULTS)) if run.exists(RESULTS) else []
    except ResultsFileError as exc:  # a line in the middle is not JSON: nothing here can be trusted
        return Stage("matrix", BAD_INPUT, str(exc), details)
    ran = [r for r in records if not r.get("skipped_at_collection")]
    skipped = [r for r in records if r.get("skipped_at_collection")]
    if skipped and not ran:
        # Judged before pytest's exit status: with every cell skipped, pytest-benchmark warns that it
        # saves nothing, and the suite's warnings-as-errors turn that into a pytest error.
        return Stage("matrix", BAD_INPUT, f"no cell of the preset can run here: {skipped[0]['status_detail']}",
                     details)
    if returncode in PYTEST_USAGE_ERRORS:
        return Stage("matrix", BAD_INPUT, f"bench refused its options (pytest exit {returncode}; see its error above)",
                     details)
    if returncode == PYTEST_NO_TESTS:
        return Stage("matrix", BAD_INPUT, "the options select no cell of the matrix", details)
    # With --strict-cells, cells that did not end ok fail their tests (exit 1): results for the gate.
    if returncode != 0 and not (returncode == PYTEST_TESTS_FAILED and ran):
        return Stage("matrix", INFRASTRUCTURE, f"bench exited {returncode}: the matrix could not run", details)

    # On a cluster the GPUs are the nodes', not this machine's: each record names its node.
    # After the matrix: do the GPUs still answer? (preflight.postflight, looked up now: tests replace it)
    lost = None if options.executor.executor == "slurm" else preflight.postflight(run)
    if lost:
        return Stage("matrix", INFRASTRUCTURE, lost, details)
    if not ran:
        return Stage("matrix", INFRASTRUCTURE, "bench ran but wrote no record", details)
    statuses = Counter(r["status"] for r in ran)
    cells = len({r["cell_id"] for r in ran})
    throttled = len({r["cell_id"] for r in ran if r.get("throttled")})
    line = (f"{cells} cells x {options.repeats} repeats ({options.preset}): "
            + ", ".join(f"{n} {status}" for status, n in statuses.most_common()))
    if throttled:
        line += f"; {throttled} cell(s) throttled during timed steps"
    if skipped:
        line += f"; {len({r['cell_id'] for r in skipped})} cell(s) not run here ({skipped[0]['status_detail']}, ...)"
    details.update(cells=cells, statuses=dict(statuses), throttled_cells=throttled,
                   not_run_cells=len({r["cell_id"] for r in skipped}))
    return Stage("matrix", PASS, line, details)
