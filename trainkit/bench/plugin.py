"""The benchmark matrix as pytest-benchmark tests: a pytest plugin (trainkit.bench, registered by the
wheel's pytest11 entry point), so `pytest --benchmark-only -p trainkit.bench` runs the matrix anywhere
the package is installed, and `pytest bench --benchmark-only` in the checkout.

One test per cell, e.g. test_train[gpt-amp-bf16-bs32-ga4-gpus2], parametrized by the matrix's axes
(trainkit.engine.spec.axes: model, precision, batch_size, grad_accum, gpus, ...) and the repeat, so
--benchmark-group-by param:precision works.
Cells the hardware cannot run are skipped at collection with the reason. Each cell runs in its
own worker process(es); pytest-benchmark times single optimizer steps as measured by the worker.

Registered by the wheel, the plugin is loaded by every pytest run of the environment, so it is inert
unless the matrix is asked for: its options (all under the "trainkit" group) only wait to be read,
its hooks act only on its own test (test_train) or on --benchmark-only, and the hardware is probed
only once the matrix is built. `pytest --benchmark-only` without paths collects the package's own
tests (trainkit/bench/cells.py); given paths, pytest collects those (the checkout's bench/).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any

import pytest

from trainkit.analysis.plan.file import planned_max_batch, read_plan
from trainkit.engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, probe
from trainkit.engine.measure.env import fingerprint
from trainkit.engine.spec import axes
from trainkit.engine.spec.config import COMPILE_MODES, SNAPSHOT_STEPS, TRACE_STEPS, ProfileConfig
from trainkit.engine.spec.options import (
    CELL_TIMEOUT,
    DEVICE,
    LR,
    MEMORY_LIMIT_GB,
    MEMORY_LIMIT_ON_GPU,
    REPEATS,
    STEPS,
    WARMUP_STEPS,
    choice,
    integer,
    number,
    output_dir,
    output_file,
)
from trainkit.engine.spec.presets import PRESET_NAMES, preset
from trainkit.engine.train.hardware import Hardware

from . import executors
from .matrix import build_matrix, param_names
from .runner import TABLE_HEADER, BenchSession, SessionOptions, table_row

CELLS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cells.py")
"""The package's own matrix tests, collected when the matrix is asked for without paths."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every option is validated where it is parsed (trainkit.engine.spec.options types): a bad value is
    pytest's own usage error, naming the value and what is valid."""
    group = parser.getgroup("trainkit", "trainkit benchmark matrix")
    group.addoption("--preset", type=choice(PRESET_NAMES), default=None,
                    help="matrix to run: tiny (CI smoke), quick (default), full, nightly (the GPU matrix)")
    for axis in axes.AXES:
        axis.option.add(group, dest=f"tk_{axis.name}", default=None, short=False,
                        help=f"list replacing the preset's {axis.name} axis ({axis.option.help})")
    group.addoption("--compile-mode", dest="tk_compile_mode", type=choice(COMPILE_MODES), default=None,
                    help="torch.compile's mode for the compiled cells (default: torch's)")
    STEPS.add(group, dest="tk_steps", help="timed optimizer steps per cell (default: the preset's)")
    WARMUP_STEPS.add(group, dest="tk_warmup_steps", help="untimed optimizer steps before them (default: the preset's)")
    group.addoption("--rounds", dest="tk_rounds", type=integer(1), default=None, metavar="N",
                    help="how many of the timed steps pytest-benchmark records one by one (default: all); "
                         "the rest run as one window timed by the worker")
    REPEATS.add(group, dest="tk_repeats",
                help="run the matrix N times in rounds, every cell once a round in fresh worker processes (ids "
                     "end in -repK); speedups are paired by round")
    LR.add(group, dest="tk_lr")
    DEVICE.add(group, dest="tk_device", help="run the cells on this device (default: a GPU if one is visible)")
    CELL_TIMEOUT.add(group, dest="tk_cell_timeout", default=DEFAULT_CELL_TIMEOUT_S,
                     help="a cell taking longer ends with status timeout")
    MEMORY_LIMIT_GB.add(group, flag="--cell-memory-limit-gb", dest="tk_memory_limit")
    group.addoption("--plan", dest="tk_plans", action="append", default=[], metavar="PLAN.json",
                    help="a plan (python -m trainkit plan) that --batch-size max reads each precision's planned "
                         "maximum micro-batch from; repeat for more models")
    group.addoption("--strict-cells", dest="tk_strict", action="store_true",
                    help="a cell that does not end ok fails the test (default: it is reported and xfailed)")
    group.addoption("--report-dir", dest="tk_report_dir", type=output_dir, default=None, metavar="DIR",
                    help="where the results file and the HTML report go (default: reports/out/ under pytest's "
                         "rootdir: the checkout's, or the directory pytest runs in)")
    group.addoption("--results-file", dest="tk_results_file", type=output_file, default=None,
                    metavar="FILE.jsonl",
                    help="results file, one record per cell of any status (default: in --report-dir)")
    group.addoption("--no-report", dest="tk_no_report", action="store_true",
                    help="do not build the HTML report at the end")
    group.addoption("--overhead", dest="tk_overhead", action="store_true",
                    help="also measure trainkit's loop against a hand-written loop (trainkit/bench/cells.py)")
    group.addoption("--overhead-blocks", dest="tk_overhead_blocks", type=integer(1), default=None, metavar="N",
                    help="interleaved blocks of each loop per overhead case (default: each case's own)")
    group.addoption("--overhead-min-ratio", dest="tk_overhead_min_ratio", type=number(0), default=0.99,
                    metavar="X", help="the overhead check fails below this share of the hand-written loop's "
                                      "throughput (default 0.99)")
    group.addoption("--phase-steps", dest="tk_phase_steps", type=integer(0), default=3, metavar="N",
                    help="after the timed steps, time N steps phase by phase: data, forward, backward, "
                         "optimizer (default 3; 0 turns it off)")
    group.addoption("--profile", dest="tk_profile", action="store_true",
                    help=f"after the timed steps, record {TRACE_STEPS} steps per cell with torch.profiler (Chrome "
                         "trace, top operators, share of time in reduced precision)")
    group.addoption("--memory-snapshot", dest="tk_memory_snapshot", action="store_true",
                    help=f"after the timed steps, record {SNAPSHOT_STEPS} steps of CUDA allocator history per cell "
                         "(CUDA only)")
    group.addoption("--profile-dir", dest="tk_profile_dir", type=output_dir, default=None, metavar="DIR",
                    help="where traces and snapshots go (default: REPORT_DIR/profiles)")
    executors.add_options(parser)


