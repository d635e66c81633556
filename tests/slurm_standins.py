"""Stand-ins for SLURM's sbatch, srun, sacct, squeue and scancel, for tests on a machine without SLURM.

Each command logs what it was given (calls.jsonl) and answers as SLURM does, in the formats
submitit and trainkit.engine.cluster parse:

    sbatch FILE        reads the #SBATCH lines, prints "Submitted batch job N"; refuses a partition
                       not in FAKE_SLURM_PARTITIONS as sbatch does ("invalid partition specified")
    srun ... CMD       starts SLURM_NTASKS copies of CMD with SLURM_PROCID, SLURM_LOCALID and
                       SLURM_NODEID set, their output in the files --output/--error name (%A %a %j %t)
    sacct -o COLS -j IDS --parsable2    a header, then a line per array task ("N_I"); pending tasks
                       collapsed into "N_[a-b%cap]" and ended ones followed by their ".batch" step
    squeue --noheader --array --format=%i|%T --jobs=IDS   the jobs not ended, one line per task
    scancel IDS        ends the jobs' tasks CANCELLED (killing what runs)

In "hold" mode (the default) nothing runs: a test ends the jobs by writing their final states
(`FakeSlurm.end`), as SLURM would after killing them. In "run" mode every task runs here, a node
per "localhost", the array's cap respected, and ends COMPLETED (exit 0) or FAILED.

The same file is the commands' program: `python slurm_standins.py sbatch FILE`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ENDED = ("COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED", "BOOT_FAIL",
         "DEADLINE")
COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel")


# --- the test's side ------------------------------------------------------------------------------

class FakeSlurm:
    """A stand-in cluster in `root`: put `env()` into a process's environment (or PATH) to use it."""

    def __init__(self, root: Path, mode: str = "hold", partitions: tuple[str, ...] = ("gpu", "cpu")) -> None:
        self.root = Path(root)
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        (self.root / "mode").write_text(mode)
        (self.root / "partitions").write_text(",".join(partitions))
        for name in COMMANDS:
            path = self.bin / name
            path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" {name} "$@"\n')
            path.chmod(0o755)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_SLURM_DIR"] = str(self.root)
        return env

    def calls(self, command: str | None = None) -> list[dict]:
        path = self.root / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [c for c in calls if command is None or c["cmd"] == command]

    def jobs(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.root / "state").glob("job-*.json"))]

    def end(self, task: str, state: str, exit_code: str = "0:0", node: str = "node001") -> None:
        """End an array task ("1000_3") or job as SLURM would have, without a result."""
        _write_state(self.root, task, {"State": state, "ExitCode": exit_code, "NodeList": node})

    def break_sacct(self, broken: bool = True) -> None:
        flag = self.root / "sacct_broken"
        flag.write_text("1") if broken else flag.unlink(missing_ok=True)

    def stop(self) -> None:
        """Kill whatever the stand-in still runs (a test that failed halfway)."""
        for path in (self.root / "state").glob("runner-*"):
            try:
                os.killpg(int(path.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError, PermissionError):
                pass


# --- state --------------------------------------------------------------------------------------------

def _root() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _log(root: Path, command: str, **fields: object) -> None:
    with open(root / "calls.jsonl", "a") as f:
        f.write(json.dumps({"cmd": command, **fields}) + "\n")


def _write_state(root: Path, task: str, state: dict) -> None:
    path = root / "state" / f"task-{task}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _read_state(root: Path, task: str) -> dict:
    return json.loads((root / "state" / f"task-{task}.json").read_text())


def _tasks(root: Path, job_id: str) -> list[str]:
    job = json.loads((root / "state" / f"job-{job_id}.json").read_text())
    return [f"{job_id}_{i}" for i in job["array"]] if job["array"] is not None else [job_id]


def _next_id(root: Path) -> str:
    path = root / "next_id"
    number = int(path.read_text()) if path.exists() else 1000
    path.write_text(str(number + 1))
    return str(number)


# --- the commands -----------------------------------------------------------------------------------

def sbatch(args: list[str]) -> int:
    root = _root()
    script = Path(args[-1]).read_text()
    params: dict[str, object] = {}
    for match in re.finditer(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", script, re.M):
        params[match.group(1)] = match.group(2) if match.group(2) is not None else True
    _log(root, "sbatch", argv=args, script=script, params=params)
    allowed = (root / "partitions").read_text().split(",")
    if "partition" in params and params["partition"] not in allowed:
        print(f"sbatch: error: invalid partition specified: {params['partition']}\n"
              "sbatch: error: Batch job submission failed: Invalid partition name specified", file=sys.stderr)
        return 1
    job_id = _next_id(root)
    array, cap = None, None
    if "array" in params:
        span, _, limit = str(params["array"]).partition("%")
        first, _, last = span.partition("-")
        array = list(range(int(first), int(last or first) + 1))
        cap = int(limit) if limit else len(array)
    job = {"id": job_id, "params": params, "array": array, "cap": cap or 1, "script": args[-1]}
    (root / "state" / f"job-{job_id}.json").write_text(json.dumps(job))
    for task in _tasks(root, job_id):
        _write_state(root, task, {"State": "PENDING", "ExitCode": "0:0", "NodeList": "None assigned"})
    if (root / "mode").read_text() == "run":
        runner = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_run", job_id],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        (root / "state" / f"runner-{job_id}").write_text(str(runner.pid))
    print(f"Submitted batch job {job_id}")
    return 0


def _expand(pattern: str, env: dict[str, str], task: int) -> str:
    job = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
    return (pattern.replace("%A", job).replace("%a", env.get("SLURM_ARRAY_TASK_ID", ""))
            .replace("%j", env["SLURM_JOB_ID"]).replace("%t", str(task)))


def _run(args: list[str]) -> int:
    """Run a job's tasks, at most its array's cap at once, as slurmd would."""
    root, job_id = _root(), args[0]
    job = json.loads((root / "state" / f"job-{job_id}.json").read_text())
    params = job["params"]
    nodes, per_node = int(params.get("nodes", 1)), int(params.get("ntasks-per-node", 1))
    waiting, running = list(_tasks(root, job_id)), {}
    while waiting or running:
        while waiting and len(running) < job["cap"]:
            task = waiting.pop(0)
            if _read_state(root, task)["State"] != "PENDING":
                continue  # ended by the test, or cancelled
            env = dict(os.environ, SLURM_JOB_ID=task.replace("_", "0"), SLURM_JOB_NUM_NODES=str(nodes),
                       SLURM_NNODES=str(nodes), SLURM_NTASKS=str(nodes * per_node),
                       SLURM_NTASKS_PER_NODE=str(per_node), SLURM_JOB_NODELIST=",".join(["localhost"] * nodes))
            if job["array"] is not None:
                env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=task.split("_")[1])
            out = _expand(str(params.get("output", "/dev/null")), env, 0)
            with open(out, "a") as stdout:
                process = subprocess.Popen(["bash", job["script"]], env=env, stdout=stdout, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            _write_state(root, task, {"State": "RUNNING", "ExitCode": "0:0", "NodeList": "localhost",
                                      "pid": process.pid})
            running[task] = process
        for task, process in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[task]
            if _read_state(root, task)["State"] == "RUNNING":  # not cancelled meanwhile
                _write_state(root, task, {"State": "COMPLETED" if code == 0 else "FAILED",
                                          "ExitCode": f"{max(code, 0)}:{max(-code, 0)}", "NodeList": "localhost"})
        time.sleep(0.1)
    return 0


def srun(args: list[str]) -> int:
    root = _root()
    _log(root, "srun", argv=args, env={k: v for k, v in os.environ.items() if k.startswith("SLURM_")})
    output = error = "/dev/null"
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            value = args.pop(0)
            output, error = (value, error) if flag == "--output" else (output, value)
    ntasks, per_node = int(os.environ.get("SLURM_NTASKS", "1")), int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
    processes = []
    for task in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(task), SLURM_LOCALID=str(task % per_node),
                   SLURM_NODEID=str(task // per_node), SLURM_STEP_ID="0")
        with open(_expand(output, env, task), "a") as out, open(_expand(error, env, task), "a") as err:
            processes.append(subprocess.Popen(args, env=env, stdout=out, stderr=err))
    codes = [p.wait() for p in processes]
    return next((c for c in codes if c), 0)


def _option(args: list[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == short and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def sacct(args: list[str]) -> int:
    root = _root()
    _log(root, "sacct", argv=args)
    if (root / "sacct_broken").exists():
        print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)
        return 1
    columns = (_option(args, "-o", "--format") or "JobID,State").split(",")
    print("|".join(columns))
    for job_id in (_option(args, "-j", "--jobs") or "").split(","):
        if not (root / "state" / f"job-{job_id}.json").exists():
            continue
        job = json.loads((root / "state" / f"job-{job_id}.json").read_text())
        pending = []
        for task in _tasks(root, job_id):
            state = _read_state(root, task)
            if state["State"] == "PENDING" and job["array"] is not None:
                pending.append(int(task.split("_")[1]))
                continue
            values = {"JobID": task, **state}
            print("|".join(str(values.get(c, "")) for c in columns))
            if state["State"].split()[0] in ENDED:
                print("|".join(str({**values, "JobID": f"{task}.batch"}.get(c, "")) for c in columns))
        if pending:
            span = f"{pending[0]}-{pending[-1]}" if len(pending) > 1 else str(pending[0])
            values = {"JobID": f"{job_id}_[{span}%{job['cap']}]", "State": "PENDING", "ExitCode": "0:0",
                      "NodeList": "None assigned"}
            print("|".join(str(values.get(c, "")) for c in columns))
    return 0


def squeue(args: list[str]) -> int:
    root = _root()
    _log(root, "squeue", argv=args)
    for job_id in (_option(args, "-j", "--jobs") or "").split(","):
        if (root / "state" / f"job-{job_id}.json").exists():
            for task in _tasks(root, job_id):
                state = _read_state(root, task)["State"]
                if state.split()[0] not in ENDED:
                    print(f"{task}|{state}")
    return 0


def scancel(args: list[str]) -> int:
    root = _root()
    _log(root, "scancel", argv=args)
    for job_id in (a for a in args if not a.startswith("-")):
        if not (root / "state" / f"job-{job_id}.json").exists():
            print(f"scancel: error: Invalid job id {job_id}", file=sys.stderr)
            return 1
        for task in _tasks(root, job_id):
            state = _read_state(root, task)
            if state["State"].split()[0] in ENDED:
                continue
            if "pid" in state:
                try:
                    os.killpg(state["pid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
            _write_state(root, task, {"State": "CANCELLED by 0", "ExitCode": "0:15", "NodeList": state["NodeList"]})
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"sbatch": sbatch, "srun": srun, "sacct": sacct, "squeue": squeue, "scancel": scancel,
              "_run": _run}[command](rest))
