"""Adapters: other libraries' models as workloads, built with random weights, never downloaded.

    hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&vocab_size=256
    hf:./my-config-dir            (a directory with config.json)   hf:./config.json
    timm:resnet18?num_classes=10  (any timm.create_model keyword; pretrained is always False)

`hf:` takes a Hugging Face transformers model type (AutoConfig.for_model) or a local config, with
`key=value` overrides of the config; the keys `task` (causal-lm, the default, or
sequence-classification), `seq_len` (tokens per sample; default: the run's --seq-len) and `name`
(the workload's name) are trainkit's. `timm:` takes a timm model name with create_model keywords;
`name` is trainkit's, and the images are `--image-size` square (default: the model's own input
size). The workload's name is hf-TYPE or timm-MODEL, with a short hash of the options when there
are any, unless `name=` gives one. Quote specs in a shell: `?` and `&` are special there.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..spec.config import RunConfig
from .teachers import image_batches, sequence_class_batches, token_batches
from .workload import Workload, WorkloadError, split_query

# transformers and timm are optional extras (trainkit[hf], trainkit[timm]), imported where a spec
# asks for them: never at the top, so the resolver and the built-in models work without them.

HF_TASKS = ("causal-lm", "sequence-classification")
TIMM_CLASSES = 10
"""Classes of a timm model unless num_classes= says otherwise: the synthetic teacher's 10, as the ResNets."""


def _require(module: str, extra: str, spec: str) -> None:
    """Import the adapter's library, or say in one line how to install it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise WorkloadError(f"--model {spec!r} needs {module}, which is not installed: "
                            f"pip install 'trainkit[{extra}]'") from None


def _name(prefix: str, target: str, params: dict[str, Any]) -> str:
    """The workload's name: `name=`, else prefix-target plus a hash of the other options."""
    if "name" in params:
        return str(params["name"])
    base = os.path.basename(os.path.normpath(target))
    if base == "config.json":
        base = os.path.basename(os.path.dirname(os.path.abspath(target)))
    base = re.sub(r"[^A-Za-z0-9_.]+", "-", base).strip("-") or "model"  # a name's form: NAME_PATTERN
    if not params:
        return f"{prefix}-{base}"
    canonical = "&".join(f"{k}={params[k]!r}" for k in sorted(params))
    return f"{prefix}-{base}-{hashlib.sha1(canonical.encode()).hexdigest()[:6]}"


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Flattening covers classifiers (N, C) and language models (N, T, V); mean per token.
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