def _asked(config: pytest.Config) -> bool:
    """Whether this run asks for the matrix: pytest-benchmark's --benchmark-only (absent, with
    pytest-benchmark not installed, it is never asked for)."""
    return bool(config.getoption("benchmark_only", default=False))


def pytest_configure(config: pytest.Config) -> None:
    """The report directory's default is the rootdir's reports/out/ (a path given is kept). Asked
    for without paths, the matrix runs the package's own tests rather than the rootdir's testpaths
    or the current directory, so it runs the same outside a checkout."""
    # Its tests' marker, registered here too: outside the checkout no ini file names it.
    config.addinivalue_line("markers", "bench: a benchmark-matrix cell (trainkit.bench)")
    if config.getoption("tk_report_dir") is None:
        config.option.tk_report_dir = os.path.join(str(config.rootpath), "reports", "out")
    if _asked(config) and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [CELLS_FILE]


HARDWARE = pytest.StashKey[dict]()
SESSION = pytest.StashKey[BenchSession]()
CELLS = pytest.StashKey[list]()
LEFT_OUT = pytest.StashKey[dict]()


def _hardware(config: pytest.Config) -> dict[str, Any]:
    """Probed once per session, in a worker process (this process never initialises CUDA)."""
    if HARDWARE not in config.stash:
        started = time.monotonic()
        try:
            config.stash[HARDWARE] = executors.probe_hardware(config, probe)
        except RuntimeError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[HARDWARE]["probe_s"] = time.monotonic() - started
    return config.stash[HARDWARE]


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> None:
    """Build the matrix before collecting, so that what only the hardware can tell about the
    options (a memory cap on GPU cells, more rounds than steps) is pytest's usage error too.
    Only when the matrix is asked for: otherwise it is built when its test is collected, if ever."""
    if _asked(session.config):
        _cells(session.config)


