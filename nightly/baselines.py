"""Baselines: one directory per environment, promoted by hand after a green run on main.

    reports/baselines/<slug>/
        baseline.json    fingerprint, commit, branch, dates, preset, repeats, the bench command, cells
        results.jsonl    the promoted run's records, every status, as the matrix wrote them

A run is compared only with the baseline whose fingerprint equals its own: GPU model, driver,
CUDA and torch (on a CPU, the CPU model and torch; see trainkit.schema.fingerprint). A driver
update alone moves results on the same runner and commit (intel-xpu-backend-for-triton#7835), so
anything else is "no comparable baseline", never a comparison. The slug is for people browsing
the directory; the manifest's fingerprint decides. Nothing is promoted automatically: a baseline
moves only when someone runs `python -m nightly promote RUN_DIR` and commits the directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from typing import Any

from reports.records import InputError
from trainkit.schema import ResultsFileError, fingerprint, read_jsonl, replacing, write_json

from .rundir import RESULTS, ROOT, RunDir, now

SCHEMA = "trainkit.baseline/1"
MANIFEST = "baseline.json"
DEFAULT_ROOT = os.path.join(ROOT, "reports", "baselines")


def shown(path: str) -> str:
    """A path as a reader wants it: relative when under the working directory, else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if relative.startswith("..") else relative


def slug(fp: dict[str, Any]) -> str:
    """A directory name for a fingerprint: nvidia-h100-80gb-hbm3-driver-575.51.03-cuda-12.8-torch-2.7.0."""
    if fp.get("gpu_name"):
        parts = [fp["gpu_name"], f"driver-{fp.get('driver')}", f"cuda-{fp.get('cuda')}", f"torch-{fp.get('torch')}"]
    else:
        parts = ["cpu", str(fp.get("cpu")), f"torch-{fp.get('torch')}"]
    return re.sub(r"[^a-z0-9.]+", "-", "-".join(parts).lower()).strip("-.")


def describe_fingerprint(fp: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in fp.items())


@dataclass(frozen=True)
class Baseline:
    """A promoted run: its directory and manifest."""

    path: str
    manifest: dict[str, Any]

    @property
    def results(self) -> str:
        return os.path.join(self.path, RESULTS)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    def describe(self) -> str:
        m = self.manifest
        if "promoted_at" not in m:  # results named on the command line, not a promoted baseline
            return shown(self.path)
        commit = m["commit"][:12] if m.get("commit") else "an unknown commit"
        return (f"{shown(self.path)} (commit {commit}, promoted {m['promoted_at']}, "
                f"preset {m.get('preset')} x {m.get('repeats')} repeats)")


def load(path: str) -> Baseline:
    """The baseline in directory `path`; a missing or broken manifest is bad input."""
    manifest_path = os.path.join(path, MANIFEST)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{manifest_path}: not a readable baseline manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fingerprint"), dict):
        raise InputError(f"{manifest_path}: a baseline manifest needs a 'fingerprint' object")
    return Baseline(path, manifest)


def load_all(root: str) -> list[Baseline]:
    """Every baseline under root (none when root does not exist)."""
    if not os.path.isdir(root):
        return []
    return [load(os.path.join(root, name)) for name in sorted(os.listdir(root))
            if os.path.isfile(os.path.join(root, name, MANIFEST))]


def find(root: str, fp: dict[str, Any]) -> Baseline | None:
    """The baseline made in exactly this environment, or None."""
    return next((b for b in load_all(root) if b.fingerprint == fp), None)


def run_fingerprint(records: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The one environment a run's records were measured in (records without one are cells
    refused before a worker reported it); a run that mixes machines cannot be gated."""
    prints: list[dict[str, Any]] = []
    for record in records:
        if record.get("env"):
            fp = fingerprint(record["env"])
            if fp not in prints:
                prints.append(fp)
    if not prints:
        raise InputError(f"{source}: no record carries an environment fingerprint")
    if len(prints) > 1:
        raise InputError(f"{source}: records from {len(prints)} environments ("
                         + " | ".join(describe_fingerprint(fp) for fp in prints) + "); gate one machine's run")
    return prints[0]


def promote(run: RunDir, root: str = DEFAULT_ROOT, force: bool = False) -> Baseline:
    """Copy a green run's results into root/<slug>/ with its manifest. Refuses (InputError) a run
    that is not green, not from main, or measured uncommitted code, unless forced."""
    if not run.exists(RESULTS):
        raise InputError(f"{run.root}: no {RESULTS}; promote the directory of a nightly run")
    try:
        records = read_jsonl(run.path(RESULTS))
    except ResultsFileError as exc:
        raise InputError(str(exc)) from None
    if not records:
        raise InputError(f"{run.path(RESULTS)}: no records")
    state, outcome = run.state(), run.outcome()
    refusals = []
    if outcome.exit_status != 0:
        refusals.append(f"the run is not green ({outcome.label}: {outcome.line})")
    if state.get("branch") not in (None, "main"):
        refusals.append(f"it measured branch {state['branch']!r}, not main")
    if any((r.get("env") or {}).get("git_dirty") for r in records):
        refusals.append("it measured uncommitted changes (git_dirty)")
    if refusals and not force:
        raise InputError(f"refusing to promote {run.root}: " + "; ".join(refusals) + " (--force promotes anyway)")
    fp = run_fingerprint(records, run.path(RESULTS))
    dest = os.path.join(root, slug(fp))
    os.makedirs(dest, exist_ok=True)
    with replacing(os.path.join(dest, RESULTS)) as temporary:
        shutil.copyfile(run.path(RESULTS), temporary)
    matrix = state.get("stages", {}).get("matrix", {})
    manifest = {"schema": SCHEMA, "fingerprint": fp, "slug": slug(fp), "commit": state.get("commit"),
                "branch": state.get("branch"), "run_started_at": state.get("started_at"), "promoted_at": now(),
                "forced": bool(refusals), "preset": matrix.get("preset"), "repeats": matrix.get("repeats"),
                "command": matrix.get("command"), "cells": len({r["cell_id"] for r in records}),
                "records": len(records), "statuses": dict(Counter(r.get("status") for r in records))}
    write_json(os.path.join(dest, MANIFEST), manifest)
    return Baseline(dest, manifest)
