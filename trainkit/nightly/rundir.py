"""One nightly run's directory: its artifacts, and nightly.json, what each stage did.

Stages may run as separate commands (the workflow gives each its own step), so what a stage
decided is written down as it ends and read back by the next one and by `status`:

    nightly.json   {"schema", "commit", "branch", "stages": {name: {"exit_status", "line", ...}}}
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from trainkit.engine.spec.schema import read_json, write_json

from . import INFRASTRUCTURE, LABELS, NO_BASELINE, PASS

SCHEMA = "trainkit.nightly/1"
ROOT = os.getcwd()
"""The directory the nightly was started in (in CI, the checkout): the default baselines
(reports/baselines/) and the git commit are looked up there, and bench runs there."""
STAGES = ("preflight", "matrix", "report", "compare")
TITLES = {"preflight": "pre-flight", "matrix": "matrix", "report": "report", "compare": "comparison"}

# Artifacts, by name inside the run directory.
STATE, PREFLIGHT, RESULTS, BENCH_JSON = "nightly.json", "preflight.json", "results.jsonl", "benchmark.json"
REPORT, COMPARE, SUMMARY = "report.html", "compare.html", "summary.md"
ARTIFACTS = (SUMMARY, PREFLIGHT, RESULTS, BENCH_JSON, REPORT, "report.csv", "report.md", COMPARE, "compare.csv",
             "compare.md", STATE)


@dataclass(frozen=True)
class Stage:
    """What one stage decided: an exit status (see trainkit/nightly/__init__.py), one readable line, and
    whatever the later stages, the summary or `promote` need to know."""

    name: str
    exit_status: int
    line: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """The run as a whole: the exit status `status` returns, its label and the line that says why."""

    exit_status: int
    label: str
    line: str


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def source() -> dict[str, Any]:
    """Which code the run measures. GitHub's variables first: a detached checkout has no branch."""
    branch = os.environ.get("GITHUB_REF_NAME") or _git("rev-parse", "--abbrev-ref", "HEAD")
    return {"commit": os.environ.get("GITHUB_SHA") or _git("rev-parse", "HEAD"),
            "branch": None if branch == "HEAD" else branch}


class RunDir:
    """The directory of one run; created on first use."""

    def __init__(self, path: str) -> None:
        self.root = path

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def start(self) -> None:
        """Begin a new run here: what an earlier run left in the directory goes."""
        if os.path.isdir(self.root):
            for name in ARTIFACTS:
                if self.exists(name):
                    os.remove(self.path(name))
        os.makedirs(self.root, exist_ok=True)

    def state(self) -> dict[str, Any]:
        if not self.exists(STATE):
            return {}
        return read_json(self.path(STATE), "nightly run state")

    def stages(self) -> dict[str, dict[str, Any]]:
        return self.state().get("stages", {})

    def record(self, stage: Stage) -> None:
        """Write the stage's outcome into nightly.json (atomically: a killed job leaves the old file)."""
        state = self.state() or {"schema": SCHEMA, "started_at": now(), **source()}
        state.setdefault("stages", {})[stage.name] = {"exit_status": stage.exit_status, "line": stage.line,
                                                      "finished_at": now(), **stage.details}
        write_json(self.path(STATE), state)

    def outcome(self) -> Outcome:
        return overall(self.stages())



def overall(stages: dict[str, dict[str, Any]]) -> Outcome:
    """The run's verdict from its stages: the earliest stage that did not pass explains the run (a
    failed pre-flight means nothing was measured; a matrix that could not run leaves nothing to
    gate), then the gate's decision. A stage that never ran is an infrastructure failure: the job
    died or was cut short before it."""
    def outcome(status: int, name: str, line: str, label: str | None = None) -> Outcome:
        return Outcome(status, label or LABELS[status], f"{TITLES.get(name, name)}: {line}")

    for name in ("preflight", "matrix"):
        stage = stages.get(name)
        if stage and stage["exit_status"] != PASS:
            return outcome(stage["exit_status"], name, stage["line"])
    compare = stages.get("compare")
    if compare is None:
        missing = "matrix" if "matrix" not in stages else "compare"
        return outcome(INFRASTRUCTURE, missing, "did not run (the job stopped before it)")
    if compare["exit_status"] != PASS:
        return outcome(compare["exit_status"], "compare", compare["line"])
    report = stages.get("report")
    if report and report["exit_status"] != PASS:
        return outcome(report["exit_status"], "report", report["line"])
    label = NO_BASELINE if compare.get("outcome") == NO_BASELINE else LABELS[PASS]
    return outcome(PASS, "compare", compare["line"], label)
