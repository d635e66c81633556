"""Predicted peak memory of one rank's training step, before anything runs.

The estimate of a rank's peak, in bytes, is

    peak = parameters + buffers + master copies + optimizer state + data + DDP buckets
           + cuBLAS workspaces (GPU) + step peak

The terms before the step peak are the state a timed step starts from, all of it alive for the
whole run. They are counted from the model's shapes and the precision table's dtypes
(trainkit.engine.spec.precision_facts): parameters in `param_dtype`, floating buffers (BatchNorm's running
statistics) converted with them, a master copy in `master_dtype` where a mode keeps one, the
optimizer's state in `optimizer_state_dtype` (SGD with momentum: one buffer per parameter; Adam and
AdamW: two, plus a 4-byte step counter per parameter, which lives on the CPU unless the optimizer
is fused or capturable), the synthetic data pool and the held-out evaluation set, and with more
than one rank the flat gradient buckets DDP keeps beside the gradients.

The step peak is what one optimizer step allocates on top of that state at its highest point. It
is measured, not modelled: the step runs through the configuration's own precision policy, as
Trainer.train_step runs it (the model converted by `convert_module`, with its master copies or
float8 layers; every micro-batch's forward under the policy's forward context, the loss through its
output conversion and backward; `unscale_`, where a master mode makes its fp32 gradients; clipping;
the policy's optimizer step over `trained_parameters`; `zero_grad(set_to_none=True)`), on fake
tensors (FakeTensorMode: shapes and dtypes, no data, no memory; trainkit.engine.estimate.fake_step), and a
dispatch mode adds up the storages each operation creates and subtracts them when they are freed.
Of what is alive at the peak it says which bytes are

- activations: tensors autograd saved for backward (`memory.SavedTensors`: autocast's weight
  copies, only what checkpointing keeps, the batch when it is a copy),
- gradients: parameter gradients (none at the start of backward without accumulation:
  `zero_grad(set_to_none=True)` freed them; with accumulation the earlier micro-batches' are held),
- temporaries: the rest (the gradient of the logits and of each activation, the optimizer's
  intermediates, a micro-batch copied out of the pool where the pool wraps).

This is torch.distributed._tools.mem_tracker.MemTracker's composition of the peak (parameters +
optimizer state + activations + temporaries, no gradients with set_to_none), measured here on the
training step trainkit runs. On a CPU it is exact for models whose kernels allocate nothing of their
own (the MLP and the GPT: the step peak equals the CPU allocator's, byte for byte, with SGD in
every mode). One kind of allocation below the dispatcher is replayed: a CPU kernel of mixed-dtype
arithmetic copies the operand of the other dtype into the common one while it runs (fp32 main
gradients: each half-precision gradient `_foreach_add_` adds in is copied to fp32 first, so with
accumulation a master mode's step peaks there, the fp32 copy of the largest gradient beside the main
and the half-precision gradients; fake_step.cpu_promotion_bytes). Otherwise what no dispatch sees is
not in it: oneDNN's convolutions and its bf16 and fp16 matmuls (fp16 on a CPU with AVX512-FP16 or
AMX-FP16) allocate scratch buffers of their own (a CNN's real CPU peak is higher; half-bf16's MLP by
50,688 B; half-fp16's by 83,044 B at batch 8, where its first layer's forward matmul packs 301,824 B
beside the step's peak of 220,828 B), AdamW's step-counter arithmetic holds two
scalars fake tensors compute as constants (12 B), and torchao's float8 tensors make copies inside
their own dispatch (FP8 emulated on a CPU: the MLP's step peak 10 % short).

What a GPU adds, and what this estimate does about it:

- every allocation is rounded up to a multiple of 512 B by the caching allocator: applied to every
  tensor here;
- cuBLAS workspaces: allocated from the caching allocator on a thread's first matmul, one per
  (handle, stream), and handles are per thread, so the forward's thread and autograd's device thread
  hold one each: 8,519,680 B each (PyTorch's default, `:4096:2:16:8`), 32 MiB on compute capability
  9.0, or what CUBLAS_WORKSPACE_CONFIG says (PyTorch's `CublasHandlePool.cpp`): applied;
- cuDNN convolution workspaces (transient, chosen by autotuning): not estimated;
- reserved memory adds the caching allocator's segment rounding (allocations up to 1 MiB share
  2 MiB segments, up to 10 MiB 20 MiB segments, larger ones are rounded up to 2 MiB) and
  fragmentation, and NVML's figures add the CUDA context: not in this estimate, which is of
  `torch_max_allocated_bytes`.

Fake tensors rather than the meta device: on meta, SDPA takes another path and CPU autocast is
ignored, so saved activations come out wrong (research: frontier-research.md §3). Known gap: fake
BatchNorm under bf16 autocast reports its saved statistics in bf16 where the CPU kernel keeps fp32
(−19,200 B for resnet18, a constant).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..measure.memory import SavedTensors
from ..spec.config import RunConfig
from ..spec.precision_facts import DTYPE_BYTES, facts_of, optimizer_state_of
from ..train import checkpointing
from ..train.loop import build_optimizer
from ..train.precision import Precision, build_precision
from ..train.rounding import RoundingOptimizer
from ..workloads.data import EVAL_SAMPLES, pool_size
from ..workloads.resolve import build_workload
from ..workloads.workload import Workload
from .fake_step import STEP_KINDS, StepPeak, converted_on_fake, scaler_steps
from .fake_step import round_to_block as _round

PEAK_FORMULA = ("peak = parameters + buffers + master copies + optimizer state + data + DDP buckets + cuBLAS "
                "workspaces (GPU) + the step's peak on fake tensors (activations + gradients + temporaries alive "
                "at its highest point); each allocation rounded up to 512 B on a GPU")
"""The estimate in one line (the plan file carries it)."""
CUDA_BLOCK_BYTES = 512
"""The CUDA caching allocator rounds every allocation up to a multiple of this (kMinBlockSize)."""
CUBLAS_WORKSPACE_DEFAULT_BYTES = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLAS_WORKSPACE_SM90_BYTES = 4096 * 1024 * 8
CUBLAS_WORKSPACES = 2
"""Threads that run matmuls in a step: the forward's and autograd's device thread."""
PERSISTENT_TERMS = ("parameters", "buffers", "master_copies", "optimizer_state", "data", "ddp_buckets",
                    "cublas_workspaces")
TERMS = (*PERSISTENT_TERMS, *STEP_KINDS)
"""The terms of the estimate, in order; they add up to its total."""
FIT_BATCHES = (8, 16)
"""Micro-batches at which the activation term is measured to give its per-sample slope."""


def cublas_workspace_bytes(capability: tuple[int, int] | None, environ: Mapping[str, str] = os.environ) -> int:
    """One cuBLAS workspace: CUBLAS_WORKSPACE_CONFIG's `:SIZE:COUNT` pairs (KiB) if set, else
    PyTorch's default for the compute capability."""
    config = environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:
        pairs = [part.split(":") for part in config.split(",")]
        try:
            return sum(int(size) * 1024 * int(count) for _, size, count in pairs)
        except ValueError:
            pass  # PyTorch falls back to its default on a value it cannot parse, so do we
    return CUBLAS_WORKSPACE_SM90_BYTES if capability is not None and tuple(capability) == (9, 0) \
        else CUBLAS_WORKSPACE_DEFAULT_BYTES


