"""Rerun a CPU plan's boundary probes under the same cap: the largest batch that ran and the
smallest that ran out of memory, per precision, each as the same probe cell in fresh workers."""

from __future__ import annotations

import json
import sys
import time

from trainkit.analysis.plan.search import outcome_of
from trainkit.commands.plan import probe_config
from trainkit.engine.cell.launch import run_cell
from trainkit.engine.spec.config import RunConfig


def main(path: str, out: str) -> int:
    with open(path) as f:
        plan = json.load(f)
    base = RunConfig.from_dict({**plan["config"], "device": "cpu"})
    rows = []
    for precision, entry in plan["precisions"].items():
        for which in ("largest_ran_batch", "smallest_oom_batch"):
            batch = entry[which]
            if batch is None:
                continue
            config = probe_config(base, precision, batch, plan["probe"]["world_size"], plan["probe"]["steps"])
            began = time.monotonic()
            record = run_cell(config, timeout_s=900, memory_limit_bytes=plan["memory_limit_bytes"], evaluate=False)
            row = {"precision": precision, "which": which, "batch": batch, "outcome": outcome_of(record),
                   "status_detail": (record.get("status_detail") or "")[:200],
                   "host_vm_growth_bytes": (record.get("memory") or {}).get("host_vm_growth_bytes"),
                   "memory_limit_bytes": plan["memory_limit_bytes"], "seconds": round(time.monotonic() - began, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)
    expected = {"largest_ran_batch": "ok", "smallest_oom_batch": "oom"}
    return 0 if all(r["outcome"] == expected[r["which"]] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
