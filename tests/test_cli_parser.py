"""`python -m trainkit` builds its parser without importing any command's work: a command's work
module (and torch with it) is imported only when that command runs."""

import json
import subprocess
import sys

import pytest

from .conftest import REPO

WORK = ("trainkit.commands.run", "trainkit.commands.parity", "trainkit.commands.plan", "trainkit.commands.recommend",
        "trainkit.commands.recommend_run", "trainkit.commands.workloads")

# Parses argv with the real entry point in a fresh interpreter, then prints what got imported.
PROBE = """
import json, sys
from trainkit.commands.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules
                                                 if m.startswith("trainkit.commands.") or m == "torch")}))
"""


def imported_after(*argv: str) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    return last["code"], set(last["modules"])


@pytest.mark.parametrize("command", ["plan", "recommend"])
def test_help_of_a_command_imports_no_commands_work_and_no_torch(command):
    code, modules = imported_after(command, "--help")
    assert code == 0
    assert modules.isdisjoint(WORK) and "torch" not in modules, sorted(modules & {*WORK, "torch"})


def test_bad_input_to_a_command_is_refused_before_its_work_is_imported():
    code, modules = imported_after("parity", "--seeds", "1", "--output", "x.json")  # --seeds must be >= 2
    assert code == 2 and modules.isdisjoint(WORK) and "torch" not in modules


def test_a_command_that_runs_imports_its_own_work_only():
    # The check above is only worth something if it can fail: running `workloads` imports its work.
    code, modules = imported_after("workloads")
    assert code == 0
    assert "trainkit.commands.workloads" in modules and "torch" in modules
    assert modules.isdisjoint(set(WORK) - {"trainkit.commands.workloads"})
