"""The memory estimate against real CPU runs: each term exact against the tensors of a real run,
the activations exact against a real run's saved-tensor count, and the step's peak exact against
the CPU allocator's own accounting. The GPU comparison is in test_plan_gpu.py."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import CPU, small_config
from trainkit.engine.estimate.estimate import STEP_KINDS, TERMS, Estimator, _round, cublas_workspace_bytes
from trainkit.engine.measure.memory import SavedTensors
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import PRECISION_FACTS, PrecisionFacts, precision_names
from trainkit.engine.train.loop import Trainer
from trainkit.engine.train.precision import POLICIES, HalfBF16Precision, Precision, TF32Precision, policy_class

PRECISIONS = ("fp32", "amp-bf16", "half-bf16", "amp-fp16")


def nbytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


POOL = 256
"""A small synthetic pool: real runs build fast (the estimate reads the same dataset_size)."""


def config_of(model: str, precision: str, **changes) -> RunConfig:
    values = {"optimizer": {"gpt": "adamw"}.get(model, "sgd"), "dataset_size": POOL, **changes}
    return small_config(model, precision=precision, **values)


@pytest.fixture(scope="module")
def estimators():
    cache: dict[tuple[str, str], Estimator] = {}

    def get(model: str, precision: str) -> Estimator:
        if (model, precision) not in cache:
            cache[model, precision] = Estimator(config_of(model, precision), "cpu")
        return cache[model, precision]

    return get


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_weights_gradients_optimizer_state_and_data_are_the_tensors_of_a_real_run(model, precision, estimators):
    """Parameters, buffers, gradients and optimizer state from the precision table's dtypes, the
    data pool and evaluation set from trainkit.engine.workloads.data's shapes: each equal to the bytes of the real
    run's tensors (SGD's momentum; AdamW's two moments and its step counters)."""
    estimate = estimators(model, precision)
    trainer = Trainer(config_of(model, precision), CPU)
    inputs, targets = trainer.data.source.window(0).micro_batches[0]
    loss = trainer.workload.loss_fn(trainer.policy.convert_output(trainer.raw_model(inputs)), targets)
    loss.backward()
    model_ = trainer.raw_model
    assert estimate.gradients_bytes() == nbytes(p.grad for p in model_.parameters())
    trainer.optimizer.step()
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    terms = estimate.state.terms
    assert terms["parameters"] == nbytes(model_.parameters())
    assert terms["buffers"] == nbytes(model_.buffers())
    assert terms["optimizer_state"] == nbytes(state) > 0
    source = trainer.data.source
    assert terms["data"] == nbytes([source.inputs, source.targets, *trainer.data.eval_set])
    assert terms["master_copies"] == terms["ddp_buckets"] == terms["cublas_workspaces"] == 0


@pytest.mark.parametrize("precision", ["fp32", "half-bf16"])
def test_batchnorm_buffers_take_the_parameters_dtype(precision):
    """resnet18's running statistics are converted with the parameters (bf16 in half-bf16), its
    batch counters stay int64: the buffers term is the real model's, and the pool holds images."""
    estimate = Estimator(config_of("resnet18", precision), "cpu")
    trainer = Trainer(config_of("resnet18", precision), CPU)
    assert estimate.state.terms["buffers"] == nbytes(trainer.raw_model.buffers()) > 0
    assert estimate.state.terms["parameters"] == nbytes(trainer.raw_model.parameters())
    source = trainer.data.source
    assert estimate.state.terms["data"] == nbytes([source.inputs, source.targets, *trainer.data.eval_set])


