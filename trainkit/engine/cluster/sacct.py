"""What SLURM's accounting (sacct, squeue) says of a job that ended without a record."""

from __future__ import annotations

# --- sacct states -------------------------------------------------------------------------------------

# What a job's final sacct State says about its cell, when the job returned no record.
SACCT_STATUS: dict[str, tuple[str, str]] = {
    "TIMEOUT": ("timeout", "was killed at its time limit"),
    "DEADLINE": ("timeout", "was killed at its deadline"),
    "OUT_OF_MEMORY": ("oom", "was killed for using more memory than it was given"),
    "NODE_FAIL": ("crashed", "lost its node"),
    "BOOT_FAIL": ("crashed", "could not boot its node"),
    "PREEMPTED": ("crashed", "was preempted"),
    "CANCELLED": ("crashed", "was cancelled"),
    "FAILED": ("crashed", "failed"),
    "COMPLETED": ("crashed", "completed without returning a record"),
}
# States of a job that has not ended (sacct and squeue both use these names).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
                           "SUSPENDED", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "STOPPED",
                           "RESV_DEL_HOLD", "UNKNOWN"})


def state_name(state: str) -> str:
    """"CANCELLED by 1234" -> "CANCELLED"; "" stays ""."""
    return state.split()[0].upper() if state.strip() else ""


def is_active(state: str) -> bool:
    return state_name(state) in ACTIVE_STATES


def status_from_sacct(state: str, exit_code: str | None = None, job_id: str = "", node: str | None = None,
                      time_limit_min: int | None = None) -> tuple[str, str]:
    """(status, one-line detail) of a cell whose job ended in sacct `state` without a record."""
    name = state_name(state)
    status, what = SACCT_STATUS.get(name, ("crashed", f"ended {name or 'in an unknown state'}"))
    if name == "TIMEOUT" and time_limit_min:
        what += f" of {time_limit_min} min"
    facts = [f"sacct {state.strip() or 'no state'}"]
    if exit_code:
        facts.append(f"exit code {exit_code}")
    if node and node not in ("None assigned", "None"):
        facts.append(f"node {node}")
    return status, f"SLURM job {job_id} {what} ({', '.join(facts)})".replace("  ", " ")

