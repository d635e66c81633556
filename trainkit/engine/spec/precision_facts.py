"""Precision modes as facts: one torch-free table that every part of the suite reads.

A mode's behaviour in a training step lives in its policy class (precision.py). What the rest of
the suite needs to know about it lives here, once: where it runs, which dtypes it keeps, whether
it scales the loss, which peak FLOP/s it can reach, and how reports draw it. The config validates
names against this table, bench derives its skip rules from it, the record and MFU read their
dtypes and peaks from it, and the reports take their order and colours from it. Adding a mode is
one row here plus one policy class.

No torch here: reports and the nightly gate read this without paying torch's import.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

LOSS_SCALING = ("none", "dynamic", "static")
WEIGHT_ROUNDING = ("nearest", "stochastic", "kahan")
"""How an update is rounded into a half-precision weight (trainkit.engine.train.rounding)."""
PEAK_KINDS = ("fp32", "tf32", "bf16", "fp16", "fp8")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1, "uint8": 1}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}


@dataclass(frozen=True, kw_only=True)
class PrecisionFacts:
    """What one precision mode is, independent of the code that runs it."""

    name: str
    """The mode's name on the command line and in records and cell ids."""
    summary: str
    """One line: what the mode does (help texts and report legends)."""
    compute_dtype: str
    """dtype the matmuls and convolutions read ("float32" for tf32 too: TF32 is a math mode of
    fp32 tensors, told apart by `peak_kind`)."""
    param_dtype: str
    """dtype of the parameters forward and backward read; their gradients take it too."""
    optimizer_state_dtype: str
    """dtype of the optimizer's state (momentum, Adam's moments)."""
    master_dtype: str | None = None
    """dtype of a master copy of the weights that the optimizer updates and the parameters are
    copied from, where the mode keeps one apart from the parameters; None: the optimizer updates
    the parameters themselves."""
    weight_rounding: str = "nearest"
    """How the optimizer writes an update into the weights it updates: nearest (the dtype's own
    rounding), stochastic (rounded up or down at random, exact in expectation) or kahan (a
    compensation buffer keeps what each rounding lost and adds it to the next update)."""
    compensation_dtype: str | None = None
    """dtype of Kahan's compensation buffer, one element per parameter; None without one."""
    loss_scaling: str = "none"
    """none, dynamic (torch.amp.GradScaler: skips steps with inf/NaN gradients) or static (a fixed
    factor, for parameters GradScaler refuses)."""
    min_capability: tuple[int, int] | None = None
    """Lowest CUDA compute capability that runs the mode natively; None: any CUDA GPU."""
    cuda_only: bool = False
    """The mode has no CPU implementation (TF32 is a tensor-core math mode)."""
    slow_conv_on_cpu: bool = False
    """Convolutions in this mode are ~100x slower than fp32 on a CPU (fp16 has no fast CPU conv
    kernels), so a CPU row of a conv model measures nothing useful."""
    peak_kind: str
    """Which dense peak FLOP/s of a GPU the mode's matmuls can reach (a column of flops.PEAK_TFLOPS)."""
    color: str
    """Colour of the mode in every report chart."""

    def __post_init__(self) -> None:
        if self.loss_scaling not in LOSS_SCALING:
            raise ValueError(f"{self.name}: loss_scaling={self.loss_scaling!r}; choose from {', '.join(LOSS_SCALING)}")
        if self.weight_rounding not in WEIGHT_ROUNDING:
            raise ValueError(f"{self.name}: weight_rounding={self.weight_rounding!r}; choose from "
                             f"{', '.join(WEIGHT_ROUNDING)}")
        if (self.weight_rounding == "kahan") != (self.compensation_dtype is not None):
            raise ValueError(f"{self.name}: a compensation buffer is Kahan's, and Kahan needs one")
        if self.peak_kind not in PEAK_KINDS:
            raise ValueError(f"{self.name}: peak_kind={self.peak_kind!r}; choose from {', '.join(PEAK_KINDS)}")
        for dtype in (self.compute_dtype, self.param_dtype, self.optimizer_state_dtype, self.master_dtype or "float32",
                      self.compensation_dtype or "float32"):
            if dtype not in DTYPE_BYTES:
                raise ValueError(f"{self.name}: dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")


