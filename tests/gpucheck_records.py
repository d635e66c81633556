"""Records of gpu-check's cells as a real run writes them, built by trainkit's own merge_ranks (so
their keys are the real record's) from plausible figures that every check accepts: the tests break
one figure at a time. Shared by test_nightly_gpucheck.py and test_nightly_gpucheck_memory.py."""

from __future__ import annotations

from trainkit.engine.cell.record import LauncherReport, RankReport, TimedSpan, merge_ranks
from trainkit.engine.measure.flops import peak_flops_per_s
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import DTYPE_BYTES, facts_of
from trainkit.engine.spec.presets import GPU_GPT
from trainkit.nightly.gpucheck import cells, memory
from trainkit.nightly.gpucheck.stepprobe import StepCount

MiB, GiB = 2**20, 2**30
H200 = "NVIDIA H200"
GPT = {**GPU_GPT, **cells.GPT_RECIPE}


def gpt_config(precision: str = "amp-bf16", batch: int = 16, accum: int = 1, steps: int = 100) -> RunConfig:
    return RunConfig(model="gpt", precision=precision, batch_size=batch, grad_accum=accum, steps=steps,
                     warmup_steps=5, device="cuda", **GPT)


def resnet_config(precision: str) -> RunConfig:
    return RunConfig(model="resnet50", precision=precision, batch_size=128, steps=20, warmup_steps=5, device="cuda",
                     **cells.RESNET_RECIPE)


# Seconds per step of the simulated GPU: ResNet-50 in the order a real one shows (AMP < TF32 < FP32).
STEP_S = {("resnet50", "fp32"): 0.20, ("resnet50", "tf32"): 0.09, ("resnet50", "amp-fp16"): 0.05}
PARAMS = {"gpt": 124_475_904, "resnet50": 23_528_522}
SLACK = 300 * MiB
"""What the simulated GPU's allocated peak holds beyond the floor (cuBLAS workspaces, rounding, temporaries)."""


def step_count(config: RunConfig) -> StepCount:
    """The step probe's plausible answer for a simulated GPU cell: the model's real parameter count,
    a pool of 256 MiB and 200 MiB of saved activations per sample; logits per sample from the shapes."""
    per_sample = config.seq_len * config.vocab_size if config.model == "gpt" else 10
    return StepCount(cell_id=config.cell_id, device="cuda:0", params=PARAMS[config.model], data_bytes=256 * MiB,
                     saved_activation_bytes=config.batch_size * 200 * MiB, loss_input_elements_per_sample=per_sample)


def gpu_record(config: RunConfig, gpu_name: str = H200, mfu: float = 0.18, power_w: float = 500.0) -> dict:
    """A plausible GPU record of a cell, merged by trainkit.engine.cell.record.merge_ranks from what a rank and the
    launcher would report: every figure consistent with every check, which the tests then break."""
    steps, samples = config.steps, config.effective_batch
    step_s = STEP_S.get((config.model, config.precision), 0.05)
    params = PARAMS[config.model]
    facts = facts_of(config.precision)
    weights = params * DTYPE_BYTES[facts.param_dtype]
    state = (2 if config.optimizer.startswith("adam") else 1) * params * DTYPE_BYTES[facts.optimizer_state_dtype]
    rank = RankReport(rank=0, pid=4242)
    rank.timing.step_times_s = [step_s] * steps
    rank.timing.timed_samples = [samples] * steps
    rank.timing.first_timed_step = config.warmup_steps
    rank.timing.spans = [TimedSpan(steps=steps, seconds=step_s * steps, samples=samples * steps,
                                   energy_j=power_w * step_s * steps)]
    rank.loss.curve = [2.0] * (config.warmup_steps + steps)
    rank.loss.step_samples = [samples] * (config.warmup_steps + steps)
    allocated = memory.floor_terms(config.to_dict(), step_count(config)).floor_bytes + SLACK
    held = rank.memory
    held.torch_max_allocated_bytes, held.torch_max_reserved_bytes = allocated, int(allocated * 1.2)
    held.nvml_context_baseline_bytes = 520 * MiB
    rank.derived = {"resolved_device": "cuda:0", "params": params, "param_bytes": weights,
                    "optimizer_state_bytes": state, "param_dtype": f"torch.{facts.param_dtype}",
                    "optimizer_state_dtype": f"torch.{facts.optimizer_state_dtype}",
                    "compute_dtype": f"torch.{facts.compute_dtype}"}
    rank.env = {"gpu_name": gpu_name, "gpu_count": 1, "driver": "570.86", "cuda": "13.0", "torch": "2.14.1",
                "cpu": "Intel Xeon", "gpu_capability": "9.0"}
    peak = peak_flops_per_s(gpu_name, config.precision) or 989.4e12
    rank.flops_per_sample = mfu * peak * step_s / samples
    half = facts.compute_dtype != "float32"
    rank.profile = {"reduced_precision_share": 0.8 if half else 0.0, "time_basis": "device (kernel) time",
                    "trace_steps": 3}
    launcher = LauncherReport(worker_pids=[4242], nvml_process_peak_bytes=[int(allocated * 1.2) + 600 * MiB],
                              nvml_note="per-process (nvmlDeviceGetComputeRunningProcesses): the largest of 70 samples",
                              gpu_samples={"samples": 70, "interval_s": 0.1, "power_w_mean": power_w,
                                           "sm_clock_mhz": None, "temperature_c_max": 60, "throttle_reasons": [],
                                           "throttled": False})
    return merge_ranks(config, [rank], launcher=launcher)


def cpu_record(config: RunConfig, rss_growth: int) -> dict:
    """A CPU record: no allocator or NVML figures, the cell's host RSS growth."""
    rank = RankReport(rank=0, pid=4343)
    rank.timing.step_times_s, rank.timing.timed_samples = [0.1], [config.effective_batch]
    rank.memory.host_rss_baseline_bytes, rank.memory.host_rss_peak_bytes = 400 * MiB, 400 * MiB + rss_growth
    rank.derived = {"resolved_device": "cpu"}
    return merge_ranks(config, [rank])


def counts_of(*records: dict) -> dict[str, StepCount]:
    return {r["cell_id"]: step_count(RunConfig.from_dict({k: v for k, v in r["config"].items()
                                                           if k in RunConfig.__dataclass_fields__}))
            for r in records}