def real_saved_bytes(config: RunConfig) -> int:
    trainer = Trainer(config, CPU)
    inputs, targets = trainer.data.source.window(0).micro_batches[0]
    counter = SavedTensors(trainer.raw_model, exclude=(trainer.data.source.inputs, trainer.data.source.targets))
    with counter.hooks(), trainer.policy.forward_context():
        trainer.workload.loss_fn(trainer.policy.convert_output(trainer.raw_model(inputs)), targets)
    return counter.bytes


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16", "half-bf16"])
@pytest.mark.parametrize("model", ["mlp", "gpt", "cnn"])
def test_the_activation_term_is_a_real_runs_saved_tensor_count(model, precision, estimators):
    """What autograd saves for backward, counted on fake tensors, equals the count of a real CPU
    run at two batch sizes (autocast's weight copies included): fake tensors take the real SDPA
    path and honour CPU autocast, which the meta device does not."""
    for batch in (8, 32):  # divisors of the pool: the batch is a view of it, never a copy
        predicted = estimators(model, precision).estimate(batch).activations_saved_bytes
        assert predicted == real_saved_bytes(config_of(model, precision, batch_size=batch)) > 0


@pytest.mark.parametrize("model", ["gpt", "cnn"])
def test_checkpointed_blocks_save_what_a_checkpointed_real_run_saves(model):
    """With activation checkpointing the estimate wraps the same blocks as the trainer, so its
    activation term is again the real run's count, and smaller than without."""
    config = config_of(model, "fp32", batch_size=32, activation_checkpointing="full")
    predicted = Estimator(config, "cpu").estimate(32).activations_saved_bytes
    assert predicted == real_saved_bytes(config) > 0
    plain = Estimator(config.replace(activation_checkpointing="none"), "cpu").estimate(32)
    assert predicted < plain.activations_saved_bytes


def real_step_peak(config: RunConfig, policy: Precision | None = None) -> int:
    """Peak bytes the CPU allocator holds during one steady-state step above what it held before:
    the profiler's memory events are every allocation and free the allocator reports."""
    trainer = Trainer(config, CPU, policy=policy)
    trainer.train_step()  # the optimizer's state exists from here on, as in a timed step
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        trainer.train_step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()
        peak = max(peak, held)
    return peak


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16", "half-bf16"])
@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_the_step_peak_is_the_cpu_allocators_own(model, precision, estimators):
    """The peak formula checked as a whole: what a real step allocates at its highest point, as the
    CPU allocator itself accounts it, equals the estimate's step terms to the byte, with and without
    accumulation (held gradients), where the CPU's kernels allocate nothing of their own. On a CPU with
    native bf16 (AVX512-BF16, AMX) oneDNN's bf16 matmuls pack an operand into a buffer of their own that
    no dispatch sees: there the real peak may stand above the estimate by that scratch, never below."""
    scratch_bytes = BF16_MATMUL_SCRATCH_BYTES if "bf16" in precision else 0
    for batch, accumulation in ((8, 1), (16, 3)):
        estimate = estimators(model, precision).estimate(batch, accumulation)
        predicted = sum(estimate.terms[kind] for kind in STEP_KINDS)
        real = real_step_peak(config_of(model, precision, batch_size=batch, grad_accum=accumulation))
        assert predicted <= real <= predicted + scratch_bytes
    assert list(estimate.terms) == list(TERMS) and estimate.total_bytes == sum(estimate.terms.values())


class TF32OnCPU(TF32Precision):
    """tf32's policy with its GPU check lifted: on a CPU its hooks are fp32's (TF32 is a CUDA flag)."""

    def unsupported_reason(self) -> str | None:
        return None


def cpu_policy(config: RunConfig) -> Precision:
    """The policy a CPU runs the mode with: FP8's emulated (float8 GEMMs need a GPU), tf32's as above."""
    if config.precision == "tf32":
        return TF32OnCPU(CPU, config)
    if config.precision.startswith("fp8"):
        return policy_class(config.precision)(CPU, config, emulate=True)  # type: ignore[call-arg]
    return policy_class(config.precision)(CPU, config)