@dataclass
class Estimate:
    """The predicted peak of one rank for one configuration, with its terms."""

    batch_size: int
    grad_accum: int
    world_size: int
    device: str
    terms: dict[str, int]
    """TERMS in order; they add up to total_bytes."""
    total_bytes: int
    peak_phase: str
    """Where the step peaked: forward, backward or optimizer."""
    activations_saved_bytes: int
    """Bytes saved for backward by one micro-batch (all of them, alive at the start of its backward)."""
    gradients_bytes: int
    """Every parameter's gradient (alive at the peak only when a step accumulates)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelState:
    """The persistent terms of a configuration: independent of the batch."""

    terms: dict[str, int] = field(default_factory=dict)

    @property
    def weights_bytes(self) -> int:
        """The model's own weights: parameters, buffers and master copies."""
        return self.terms["parameters"] + self.terms["buffers"] + self.terms["master_copies"]

    @property
    def bytes(self) -> int:
        return sum(self.terms.values())


def _bytes(dtype_name: str) -> int:
    return DTYPE_BYTES[dtype_name]


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()


class Estimator:
    """Builds a configuration's model and optimizer once on fake tensors and estimates its peak
    at any micro-batch size and accumulation.

    Everything precision does runs through the configuration's own policy, as in Trainer: the
    model is built in fp32 and passed through `policy.convert_module` (parameter dtypes, master
    copies, float8 layers; see fake_step.converted_on_fake for how, on fake tensors), the
    optimizer is built over `policy.trained_parameters`, and a step calls the policy's forward
    context, backward, `unscale_` and `optimizer_step`. `policy` replaces the default one (the
    tests pass FP8's emulated policy, which runs on a CPU).
    """

    def __init__(self, config: RunConfig, device: torch.device | str,
                 capability: tuple[int, int] | None = None, environ: Mapping[str, str] = os.environ,
                 policy: Precision | None = None) -> None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.config = config.replace(batch_size=1, grad_accum=1)
        self.device = torch.device(device)
        self.facts = facts_of(config.precision)
        self.block = CUDA_BLOCK_BYTES if self.device.type == "cuda" else 1
        self.capability = capability
        self.environ = environ
        # A real tensor the model combines (a module-level constant) becomes a fake one where it is used.
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        # Built for the configuration as given: FP8's conversion checks its micro-batch's rows.
        self.policy: Precision = policy if policy is not None else build_precision(config, self.device)
        self.workload: Workload = build_workload(self.config)
        self.workload.probe  # noqa: B018 - its real CPU batch is made now, never under the fake mode
        self.model: nn.Module = converted_on_fake(self.workload.build, self.policy.convert_module, [self.policy],
                                                  self.mode, self.device)
        # Checkpointed blocks save only their inputs for backward, as in Trainer.
        checkpointing.apply(self.model, self.workload, self.config.activation_checkpointing)
        self.params = self.policy.trained_parameters(self.model)
        """What the optimizer updates and clipping reads: the parameters, or their master copies."""
        with self.mode:
            self.optimizer = build_optimizer(self.config, self.params)
        if self.device.type == "cuda":
            # On a GPU torch.optim picks its foreach kernels (whose intermediates span every
            # parameter); its check looks at the parameters' Python type, which fake tensors hide.
            for group in self.optimizer.param_groups:
                group["foreach"] = True
        self.state = self._model_state()
        self._stepped = False

    # --- the persistent terms ---------------------------------------------------------------------
    def _tensor_bytes(self, numel: int, element_bytes: int) -> int:
        return _round(numel * element_bytes, self.block)

    def _model_state(self) -> ModelState:
        facts, config = self.facts, self.config
        param_bytes = _bytes(facts.param_dtype)
        terms = dict.fromkeys(PERSISTENT_TERMS, 0)
        terms["parameters"] = sum(self._tensor_bytes(p.numel(), param_bytes) for p in self.model.parameters())
        terms["buffers"] = sum(self._tensor_bytes(b.numel(), param_bytes if b.is_floating_point() else b.element_size())
                               for b in self.model.buffers())
        if facts.master_dtype is not None:
            terms["master_copies"] = sum(self._tensor_bytes(p.numel(), _bytes(facts.master_dtype)) for p in self.params)
        terms["optimizer_state"] = self.optimizer_state_bytes()
        terms["data"] = self.data_bytes()
        if config.world_size > 1:
            terms["ddp_buckets"] = self.gradients_bytes()
        if self.device.type == "cuda":
            terms["cublas_workspaces"] = CUBLAS_WORKSPACES * cublas_workspace_bytes(self.capability, self.environ)
        return ModelState(terms)

    def gradients_bytes(self) -> int:
        """Every trainable parameter's gradient, in the parameter's dtype."""
        return sum(self._tensor_bytes(p.numel(), _bytes(self.facts.param_dtype)) for p in self.params)

    def optimizer_state_bytes(self) -> int:
        """The optimizer's state: its buffers in the cell's state precision (the mode's own, or the
        optimizer_state axis's: torchao's blockwise 8-bit and FP8 states hold codes, an fp32 scale per
        block and an 8-bit code table, and keep small tensors in the parameters' dtype), Kahan's
        compensation buffer, and torch.optim Adam's step counters."""
        config, facts = self.config, self.facts
        state = optimizer_state_of(config.precision, config.optimizer_state)
        trained = facts.master_dtype or facts.param_dtype
        if config.optimizer == "sgd":
            per_param = 1 if config.momentum else 0  # SGD keeps no buffer without momentum
            step_counter = 0
        else:
            per_param = 2  # exp_avg and exp_avg_sq
            # A float32 scalar per parameter: on the CPU unless fused or capturable (neither is set),
            # so it is device memory only on a CPU. trainkit's rounding optimizer counts on the host.
            step_counter = 4 if self.device.type == "cpu" and not isinstance(self.optimizer, RoundingOptimizer) else 0
        total = 0
        for p in self.params:
            if state is None:  # a state dtype with no row of its own (fp16)
                buffer = self._tensor_bytes(p.numel(), _bytes(facts.optimizer_state_dtype))
            else:
                buffer = _round(state.tensor_bytes(p.numel(), trained), self.block)
            compensation = self._tensor_bytes(p.numel(), _bytes(facts.compensation_dtype)) \
                if facts.compensation_dtype else 0
            total += per_param * buffer + compensation + step_counter
        return total

    def data_bytes(self) -> int:
        """The synthetic pool and the held-out evaluation set (trainkit.engine.workloads.data), as stored."""
        workload, config = self.workload, self.config
        inputs, targets = workload.probe  # make_batch's dtypes; floating inputs take the policy's
        input_bytes = inputs.element_size() if workload.tokens else _dtype_size(self.policy.input_dtype)
        total = 0
        for samples in (config.dataset_size or pool_size(workload), EVAL_SAMPLES):
            total += self._tensor_bytes(samples * math.prod(workload.input_shape), input_bytes)
            total += self._tensor_bytes(samples * math.prod(workload.target_shape), targets.element_size())
        return total

    # --- the step --------------------------------------------------------------------------------
    def _pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A pool of the real one's shapes and dtypes (trainkit.engine.workloads.data): a micro-batch is a
        view of it."""
        workload = self.workload
        size = self.config.dataset_size or pool_size(workload)
        input_dtype = workload.probe[0].dtype if workload.tokens else self.policy.input_dtype
        with self.mode, self.device:
            inputs = torch.empty((size, *workload.input_shape), dtype=input_dtype)
            targets = torch.empty((size, *workload.target_shape), dtype=workload.probe[1].dtype)
        return inputs, targets

    @staticmethod
    def _micro_batches(pool: tuple[torch.Tensor, torch.Tensor], batch: int, grad_accum: int,
                       copies: int, index: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A step's micro-batches, made at its start as Trainer.train_step makes them: the first
        `copies` copied out of the pool (index_select, as trainkit.engine.workloads.data does where they wrap its
        end), the others views of it."""
        inputs, targets = pool
        return [(inputs.index_select(0, index), targets.index_select(0, index)) if i < copies
                else (inputs[:batch], targets[:batch]) for i in range(grad_accum)]

    def copied_micro_batches(self, batch: int, grad_accum: int) -> int:
        """Micro-batches of a step copied out of the pool (trainkit.engine.workloads.data's `_take`), at worst: every
        one when the batch is larger than the pool; one when the pool is not a multiple of the batch
        (micro-batches start at multiples of it, so now and then one wraps the end); else none."""
        size = self.config.dataset_size or pool_size(self.workload)
        if batch > size:
            return grad_accum
        return 1 if size % batch else 0

    def _step(self, micro: list[tuple[torch.Tensor, torch.Tensor]], tracker: StepPeak | None,
              counter: SavedTensors | None, saved: list[int]) -> None:
        """One optimizer step as Trainer.train_step takes it, through the policy's hooks, minus
        the schedule (it allocates nothing)."""
        policy, workload, ranks = self.policy, self.workload, self.config.world_size
        step_loss = None
        for inputs, targets in micro:
            if tracker is not None:
                tracker.phase = "forward"
            before = counter.bytes if counter is not None else 0
            with policy.forward_context():
                loss = workload.loss_fn(policy.convert_output(self.model(inputs)), targets)
            saved.append((counter.bytes if counter is not None else 0) - before)
            if tracker is not None:
                tracker.phase = "backward"
            share = 1.0 / (len(micro) * ranks)  # the micro-batch's share of the step's samples, all ranks
            weight = share * ranks
            # Held as Trainer holds it: the scaled loss stays alive through after_backward, where a
            # master mode's step peaks with accumulation (4 B of fp32 scalar beside the main gradients).
            scaled = loss * weight if weight != 1.0 else loss
            policy.backward(scaled)
            policy.after_backward()  # the master modes' fp32 main gradients take this micro-batch's here
            part = (scaled if ranks == 1 else loss * share).detach()
            step_loss = part if step_loss is None else step_loss + part
        if tracker is not None:
            tracker.phase = "optimizer"
        policy.unscale_(self.optimizer)  # a master mode's fp32 gradients are made here
        if tracker is not None:
            for param in self.params:
                tracker.mark(param.grad, "gradients")
        if self.config.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        with scaler_steps(policy.scaler):
            policy.optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def estimate(self, batch: int, grad_accum: int = 1) -> Estimate:
        """The predicted peak of a timed step at this micro-batch size and accumulation."""
        copies = self.copied_micro_batches(batch, grad_accum)
        pool = self._pool()
        with self.mode:
            index = torch.empty((batch,), dtype=torch.long, device=self.device)
            if not self._stepped:  # the first step creates the optimizer's state: the timed steps start with it
                self._step(self._micro_batches(pool, batch, 1, min(1, copies), index), None, None, [])
                self._stepped = True
            tracker = StepPeak(self.block)
            counter = SavedTensors(self.model, exclude=pool, on_count=lambda t: tracker.mark(t, "activations"))
            # On the module's parameters: backward's gradients are theirs (a master mode's are
            # copied to the masters by unscale_, marked there).
            hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.mark(p.grad, "gradients"))
                     for p in self.model.parameters() if p.requires_grad]
            saved: list[int] = []
            try:
                with counter.hooks(), tracker:
                    self._step(self._micro_batches(pool, batch, grad_accum, copies, index), tracker, counter, saved)
            finally:
                for hook in hooks:
                    hook.remove()
        terms = {**self.state.terms, **tracker.at_peak}
        return Estimate(batch_size=batch, grad_accum=grad_accum, world_size=self.config.world_size,
                        device=self.device.type, terms=terms, total_bytes=sum(terms.values()),
                        peak_phase=tracker.peak_phase, activations_saved_bytes=max(saved),
                        gradients_bytes=self.gradients_bytes())

    def activation_fit(self) -> tuple[int, int]:
        """(bytes per sample, constant bytes) of the activations one micro-batch saves, from two
        batch sizes (they are linear in the batch; the constant is autocast's weight copies and
        the loss's scalars)."""
        small, large = (self.estimate(b).activations_saved_bytes for b in FIT_BATCHES)
        per_sample = (large - small) // (FIT_BATCHES[1] - FIT_BATCHES[0])
        return per_sample, small - per_sample * FIT_BATCHES[0]

    def largest_power_of_two(self, limit_bytes: int, search_limit: int, grad_accum: int = 1) -> int:
        """The largest power of two up to search_limit whose estimate fits in limit_bytes (1 if none
        does): the planner's first probe. The estimate grows with the batch, so the powers of two
        are bisected."""
        low, high = 0, max(0, int(math.log2(search_limit)))
        if self.estimate(1, grad_accum).total_bytes > limit_bytes:
            return 1
        while low < high:
            mid = (low + high + 1) // 2
            if self.estimate(2 ** mid, grad_accum).total_bytes <= limit_bytes:
                low = mid
            else:
                high = mid - 1
        return 2 ** low


