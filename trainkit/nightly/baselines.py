"""Baselines: one directory per environment, promoted by hand after a green run on main.

    reports/baselines/<slug>/
        baseline.json    fingerprint, commit, branch, dates, preset, repeats, the bench command, cells
        results.jsonl    the promoted run's records, every status, as the matrix wrote them

A cell is compared only with a baseline whose fingerprint equals its record's own: GPU model,
driver, CUDA and torch (on a CPU, the CPU model and torch; see trainkit.engine.spec.schema.fingerprint). A
driver update alone moves results on the same runner and commit (intel-xpu-backend-for-triton#7835),
so anything else is "no comparable baseline", never a comparison. A run whose cells landed on
different machines (a cluster's nodes) is split by fingerprint: each part is gated against, and
promoted to, the baseline of its own environment. The slug is for people browsing
the directory; the manifest's fingerprint decides. Nothing is promoted automatically: a baseline
moves only when someone runs `python -m nightly promote RUN_DIR` and commits the directory.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from trainkit.engine.spec.schema import ResultsFileError, fingerprint, parse_jsonl, read_json, replacing, write_json
from trainkit.reports.records import OK, InputError
from trainkit.reports.verdict import RSS_MEASURES, Thresholds, cell_data

from .rundir import RESULTS, ROOT, RunDir, now

NIGHTLY_THRESHOLDS = Thresholds(per_metric={"loss": 0.02}, two_sided=("loss",), max_spread=0.10, min_repeats=3)
"""The nightly's defaults; every field is a `python -m nightly compare` option."""
STABLE_FAILURES = ("oom", "diverged", "unsupported")
"""Statuses a baseline cell may end with in every repeat and still judge the cell (a batch that
does not fit, fp16 that diverges, a precision the GPU lacks are facts of the cell); a timeout or a
crash is the runner's accident, and a cell whose repeats disagree on their status is flaky."""
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
        cores = [f"{fp['usable_cpus']}cores"] if fp.get("usable_cpus") else []
        parts = ["cpu", str(fp.get("cpu")), *cores, f"torch-{fp.get('torch')}"]
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
    manifest = read_json(manifest_path, "baseline manifest", InputError)
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


def split_by_fingerprint(records: list[dict[str, Any]], source: str) -> list[tuple[dict[str, Any], list[int]]]:
    """The environments a run's records were measured in, each with the indices of its records, in
    the order first seen. A record without a fingerprint (a cell that ended before a worker reported
    one) or not measured (skipped at collection) joins the environments that measured its cell, or
    every one when none did: a cell that crashed somewhere is never dropped from a gate."""
    def measured(record: dict[str, Any]) -> bool:
        return bool(record.get("env")) and not record.get("skipped_at_collection")

    keyed = [i for i, r in enumerate(records) if measured(r)] or [i for i, r in enumerate(records) if r.get("env")]
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for i in keyed:
        fp = fingerprint(records[i]["env"])
        groups.setdefault(repr(sorted(fp.items())), (fp, []))[1].append(i)
    if not groups:
        raise InputError(f"{source}: no record carries an environment fingerprint")
    cells = {key: {records[i].get("cell_id") for i in idx} for key, (_, idx) in groups.items()}
    for i in sorted(set(range(len(records))) - set(keyed)):
        homes = [key for key, held in cells.items() if records[i].get("cell_id") in held] or list(groups)
        for key in homes:
            groups[key][1].append(i)
    return [(fp, sorted(idx)) for fp, idx in groups.values()]


