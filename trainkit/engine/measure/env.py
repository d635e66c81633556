"""The environment fingerprint: what a result depends on besides its config.

Baselines are compared only like with like (GPU model, driver, CUDA, torch), so this is recorded
with every result and into pytest-benchmark's machine_info.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

import torch

from ..spec.schema import FINGERPRINT_KEYS, fingerprint  # noqa: F401 - part of this module's interface
from .cpus import usable_cpus
from .memory import alloc_conf
from .nvml import Nvml

CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


@functools.cache
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in (None, "", "x86_64"):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    # CPU bf16/fp16 autocast is only fast with these (pytorch/pytorch#86550).
    return {"cpu": model, "cpu_count": os.cpu_count(), "cpu_flags": [f for f in CPU_FLAGS_OF_INTEREST if f in flags]}


@functools.cache
def git_commit() -> dict[str, Any]:
    """Commit of the trainkit checkout (or TRAINKIT_GIT_COMMIT), and whether it had local changes."""
    if os.environ.get("TRAINKIT_GIT_COMMIT"):
        return {"git_commit": os.environ["TRAINKIT_GIT_COMMIT"], "git_dirty": None}
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def collect_env(device: torch.device) -> dict[str, Any]:
    """The fingerprint, collected inside a worker (the only place CUDA is initialised)."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None, "nccl": None, "driver": None,
        "gpu_name": None, "gpu_count": 0, "gpu_capability": None, "gpu_memory_bytes": None,
        "gpu_power_limit_w": None, "gpu_max_sm_clock_mhz": None, "gpu_ecc": None, "gpu_mig": None,
        "pytorch_cuda_alloc_conf": alloc_conf(),
        "torch_num_threads": torch.get_num_threads(),
        # The cores this process may run on (affinity and cgroup quota; os.cpu_count() counts the
        # machine's): part of a CPU cell's fingerprint.
        "usable_cpus": usable_cpus().cpus,
        **cpu_info(),
        **git_commit(),
    }
    try:
        env["torchvision"] = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        env["torchvision"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                   gpu_capability=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory,
                   cudnn=torch.backends.cudnn.version())
        try:
            env["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # builds without NCCL
            env["nccl"] = None
        nvml = Nvml.open(device)
        if nvml is not None:
            info = nvml.info()
            env.update(driver=info["driver"], gpu_power_limit_w=info["power_limit_w"],
                       gpu_max_sm_clock_mhz=info["max_sm_clock_mhz"], gpu_ecc=info["ecc"], gpu_mig=info["mig"])
    return env