# In display order: reports list and colour the modes in this order.
PRECISION_FACTS: dict[str, PrecisionFacts] = {facts.name: facts for facts in (
    PrecisionFacts(name="fp32", summary="fp32 weights and math, TF32 explicitly off",
                   compute_dtype="float32", param_dtype="float32", optimizer_state_dtype="float32",
                   peak_kind="fp32", color="#4c72b0"),
    PrecisionFacts(name="tf32", summary="fp32 weights, TF32 tensor-core math for matmuls and convolutions",
                   compute_dtype="float32", param_dtype="float32", optimizer_state_dtype="float32",
                   min_capability=(8, 0), cuda_only=True, peak_kind="tf32", color="#8172b3"),
    PrecisionFacts(name="amp-fp16", summary="fp32 weights, autocast to fp16, dynamic loss scaling (GradScaler)",
                   compute_dtype="float16", param_dtype="float32", optimizer_state_dtype="float32",
                   loss_scaling="dynamic", slow_conv_on_cpu=True, peak_kind="fp16", color="#dd8452"),
    PrecisionFacts(name="amp-bf16", summary="fp32 weights, autocast to bf16, no loss scaling",
                   compute_dtype="bfloat16", param_dtype="float32", optimizer_state_dtype="float32",
                   min_capability=(8, 0), peak_kind="bf16", color="#55a868"),
    PrecisionFacts(name="half-fp16", summary="fp16 weights, gradients and optimizer state (model.half())",
                   compute_dtype="float16", param_dtype="float16", optimizer_state_dtype="float16",
                   loss_scaling="static", slow_conv_on_cpu=True, peak_kind="fp16", color="#c44e52"),
    PrecisionFacts(name="half-bf16", summary="bf16 weights, gradients and optimizer state",
                   compute_dtype="bfloat16", param_dtype="bfloat16", optimizer_state_dtype="bfloat16",
                   min_capability=(8, 0), peak_kind="bf16", color="#937860"),
    # The fixes of pure bf16's stagnation (Zamirai et al., "Revisiting BFloat16 Training"): the same
    # 10 (SR) or 12 (Kahan) bytes per parameter with Adam, the updates no longer rounded away
    # (trainkit/engine/rounding.py).
    PrecisionFacts(name="half-bf16-sr", summary="bf16 weights, gradients and optimizer state; each update "
                                                "rounded stochastically into the weights",
                   compute_dtype="bfloat16", param_dtype="bfloat16", optimizer_state_dtype="bfloat16",
                   weight_rounding="stochastic", min_capability=(8, 0), peak_kind="bf16", color="#b07aa1"),
    PrecisionFacts(name="half-bf16-kahan", summary="bf16 weights, gradients and optimizer state; a bf16 Kahan "
                                                   "compensation buffer keeps what each update's rounding lost",
                   compute_dtype="bfloat16", param_dtype="bfloat16", optimizer_state_dtype="bfloat16",
                   weight_rounding="kahan", compensation_dtype="bfloat16", min_capability=(8, 0),
                   peak_kind="bf16", color="#9c755f"),
    # Master weights (Micikevicius et al. 2018; Megatron-LM's Float16OptimizerWithFloat16Params,
    # DeepSpeed's fp16/bf16 optimizers): the half-precision weights only run forward and backward.
    PrecisionFacts(name="half-fp16-master", summary="fp16 weights for forward and backward; an fp32 master copy and "
                                                    "fp32 optimizer state take the update; dynamic loss scaling",
                   compute_dtype="float16", param_dtype="float16", optimizer_state_dtype="float32",
                   master_dtype="float32", loss_scaling="dynamic", slow_conv_on_cpu=True, peak_kind="fp16",
                   color="#da8bc3"),
    PrecisionFacts(name="half-bf16-master", summary="bf16 weights for forward and backward; an fp32 master copy and "
                                                    "fp32 optimizer state take the update",
                   compute_dtype="bfloat16", param_dtype="bfloat16", optimizer_state_dtype="float32",
                   master_dtype="float32", min_capability=(8, 0), peak_kind="bf16", color="#ccb974"),
    # torchao float8 training (trainkit/float8.py) over bf16 autocast: the converted linear layers
    # run their three GEMMs in float8 with per-tensor or per-row scales, everything else in bf16.
    # cuda_only: emulation on a CPU checks numerics, never speed, so the CPU runs it in tests only.
    PrecisionFacts(name="fp8-tensorwise", summary="fp32 weights, bf16 autocast, float8 linear layers "
                   "(torchao, one scale per tensor)",
                   compute_dtype="float8_e4m3fn", param_dtype="float32", optimizer_state_dtype="float32",
                   min_capability=(8, 9), cuda_only=True, peak_kind="fp8", color="#8c8c8c"),
    PrecisionFacts(name="fp8-rowwise", summary="fp32 weights, bf16 autocast, float8 linear layers "
                   "(torchao, one scale per row)",
                   compute_dtype="float8_e4m3fn", param_dtype="float32", optimizer_state_dtype="float32",
                   min_capability=(8, 9), cuda_only=True, peak_kind="fp8", color="#64b5cd"),
)}