def estimate_request(request: dict[str, Any]) -> dict[str, Any]:
    """Answer a planner's request (plain data in and out, so it crosses a process boundary):

        {"config": RunConfig dict, "device": "cpu"|"cuda", "capability": [9, 0] | None,
         "points": [[batch, grad_accum], ...], "fit": bool,
         "first_probe": {"limit_bytes": N, "search_limit": N, "grad_accum": N} | None}

    -> {"state": {term: bytes}, "weights_bytes": N, "estimates": [Estimate dicts],
        "activations_per_sample_bytes": N, "activations_constant_bytes": N, "first_probe": N}
    """
    config = RunConfig.from_dict(request["config"])
    capability = tuple(request["capability"]) if request.get("capability") else None
    estimator = Estimator(config, request["device"], capability)  # type: ignore[arg-type]
    answer: dict[str, Any] = {"state": estimator.state.terms, "weights_bytes": estimator.state.weights_bytes,
                              "estimates": [estimator.estimate(b, a).to_dict() for b, a in request.get("points", [])]}
    if request.get("fit"):
        answer["activations_per_sample_bytes"], answer["activations_constant_bytes"] = estimator.activation_fit()
    first = request.get("first_probe")
    if first:
        answer["first_probe"] = estimator.largest_power_of_two(first["limit_bytes"], first["search_limit"],
                                                               first["grad_accum"])
    return answer