@pytest.fixture
def restored_matmul_flags():
    """tf32's configure_backends sets process-wide matmul flags; later tests get them back."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


ADAMW_SCALAR_BYTES = 16
"""AdamW on a CPU: a real step holds two scalars of its step counter's arithmetic at the peak (8 + 4
B) that fake tensors compute as constants, without a storage."""
BF16_MATMUL_SCRATCH_BYTES = 65_536
"""half-bf16 on a CPU: oneDNN's bf16 matmul packs an operand into a buffer of its own, no tensor a
dispatch sees (50,688 B for mlp's first layer here; the CNN's convolutions do the same)."""
FP16_MATMUL_SCRATCH_BYTES = 301_824
"""half-fp16 on a CPU with AVX512-FP16 (or AMX-FP16): oneDNN's fp16 matmul packs into a buffer of its
own, no tensor a dispatch sees (301,824 B for mlp's first layer at batch 8, in the forward: the real
step peaks there, 83,044 B above the estimate's peak; 100,856 B accumulating two). Elsewhere fp16
matmuls allocate nothing of their own and the estimate is exact."""
FP8_SHORT_FRACTION = 0.12
"""FP8 (emulated): copies torchao makes inside its float8 tensors' own dispatch are out of the
dispatch mode's sight (104,448 B of mlp's 1,046,840 B step peak at batch 8)."""


PURE_BF16 = ("half-bf16", "half-bf16-sr", "half-bf16-kahan")
"""The modes whose matmuls read bf16 weights directly (oneDNN's packing scratch above)."""


def allowance_bytes(precision: str, optimizer: str, real_bytes: int) -> int:
    """How far below a real CPU step's peak the estimate may be, each allowance a named gap above."""
    if precision.startswith("fp8"):
        return int(FP8_SHORT_FRACTION * real_bytes)
    return (ADAMW_SCALAR_BYTES if optimizer == "adamw" else 0) + (
        BF16_MATMUL_SCRATCH_BYTES if precision in PURE_BF16 else 0) + (
        FP16_MATMUL_SCRATCH_BYTES if precision == "half-fp16" else 0)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("precision", precision_names())
def test_every_mode_is_estimated_through_its_own_policy(precision, optimizer, restored_matmul_flags):
    """Every mode of the table against a real CPU step of the same policy: the step's peak (master
    copies' fp32 gradients from unscale_, the optimizer stepping the masters, GradScaler's step,
    float8 layers) and the state (parameters, master copies, optimizer state) the run holds."""
    config = config_of("mlp", precision, optimizer=optimizer)
    estimator = Estimator(config, "cpu", policy=cpu_policy(config))
    for batch, accumulation in ((8, 1), (8, 2)):
        estimate = estimator.estimate(batch, accumulation)
        predicted = sum(estimate.terms[kind] for kind in STEP_KINDS)
        real = real_step_peak(config.replace(batch_size=batch, grad_accum=accumulation), cpu_policy(config))
        assert 0 <= real - predicted <= allowance_bytes(precision, optimizer, real), (batch, accumulation)
    trainer = Trainer(config, CPU, policy=cpu_policy(config))
    trainer.train_step()
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    terms = estimator.state.terms
    assert terms["parameters"] == nbytes(trainer.raw_model.parameters())
    assert terms["master_copies"] == trainer.policy.master_bytes
    assert terms["optimizer_state"] == nbytes(state) > 0


def test_without_accumulation_the_peak_holds_no_gradients_and_with_it_all_of_them(estimators):
    """zero_grad(set_to_none=True) frees the gradients before the next forward, so a GPT step peaks
    at the start of backward with every activation and no gradient; accumulating, the first
    micro-batch's gradients are held beside the second's activations."""
    single = estimators("gpt", "fp32").estimate(8, 1)
    assert single.peak_phase == "backward" and single.terms["gradients"] == 0
    # The loss's own saved scalars are freed by the time the logits' gradient exists.
    assert single.activations_saved_bytes - 64 < single.terms["activations"] <= single.activations_saved_bytes
    double = estimators("gpt", "fp32").estimate(8, 2)
    assert double.terms["gradients"] == double.gradients_bytes
    # The same micro-batch twice: the difference is the held gradients and a few loss scalars.
    assert 0 <= double.total_bytes - single.total_bytes - double.gradients_bytes < 64


def test_activations_grow_linearly_with_the_batch(estimators):
    per_sample, constant = estimators("mlp", "fp32").activation_fit()
    assert per_sample == (128 + 64 + 10) * 4 and constant == 4  # test_measure's hand count of the MLP
    # Under bf16 autocast the constant is autocast's bf16 copies of fc2's and fc3's weights (fc1's is
    # not saved: its input needs no gradient) plus the loss's scalar.
    per_sample, constant = estimators("mlp", "amp-bf16").activation_fit()
    assert constant == 2 * (128 * 64 + 64 * 10) + 4
    assert estimators("mlp", "amp-bf16").estimate(64).activations_saved_bytes == constant + 64 * per_sample


def test_a_batch_that_wraps_the_pool_is_a_copy_in_the_step():
    """A micro-batch larger than the pool is copied out of it (trainkit.engine.workloads.data): the copy shows in the
    step's terms, and only then."""
    estimator = Estimator(config_of("mlp", "fp32"), "cpu")
    pool = POOL
    fits, wraps = estimator.estimate(pool), estimator.estimate(pool + 8)
    copy = (pool + 8) * (28 * 28 * 4 + 8)
    assert estimator.copied_micro_batches(pool, 1) == 0 and estimator.copied_micro_batches(pool + 8, 1) == 1
    assert wraps.total_bytes - fits.total_bytes >= copy


@pytest.fixture
def master_precision(monkeypatch):
    """A made-up mode the way a master-weight mode is added: bf16 parameters, an fp32 master copy
    that the optimizer updates (its state in fp32)."""
    name = "half-bf16-madeup-master"
    facts = PrecisionFacts(name=name, summary="bf16 parameters, fp32 master weights (a test mode)",
                           compute_dtype="bfloat16", param_dtype="bfloat16", optimizer_state_dtype="float32",
                           master_dtype="float32", min_capability=(8, 0), peak_kind="bf16", color="#123456")

    class MadeUpMaster(HalfBF16Precision):
        name = "half-bf16-madeup-master"

    monkeypatch.setitem(PRECISION_FACTS, name, facts)
    monkeypatch.setitem(POLICIES, name, MadeUpMaster)
    return name


def test_a_master_copy_is_added_wherever_the_table_keeps_one(master_precision):
    """The table's master_dtype, not the policy's code, decides: fp32 copies of every parameter,
    and the optimizer's state in the table's dtype (fp32 here, bf16 in half-bf16)."""
    config = config_of("gpt", "half-bf16")
    plain = Estimator(config, "cpu")
    master = Estimator(config.replace(precision=master_precision), "cpu")
    numel = sum(p.numel() for p in plain.model.parameters())
    assert plain.state.terms["master_copies"] == 0
    assert master.state.terms["master_copies"] == 4 * numel
    assert master.state.terms["parameters"] == plain.state.terms["parameters"] == 2 * numel
    assert master.state.terms["optimizer_state"] == 2 * plain.state.terms["optimizer_state"] - 4 * len(plain.params)
    assert master.state.weights_bytes == plain.state.weights_bytes + 4 * numel
    assert master.estimate(8).total_bytes > plain.estimate(8).total_bytes + 4 * numel


def test_more_ranks_add_ddp_buckets_as_large_as_the_gradients():
    one = Estimator(config_of("mlp", "fp32"), "cpu")
    two = Estimator(config_of("mlp", "fp32", world_size=2), "cpu")
    assert one.state.terms["ddp_buckets"] == 0
    assert two.state.terms["ddp_buckets"] == one.gradients_bytes()


def test_gpu_terms_round_to_the_allocators_blocks_and_count_cublas_workspaces():
    assert [_round(n, 512) for n in (1, 512, 513, 4)] == [512, 512, 1024, 512]
    assert _round(513, 1) == 513
    assert cublas_workspace_bytes((8, 0), {}) == 4096 * 1024 * 2 + 16 * 1024 * 8
    assert cublas_workspace_bytes((9, 0), {}) == 32 * 2**20
    assert cublas_workspace_bytes((9, 0), {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}) == 32 * 2**20
    default = cublas_workspace_bytes((8, 6), {"CUBLAS_WORKSPACE_CONFIG": ":4096:2:16:8"})
    assert default == 4096 * 1024 * 2 + 16 * 1024 * 8
