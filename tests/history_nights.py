"""Forty nights of results from the real CPU records in tests/history_data, for the history tests."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "history_data" / "cpu-cells.jsonl"
STEP_CELL = "mlp-fp32-bs32-ga1-gpus1"
NIGHTS, STEP_NIGHT, STEP = 40, 25, 0.15
NOISE = 0.03  # relative night-to-night noise of the throughput


def base_records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def commit(night: int) -> str:
    return hashlib.sha1(f"night {night}".encode()).hexdigest()


def date(night: int) -> str:
    return (dt.datetime(2026, 10, 1, 2, 17, tzinfo=dt.timezone.utc) + dt.timedelta(days=night - 1)).isoformat()


def scaled(record: dict[str, Any], night: int, factor: float) -> dict[str, Any]:
    """The record as night `night` measured it: throughput times `factor`, step times divided by it."""
    out = copy.deepcopy(record)
    for key in ("throughput_samples_per_s", "effective_throughput_samples_per_s"):
        if out.get(key) is not None:
            out[key] *= factor
    steps = out["step_time_s"]
    steps["values"] = [v / factor for v in steps["values"]]
    for key in ("median", "iqr", "min", "max", "mean"):
        if steps.get(key) is not None:
            steps[key] /= factor
    out["finished_at"] = date(night)
    out["env"]["git_commit"] = commit(night)
    return out


def night_records(night: int, rng: np.random.Generator, step_cell: str | None = STEP_CELL,
                  step_night: int = STEP_NIGHT, step: float = STEP) -> list[dict[str, Any]]:
    records = []
    for record in base_records():
        factor = float(np.exp(rng.normal(0.0, NOISE)))
        if record["cell_id"] == step_cell and night >= step_night:
            factor *= 1 - step
        records.append(scaled(record, night, factor))
    return records


def write_nights(folder: Path, nights: int = NIGHTS, seed: int = 0, **step: Any) -> list[Path]:
    """One results file per night (night-01.jsonl ...), as the nightly's results.jsonl."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for night in range(1, nights + 1):
        path = folder / f"night-{night:02d}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in night_records(night, rng, **step)))
        paths.append(path)
    return paths
