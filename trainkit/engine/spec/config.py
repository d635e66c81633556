"""What a run is: one frozen, validated dataclass that every part of trainkit reads.

A run is one cell of the benchmark matrix (model x precision x batch size x accumulation x world
size) plus the knobs that shape training (optimizer, schedule, data) and measurement. Every field
has a docstring; validation happens on construction and names the bad field, its value and the
valid choices, so a typo fails before any process starts.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any

from . import axes
from .choices import (  # defined in a leaf that the option types and the axes read too; still importable from here
    ACTIVATION_CHECKPOINTING,
    ALLOC_CONF_PATTERN,
    COMPILE_MODES,
    DATASETS,
    DEVICES,
    MODELS,
    OPTIMIZERS,
    SCHEDULES,
    workload_problem,
)
from .precision_facts import OPTIMIZER_STATES, facts_of, precision_names

FP16_MAX = 65504.0

# Which models each real data set can feed: the seed MLP and CNN read 1x28x28 images, the
# ResNets 3-channel images, the GPT token sequences (synthetic only).
MODELS_FOR_DATA = {
    "synthetic": MODELS,
    "mnist": ("mlp", "cnn"),
    "cifar10": ("resnet18", "resnet50"),
    "imagefolder": ("resnet18", "resnet50"),
    "workload": (),  # a workload's own data set (Workload.dataset): no built-in model has one
}
LOCAL_DATA = ("mnist", "cifar10", "imagefolder")
"""The data sets read from data_root (the others are generated, or the workload's own)."""


class ConfigError(ValueError):
    """A run configuration with a bad value; the message names the field and the valid choices."""


def _choices(field: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{field}={value!r} is not valid; choose from {', '.join(valid)}")


def _at_least(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{field}={value!r} must be >= {minimum}")


def _number(field: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}={value!r} must be a number")
    if not (value > 0 if positive else value >= 0):  # also rejects NaN
        raise ConfigError(f"{field}={value!r} must be {'> 0' if positive else '>= 0'}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run: a cell of the benchmark matrix and everything that shapes it."""

    # --- the matrix axes -------------------------------------------------------------------
    model: str = "mlp"
    """Model to train: mlp (the seed SimpleNN 784-128-64-10), cnn (the seed two-conv net),
    resnet18, resnet50 (torchvision, no weights) or gpt (a small decoder-only transformer); or the
    name of the workload `workload` gives."""
    workload: str | None = None
    """The spec of a model that is not built in (MODULE:FUNCTION, MODULE, a plugin's name, hf:...,
    timm:...; trainkit.engine.workloads.resolve), resolved again in each worker; `model` then holds
    its workload's name. None: `model` is built in."""
    precision: str = "fp32"
    """Precision mode: a row of precision_facts.py (fp32, tf32, amp-fp16, amp-bf16, half-fp16, half-bf16,
    ...), run by its policy class in precision.py."""
    batch_size: int = 64
    """Micro-batch size per rank, in samples."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; effective batch = batch_size * grad_accum * world_size."""
    world_size: int = 1
    """Number of ranks (one process each): GPUs on CUDA, processes on CPU (gloo)."""

    # --- length of the run -----------------------------------------------------------------
    steps: int = 20
    """Timed optimizer steps, run after the warmup steps."""
    warmup_steps: int = 3
    """Untimed optimizer steps run first: the first optimizer step (lazy state), cuDNN autotuning
    and allocator growth all happen here, never in the timed steps."""
    epochs: int | None = None
    """Train for whole epochs over the data set instead of a fixed number of steps. The last
    accumulation window of an epoch may be short; `steps` is then ignored (warmup still applies)."""
    dataset_size: int | None = None
    """Samples in one epoch of synthetic data (epoch mode); real data sets bring their own size."""

    # --- optimisation ----------------------------------------------------------------------
    optimizer: str = "sgd"
    """sgd (with momentum), adam or adamw; norms and biases never get weight decay."""
    lr: float = 0.01
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    """Weight decay for weight matrices and kernels (not for norms and biases)."""
    adam_eps: float | None = None
    """Adam epsilon; None means 1e-8, or 1e-4 where the optimizer state is fp16 (half-fp16): 1e-8
    underflows to zero in fp16 and the update divides by it (pytorch/pytorch#8860)."""
    schedule: str = "constant"
    """Learning-rate schedule, stepped once per optimizer step: constant, exponential
    (lr * gamma**step), lambda (LambdaLR: linear decay to zero over the run) or cosine (linear
    warmup for lr_warmup_steps, then cosine decay to zero)."""
    lr_gamma: float = 0.99
    """Decay factor per optimizer step of the exponential schedule."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warmup of the cosine schedule, in optimizer steps."""
    clip_grad_norm: float | None = None
    """Clip the global gradient norm to this value (after unscaling); None disables clipping."""

    optimizer_state: str | None = None
    """Optimizer state precision: fp32, bf16, 8bit or fp8 (torchao's blockwise Adam states); None: the
    mode's own (precision_facts.OPTIMIZER_STATES; a combination they cannot run is unsupported)."""
    fp32_main_grads: bool = True
    """Master-weight modes (half-*-master) only: accumulate the micro-batches' gradients, and average
    them over ranks, in fp32 main gradients beside the fp32 masters, as Megatron-LM (accumulate_allreduce_grads_in_fp32,
    which its bf16 runs force on) and DeepSpeed's bf16 optimizer do; false: in the parameters'
    half precision, with DDP's all-reduce (each added gradient rounds to 8 or 11 mantissa bits)."""

    # --- loss scaling ----------------------------------------------------------------------
    init_scale: float = 2.0**16
    """Initial GradScaler scale of modes with dynamic loss scaling (amp-fp16); the seeds suggest 1024
    for long-sequence transformers."""
    growth_interval: int = 2000
    """Clean optimizer steps before GradScaler doubles the scale (dynamic loss scaling)."""
    static_loss_scale: float = 1.0
    """Fixed loss scale of modes with static loss scaling (half-fp16: GradScaler refuses fp16
    gradients)."""
    min_loss_scale: float = 1.0
    """Dynamic loss scaling only: a scale below this means even unscaled gradients overflow, so the
    cell is ended as diverged instead of silently skipping every step (NVIDIA/apex#715)."""

    # --- data --------------------------------------------------------------------------------
    data: str = "synthetic"
    """synthetic (generated on the device, labels from a fixed random teacher), mnist, cifar10
    or imagefolder (read from data_root; never downloaded), or workload (a workload's own data set,
    Workload.dataset, read in epochs like the real ones)."""
    data_root: str | None = None
    """Directory of a real data set (torchvision layout)."""
    image_size: int | None = None
    """Side of the square input images; None means 28 for mlp/cnn and 224 for the ResNets."""
    seq_len: int = 64
    """Tokens per sample for gpt."""
    vocab_size: int = 256
    """Vocabulary size for gpt."""
    gpt_layers: int = 2
    """Transformer blocks of gpt."""
    gpt_heads: int = 4
    """Attention heads of gpt."""
    gpt_width: int = 128
    """Embedding width of gpt (divisible by gpt_heads)."""
    shuffle: bool = True
    """Shuffle real data sets every epoch (seeded by seed and epoch)."""
    num_workers: int = 0
    """DataLoader worker processes for real data."""
    pin_memory: bool = True
    """Pin host memory of real batches so the copy to the GPU is asynchronous (CUDA only)."""
    prefetch_factor: int | None = None
    """Batches each DataLoader worker loads ahead (needs num_workers > 0)."""
    persistent_workers: bool = False
    """Keep DataLoader workers alive between epochs (needs num_workers > 0)."""
    drop_last: bool = False
    """Drop the last, incomplete micro-batch of each epoch of real data."""

    # --- device and determinism --------------------------------------------------------------
    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    seed: int = 0
    """Seed of weights, data and shuffling; the same seed gives the same loss curve."""
    task_seed: int | None = None
    """Seed of the synthetic task alone: the teacher that labels the samples and the held-out eval
    set (training samples still follow seed). None: seed. Runs that share it learn the same task
    and are evaluated on the same samples, so their seeds differ only in the initial weights and
    the training samples drawn (`trainkit parity` holds it fixed to measure that noise)."""
    cpu_threads: int | None = None
    """torch's intra-op threads per rank on a CPU; None: the machine's cores divided among the ranks,
    at most OMP_NUM_THREADS where the environment sets it. Cells that run side by side (`trainkit
    parity --jobs 2`) take a share each."""
    cudnn_benchmark: bool = True
    """Let cuDNN autotune convolution algorithms (during warmup; shapes are fixed)."""

    # --- compilation and memory ----------------------------------------------------------------
    compile: bool = False
    """torch.compile the model (after the precision's conversion, activation checkpointing and DDP's
    wrapper). The warmup goes on until a step compiles nothing new; compile time and recompiles are
    recorded apart from the timed steps, and any recompile during them ends the cell."""
    compile_mode: str | None = None
    """torch.compile's mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs;
    None: torch's default. Needs compile."""
    activation_checkpointing: str = "none"
    """none, or full: every GPT block, every ResNet stage (layer1..layer4) and the CNN's two conv
    stages keep only their inputs and recompute the rest in backward (torch.utils.checkpoint with
    use_reentrant=False): less activation memory for more compute."""
    alloc_conf: str | None = None
    """PYTORCH_CUDA_ALLOC_CONF of the cell's workers (e.g. expandable_segments:True), set before CUDA
    starts; None leaves the environment's own. On a CPU it is recorded and changes nothing."""

    # --- checkpoints -------------------------------------------------------------------------
    checkpoint_dir: str | None = None
    """Directory for checkpoints (model, optimizer, scaler, scheduler, step, config, RNG)."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many optimizer steps (and after the last one)."""
    resume_from: str | None = None
    """Checkpoint file to resume from; the resumed run continues the same loss curve."""

    def __post_init__(self) -> None:
        """Validate section by section (each check names the field, its value and what is valid);
        a later section may rely on an earlier one (the precision's facts need a valid precision)."""
        for check in VALIDATORS:
            check(self)

    # --- derived quantities, computed once so every part agrees -----------------------------
    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step over all ranks and micro-batches."""
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def resolved_image_size(self) -> int | None:
        """The image side of a built-in model (workloads bring their own shapes: image_size, or None)."""
        if self.image_size is not None or self.workload is not None:
            return self.image_size
        return 28 if self.model in ("mlp", "cnn") else 224

    @property
    def fp16_optimizer_state(self) -> bool:
        """The optimizer keeps its state, and takes its steps, in fp16."""
        return facts_of(self.precision).optimizer_state_dtype == "float16"

    @property
    def resolved_adam_eps(self) -> float:
        if self.adam_eps is not None:
            return self.adam_eps
        return 1e-4 if self.fp16_optimizer_state else 1e-8

    @property
    def tokens_per_sample(self) -> int | None:
        """Tokens per sample as the config alone knows them: the built-in GPT's seq_len. A
        workload's own (Workload.tokens_per_sample: a user's model, hf:) is known once it is
        resolved; the worker records it in the record's config."""
        return self.seq_len if self.model == "gpt" and self.workload is None else None

    @property
    def cell_id(self) -> str:
        """Readable id of the matrix cell, e.g. resnet50-amp-fp16-bs256-ga4-gpus2: each axis's fragment
        (trainkit.engine.spec.axes); the axes after the first five appear only where they differ from their
        defaults, so the ids of cells without them (and baselines keyed by them) stay what they were:
        gpt-fp8-rowwise-bs16-ga4-gpus1-compiled-ac."""
        return axes.cell_id(self.to_dict())

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a record's config, ignoring derived keys the record adds."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})



# --- validation, one function per section of RunConfig ---------------------------------------------
def _check_model(c: RunConfig) -> None:
    """The model and its shape: a known model, a GPT whose width splits into its heads, images the
    seed models can read; or a workload (its spec and its name)."""
    if c.workload is not None:
        problem = workload_problem(c.model, c.workload, c.data)
        if problem:
            raise ConfigError(problem)
    else:
        _choices("model", c.model, MODELS)
    for name in ("seq_len", "vocab_size", "gpt_layers", "gpt_heads", "gpt_width"):
        _at_least(name, getattr(c, name), 1)
    if c.gpt_width % c.gpt_heads:
        raise ConfigError(f"gpt_width={c.gpt_width} must be divisible by gpt_heads={c.gpt_heads}")
    if c.image_size is not None:
        _at_least("image_size", c.image_size, 8)
    if c.model in ("mlp", "cnn") and c.image_size not in (None, 28):
        raise ConfigError(f"image_size={c.image_size} is not valid for {c.model}: the seed models read 28x28 images")


def _check_data(c: RunConfig) -> None:
    """The data: a data set the model can read, found locally, and a DataLoader whose options fit
    together."""
    _choices("data", c.data, DATASETS)
    if c.workload is None and c.model not in MODELS_FOR_DATA[c.data]:
        raise ConfigError(f"model={c.model!r} cannot read data={c.data!r}; "
                          f"choose from {', '.join(MODELS_FOR_DATA[c.data])}")
    if c.data in LOCAL_DATA and not c.data_root:
        raise ConfigError(f"data={c.data!r} needs data_root (a local directory; nothing is downloaded)")
    _at_least("num_workers", c.num_workers, 0)
    if c.prefetch_factor is not None:
        _at_least("prefetch_factor", c.prefetch_factor, 1)
    if c.num_workers == 0 and (c.prefetch_factor is not None or c.persistent_workers):
        raise ConfigError("prefetch_factor and persistent_workers need num_workers > 0")


def _check_optimizer(c: RunConfig) -> None:
    """The optimizer and its numbers (a learning rate of 0 or NaN trains nothing)."""
    _choices("optimizer", c.optimizer, OPTIMIZERS)
    for name in ("momentum", "weight_decay"):
        _number(name, getattr(c, name), positive=False)
    _number("lr", c.lr, positive=True)
    for name in ("adam_eps", "clip_grad_norm"):
        if getattr(c, name) is not None:
            _number(name, getattr(c, name), positive=True)


def _check_schedule(c: RunConfig) -> None:
    """The run's length and its learning-rate schedule: steps or whole epochs of a known size."""
    _choices("schedule", c.schedule, SCHEDULES)
    _number("lr_gamma", c.lr_gamma, positive=True)
    _at_least("steps", c.steps, 1)
    for name in ("warmup_steps", "lr_warmup_steps"):
        _at_least(name, getattr(c, name), 0)
    for name in ("epochs", "dataset_size"):
        if getattr(c, name) is not None:
            _at_least(name, getattr(c, name), 1)
    if c.data == "synthetic" and c.dataset_size is None and c.epochs is not None:
        raise ConfigError("epochs with synthetic data needs dataset_size (samples per epoch)")


def _check_precision(c: RunConfig) -> None:
    """The precision mode and its loss scaling; a learning rate its fp16 optimizer steps can hold; where
    the master modes accumulate their gradients."""
    _choices("precision", c.precision, precision_names())
    _at_least("growth_interval", c.growth_interval, 1)
    _number("min_loss_scale", c.min_loss_scale, positive=False)
    for name in ("init_scale", "static_loss_scale"):
        _number(name, getattr(c, name), positive=True)
    if c.fp16_optimizer_state and c.lr > FP16_MAX:
        raise ConfigError(f"lr={c.lr!r} cannot be represented in fp16 (max {FP16_MAX:g}), which "
                          f"{c.precision}'s optimizer steps use")
    if c.optimizer_state is not None:
        _choices("optimizer_state", c.optimizer_state, tuple(OPTIMIZER_STATES))
    if not isinstance(c.fp32_main_grads, bool):
        raise ConfigError(f"fp32_main_grads={c.fp32_main_grads!r} must be true or false")


def _check_parallelism(c: RunConfig) -> None:
    """Batch, accumulation and ranks; the device; the seeds and threads of each rank."""
    for name in ("batch_size", "grad_accum", "world_size"):
        _at_least(name, getattr(c, name), 1)
    _choices("device", c.device, DEVICES)
    _at_least("seed", c.seed, 0)
    if c.task_seed is not None:
        _at_least("task_seed", c.task_seed, 0)
    if c.cpu_threads is not None:
        _at_least("cpu_threads", c.cpu_threads, 1)


def _check_compilation_and_memory(c: RunConfig) -> None:
    """torch.compile and its mode, activation checkpointing, the CUDA allocator's settings."""
    if not isinstance(c.compile, bool):
        raise ConfigError(f"compile={c.compile!r} must be true or false")
    if c.compile_mode is not None:
        _choices("compile_mode", c.compile_mode, COMPILE_MODES)
        if not c.compile:
            raise ConfigError(f"compile_mode={c.compile_mode!r} needs compile")
    _choices("activation_checkpointing", c.activation_checkpointing, ACTIVATION_CHECKPOINTING)
    if c.alloc_conf is not None and not (isinstance(c.alloc_conf, str) and ALLOC_CONF_PATTERN.fullmatch(c.alloc_conf)):
        raise ConfigError(f"alloc_conf={c.alloc_conf!r} is not valid; write option:value pairs joined by "
                          "commas, e.g. expandable_segments:True")


def _check_checkpoints(c: RunConfig) -> None:
    """Checkpoints: a directory and an interval, or neither."""
    if c.checkpoint_every is not None:
        _at_least("checkpoint_every", c.checkpoint_every, 1)
    if (c.checkpoint_every is None) != (c.checkpoint_dir is None):
        raise ConfigError("checkpoint_every and checkpoint_dir go together")


VALIDATORS = (_check_model, _check_data, _check_optimizer, _check_schedule, _check_precision, _check_parallelism,
              _check_compilation_and_memory, _check_checkpoints)
"""RunConfig's checks in the order they run: the model and precision come before what reads them."""


def field_help(name: str) -> str:
    """The docstring of a RunConfig field (the CLI uses it as the option's help)."""
    return _field_docs().get(name, "")


@functools.cache
def _field_docs() -> dict[str, str]:
    # A docstring under a dataclass field is not kept at run time; read it from the source.
    tree = ast.parse(inspect.getsource(RunConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


TRACE_STEPS = 3
"""Optimizer steps `--profile` records with torch.profiler: enough for a steady-state step between
the first (which pays the profiler's start) and the last."""
SNAPSHOT_STEPS = 2
"""Optimizer steps `--memory-snapshot` records: the allocator's pattern repeats every step."""


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """What to profile after a cell's timed steps (never during them)."""

    diagnostics: bool = True
    """One extra optimizer step that reads why a loss moved (trainkit.engine.cell.diagnostics): gradient
    underflow, zero optimizer second moments, inf/NaN gradients, update sizes."""
    phase_steps: int = 3
    """Optimizer steps timed phase by phase (data, forward, backward, optimizer); 0 turns it off."""
    trace_steps: int = 0
    """Optimizer steps recorded by torch.profiler into a Chrome trace; 0 turns it off."""
    snapshot_steps: int = 0
    """Optimizer steps recorded in a CUDA allocator snapshot (CUDA only); 0 turns it off."""
    snapshot_max_entries: int = 100_000
    """Bound on the allocator history: unbounded snapshots grow past what the viewer can open
    (pytorch/pytorch#155889)."""
    output_dir: str | None = None
    """Directory for trace and snapshot files (required when either is on)."""

    def __post_init__(self) -> None:
        for name in ("phase_steps", "trace_steps", "snapshot_steps", "snapshot_max_entries"):
            _at_least(name, getattr(self, name), 0)
        if (self.trace_steps or self.snapshot_steps) and not self.output_dir:
            raise ConfigError("trace_steps and snapshot_steps need output_dir")

    @classmethod
    def from_options(cls, phase_steps: int, profile: bool, memory_snapshot: bool, output_dir: str,
                     diagnostics: bool = True) -> ProfileConfig:
        """The passes the command-line options ask for (`--phase-steps N --profile --memory-snapshot
        --no-diagnostics`)."""
        return cls(phase_steps=phase_steps, trace_steps=TRACE_STEPS if profile else 0,
                   snapshot_steps=SNAPSHOT_STEPS if memory_snapshot else 0, output_dir=output_dir,
                   diagnostics=diagnostics)