def _cells(config: pytest.Config) -> list:
    if CELLS in config.stash:
        return config.stash[CELLS]
    info = _hardware(config)
    hw = Hardware(info["device"], info["gpu_count"], tuple(info["capability"]) if info["capability"] else None,
                  info["gpu_name"], info["cpu_count"], info.get("compile_unsupported"))
    if config.getoption("tk_memory_limit") and hw.device == "cuda":
        raise pytest.UsageError(f"--cell-memory-limit-gb {MEMORY_LIMIT_ON_GPU}; here the cells run on CUDA "
                                "(use --device cpu)")
    chosen = preset(config.getoption("preset") or "quick", on_gpu=hw.device == "cuda")
    steps = config.getoption("tk_steps") or chosen.steps
    warmup = config.getoption("tk_warmup_steps")
    warmup = chosen.warmup_steps if warmup is None else warmup
    rounds = config.getoption("tk_rounds")
    if rounds is not None and rounds > steps:
        raise pytest.UsageError(f"--rounds: {rounds} is more than the {steps} timed steps per cell")
    run_options = {"lr": config.getoption("tk_lr")} if config.getoption("tk_lr") is not None else {}
    if config.getoption("tk_compile_mode") is not None:
        run_options["compile_mode"] = config.getoption("tk_compile_mode")
    overrides = {axis.name: config.getoption(f"tk_{axis.name}") for axis in axes.AXES
                 if config.getoption(f"tk_{axis.name}") is not None}
    left_out: dict[str, str] = {}
    config.stash[LEFT_OUT] = left_out
    try:
        cells = build_matrix(chosen, hw, overrides, steps, warmup, config.getoption("tk_repeats"), run_options,
                             max_batch=_planned(config, hw), left_out=left_out)
        cells = executors.arrange(config, cells)
    except ValueError as exc:  # a RunConfig that an override made invalid names its field; a missing plan
        raise pytest.UsageError(str(exc)) from None
    config.stash[CELLS] = cells
    return cells


def _planned(config: pytest.Config, hw: Hardware) -> Any:
    """--batch-size max's resolver: the planned maximum of a cell, from the --plan files."""
    paths = config.getoption("tk_plans")
    if not paths:
        return None
    plans = [read_plan(path) for path in paths]  # PlanError is a ValueError: a usage error
    limit = config.getoption("tk_memory_limit")
    limit_bytes = int(limit * 2**30) if limit else None
    return lambda cell: planned_max_batch(plans, cell, hw.device, limit_bytes, hw.gpu_name)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.name != "test_train":
        return
    cells = _cells(metafunc.config)
    params = []
    for cell in cells:
        marks = [pytest.mark.skip(reason=cell.skip_reason)] if cell.skip_reason else []
        params.append(pytest.param(*cell.params.values(), id=cell.id, marks=marks))
    metafunc.parametrize(",".join(param_names()), params)