def cannot_judge(records: list[dict[str, Any]], thresholds: Thresholds = NIGHTLY_THRESHOLDS) -> dict[str, str]:
    """The cells these records, as a baseline, cannot judge, each with why: a repeat that failed
    (or a timeout or crash in every one), fewer ok repeats than the gate needs, a gated metric
    whose spread over the repeats is above the noise limit, or records that are not one cell."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if not record.get("skipped_at_collection"):
            by_cell.setdefault(record["cell_id"], []).append(record)
    out = {}
    for cell, group in sorted(by_cell.items()):
        data = cell_data(group)
        statuses = set(data.statuses)
        if data.unpoolable:
            out[cell] = f"its records are not one cell: {data.unpoolable}"
        elif len(statuses) > 1 or not statuses <= {OK, *STABLE_FAILURES}:
            out[cell] = f"{data.failures()}: {data.status_detail or data.status}"
        elif data.ok and len(group) < thresholds.min_repeats:
            out[cell] = f"{len(group)} repeat(s), {thresholds.min_repeats} needed to gate"
        elif data.ok and thresholds.max_spread is not None:
            for metric in thresholds.gate_metrics:
                samples = data.metrics[metric]
                if metric == "memory" and data.memory_measure in RSS_MEASURES and data.compiled:
                    continue  # not gated (trainkit.reports.verdict): its spread cannot make it unjudgeable
                if len(samples.values) >= 2 and samples.spread(thresholds.spread) > thresholds.max_spread:
                    out[cell] = (f"{metric} spread {samples.spread(thresholds.spread):.1%} over its repeats, above "
                                 f"the noise limit of {thresholds.max_spread:.0%}")
                    break
    return out


def promote(run: RunDir, root: str = DEFAULT_ROOT, force: bool = False,
            thresholds: Thresholds = NIGHTLY_THRESHOLDS) -> list[Baseline]:
    """Copy a green run's results into root/<slug>/ with its manifest, one baseline per environment
    its cells were measured in. Refuses (InputError) a run that is not green, not from main, or
    measured uncommitted code, or holds cells it cannot judge (cannot_judge: failed repeats, noise),
    unless forced; a forced baseline's manifest names those cells under `cannot_judge`."""
    if not run.exists(RESULTS):
        raise InputError(f"{run.root}: no {RESULTS}; promote the directory of a nightly run")
    with open(run.path(RESULTS), encoding="utf-8") as f:
        text = f.read()
    try:
        parsed = parse_jsonl(text, run.path(RESULTS))
    except ResultsFileError as exc:
        raise InputError(str(exc)) from None
    records = [record for _, record in parsed]
    written = text.splitlines()
    lines = [written[n - 1] + "\n" for n, _ in parsed]  # as written: a baseline is a copy of the run's lines
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
    unjudged = cannot_judge(records, thresholds)
    if unjudged:
        listed = "; ".join(f"{cell}: {why}" for cell, why in list(unjudged.items())[:5])
        more = f" (and {len(unjudged) - 5} more)" if len(unjudged) > 5 else ""
        refusals.append(f"it cannot judge {len(unjudged)} cell(s): {listed}{more}")
    if refusals and not force:
        raise InputError(f"refusing to promote {run.root}: " + "; ".join(refusals) + " (--force promotes anyway)")
    promoted = []
    matrix = state.get("stages", {}).get("matrix", {})
    for fp, indices in split_by_fingerprint(records, run.path(RESULTS)):
        dest = os.path.join(root, slug(fp))
        os.makedirs(dest, exist_ok=True)
        with replacing(os.path.join(dest, RESULTS)) as temporary, open(temporary, "w", encoding="utf-8") as f:
            f.writelines(lines[i] for i in indices)
        mine = [records[i] for i in indices]
        manifest = {"schema": SCHEMA, "fingerprint": fp, "slug": slug(fp), "commit": state.get("commit"),
                    "branch": state.get("branch"), "run_started_at": state.get("started_at"), "promoted_at": now(),
                    "forced": bool(refusals), "preset": matrix.get("preset"), "repeats": matrix.get("repeats"),
                    "command": matrix.get("command"), "cells": len({r["cell_id"] for r in mine}),
                    "records": len(mine), "statuses": dict(Counter(r.get("status") for r in mine)),
                    "cannot_judge": {c: why for c, why in unjudged.items() if c in {r["cell_id"] for r in mine}}}
        write_json(os.path.join(dest, MANIFEST), manifest)
        promoted.append(Baseline(dest, manifest))
    return promoted

