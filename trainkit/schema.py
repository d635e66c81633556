"""The result record's contract, without torch: what bench, reports and the nightly gate share.

Importing this module costs nothing (no torch), so readers of results stay fast.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

SCHEMA = "trainkit.result/1"
STATUSES = ("ok", "oom", "diverged", "timeout", "crashed", "unsupported")
MEMORY_KEYS = ("torch_max_allocated_bytes", "torch_max_reserved_bytes", "nvml_process_peak_bytes",
               "nvml_context_baseline_bytes", "host_rss_peak_bytes")
OPTIONAL_MEMORY_KEYS = ("host_rss_growth_bytes",)
"""Memory keys newer records carry and older ones lack; check_record does not ask for them.
host_rss_growth_bytes: a CPU cell's own growth of the resident set over its worker's baseline
(most of a worker's RSS is torch, inherited from the fork server, the same for every cell)."""
RECORD_KEYS = ("schema", "cell_id", "status", "status_detail", "config", "throughput_samples_per_s",
               "step_time_s", "memory", "loss", "scaler", "mfu", "flops_per_sample", "energy_j_per_sample", "env")

# A cell whose data phase takes more than this share of its step is data-bound: the data pipeline,
# not the model, sets its speed (trainkit.profile flags it; reports show it).
DATA_BOUND_SHARE = 0.2

# What a baseline must match: GPU model, driver, CUDA and torch (on the CPU: the CPU model and torch).
FINGERPRINT_KEYS = ("gpu_name", "driver", "cuda", "torch")
FINGERPRINT_KEYS_CPU = ("cpu", "torch")


def fingerprint(env: dict[str, Any] | None) -> dict[str, Any]:
    env = env or {}
    keys = FINGERPRINT_KEYS if env.get("gpu_name") else FINGERPRINT_KEYS_CPU
    return {k: env.get(k) for k in keys}


# The one number that stands for a cell's peak memory, wherever one is printed or judged (the
# `trainkit run` line, bench's table, the report's summary, the regression gate), first found
# first: what PyTorch holds on the device (allocations plus its cache, without the CUDA context,
# so a driver update does not move it); the allocations alone; NVML's per-process peak; on a CPU,
# the cell's own RSS growth, else the whole worker's RSS (older records lack the growth).
HEADLINE_MEMORY = ("torch_max_reserved_bytes", "torch_max_allocated_bytes", "nvml_process_peak_bytes",
                   "host_rss_growth_bytes", "host_rss_peak_bytes")
MEMORY_NAMES = {"torch_max_reserved_bytes": "reserved", "torch_max_allocated_bytes": "allocated",
                "nvml_process_peak_bytes": "NVML", "host_rss_growth_bytes": "host RSS growth",
                "host_rss_peak_bytes": "host RSS"}
"""Short names of the memory measures, for headers and printed lines."""


def _measured(value: Any) -> bool:
    # A finite number: null means not measurable, and tables read back from pandas hold NaN.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def headline_memory(memories: Iterable[Mapping[str, Any] | None]) -> str | None:
    """The memory measure that stands for these records' peak: the first of HEADLINE_MEMORY that
    every one of the given `memory` objects measured, so repeats and both sides of a comparison
    are judged on one measure. None when there is no memory object or no measure common to all."""
    memories = [m or {} for m in memories]
    for measure in HEADLINE_MEMORY:
        if memories and all(_measured(m.get(measure)) for m in memories):
            return measure
    return None


def check_record(record: Any) -> list[str]:
    """What is wrong with a record, as readable lines (empty when it honours the contract)."""
    if not isinstance(record, dict):
        return [f"a record must be a JSON object, not {type(record).__name__}"]
    problems = [f"missing key {k!r}" for k in RECORD_KEYS if k not in record]
    if record.get("schema") != SCHEMA:
        problems.append(f"schema is {record.get('schema')!r}, expected {SCHEMA!r}")
    if record.get("status") not in STATUSES:
        problems.append(f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    if not isinstance(record.get("memory", {}), dict) or any(k not in record.get("memory", {}) for k in MEMORY_KEYS):
        problems.append("memory lacks one of " + ", ".join(MEMORY_KEYS))
    return problems


def write_json(record: dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(path + ".tmp", path)


def append_jsonl(record: dict[str, Any], path: str) -> None:
    """Append one record as a line and flush it to disk: a run killed later keeps this cell."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a results file; a torn last line (a run killed mid-write) is ignored."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
