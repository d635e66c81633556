"""The bench matrix with a user's workload, from a directory outside the repository: every CPU
precision at accumulation 1 and 4 and on ranks 1 and 2, and records that hold the built-ins'
invariants (accumulation and world-size equivalence, the same seed's run repeated bitwise)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainkit.bench.matrix import build_matrix
from trainkit.engine.cell.record import RECORD_KEYS, check_record, read_jsonl
from trainkit.engine.spec.precision_facts import precision_names
from trainkit.engine.spec.presets import preset
from trainkit.engine.train.hardware import Hardware
from trainkit.engine.train.precision import policy_class

from .conftest import REPO
from .test_workload import write_user_module
from .test_workload_cli import env_with

CPU_MODES = [m for m in precision_names() if policy_class(m).unsupported_on("cpu", None) is None]


def bench(directory, name: str, *args: str) -> list[dict]:
    results = directory / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "pytest", os.path.join(REPO, "bench", "test_train.py"), "--benchmark-only",
           "-p", "no:randomly", "--report-dir", str(directory / f"{name}-out"), "--results-file", str(results),
           "--model", "usermodels:tiny", "--steps", "3", "--warmup-steps", "1", "--rounds", "3", *args]
    proc = subprocess.run(cmd, cwd=directory, env=env_with(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return list(read_jsonl(str(results)))


def chosen(cell_ids) -> str:
    """A -k expression selecting exactly these cells: a bracketed id matches only its own test (no -repK
    of it, no longer id it begins)."""
    return " or ".join(f"[{cell}]" for cell in sorted(cell_ids))


def test_a_workload_spec_is_a_model_of_the_matrix_named_by_its_workload(tmp_path, monkeypatch):
    write_user_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cells = build_matrix(preset("tiny", False), Hardware("cpu", cpu_count=2), {"model": ("usermodels:tiny",)}, 2, 1)
    assert {c.id for c in cells} == {f"tiny-{p}-bs16-ga{a}-gpus1" for p in ("fp32", "amp-bf16") for a in (1, 2)}
    assert all(c.model == "tiny" and c.config.workload == "usermodels:tiny" for c in cells)
    assert {c.config.optimizer for c in cells} == {"adamw"}  # the recipe of a model without one
    sys.modules.pop("usermodels", None)


@pytest.mark.slow
def test_the_quick_matrix_runs_a_user_workload_and_its_records_hold_the_invariants(tmp_path):
    write_user_module(tmp_path)
    # One bench run (a bench run's interpreter and fork server cost ~10 s here) of the quick matrix's
    # cells with the user's workload, cut by -k to a cover of its 36 CPU cells: every precision at
    # accumulation 1 on one rank and at accumulation 4 on two (accumulation under DDP's no_sync, the
    # hardest of the four), fp32 at all four shapes; and the equivalence's whole batches, repeated.
    shapes = {(1, 1), (4, 2)}
    matrix_ids = {f"tiny-{p}-bs8-ga{a}-gpus{g}" for p in CPU_MODES for a in (1, 4) for g in (1, 2)
                  if p == "fp32" or (a, g) in shapes}
    whole_ids = {f"tiny-fp32-bs32-ga1-gpus{g}{rep}" for g in (1, 2) for rep in ("", "-rep1")}
    records = bench(tmp_path, "quick", "--preset", "quick", "--batch-size", "8,32", "--grad-accum", "1,4",
                    "--gpus", "1,2", "--repeats", "2", "--compile", "off", "--activation-checkpointing", "none",
                    "-k", chosen(matrix_ids | whole_ids))
    by_id = {r["cell_id"] + (f"-rep{r['repeat']}" if r.get("repeat") else ""): r for r in records}
    assert set(by_id) == matrix_ids | whole_ids
    ran = {(r["config"]["precision"], r["config"]["grad_accum"], r["config"]["world_size"]) for r in records
           if r["config"]["batch_size"] == 8}
    assert all({(a, g) for q, a, g in ran if q == p} >= shapes for p in CPU_MODES), ran  # what each one ran
    for record in records:
        assert record["status"] == "ok", (record["cell_id"], record["status_detail"])
        assert check_record(record) == [] and set(RECORD_KEYS) <= set(record)
        assert record["config"]["workload"] == "usermodels:tiny"
    # The same samples split as 8 x 4 micro-batches or 32 x 1, on one rank or two: the same curve.
    for gpus in (1, 2):
        split = by_id[f"tiny-fp32-bs8-ga4-gpus{gpus}"]["loss"]["curve"]
        one = by_id[f"tiny-fp32-bs32-ga1-gpus{gpus}"]["loss"]["curve"]
        assert split == pytest.approx(one, rel=1e-5)
        assert by_id[f"tiny-fp32-bs32-ga1-gpus{gpus}-rep1"]["loss"]["curve"] == one  # bitwise, repeated
