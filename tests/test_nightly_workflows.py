"""The GitHub workflows: actionlint passes on both (and fails on a broken one, so the check can fail), and
the nightly workflow keeps its logic in `python -m nightly`. actionlint comes with the dev extra; under
CI (TRAINKIT_REQUIRE_ACTIONLINT=1, set by .ci/run) a missing actionlint fails instead of skipping."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from trainkit.engine.spec.precision_facts import precision_names
from trainkit.engine.spec.presets import NIGHTLY as NIGHTLY_PRESET

from .conftest import REPO as ROOT

WORKFLOWS = os.path.join(ROOT, ".github", "workflows")
NIGHTLY = os.path.join(WORKFLOWS, "nightly-gpu.yml")
CI = os.path.join(WORKFLOWS, "ci.yml")
CONFIG = os.path.join(ROOT, ".github", "actionlint.yaml")


@pytest.fixture(scope="module")
def actionlint() -> str:
    # The interpreter's own bin first: .ci/run calls .venv/bin/python without activating the venv.
    path = os.path.join(os.path.dirname(sys.executable), "actionlint")
    found = path if os.access(path, os.X_OK) else shutil.which("actionlint")
    if not found:
        if os.environ.get("TRAINKIT_REQUIRE_ACTIONLINT") == "1":
            pytest.fail("TRAINKIT_REQUIRE_ACTIONLINT=1 but no actionlint (pip install -e '.[dev]')")
        pytest.skip("actionlint is not installed (pip install -e '.[dev]'); set TRAINKIT_REQUIRE_ACTIONLINT=1 to fail")
    return found


def lint(actionlint: str, *files: str) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint, "-no-color", "-config-file", CONFIG, *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_actionlint_passes_on_both_workflows(actionlint):
    done = lint(actionlint, NIGHTLY, CI)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    with open(NIGHTLY) as f:
        text = f.read()
    broken = tmp_path / "nightly-gpu.yml"
    # A label no runner has, and a step output read from a step id that does not exist.
    broken.write_text(text.replace("[self-hosted, linux, gpu]", "[self-hosted, linux, gpu, tpu]")
                      .replace("steps.verdict.outputs.label", "steps.verdikt.outputs.label"))
    done = lint(actionlint, str(broken))
    assert done.returncode == 1
    assert 'label "tpu" is unknown' in done.stdout and 'property "verdikt" is not defined' in done.stdout


def _runs(path: str) -> list[str]:
    """The shell of every `run:` step (one-line and block forms)."""
    with open(path) as f:
        lines = f.read().splitlines()
    runs = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)(?:- )?run: (.*)$", line)
        if not match:
            continue
        if match.group(2) != "|":
            runs.append(match.group(2))
            continue
        indent = len(match.group(1))
        block = []
        for body in lines[i + 1:]:
            if body.strip() and len(body) - len(body.lstrip()) <= indent:
                break
            block.append(body.strip())
        runs.append("\n".join(b for b in block if b))
    return runs


def test_the_nightly_workflow_only_calls_the_nightly_script():
    runs = _runs(NIGHTLY)
    install, *steps, install_failed = runs
    assert "pip install" in install and "-e '.[bench,reports,fp8]'" in install
    assert [s.split()[3] for s in steps] == ["preflight", "matrix", "report", "history", "compare", "status"]
    assert all(s.startswith("python -m nightly ") and '--out "$NIGHTLY_OUT"' in s for s in steps)
    assert install_failed.startswith('echo "::error title=Infrastructure failure')


def test_the_nightly_workflow_installs_what_the_nightly_presets_precisions_need():
    """The nightly preset has FP8 cells: installed without the fp8 extra (torchao), they would end
    unsupported on both sides of the gate, tonight and in the baseline, and measure nothing."""
    def modes(block) -> tuple[str, ...]:
        chosen = block.precisions
        return precision_names() if chosen is None else chosen() if callable(chosen) else chosen

    install = _runs(NIGHTLY)[0]
    extras = set(re.search(r"-e '\.\[([a-z0-9,]+)\]'", install).group(1).split(","))
    fp8 = {p for block in NIGHTLY_PRESET.blocks for p in modes(block) if p.startswith("fp8")}
    assert fp8 and "fp8" in extras, (fp8, extras)


def test_the_nightly_workflow_has_its_schedule_runner_artifacts_and_verdict():
    with open(NIGHTLY) as f:
        text = f.read()
    assert re.search(r'schedule:\n\s+- cron: "[0-9 *]+"', text) and "workflow_dispatch:" in text
    assert re.search(r"inputs:\n\s+preset:", text) and "\n      repeats:\n" in text
    assert "runs-on: [self-hosted, linux, gpu]" in text and "concurrency:" in text and "timeout-minutes:" in text
    upload = text[text.index("- name: Upload artifacts"):text.index("- name: Verdict")]
    assert "if: always()" in upload and "actions/upload-artifact@" in upload and "${{ env.NIGHTLY_OUT }}" in upload
    verdict = text[text.index("- name: Verdict"):]
    assert "always()" in verdict and "python -m nightly status" in verdict


def test_ci_runs_the_ci_script():
    assert _runs(CI) == ["bash .ci/run"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "export TRAINKIT_REQUIRE_ACTIONLINT=1" in f.read()