@dataclass(frozen=True, kw_only=True)
class OptimizerStateFacts:
    """One precision of the optimizer's state (the matrix's optimizer_state axis), apart from the
    precision mode's own."""

    name: str
    """The value on the command line, in records and in cell ids (-os8bit)."""
    summary: str
    storage_dtype: str
    """dtype of the stored elements (the quantized codes of a blockwise state)."""
    block_size: int | None = None
    """Elements sharing one fp32 scale (torchao's blockwise states); None: stored plainly."""
    min_numel: int = 0
    """Smallest tensor stored this way: torchao, as bitsandbytes, keeps a tensor below 4096 elements
    (or not a multiple of the block) in the parameter's dtype."""
    map_bytes: int = 0
    """Bytes of the code table each state tensor keeps (torchao's 8-bit dynamic map: 256 fp32)."""
    optimizers: tuple[str, ...] = ("sgd", "adam", "adamw")
    """The optimizers that can keep their state this way."""
    library: str | None = None
    """Who implements it ("torchao": its low-bit AdamW, which compiles its step); None: trainkit
    (trainkit.engine.train.rounding.RoundingOptimizer, for a state dtype the parameters lack)."""

    def stored_here(self, numel: int) -> bool:
        """Whether a state tensor of `numel` elements is stored this way (else in its parameter's dtype)."""
        return self.block_size is None or (numel >= self.min_numel and numel % self.block_size == 0)

    def tensor_bytes(self, numel: int, param_dtype: str) -> int:
        """Bytes of one state tensor of a parameter of `numel` elements in `param_dtype`."""
        if not self.stored_here(numel):
            return numel * DTYPE_BYTES[param_dtype]
        scales = numel // self.block_size * 4 if self.block_size else 0
        return numel * DTYPE_BYTES[self.storage_dtype] + scales + self.map_bytes


OPTIMIZER_STATES: dict[str, OptimizerStateFacts] = {facts.name: facts for facts in (
    OptimizerStateFacts(name="fp32", summary="fp32 optimizer state", storage_dtype="float32"),
    OptimizerStateFacts(name="bf16", summary="bf16 optimizer state, computed in fp32 and stored rounded to nearest",
                        storage_dtype="bfloat16"),
    # torchao's low-bit AdamW (torchao/optim/README.md): blockwise quantized moments, 256 per scale.
    OptimizerStateFacts(name="8bit", summary="8-bit blockwise Adam moments (torchao AdamW8bit, dynamic-tree codes)",
                        storage_dtype="uint8", block_size=256, min_numel=4096, map_bytes=256 * 4,
                        optimizers=("adam", "adamw"), library="torchao"),
    OptimizerStateFacts(name="fp8", summary="float8 e4m3 blockwise Adam moments (torchao AdamWFp8)",
                        storage_dtype="float8_e4m3fn", block_size=256, min_numel=4096,
                        optimizers=("adam", "adamw"), library="torchao"),
)}
"""The optimizer_state axis's values: fp32, bf16, 8bit, fp8 (None there: the precision mode's own)."""
STATE_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


