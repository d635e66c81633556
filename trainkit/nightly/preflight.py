"""Pre-flight: is this machine fit to measure tonight?

A GPU runner that lost its GPU, a GPU another job still holds, or memory someone left allocated
makes every cell slower or failing: the gate would call that a regression and people would learn
to ignore it (LightGBM lost GPUs on CI runners; optimum-benchmark refuses shared GPUs). So before
the matrix, the machine is checked and what was seen is written to preflight.json:

- torch sees the GPUs (a fresh worker process answers, as the cells' workers will), and NVML
  sees the same ones;
- no process of anyone else computes on them (NVML's process list), and enough memory is free;
- clocks, temperature, power and throttle reasons are recorded; a GPU that is throttled while
  idle (thermal, power brake) is a warning, or a failure with `fail_on_slowdown`.

A failed pre-flight is an infrastructure failure (exit 3): retry on a healthy runner; it is never
a regression. On a CPU, it records the CPU and its load and passes, saying there is no GPU.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Any

from trainkit.engine.measure.nvml import SLOWDOWN_REASONS, Nvml
from trainkit.engine.spec.schema import JsonFileError, fingerprint, read_json, write_json

from . import INFRASTRUCTURE, PASS
from .baselines import slug
from .rundir import PREFLIGHT, RunDir, Stage, now

GiB = 2**30


@dataclass(frozen=True, kw_only=True)
class PreflightLimits:
    """What the machine must satisfy. Every field is a `python -m nightly preflight` option."""

    device: str = "auto"
    """auto: the GPUs when torch sees one, else the CPU; cuda: no GPU is a failure (a GPU runner);
    cpu: no GPU checks at all."""
    min_free_fraction: float = 0.90
    """Each GPU must have at least this share of its memory free. An idle data-centre GPU shows a
    few hundred MiB in use (driver and ECC reservations); another job's leftovers are GiBs."""
    min_gpus: int = 0
    """Fewest GPUs torch must see (0: no check). Set it to the runner's count, so a runner that lost
    a GPU fails here rather than skipping the cells that need it."""
    allow_foreign_processes: bool = False
    """Let other processes compute on the GPUs (their work would be timed along with ours)."""
    fail_on_slowdown: bool = False
    """A GPU already throttled while idle fails the pre-flight instead of raising a warning."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r} is not valid; choose from auto, cpu, cuda")
        if not 0 <= self.min_free_fraction <= 1:
            raise ValueError(f"min_free_fraction={self.min_free_fraction} must be between 0 and 1")
        if self.min_gpus < 0:
            raise ValueError(f"min_gpus={self.min_gpus} must be >= 0")


# --- what the machine looks like --------------------------------------------------------------

def probe_device(device: str) -> dict[str, Any]:
    """What torch sees, from a fresh worker process (this one never initialises CUDA): device,
    GPU count, capability and the environment fingerprint. Raises RuntimeError when it cannot."""
    from trainkit.engine.cell.launch import probe  # torch: kept out of `python -m nightly`'s import path

    return probe(device)


def open_gpus() -> tuple[list[tuple[str, Any]], str | None]:
    """NVML sessions for the GPUs the cells may use: those CUDA_VISIBLE_DEVICES names (indices or
    UUIDs), else every GPU NVML sees. Returns (id, Nvml) pairs and why NVML is unusable, if it is."""
    try:
        import pynvml  # optional (trainkit[bench]): its absence is a pre-flight answer, not an import error
    except ImportError:
        return [], "NVML is not available: nvidia-ml-py is not installed (pip install trainkit[bench])"
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as exc:  # NVMLError of any kind: no driver, driver/library mismatch
        return [], f"NVML is not available: {exc}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [str(i) for i in range(count)] if visible is None else [v.strip() for v in visible.split(",") if v.strip()]
    gpus, unknown = [], []
    for gpu_id in ids:
        if gpu_id.startswith(("GPU-", "MIG-")):
            nvml = Nvml.open(uuid=gpu_id)
        elif gpu_id.isdigit():  # NVML's index (PCI bus order); CUDA's too with CUDA_DEVICE_ORDER=PCI_BUS_ID
            nvml = Nvml.open(index=int(gpu_id))
        else:
            nvml = None
        if nvml is None:
            unknown.append(gpu_id)
        else:
            gpus.append((gpu_id, nvml))
    return gpus, f"NVML cannot open GPU {', '.join(unknown)}" if unknown else None


def gpu_facts(gpu_id: str, nvml: Any) -> dict[str, Any]:
    """One GPU as NVML sees it: memory, processes, clocks, temperature, power, throttle reasons."""
    info, sample = nvml.info(), nvml.sample()
    try:
        processes = nvml.nv.nvmlDeviceGetComputeRunningProcesses(nvml.handle)
    except Exception:  # not supported (some MIG and container setups): idleness cannot be checked
        processes = None
    # Nothing of ours runs yet, so every compute process on the GPU belongs to someone else.
    foreign = None if processes is None else sorted(p.pid for p in processes)
    used = None if processes is None else sum(p.usedGpuMemory or 0 for p in processes)
    return {"id": gpu_id, "name": info["name"], "driver": info["driver"],
            "memory_total_bytes": info["memory_total_bytes"], "memory_free_bytes": info["memory_free_bytes"],
            "foreign_pids": foreign, "foreign_used_bytes": used,
            "sm_clock_mhz": sample["sm_clock_mhz"], "max_sm_clock_mhz": info["max_sm_clock_mhz"],
            "temperature_c": sample["temperature_c"], "power_w": sample["power_w"],
            "power_limit_w": info["power_limit_w"], "throttle_reasons": sample["throttle_reasons"],
            "ecc": info["ecc"], "mig": info["mig"]}


def host_facts() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"hostname": platform.node(), "cpu_count": os.cpu_count(), "load_1m": load[0], "load_5m": load[1]}


def observe(limits: PreflightLimits) -> dict[str, Any]:
    """Everything the decision reads, as plain data (written to preflight.json as it is)."""
    facts: dict[str, Any] = {"checked_at": now(), "limits": asdict(limits), "host": host_facts(),
                             "probe": None, "probe_error": None, "gpus": [], "nvml_error": None}
    try:
        facts["probe"] = probe_device(limits.device)
    except RuntimeError as exc:
        facts["probe_error"] = str(exc)
    if limits.device != "cpu":
        gpus, facts["nvml_error"] = open_gpus()
        facts["gpus"] = [gpu_facts(gpu_id, nvml) for gpu_id, nvml in gpus]
    return facts


# --- the decision -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    problems: list[str]
    """Reasons the machine is unfit: any one makes the pre-flight fail (infrastructure)."""
    warnings: list[str]
    """Facts a reader should see beside the results; they do not fail the pre-flight."""

    @property
    def passed(self) -> bool:
        return not self.problems


def decide(facts: dict[str, Any], limits: PreflightLimits) -> Verdict:
    """Pure: the observed facts against the limits."""
    problems: list[str] = []
    warnings: list[str] = []
    probe = facts.get("probe")
    if probe is None:
        problems.append(facts.get("probe_error") or "the device probe did not answer")
        return Verdict(problems, warnings)
    on_gpu = probe["device"] == "cuda"
    gpus = facts.get("gpus") or []
    if limits.device == "cuda" and not on_gpu:
        problems.append("no GPU visible to torch (asked for --device cuda)")
    if not on_gpu and gpus and limits.device == "auto":
        problems.append(f"NVML sees {len(gpus)} GPU(s) but torch sees none: a driver/CUDA mismatch?")
    if on_gpu and probe["gpu_count"] < limits.min_gpus:
        problems.append(f"torch sees {probe['gpu_count']} GPU(s), the runner should have {limits.min_gpus}")
    if on_gpu and facts.get("nvml_error"):
        problems.append(f"{facts['nvml_error']}: cannot check that the GPUs are idle")
    for gpu in gpus:
        name = f"GPU {gpu['id']} ({gpu['name']})"
        if gpu["foreign_pids"] is None:
            warnings.append(f"{name}: NVML cannot list its processes; idleness not checked")
        elif gpu["foreign_pids"] and not limits.allow_foreign_processes:
            pids = ", ".join(str(p) for p in gpu["foreign_pids"])
            problems.append(f"{name} is busy: {len(gpu['foreign_pids'])} foreign process(es) (pid {pids}) "
                            f"use {(gpu['foreign_used_bytes'] or 0) / GiB:.1f} GiB")
        total, free = gpu["memory_total_bytes"], gpu["memory_free_bytes"]
        if total and free is not None and free / total < limits.min_free_fraction:
            problems.append(f"{name}: {free / GiB:.1f} of {total / GiB:.1f} GiB free ({free / total:.0%}), "
                            f"below the {limits.min_free_fraction:.0%} required")
        slowdown = [r for r in gpu["throttle_reasons"] or [] if r in SLOWDOWN_REASONS]
        if slowdown:
            (problems if limits.fail_on_slowdown else warnings).append(
                f"{name} is throttled while idle: {', '.join(slowdown)}")
        if gpu["mig"]:
            warnings.append(f"{name} is in MIG mode: results hold for a slice, not the whole GPU")
    if not on_gpu:
        warnings.append("no GPU: a CPU run, whose rows are correctness and smoke rows, not speed claims")
    return Verdict(problems, warnings)


def describe(facts: dict[str, Any]) -> str:
    """One line for a passing pre-flight: what will be measured on."""
    probe = facts["probe"]
    if probe["device"] != "cuda":
        host = facts["host"]
        load = f", load {host['load_1m']:.1f}" if host.get("load_1m") is not None else ""
        return f"no GPU: CPU {probe['env'].get('cpu')} ({host['cpu_count']} cores{load})"
    parts = [f"{probe['gpu_count']} x {probe['gpu_name']} (driver {probe['env'].get('driver')})"]
    for gpu in facts["gpus"]:
        free = "" if not gpu["memory_total_bytes"] else (
            f"{gpu['memory_free_bytes'] / GiB:.1f} of {gpu['memory_total_bytes'] / GiB:.1f} GiB free, ")
        parts.append(f"GPU {gpu['id']}: {free}SM {gpu['sm_clock_mhz']}/{gpu['max_sm_clock_mhz']} MHz, "
                     f"{gpu['temperature_c']} C, {', '.join(gpu['throttle_reasons'] or []) or 'no throttle reason'}")
    return "; ".join(parts)


def run_preflight(limits: PreflightLimits, run: RunDir, facts: dict[str, Any] | None = None) -> Stage:
    """Observe (unless given the facts), decide, write preflight.json; exit 3 when unfit."""
    facts = observe(limits) if facts is None else facts
    verdict = decide(facts, limits)
    env = (facts.get("probe") or {}).get("env")
    fp = fingerprint(env) if env else None
    write_json(run.path(PREFLIGHT), {**facts, "passed": verdict.passed, "problems": verdict.problems,
                                     "warnings": verdict.warnings, "fingerprint": fp,
                                     "baseline_slug": slug(fp) if fp else None})
    if verdict.passed:
        return Stage("preflight", PASS, f"pass: {describe(facts)}", {"warnings": verdict.warnings,
                                                                     "fingerprint": fp})
    return Stage("preflight", INFRASTRUCTURE, "; ".join(verdict.problems),
                 {"problems": verdict.problems, "warnings": verdict.warnings, "fingerprint": fp})


def postflight(run: RunDir) -> str | None:
    """After the matrix: do the GPUs the pre-flight saw still answer? A GPU that fell off the bus
    mid-run fails every later cell; that is the runner's fault, not the code's."""
    try:
        before = read_json(run.path(PREFLIGHT), "pre-flight record").get("gpus") or []
    except JsonFileError:  # no pre-flight to compare with (or a broken one): nothing to say
        return None
    if not before:
        return None
    gpus, error = open_gpus()
    now_seen = {gpu_id for gpu_id, nvml in gpus if nvml.info()["memory_total_bytes"] is not None}
    lost = [gpu["id"] for gpu in before if gpu["id"] not in now_seen]
    if error or lost:
        why = f": {error}" if error else ""
        return f"GPU(s) {', '.join(lost) or 'all'} no longer answer NVML after the matrix{why}"
    return None
