"""`python -m trainkit run`, `repro` and `env`: the work of the commands that run one cell (and print
the environment). Their options are built by cli.py and config_options.py; `python -m trainkit`
imports this module (and torch with it) only when one of these commands runs, so bad input is
refused in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from ..engine.cell.launch import DEFAULT_CELL_TIMEOUT_S, launched_by_torchrun, run_cell, run_under_torchrun
from ..engine.measure.env import collect_env
from ..engine.spec.config import ConfigError, ProfileConfig, RunConfig
from ..engine.spec.options import MEMORY_LIMIT_ON_GPU, UsageError
from ..engine.spec.schema import MEMORY_NAMES, headline_memory, read_json, write_json
from .config_options import check_paths, config_from_args


def profile_config(args: argparse.Namespace) -> ProfileConfig:
    """The profiling passes the options ask for."""
    directory = args.profile_dir or (f"{args.output}.profile" if args.output else "trainkit-profiles")
    return ProfileConfig.from_options(args.phase_steps, args.profile, args.memory_snapshot, directory,
                                      args.diagnostics)


def load_record_config(path: str) -> RunConfig:
    record = read_json(path, "result record")
    try:
        return RunConfig.from_dict(record["config"])
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a readable result record ({type(exc).__name__}: {exc})") from None
    except ConfigError as exc:
        raise UsageError(f"{path}: its config is not valid here: {exc}") from None


def _progress_printer(config: RunConfig, quiet: bool):  # noqa: ANN202
    if quiet:
        return None

    started = time.monotonic()

    def show(phase: str, step: int, total: int) -> None:
        # The step count is the host's: the device may be a few steps behind, and reading a loss
        # here would make the timed window wait for it.
        elapsed = time.monotonic() - started
        rate = step / elapsed if elapsed > 0 else 0.0
        left = (total - step) / rate if rate > 0 else float("nan")
        print(f"[trainkit] {config.cell_id}: step {step}/{total}  "
              f"{elapsed:.0f}s elapsed, ~{left:.0f}s left", file=sys.stderr, flush=True)

    return show


def cmd_run(args: argparse.Namespace, base: RunConfig | None) -> int:
    config = config_from_args(args, base)
    check_paths(config, args.output)
    if args.memory_limit_gb and config.device == "cuda":
        raise UsageError(f"--memory-limit-gb {MEMORY_LIMIT_ON_GPU}; use it with --device cpu")
    if launched_by_torchrun():
        record = run_under_torchrun(config, profile_config(args))
        if record is None:
            return 0  # not rank 0: rank 0 writes the record
    else:
        if not args.quiet:
            print(f"[trainkit] {config.cell_id}: starting {config.world_size} rank(s)", file=sys.stderr, flush=True)
        memory_limit = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else None
        record = run_cell(config, timeout_s=args.cell_timeout or DEFAULT_CELL_TIMEOUT_S,
                          memory_limit_bytes=memory_limit, progress=_progress_printer(config, args.quiet),
                          profile=profile_config(args))
    if args.output:
        write_json(args.output, record)
    else:
        print(json.dumps(record, indent=2))
    if not args.quiet:
        print(summary_line(record), file=sys.stderr, flush=True)
    return 0 if record["status"] == "ok" else 1


def summary_line(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"[trainkit] {record['cell_id']}: {record['status']}: {record['status_detail']}"
    measure = headline_memory([record["memory"]])  # the measure the report and the gate show too
    peak = f"peak {MEMORY_NAMES[measure]} {record['memory'][measure] / 2**20:.1f} MiB" if measure else "peak memory n/a"
    return (f"[trainkit] {record['cell_id']}: {record['throughput_samples_per_s']:.1f} samples/s, "
            f"step {record['step_time_s']['median'] * 1e3:.2f} ms (median of {record['step_time_s']['n']}), "
            f"{peak}, final loss {record['loss']['final']}")


def cmd_env() -> int:
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    print(json.dumps(collect_env(device), indent=2))
    return 0




def main(args: argparse.Namespace) -> int:
    """run, repro or env, as parsed."""
    if args.command == "env":
        return cmd_env()
    base = load_record_config(args.record) if args.command == "repro" else None
    return cmd_run(args, base)