def pytest_report_collectionfinish(config: pytest.Config, start_path: Any, items: list) -> list[str]:
    """The cells that do not apply to their model, left out of the matrix: one line per reason."""
    left_out = config.stash.get(LEFT_OUT, {})
    by_reason: dict[str, int] = {}
    for why in left_out.values():
        by_reason[why] = by_reason.get(why, 0) + 1
    return [f"left out {n} cell{'s' if n > 1 else ''}: {why}" for why, n in by_reason.items()]


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected: progress counts the cells that run
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    if CELLS not in config.stash:
        return
    report_dir = config.getoption("tk_report_dir")
    results = executors.results_file(config, report_dir)
    rounds = config.getoption("tk_rounds") or 10**9
    limit = config.getoption("tk_memory_limit")
    profile = ProfileConfig.from_options(config.getoption("tk_phase_steps"), config.getoption("tk_profile"),
                                         config.getoption("tk_memory_snapshot"),
                                         config.getoption("tk_profile_dir") or os.path.join(report_dir, "profiles"))
    options = SessionOptions(rounds=rounds, cell_timeout_s=config.getoption("tk_cell_timeout"),
                             memory_limit_bytes=int(limit * 2**30) if limit else None,
                             strict_cells=config.getoption("tk_strict"), report_dir=report_dir,
                             results_file=results, profile=profile, resume=bool(config.getoption("tk_resume")))
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        """Progress reaches the terminal even while the test's output is being captured; pytest's
        own pass/xfail mark follows on the same line."""
        if terminal is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write(text, flush=True)

    bench = BenchSession(options, write)
    bench.setup_s = _hardware(config)["probe_s"]
    selected = {item.callspec.id for item in items if hasattr(item, "callspec")}
    cells = [c for c in config.stash[CELLS] if c.id in selected]
    cells = executors.start(config, bench, items, cells)
    bench.total = sum(1 for c in cells if not c.skip_reason)
    bench.planned = [c for c in cells if not c.skip_reason]
    bench.note_skipped(cells, _hardware(config)["env"])
    config.stash[SESSION] = bench


@pytest.fixture
def cell_spec(request: pytest.FixtureRequest):
    wanted = request.node.callspec.id
    return next(c for c in request.config.stash[CELLS] if c.id == wanted)


@pytest.fixture
def bench_session(request: pytest.FixtureRequest) -> BenchSession:
    return request.config.stash[SESSION]


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook: the plugin loads without it (trainkit[bench])
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """The environment fingerprint (GPU, driver, CUDA, cuDNN, NCCL, torch, CPU, git commit):
    pytest-benchmark's own machine id knows nothing of GPUs. Only for a run that asks for the matrix
    (asked before the matrix is built too: --benchmark-compare reads it at configure time)."""
    if not _asked(config) and CELLS not in config.stash:
        return
    env = _hardware(config)["env"]
    machine_info["trainkit_env"] = env
    machine_info["trainkit_fingerprint"] = fingerprint(env)
    for key in ("gpu_name", "gpu_count", "driver", "cuda", "cudnn", "nccl", "torch", "git_commit"):
        machine_info[key] = env.get(key)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    bench = config.stash.get(SESSION, None)
    if bench is None or not bench.records:
        return
    tr = terminalreporter
    ran = [r for r in bench.records if not r.get("skipped_at_collection")]
    tr.section("trainkit cells")
    tr.write_line(TABLE_HEADER)
    for r in ran:
        tr.write_line(table_row(r))
    failed = bench.failed()
    if failed:
        tr.section("cells that did not end ok", red=True)
        for r in failed:
            tr.write_line(f"{r['cell_id']:44} {r['status']:11} {r['status_detail']}")
    tr.write_line(bench.time_split())
    tr.write_line(f"results file: {bench.options.results_file}")
    report = getattr(bench, "report_path", None)
    if report:
        tr.write_line(f"report: {report}")
    elif getattr(bench, "report_note", None):
        tr.write_line(bench.report_note)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    """Build the report first (the terminal summary, printed inside, names it). A matrix whose
    every cell was skipped (only GPU cells on a CPU, say) is a result: pytest-benchmark's warning
    about its empty JSON must not become an error."""
    _build_report(session)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Not saving anything, no benchmarks have been run")
        return (yield)


def _build_report(session: pytest.Session) -> None:
    bench = session.config.stash.get(SESSION, None)
    if bench is None or not bench.records or session.config.getoption("tk_no_report"):
        return
    try:
        from trainkit.reports.build import build_report  # pandas/plotly: the reports extra, only for a page
    except ImportError as exc:
        bench.report_note = f"no HTML report: {exc} (install trainkit[reports])"
        return
    output = os.path.join(bench.options.report_dir, "report.html")
    try:
        build_report([bench.options.results_file], output)
        bench.report_path = output
    except Exception as exc:  # the records are safe in the results file; say why there is no report
        bench.report_note = f"no HTML report: {type(exc).__name__}: {exc}"