def optimizer_state_of(precision: str, override: str | None) -> OptimizerStateFacts | None:
    """The state a cell keeps: the axis's value, else the mode's own dtype as a row of OPTIMIZER_STATES
    (None for a mode whose state dtype has no row: fp16)."""
    if override is not None:
        return OPTIMIZER_STATES[override]
    name = STATE_OF_DTYPE.get(facts_of(precision).optimizer_state_dtype)
    return OPTIMIZER_STATES[name] if name else None


def optimizer_state_problem(precision: str, override: str | None, optimizer: str) -> str | None:
    """Why a mode, optimizer and state precision do not go together, or None (a cell that asks is
    unsupported, with this reason)."""
    if override is None:
        return None
    state, facts = OPTIMIZER_STATES[override], facts_of(precision)
    if optimizer not in state.optimizers:
        return (f"optimizer_state={override} needs optimizer {' or '.join(state.optimizers)} "
                f"({state.library or 'trainkit'} implements no other), not {optimizer}")
    if state.library and facts.weight_rounding == "kahan":
        return f"optimizer_state={override}: {state.library}'s optimizer has no Kahan compensation ({precision})"
    if state.library and facts.param_dtype == "float16":
        return (f"optimizer_state={override}: {state.library}'s low-bit optimizers compute from fp32 or bf16 "
                "weights, not fp16")
    return None


def library_missing_reason(state: str) -> str | None:
    """Why the library of an optimizer state is not installed, or None; torch-free (the matrix asks at
    collection): whether the package is there, not whether it imports (the cell itself finds out)."""
    library = OPTIMIZER_STATES[state].library
    if library is None or importlib.util.find_spec(library) is not None:
        return None
    return f"optimizer_state={state} needs {library}'s low-bit optimizers (pip install 'trainkit[fp8]')"


def precision_names() -> tuple[str, ...]:
    """Every mode, in display order."""
    return tuple(PRECISION_FACTS)


def facts_of(name: str) -> PrecisionFacts:
    """The facts of a mode; a KeyError that names the valid modes for an unknown one."""
    try:
        return PRECISION_FACTS[name]
    except KeyError:
        raise KeyError(f"precision={name!r} is not valid; choose from {', '.join(PRECISION_FACTS)}") from None


def display_rank(name: object) -> int:
    """Position of a mode in reports; a mode this table does not know (an older or newer
    record's) comes last."""
    names = list(PRECISION_FACTS)
    return names.index(name) if name in names else len(names)


def color_of(name: object) -> str | None:
    """A mode's colour in reports; None (plotly's default) for a mode this table does not know."""
    facts = PRECISION_FACTS.get(name) if isinstance(name, str) else None
    return facts.color if facts is not None else None


def loss_scaling_of(name: object) -> str | None:
    """A mode's loss scaling (none, dynamic, static); None for a mode this table does not know."""
    facts = PRECISION_FACTS.get(name) if isinstance(name, str) else None
    return facts.loss_scaling if facts is not None else None


def unsupported_reason(name: str, device_type: str, capability: tuple[int, int] | None,
                       gpu_name: str | None = None) -> str | None:
    """Why a device cannot run the mode, or None. device_type is "cpu" or "cuda"; capability is
    the GPU's (major, minor). The gate is the capability, not torch.cuda.is_bf16_supported: older
    GPUs emulate bf16 slowly and report it as supported (pytorch/pytorch#124996)."""
    facts = facts_of(name)
    needs = "compute capability >= {}.{}".format(*facts.min_capability) if facts.min_capability else None
    if device_type != "cuda":
        if facts.cuda_only:
            return f"{name} needs a CUDA GPU" + (f" with {needs}" if needs else "")
        return None
    if needs and capability is not None and tuple(capability) < facts.min_capability:
        return f"{name} needs {needs} ({gpu_name or 'this GPU'} is {capability[0]}.{capability[1]})"
    return None
