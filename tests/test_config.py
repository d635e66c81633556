import dataclasses

import pytest

from trainkit.engine.spec.config import ConfigError, RunConfig, field_help
from trainkit.engine.spec.precision_facts import precision_names


def test_defaults_are_valid_and_derived_values_agree():
    config = RunConfig(batch_size=8, grad_accum=4, world_size=2)
    assert config.effective_batch == 64
    assert config.cell_id == "mlp-fp32-bs8-ga4-gpus2"
    assert RunConfig.from_dict({**config.to_dict(), "effective_batch": 64, "resolved_device": "cpu"}) == config


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().batch_size = 2  # type: ignore[misc]


def test_every_field_is_documented():
    for field in dataclasses.fields(RunConfig):
        assert field_help(field.name), f"RunConfig.{field.name} has no docstring"


@pytest.mark.parametrize(("changes", "names"), [
    ({"model": "vit"}, ["model='vit'", "mlp", "gpt"]),
    ({"precision": "fp8"}, ["precision='fp8'", *precision_names()]),
    ({"batch_size": 0}, ["batch_size=0", ">= 1"]),
    ({"grad_accum": -2}, ["grad_accum=-2"]),
    ({"world_size": 1.5}, ["world_size=1.5", "integer"]),
    ({"steps": True}, ["steps=True", "integer"]),
    ({"lr": 0.0}, ["lr=0.0", "> 0"]),
    ({"lr": float("nan")}, ["lr=nan"]),
    ({"optimizer": "lamb"}, ["optimizer='lamb'", "sgd, adam, adamw"]),
    ({"schedule": "step"}, ["schedule='step'", "cosine"]),
    ({"gpt_width": 130, "gpt_heads": 4}, ["gpt_width=130", "gpt_heads=4"]),
    ({"model": "gpt", "data": "mnist", "data_root": "/x"}, ["model='gpt'", "data='mnist'", "mlp, cnn"]),
    ({"data": "cifar10", "model": "resnet18"}, ["data_root"]),
    ({"model": "mlp", "image_size": 32}, ["image_size=32", "28x28"]),
    ({"epochs": 2}, ["dataset_size"]),
    ({"prefetch_factor": 2}, ["num_workers"]),
    ({"checkpoint_every": 5}, ["checkpoint_dir"]),
    ({"clip_grad_norm": 0.0}, ["clip_grad_norm=0.0"]),
])
def test_invalid_values_name_the_field_and_the_choices(changes, names):
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes)
    for name in names:
        assert name in str(info.value)


def test_half_fp16_gets_a_safe_adam_eps():
    assert RunConfig(precision="half-fp16").resolved_adam_eps == 1e-4
    assert RunConfig(precision="amp-fp16").resolved_adam_eps == 1e-8
    assert RunConfig(precision="half-fp16", adam_eps=1e-3).resolved_adam_eps == 1e-3
