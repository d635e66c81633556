"""The `hf:` and `timm:` adapters: a tiny Llama-family causal LM (random weights from a config, no
download) and a small timm image model train in every precision a CPU runs, pass the equivalence
invariants, and FP8 (torchao, emulated on the CPU) converts the Llama's linear layers. Skipped,
with the install command, where the extra is missing."""

from __future__ import annotations

import json
import os

import pytest
import torch

from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import precision_names
from trainkit.engine.train import float8
from trainkit.engine.train.loop import Trainer
from trainkit.engine.train.precision import Float8Precision, policy_class
from trainkit.engine.workloads.resolve import model_choice, resolve
from trainkit.engine.workloads.workload import WorkloadError

from .conftest import CPU, flat_params, train

LLAMA = ("hf:llama?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&vocab_size=256"
         "&intermediate_size=128&max_position_embeddings=32&seq_len=32&name=tiny-llama")
TIMM = "timm:test_vit?img_size=32&name=tiny-vit"
CPU_MODES = tuple(m for m in precision_names() if policy_class(m).unsupported_on("cpu", None) is None)


def needs(module: str, extra: str) -> None:
    pytest.importorskip(module, reason=f"the {extra} extra is missing: pip install 'trainkit[{extra}]'")


def config_of(spec: str, **changes: object) -> RunConfig:
    chosen = model_choice(spec)
    values: dict[str, object] = {"model": chosen.model, "workload": chosen.workload, "batch_size": 4, "steps": 2,
                                 "warmup_steps": 0, "device": "cpu", "image_size": 32 if "timm" in spec else None}
    values.update(changes)
    return RunConfig(**values)  # type: ignore[arg-type]


def test_a_tiny_llama_is_built_from_a_config_with_random_weights():
    needs("transformers", "hf")
    workload = resolve(LLAMA)
    assert (workload.name, workload.source, workload.tokens_per_sample) == ("tiny-llama", "hf", 32)
    assert workload.input_shape == workload.target_shape == (32,) and workload.tokens
    model = workload.build()
    assert type(model.model).__name__ == "LlamaForCausalLM" and model.model.config.num_attention_heads == 4
    torch.manual_seed(0)
    first = flat_params_of(workload.build())
    torch.manual_seed(1)
    assert not torch.equal(first, flat_params_of(workload.build()))  # random, from torch's seeded RNG


def flat_params_of(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.slow
@pytest.mark.parametrize("spec, extra", [(LLAMA, ("transformers", "hf")), (TIMM, ("timm", "timm"))])
def test_adapters_train_in_every_cpu_precision_and_accumulate_exactly(spec, extra):
    needs(*extra)
    for mode in CPU_MODES:
        curve = train(config_of(spec, precision=mode)).loss_curve()
        assert torch.isfinite(curve).all(), mode
    accumulated = train(config_of(spec, batch_size=2, grad_accum=2, steps=3))
    whole = train(config_of(spec, batch_size=4, grad_accum=1, steps=3))
    torch.testing.assert_close(accumulated.loss_curve(), whole.loss_curve(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flat_params(accumulated), flat_params(whole), rtol=1e-5, atol=1e-6)
    again = train(config_of(spec, batch_size=2, grad_accum=2, steps=3))
    assert torch.equal(again.loss_curve(), accumulated.loss_curve())


def test_fp8_emulated_converts_the_llama_linear_layers():
    needs("transformers", "hf")
    if float8.missing_reason("fp8-tensorwise"):
        pytest.skip(float8.missing_reason("fp8-tensorwise"))
    config = config_of(LLAMA, precision="fp8-tensorwise", batch_size=16)
    trainer = Trainer(config, CPU, policy=Float8Precision(CPU, config, emulate=True))
    trainer.run(2)
    assert torch.isfinite(trainer.loss_curve()).all()
    converted = trainer.policy.conversion.converted
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert {f"model.model.layers.{i}.{kind}.{p}" for i in range(2)
            for kind, names in (("self_attn", projections[:4]), ("mlp", projections[4:])) for p in names} \
        | {"model.lm_head"} == set(converted)
    details = trainer.policy.details(trainer.workload)
    assert details["converted_linear_flop_share"] == 1.0
    json.dumps(details)  # the record's


def test_a_timm_model_builds_untrained_at_the_run_s_image_size():
    needs("timm", "timm")
    workload = resolve(TIMM, RunConfig(model="resnet18", image_size=32))
    assert (workload.name, workload.input_shape, workload.num_classes) == ("tiny-vit", (3, 32, 32), 10)
    assert workload.build()(workload.probe[0]).shape == (2, 10)


@pytest.mark.parametrize("spec, message", [
    ("hf:nosuchtype", "'nosuchtype' is neither a local config (directory or config.json) nor a transformers model"),
    ("hf:llama?seq_len=64&max_position_embeddings=32", "seq_len=64 must be an integer from 1 to the model's "
                                                       "max_position_embeddings (32)"),
    ("hf:llama?task=translation", "task='translation' is not valid; choose from causal-lm, sequence-classification"),
    ("timm:nosuchnet", "timm has no model 'nosuchnet'"),
    ("timm:resnet18?pretrained=True", "pretrained is always False (nothing is downloaded)"),
])
def test_bad_adapter_specs_are_one_line(spec, message):
    needs("transformers" if spec.startswith("hf") else "timm", "hf" if spec.startswith("hf") else "timm")
    with pytest.raises(WorkloadError) as caught:
        resolve(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_local_config_directory_is_read_offline(tmp_path):
    needs("transformers", "hf")
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64, intermediate_size=64,
                max_position_embeddings=16).save_pretrained(tmp_path / "my-llama")
    workload = resolve(f"hf:{tmp_path / 'my-llama'}?seq_len=16")
    assert workload.name.startswith("hf-my-llama-") and workload.input_shape == (16,)
    assert resolve(f"hf:{tmp_path / 'my-llama' / 'config.json'}?seq_len=16").name == workload.name


def test_hf_is_offline_before_transformers_is_imported_and_its_layers_are_its_blocks(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, when transformers first imports it: the adapter sets
    it before its first import. A Llama's decoder layers are what activation checkpointing wraps."""
    needs("transformers", "hf")
    from trainkit.engine.train import checkpointing
    from trainkit.engine.workloads import adapters as workload_adapters

    seen = []
    real = workload_adapters._require
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(workload_adapters, "_require",
                        lambda *args: (seen.append(os.environ.get("HF_HUB_OFFLINE")), real(*args)))
    workload = resolve(LLAMA)
    assert seen == ["1"]
    model = workload.build()
    assert checkpointing.apply(model, workload, "full") == ["model.model.layers.0", "model.model.layers.1"]
    classify = resolve(LLAMA.replace("name=tiny-llama", "name=tiny-cls&task=sequence-classification&num_labels=3"))
    assert classify.tokens_per_sample == 32  # a classifier's samples are token sequences too
