"""The wheel works anywhere: built from the checkout, installed into a fresh environment in a
temporary directory, and every front door the README names run there, from a directory outside
the checkout, with nothing of the checkout on the path.

The fresh environment sees the dependencies already installed here (torch, pytest, pandas, ...)
through a .pth file naming this interpreter's site-packages: the .pth files inside those are not
processed, so an editable trainkit there (CI's `pip install -e`) is not seen, and the only trainkit
is the wheel's (`pip install --no-deps`). One build and one install for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

TINY_RUN = ("--model", "mlp", "--device", "cpu", "--batch-size", "8", "--steps", "2", "--warmup-steps", "1")
TINY_BENCH = ("--preset", "tiny", "--model", "mlp", "--precision", "fp32", "--grad-accum", "1", "--gpus", "1",
              "--steps", "2", "--warmup-steps", "1", "--device", "cpu")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`python -m build --wheel` of a copy of the package's sources (the build's own folders stay out of
    the checkout, which other runs may share)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "trainkit"), src / "trainkit", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("trainkit-*.whl")
    return built


@pytest.fixture(scope="module")
def env(wheel, tmp_path_factory) -> dict[str, Path]:
    """A fresh virtual environment holding the wheel, and a working directory outside the checkout."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    Path(purelib, "trainkit_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    # Without PYTHONPATH: a checkout on it (with a trainkit.egg-info from an editable install) would
    # make pip take trainkit for installed already and skip the wheel.
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300,
                          env=environ)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    return {"bin": bin_dir, "python": python, "work": work}


def run(env: dict[str, Path], program: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """A program of the fresh environment, run in its working directory with nothing of the checkout
    on its path."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    environ["PATH"] = os.pathsep.join([str(env["bin"]), environ.get("PATH", "")])
    proc = subprocess.run([str(env["bin"] / program), *args], cwd=env["work"], env=environ, capture_output=True,
                          text=True, timeout=timeout)
    return proc


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_wheel_installs_no_top_level_package_but_trainkit(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"trainkit"}
    assert "trainkit/bench/cells.py" in names and "trainkit/nightly/cli.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[pytest11]" in text and "trainkit.bench = trainkit.bench" in text
    for script in ("trainkit = trainkit.commands.cli:main", "trainkit-reports = trainkit.reports.cli:main",
                   "trainkit-nightly = trainkit.nightly.cli:main"):
        assert script in text


def test_only_the_wheels_trainkit_is_importable_and_the_checkouts_folders_are_not(env):
    where = ok(run(env, "python", "-c", "import trainkit; print(trainkit.__file__)"))
    assert str(env["bin"].parent) in where and REPO not in where
    for name in ("nightly", "reports", "bench"):
        proc = run(env, "python", "-c", f"import {name}")
        assert proc.returncode == 1 and f"No module named '{name}'" in proc.stderr, (name, proc.stderr)


def together(*calls: tuple) -> list[subprocess.CompletedProcess]:
    """Independent front doors side by side: most of each is starting Python and importing torch."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: run(*call), calls))


def test_the_trainkit_command(env):
    assert "check-workload" in ok(run(env, "trainkit", "--help"))
    done = together(
        (env, "trainkit", "workloads"),
        (env, "trainkit", "run", *TINY_RUN, "--phase-steps", "0", "--quiet", "--output", "run.json"),
        (env, "trainkit", "check-workload", "--model", "mlp", "--device", "cpu", "--steps", "1", "--batch-size", "2",
         "--precision", "fp32"),
        (env, "trainkit", "parity", *TINY_RUN, "--precision", "fp32", "--seeds", "2", "--quiet",
         "--output", "parity.json"),
        (env, "trainkit", "plan", "--model", "mlp", "--precision", "fp32", "--device", "cpu", "--target-batch", "8",
         "--memory-limit-gb", "4", "--search-limit", "8", "--probe-steps", "1", "--measure", "1", "--quiet",
         "--output", "plan.json"),
        (env, "trainkit", "recommend", "--model", "mlp", "--target-batch", "16", "--device", "cpu", "--precision",
         "amp-bf16", "--rounds", "1", "--seeds", "2", "--steps", "12", "--budget", "30", "--quiet",
         "--output", "answer"))
    *done, recommended = done
    # 0 with an answer, 1 when one round and two seeds cannot tell yet: both write the answer
    assert recommended.returncode in (0, 1), recommended.stdout[-3000:] + recommended.stderr[-3000:]
    outputs = [ok(proc) for proc in done]
    assert "mlp" in outputs[0]
    record = json.loads((env["work"] / "run.json").read_text())
    assert record["status"] == "ok" and record["config"]["model"] == "mlp"
    assert outputs[2].startswith("workload mlp (built-in)")
    assert json.loads((env["work"] / "parity.json").read_text())["models"]["mlp"]
    assert json.loads((env["work"] / "plan.json").read_text())["precisions"]["fp32"]
    answer = json.loads((env["work"] / "answer" / "answer.json").read_text())
    assert answer["schema"] == "trainkit.answer/1" and answer["candidates"][0]["precision"] == "amp-bf16"
    assert (recommended.returncode == 1) == (answer["decision"]["kind"] == "can't tell yet")
    assert (env["work"] / "answer" / "answer.html").is_file()


def test_the_bench_matrix_is_the_registered_pytest_plugin(env):
    # No -p: the wheel's pytest11 entry point loads the plugin; without paths it collects its own
    # tests, the matrix's cells (the nightly job below runs them, naming the plugin with -p).
    out = ok(run(env, "python", "-m", "pytest", "--benchmark-only", *TINY_BENCH, "--collect-only", "-q"))
    assert "test_train[mlp-fp32-bs16-ga1-gpus1]" in out and "warnings" not in out, out


def test_the_nightly_job_and_the_reports(env):
    night, gpu = together(
        (env, "trainkit-nightly", "run", "--out", "night", "--preset", "tiny", "--device", "cpu", "--repeats", "1",
         "--", *TINY_BENCH[2:10], "--steps", "2", "--warmup-steps", "1"),
        (env, "trainkit-nightly", "gpu-check", "--out", "gpu", "--device", "cpu", "--only", "memory.floor"))
    ok(night), ok(gpu)
    results = env["work"] / "night" / "results.jsonl"
    assert (env["work"] / "night" / "report.html").is_file()
    assert json.loads(results.read_text().splitlines()[0])["cell_id"] == "mlp-fp32-bs16-ga1-gpus1"
    assert (env["work"] / "gpu" / "gpu-check.md").is_file()
    ok(run(env, "trainkit-reports", "build", str(results), "-o", "report.html"))
    ok(run(env, "trainkit-reports", "compare", str(results), str(results), "--output", "compare.html"))
    ok(run(env, "trainkit-reports", "history", "ingest", "--db", "history.db", "--commit", "abc", str(results)))
    assert "mlp-fp32-bs16-ga1-gpus1" in ok(run(env, "trainkit-reports", "history", "show", "--db", "history.db",
                                               "mlp-fp32-bs16-ga1-gpus1"))
