"""The memory checks: the allocator's peak against the floor of what a step must hold, the live
state against the precision table, and accumulation against one large batch. (memory.nvml, NVML's
view, is in nvml.py with the other NVML check.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainkit.engine.spec.precision_facts import DTYPE_BYTES, facts_of

from .results import FAIL, OK, Check, failed_cell, finite, on_gpu, size_text
from .stepprobe import StepCount
from .thresholds import LOSS_INPUT_BYTES, LOSS_INPUT_GRADIENTS

FLOOR_METHOD = ("weights + master copy + optimizer state + data, plus the larger of what backward holds at "
                "its start (one micro-batch's saved activations, the logits' fp32 gradients, the gradients "
                "of earlier micro-batches) and what the optimizer step holds (every gradient)")
"""The floor in one line (gpu-check.json's figures carry it)."""
GPU_PEAK_METHOD = "torch_max_allocated_bytes of the cell's record: PyTorch's allocated peak over its timed steps"


def optimizer_states(optimizer: str, momentum: float) -> int:
    """Tensors of a parameter's size that torch.optim keeps per parameter: SGD's momentum buffer (none
    without momentum), Adam's and AdamW's two moments (exp_avg, exp_avg_sq; `step` is a scalar)."""
    if optimizer == "sgd":
        return 1 if momentum else 0
    if optimizer in ("adam", "adamw"):
        return 2
    raise ValueError(f"optimizer={optimizer!r} has no known state count; choose from sgd, adam, adamw")


def analytic_state(config: Mapping[str, Any]) -> dict[str, int]:
    """Bytes of weights, gradients, a master copy of the weights (modes that keep one) and optimizer
    state, from the parameter count and the dtypes the precision table gives the mode: independent
    of the tensors the worker measured."""
    params = int(config["params"])
    facts = facts_of(config["precision"])
    weights = params * DTYPE_BYTES[facts.param_dtype]
    master = params * DTYPE_BYTES[facts.master_dtype] if facts.master_dtype else 0
    states = optimizer_states(config["optimizer"], config.get("momentum", 0.0))
    state = states * params * DTYPE_BYTES[facts.optimizer_state_dtype]
    return {"params": params, "weights_bytes": weights, "grads_bytes": weights, "master_bytes": master,
            "optimizer_states": states, "optimizer_state_bytes": state, "floor_bytes": 2 * weights + master + state}


@dataclass(frozen=True, kw_only=True)
class FloorTerms:
    """The least memory one step of a cell must hold at once, in bytes, term by term. Every term is
    alive through the whole step (weights, master copy, optimizer state after the first step, data)
    or at a named moment of it; the floor is the larger moment on top of the lasting terms."""

    params: int
    """Parameter elements of the model the step probe built."""
    weights_bytes: int
    """params x the mode's parameter dtype (the precision table)."""
    master_bytes: int
    """An fp32 master copy of the weights where the mode keeps one, else 0."""
    optimizer_state_bytes: int
    """params x the optimizer's per-parameter state tensors x the table's state dtype."""
    data_bytes: int
    """The synthetic pool and evaluation set on the device (the step probe)."""
    saved_activation_bytes: int
    """What one micro-batch saves for backward, counted in a real step (the step probe)."""
    loss_input_gradient_bytes: int
    """LOSS_INPUT_GRADIENTS x micro-batch x logits per sample x 4 B: alive at the start of backward."""
    held_gradient_bytes: int
    """Gradients of earlier micro-batches, alive while a later one runs backward (accumulation), else 0."""
    gradients_bytes: int
    """Every parameter's gradient, in its dtype: alive at the optimizer step."""
    lasting_bytes: int
    """weights + master copy + optimizer state + data."""
    backward_bytes: int
    """saved activations + the logits' gradients + held gradients: the start of a micro-batch's backward."""
    optimizer_step_bytes: int
    """The gradients: the optimizer step."""
    floor_bytes: int
    """lasting + the larger of backward and optimizer step."""
    binding: str
    """Which moment sets the floor: backward or optimizer step."""


def floor_terms(config: Mapping[str, Any], count: StepCount) -> FloorTerms:
    """The floor of a cell from its configuration (precision, optimizer, micro-batch, accumulation)
    and the step probe's count of its model, data and saved activations."""
    state = analytic_state({**config, "params": count.params})
    batch, accumulation = int(config["batch_size"]), int(config["grad_accum"])
    loss_grads = LOSS_INPUT_GRADIENTS * batch * count.loss_input_elements_per_sample * LOSS_INPUT_BYTES
    held = state["grads_bytes"] if accumulation > 1 else 0
    lasting = state["weights_bytes"] + state["master_bytes"] + state["optimizer_state_bytes"] + count.data_bytes
    backward = count.saved_activation_bytes + loss_grads + held
    optimizer_step = state["grads_bytes"]
    return FloorTerms(params=count.params, weights_bytes=state["weights_bytes"], master_bytes=state["master_bytes"],
                      optimizer_state_bytes=state["optimizer_state_bytes"], data_bytes=count.data_bytes,
                      saved_activation_bytes=count.saved_activation_bytes, loss_input_gradient_bytes=loss_grads,
                      held_gradient_bytes=held, gradients_bytes=state["grads_bytes"], lasting_bytes=lasting,
                      backward_bytes=backward, optimizer_step_bytes=optimizer_step,
                      floor_bytes=lasting + max(backward, optimizer_step),
                      binding="backward" if backward >= optimizer_step else "optimizer step")


def _parts(terms: FloorTerms) -> dict[str, int]:
    """The terms the binding moment adds up, readable names first, zeros left out."""
    parts = {"weights": terms.weights_bytes, "master copy": terms.master_bytes,
             "optimizer state": terms.optimizer_state_bytes, "data": terms.data_bytes}
    if terms.binding == "backward":
        parts.update({"saved activations": terms.saved_activation_bytes,
                      f"{LOSS_INPUT_GRADIENTS} logits gradients": terms.loss_input_gradient_bytes,
                      "held gradients": terms.held_gradient_bytes})
    else:
        parts["gradients"] = terms.gradients_bytes
    return {name: size for name, size in parts.items() if size}


def _shortfall(cell: str, peak: int, terms: FloorTerms) -> str:
    """One line on a peak below its floor, naming the smallest term that could be the missing bytes
    (a real peak holds a little more than its floor, so a lost term shows as a shortfall up to its size)."""
    missing = terms.floor_bytes - peak
    parts = sorted(_parts(terms).items(), key=lambda part: part[1])
    suspect = next((part for part in parts if part[1] >= missing), parts[-1])
    return (f"{cell}: peak {size_text(peak)} < floor {size_text(terms.floor_bytes)}, short by {size_text(missing)} "
            f"(the smallest term that large: {suspect[0]}, {size_text(suspect[1])})")


def _peak(record: dict[str, Any], count: StepCount) -> tuple[int | None, str]:
    """The peak the floor holds: the record's allocated peak on a GPU, the probe's on a CPU."""
    if on_gpu(record):
        return record["memory"].get("torch_max_allocated_bytes"), GPU_PEAK_METHOD
    return count.cpu_allocator_peak_bytes, count.cpu_allocator_peak_method or "no CPU allocator peak"


def check_memory_floor(records: Sequence[dict[str, Any]], steps: Mapping[str, StepCount],
                       step_errors: Mapping[str, str] | None = None) -> Check:
    """The allocated peak of each cell is at least its floor (FloorTerms). The floor is tight, so a
    step that loses a term it must hold (the optimizer's state, a gradient) falls below it."""
    name, expected = "memory.floor", "allocated peak >= what the step must hold at once"
    if failed := failed_cell(name, expected, records):
        return failed
    expected_parts, measured_parts, figures, short = [], [], {}, []
    for record in records:
        cell, label = record["cell_id"], f"{record['config']['model']} {record['config']['precision']}"
        count = steps.get(cell)
        if count is None:
            short.append(f"{cell} has no step count: {(step_errors or {}).get(cell, 'the step probe did not run')}")
            continue
        terms = floor_terms(record["config"], count)
        peak, method = _peak(record, count)
        parts = " + ".join(f"{part} {size_text(size)}" for part, size in _parts(terms).items())
        expected_parts.append(f"{label}: >= {size_text(terms.floor_bytes)} ({parts})")
        figures[cell] = {**asdict(terms), "peak_bytes": peak, "peak_method": method, "floor_method": FLOOR_METHOD,
                         "slack_bytes": peak - terms.floor_bytes if finite(peak) else None}
        if not finite(peak):
            short.append(f"{cell} has no allocator peak ({method})")
            measured_parts.append(f"{label}: none")
            continue
        measured_parts.append(f"{label}: {size_text(peak)} ({peak - terms.floor_bytes:+,} B against the floor)")
        if peak < terms.floor_bytes:
            short.append(_shortfall(cell, peak, terms))
    reason = ("below the floor, so the peak misses tensors the step must hold: " + "; ".join(short) if short else
              "every peak holds at least its floor: the weights, optimizer state and data, and the saved "
              "activations and logits' gradients of the start of backward, counted from the model's real shapes")
    return Check(name=name, status=FAIL if short else OK, expected="; ".join(expected_parts) or expected,
                 measured="; ".join(measured_parts), reason=reason, figures=figures)


def check_memory_state(records: Sequence[dict[str, Any]]) -> Check:
    """The live weights and optimizer state (the worker sums the tensors' sizes) hold exactly the bytes
    the precision table's dtypes and the optimizer's state count give. (A master copy of the weights,
    where a mode keeps one, is in the floor but not in these sums.)"""
    name = "memory.state"
    expected = "live weights + optimizer state = the precision table's bytes"
    if failed := failed_cell(name, expected, records):
        return failed
    expected_parts, measured_parts, figures, wrong = [], [], {}, []
    for record in records:
        config, floor = record["config"], analytic_state(record["config"])
        want = floor["weights_bytes"] + floor["optimizer_state_bytes"]
        live = (config.get("param_bytes") or 0) + (config.get("optimizer_state_bytes") or 0)
        figures[record["cell_id"]] = {"expected_bytes": want, "live_param_bytes": config.get("param_bytes"),
                                      "live_optimizer_state_bytes": config.get("optimizer_state_bytes")}
        label = f"{config['model']} {config['precision']} {config['optimizer']}"
        expected_parts.append(f"{label}: {want:,} B")
        measured_parts.append(f"{label}: {live:,} B")
        if live != want:
            wrong.append(f"{record['cell_id']}: weights {config.get('param_bytes')} B + state "
                         f"{config.get('optimizer_state_bytes')} B, the table says {floor['weights_bytes']} + "
                         f"{floor['optimizer_state_bytes']} B (param {config.get('param_dtype')}, state "
                         f"{config.get('optimizer_state_dtype')})")
    reason = ("the policy or the optimizer keeps other dtypes or more state than the mode says: " + "; ".join(wrong)
              if wrong else "weights and optimizer state are in the dtypes and counts the mode promises")
    return Check(name=name, status=FAIL if wrong else OK, expected="; ".join(expected_parts),
                 measured="; ".join(measured_parts), reason=reason, figures=figures)


def _shape(record: dict[str, Any]) -> str:
    return f"{record['config']['batch_size']} x {record['config']['grad_accum']}"


def check_accumulation(one_big: dict[str, Any], four_small: dict[str, Any]) -> Check:
    """B x 4 holds one micro-batch of B's activations at a time, 4B x 1 those of 4B; weights,
    gradients, optimizer state and the data pool are the same, so B x 4 must take less memory.
    On a GPU the measure is PyTorch's allocated peak; on a CPU, the cell's host RSS growth."""
    name = "memory.accumulation"
    expected = "B x 4 takes less memory than 4B x 1"
    if failed := failed_cell(name, expected, [one_big, four_small]):
        return failed
    gpu = on_gpu(one_big)
    measure = "torch_max_allocated_bytes" if gpu else "host_rss_growth_bytes"
    label = "allocated peak" if gpu else "host RSS growth"
    big, small = one_big["memory"].get(measure), four_small["memory"].get(measure)
    if not finite(big) or not finite(small):
        return Check(name=name, status=FAIL, expected=expected, reason=f"no {label} in the cells' records")
    figures = {"measure": measure, "one_big_bytes": big, "four_small_bytes": small,
               "ratio": small / big if big else None}
    passed = small < big
    reason = (f"{label}: the micro-batch of {_shape(four_small)} holds fewer activations than {_shape(one_big)}"
              if passed else f"{label}: {_shape(four_small)} took at least as much as {_shape(one_big)}, so "
              "accumulation keeps more than one micro-batch's activations alive")
    return Check(name=name, status=OK if passed else FAIL,
                 expected=f"< {size_text(big)} ({label} of {_shape(one_big)})",
                 measured=f"{size_text(small)} ({_shape(four_small)}, {small / big:.2f}x)" if big else size_text(small),
                 reason=reason, figures=figures)