class Logits(nn.Module):
    """A transformers model as the loop calls a model: token ids in, logits out (no KV cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _hf_config(spec: str, target: str, overrides: dict[str, Any]) -> Any:
    from transformers import CONFIG_MAPPING, AutoConfig  # the hf extra: see the note under the imports

    try:
        if os.path.exists(target):
            return AutoConfig.from_pretrained(target, local_files_only=True, **overrides)
        if target not in CONFIG_MAPPING:
            raise WorkloadError(f"--model {spec!r}: {target!r} is neither a local config (directory or config.json) "
                                f"nor a transformers model type (e.g. llama, gpt2, bert)")
        return AutoConfig.for_model(target, **overrides)
    except (OSError, ValueError, TypeError) as exc:
        if isinstance(exc, WorkloadError):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WorkloadError(f"--model {spec!r}: transformers cannot make its config: {first}") from None


def hf_workload(spec: str, config: RunConfig) -> Workload:
    """A transformers causal LM or sequence classifier from a config, with random weights."""
    # Nothing is downloaded, ever: huggingface_hub reads this once, when transformers first imports it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _require("transformers", "hf", spec)
    target, params = split_query(spec.partition(":")[2])
    name = _name("hf", target, params)
    task = params.pop("task", "causal-lm")
    seq_len = params.pop("seq_len", config.seq_len)
    params.pop("name", None)
    if task not in HF_TASKS:
        raise WorkloadError(f"--model {spec!r}: task={task!r} is not valid; choose from {', '.join(HF_TASKS)}")
    hf_config = _hf_config(spec, target, params)
    limit = getattr(hf_config, "max_position_embeddings", None)
    if not isinstance(seq_len, int) or seq_len < 1 or (limit is not None and seq_len > limit):
        raise WorkloadError(f"--model {spec!r}: seq_len={seq_len!r} must be an integer from 1 to the model's "
                            f"max_position_embeddings ({limit})")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    vocab = hf_config.vocab_size
    if task == "causal-lm":
        auto: Any = AutoModelForCausalLM
        batches, classes = token_batches(vocab, seq_len, _task_seed(config)), vocab
    else:
        auto = AutoModelForSequenceClassification
        if hf_config.pad_token_id is None:
            # Classifiers read the last token that is not padding; the batches never use this id.
            hf_config.pad_token_id = vocab - 1
        classes = hf_config.num_labels
        batches = sequence_class_batches(vocab - 1, seq_len, classes, _task_seed(config))
    _check_supported(spec, auto, hf_config)

    def build() -> nn.Module:
        return Logits(auto.from_config(hf_config, attn_implementation="sdpa"))

    return Workload(name, build, _cross_entropy, batches, num_classes=classes, tokens_per_sample=seq_len,
                    checkpoint_blocks=_hf_blocks, source="hf")


def _hf_blocks(model: nn.Module) -> list[str]:
    """A transformers model's repeated layers: the classes it names as never split across devices
    (`_no_split_modules`: its decoder or encoder layers), the outermost of each."""
    inner = model.model if isinstance(model, Logits) else model
    classes = set(getattr(inner, "_no_split_modules", None) or ())
    names: list[str] = []
    for name, sub in model.named_modules():
        if type(sub).__name__ in classes and not any(name.startswith(f"{outer}.") for outer in names):
            names.append(name)
    return names


def _check_supported(spec: str, auto: Any, hf_config: Any) -> None:
    if type(hf_config) not in auto._model_mapping:
        raise WorkloadError(f"--model {spec!r}: transformers has no {auto.__name__} for model type "
                            f"{hf_config.model_type!r}")


def timm_workload(spec: str, config: RunConfig) -> Workload:
    """A timm image classifier, pretrained=False, on synthetic images of --image-size (default: its own)."""
    _require("timm", "timm", spec)
    import timm

    target, params = split_query(spec.partition(":")[2])
    name = _name("timm", target, params)
    params.pop("name", None)
    if not timm.is_model(target):
        close = timm.list_models(f"*{target[:4]}*")[:5]
        raise WorkloadError(f"--model {spec!r}: timm has no model {target!r}"
                            + (f" (similar: {', '.join(close)})" if close else ""))
    if "pretrained" in params:
        raise WorkloadError(f"--model {spec!r}: pretrained is always False (nothing is downloaded)")
    params.setdefault("num_classes", TIMM_CLASSES)
    channels, *side = timm.models.get_pretrained_cfg(target).input_size
    size = config.image_size or side[0]
    shape = (params.get("in_chans", channels), size, size)

    def build() -> nn.Module:
        return timm.create_model(target, pretrained=False, **params)

    return Workload(name, build, _cross_entropy, image_batches(shape, params["num_classes"], _task_seed(config)),
                    num_classes=params["num_classes"], source="timm")


def _task_seed(config: RunConfig) -> int:
    return config.seed if config.task_seed is None else config.task_seed


@dataclass(frozen=True)
class Adapter:
    """One `prefix:` of --model: its builder and the extra it needs."""

    prefix: str
    build: Callable[[str, RunConfig], Workload]
    module: str
    extra: str
    example: str

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


ADAPTERS = {
    "hf": Adapter("hf", hf_workload, "transformers", "hf",
                  "hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&vocab_size=256"),
    "timm": Adapter("timm", timm_workload, "timm", "timm", "timm:resnet18"),
}
