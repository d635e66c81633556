"""Shared test helpers: small CPU runs of the real library, no mocks of the training path."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest
import torch

from trainkit.engine.spec.config import RunConfig
from trainkit.engine.train.loop import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")

# Small, fast shapes for every model on a 2-core CPU.
SMALL = {
    "mlp": {},
    "cnn": {},
    "gpt": {"seq_len": 16, "vocab_size": 64, "gpt_layers": 1, "gpt_heads": 2, "gpt_width": 32},
    "resnet18": {"image_size": 32},
    "resnet50": {"image_size": 32},
}


def pytest_configure(config: pytest.Config) -> None:
    # The README runs the suite on pytest-xdist workers (`-n auto`). A file's tests stay on one worker
    # (xdist's "loadfile"): a module-scoped fixture (a matrix run, a built report) is made once, not
    # once per worker, and a file's tests keep the order they were written in.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"
    # On a worker, xdist leaves PYTEST_XDIST_* in the environment; a bench run a test starts in a
    # subprocess would inherit them and pytest-benchmark would take itself for an xdist worker and
    # refuse --benchmark-only. The worker itself reads them no more once started.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        os.environ.pop(name, None)


# Every cell the suite starts, in this process or a command's, runs one intra-op thread per rank
# unless it says otherwise: the suite runs two xdist workers on two cores, and two-thread ranks beside
# them stalled every op on a straggler thread (timings moved by factors, runs took minutes).
os.environ["OMP_NUM_THREADS"] = "1"


def small_config(model: str = "mlp", **changes: object) -> RunConfig:
    """A tiny CPU cell. One intra-op thread per rank unless a test says otherwise: the suite runs on
    two xdist workers, and two-thread ranks on two shared cores stall each op on its straggler
    thread, which moved timings and shares by factors with the neighbours' load."""
    values: dict[str, object] = {"model": model, "batch_size": 8, "steps": 3, "warmup_steps": 0, "device": "cpu",
                                 "cpu_threads": 1}
    values.update(SMALL[model])
    values.update(changes)
    return RunConfig(**values)  # type: ignore[arg-type]


def train(config: RunConfig) -> Trainer:
    """Build and run a whole run in this process."""
    trainer = Trainer(config, CPU)
    trainer.run(trainer.total_steps)
    return trainer


def flat_params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in trainer.raw_model.parameters()])


def trainkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainkit", *args]


ALREADY_IMPORTED = "Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning"


def inprocess_pytest(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m pytest ARGS` from the checkout, run in this process (pytest.main): the same
    configuration (pyproject.toml, bench/conftest.py), exit code, terminal output (stdout) and usage
    errors (stderr), without a fresh interpreter's import of torch (~4 s on 2 shared cores). A bench
    run's cells still run in worker processes of their own, from this process's fork server (its ~3 s
    start paid once per process, not once per run). The matrix's options and hooks live in the run's
    own config, so runs here share nothing else; a run that changes module state (a plugin that adds
    an axis) or that a test signals or kills belongs in a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            # The plugin's modules are this process's already, so pytest cannot rewrite their asserts
            # and says so: an error here, under filterwarnings=error; in a fresh interpreter, no warning.
            code = pytest.main([*args, "-W", f"ignore:{ALREADY_IMPORTED}"])
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["pytest", *args], int(code), out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Policies set global backend flags; every test starts from and returns to the defaults."""
    saved = (torch.get_default_dtype(), torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision(),
             torch.get_num_threads())
    yield
    torch.set_default_dtype(saved[0])
    torch.backends.cudnn.benchmark = saved[1]
    torch.set_float32_matmul_precision(saved[2])
    torch.set_num_threads(saved[3])
    if "torch._dynamo" in sys.modules:  # a compiled cell's warmup leaves the stance "fail_on_recompile"
        torch.compiler.set_stance("default")


@pytest.fixture(autouse=True)
def _outside_github_actions(monkeypatch):
    """The nightly gate writes GitHub's job summary and step outputs under GitHub Actions; tests
    may run there (ci.yml) and must not write into the real job's."""
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT"):
        monkeypatch.delenv(name, raising=False)
