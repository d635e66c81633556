"""`python -m nightly gpu-check`'s memory checks: the floor of what a step must hold (on hand-made
records, and on the CPU cell's real step with and without a planted fault), the live state, NVML's
view and accumulation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.gpucheck_records import (
    SLACK,
    GiB,
    MiB,
    counts_of,
    cpu_record,
    gpt_config,
    gpu_record,
    resnet_config,
    step_count,
)
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.presets import CPU_GPT
from trainkit.nightly.gpucheck import cells, memory, nvml, stepprobe
from trainkit.nightly.gpucheck.results import FAIL, OK, SKIP
from trainkit.nightly.gpucheck.stepprobe import StepCount

# --- memory ----------------------------------------------------------------------------------------

def test_the_analytic_floor_counts_bytes_from_the_precision_table_and_the_optimizer():
    adamw = memory.analytic_state({"params": 1000, "precision": "amp-bf16", "optimizer": "adamw"})
    assert (adamw["weights_bytes"], adamw["grads_bytes"], adamw["optimizer_state_bytes"]) == (4000, 4000, 8000)
    half = memory.analytic_state({"params": 1000, "precision": "half-bf16", "optimizer": "sgd", "momentum": 0.9})
    assert (half["weights_bytes"], half["optimizer_state_bytes"], half["floor_bytes"]) == (2000, 2000, 6000)
    plain = memory.analytic_state({"params": 1000, "precision": "fp32", "optimizer": "sgd", "momentum": 0.0})
    assert plain["optimizer_state_bytes"] == 0 and plain["floor_bytes"] == 8000


def test_a_master_copy_of_the_weights_is_in_the_floor(monkeypatch):
    from trainkit.engine.spec import precision_facts

    master = dataclasses.replace(precision_facts.PRECISION_FACTS["half-bf16"], name="bf16-master",
                                 master_dtype="float32")
    monkeypatch.setitem(precision_facts.PRECISION_FACTS, "bf16-master", master)
    state = memory.analytic_state({"params": 1000, "precision": "bf16-master", "optimizer": "adamw"})
    assert (state["master_bytes"], state["floor_bytes"]) == (4000, 2000 + 2000 + 4000 + 2 * 2000)


def test_the_floor_is_what_the_start_of_backward_holds_counted_by_hand():
    """GPT-2 124M amp-bf16, 16 x 1024 tokens: fp32 weights and AdamW's two fp32 moments, the data,
    the saved activations, and two fp32 gradients of the 16 x 1024 x 50304 logits."""
    gpt = gpu_record(gpt_config())
    terms = memory.floor_terms(gpt["config"], counts_of(gpt)[gpt["cell_id"]])
    logits = 16 * 1024 * 50304
    assert terms.binding == "backward" and terms.loss_input_gradient_bytes == 2 * logits * 4  # 6.1 GiB
    assert terms.floor_bytes == 124_475_904 * (4 + 2 * 4) + 256 * MiB + 16 * 200 * MiB + 2 * logits * 4
    assert terms.floor_bytes > 124_475_904 * 16 + 8 * GiB  # far above the old weights + grads + state


def test_accumulation_holds_the_earlier_gradients_and_tiny_activations_bind_at_the_optimizer_step():
    four = memory.floor_terms(gpt_config(batch=4, accum=4).to_dict(), step_count(gpt_config(batch=4, accum=4)))
    assert four.held_gradient_bytes == four.gradients_bytes == 124_475_904 * 4
    assert four.backward_bytes == 4 * 200 * MiB + 2 * 4 * 1024 * 50304 * 4 + 124_475_904 * 4
    tiny = StepCount(cell_id="c", device="cuda:0", params=1000, data_bytes=0, saved_activation_bytes=100,
                     loss_input_elements_per_sample=10)
    terms = memory.floor_terms({"precision": "fp32", "optimizer": "sgd", "momentum": 0.9, "batch_size": 2,
                                "grad_accum": 1}, tiny)
    assert terms.binding == "optimizer step" and terms.floor_bytes == 4000 + 4000 + 4000  # weights, state, grads


def test_the_floor_passes_above_and_fails_below_what_the_step_must_hold():
    gpt, resnet = gpu_record(gpt_config()), gpu_record(resnet_config("amp-fp16"))
    counts = counts_of(gpt, resnet)
    check = memory.check_memory_floor([gpt, resnet], counts)
    assert check.status == OK and check.figures[gpt["cell_id"]]["slack_bytes"] == SLACK
    floor = check.figures[gpt["cell_id"]]["floor_bytes"]
    gpt["memory"]["torch_max_allocated_bytes"] = floor - 1
    check = memory.check_memory_floor([gpt, resnet], counts)
    assert check.status == FAIL and gpt["cell_id"] in check.reason and resnet["cell_id"] not in check.reason


def test_a_peak_without_the_optimizer_state_fails_the_floor():
    """The fault issue 17 names: a step that keeps no optimizer state peaks lower by its size on
    GPT-2 124M (950 MiB). Weights + gradients + state (1.9 GiB) never noticed; the floor of the whole step does."""
    gpt = gpu_record(gpt_config())
    state = memory.analytic_state(gpt["config"])
    gpt["memory"]["torch_max_allocated_bytes"] -= state["optimizer_state_bytes"]
    assert gpt["memory"]["torch_max_allocated_bytes"] > state["floor_bytes"]  # the old floor passed it
    check = memory.check_memory_floor([gpt], counts_of(gpt))
    assert check.status == FAIL and "the smallest term that large: optimizer state, 949.7 MiB" in check.reason


def test_a_cell_without_a_step_count_fails_the_floor_with_the_probes_reason():
    gpt = gpu_record(gpt_config())
    check = memory.check_memory_floor([gpt], {}, {gpt["cell_id"]: "oom: CUDA out of memory"})
    assert check.status == FAIL and "no step count: oom: CUDA out of memory" in check.reason


@pytest.fixture
def forgetful_adamw(monkeypatch):
    """The planted fault: AdamW drops its state after every step, so a step's backward runs without
    it (the optimizer step makes it again, zeroed, and drops it once more)."""
    step = torch.optim.AdamW.step

    def forgetting(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        self.state.clear()
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", forgetting)


def cpu_floor(config: RunConfig) -> tuple[memory.FloorTerms, object]:
    count = stepprobe.count_step(config)
    record = cpu_record(config, 0)
    record["cell_id"] = config.cell_id
    return memory.floor_terms(record["config"], count), memory.check_memory_floor([record], {config.cell_id: count})


@pytest.mark.slow
def test_on_a_cpu_the_floor_is_within_the_optimizer_state_of_a_real_peak():
    """The CPU cell's real step, its peak from the CPU allocator's own events: at or above the floor,
    and closer to it than the optimizer state, so a step without the state must fail."""
    terms, check = cpu_floor(cells.plan_cells("cpu")["time"].config)
    figures = next(iter(check.figures.values()))
    assert check.status == OK, check.reason
    assert 0 <= figures["slack_bytes"] < terms.optimizer_state_bytes / 10
    assert terms.binding == "backward" and terms.saved_activation_bytes > terms.loss_input_gradient_bytes > 0


@pytest.mark.slow
def test_on_a_cpu_a_run_that_drops_its_optimizer_state_fails_the_floor(forgetful_adamw):
    terms, check = cpu_floor(cells.plan_cells("cpu")["time"].config)
    assert check.status == FAIL and "the smallest term that large: optimizer state" in check.reason
    missing = -next(iter(check.figures.values()))["slack_bytes"]
    assert terms.optimizer_state_bytes * 0.9 < missing <= terms.optimizer_state_bytes


def test_live_state_bytes_must_match_the_precision_table():
    records = [gpu_record(gpt_config()), gpu_record(resnet_config("fp32"))]
    assert memory.check_memory_state(records).status == OK
    records[0]["config"]["optimizer_state_bytes"] //= 2  # moments kept in bf16 by an fp32-state mode
    check = memory.check_memory_state(records)
    assert check.status == FAIL and records[0]["cell_id"] in check.reason


def test_nvml_below_reserved_plus_context_fails():
    record = gpu_record(gpt_config())
    assert nvml.check_nvml(record).status == OK
    memory = record["memory"]
    memory["nvml_process_peak_bytes"] = memory["torch_max_reserved_bytes"] + memory["nvml_context_baseline_bytes"] - MiB
    check = nvml.check_nvml(record)
    assert check.status == FAIL and "1.0 MiB less" in check.reason


def test_nvml_that_cannot_see_the_process_skips_with_the_records_reason():
    record = gpu_record(gpt_config())
    record["memory"].update(nvml_process_peak_bytes=None, nvml_method="unavailable: NVML lists none of the cell's "
                                                                        "processes (docker --pid=host)")
    check = nvml.check_nvml(record)
    assert check.status == SKIP and "docker --pid=host" in check.reason


def test_accumulation_that_takes_more_memory_fails():
    one_big = gpu_record(gpt_config(batch=16))
    four_small = gpu_record(gpt_config(batch=4, accum=4, steps=10))
    check = memory.check_accumulation(one_big, four_small)
    assert check.status == OK and check.figures["measure"] == "torch_max_allocated_bytes"
    four_small["memory"]["torch_max_allocated_bytes"] = one_big["memory"]["torch_max_allocated_bytes"]
    assert memory.check_accumulation(one_big, four_small).status == FAIL


def test_accumulation_on_a_cpu_reads_the_host_rss_growth():
    config = RunConfig(model="gpt", batch_size=128, device="cpu", **CPU_GPT)
    one_big = cpu_record(config, 96 * MiB)
    four_small = cpu_record(config.replace(batch_size=32, grad_accum=4), 64 * MiB)
    check = memory.check_accumulation(one_big, four_small)
    assert check.status == OK and check.figures["measure"] == "host_rss_growth_bytes"
    assert memory.check_accumulation(four_small, one_big).status == FAIL
