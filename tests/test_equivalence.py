"""The properties that make trainkit's numbers comparable: however an optimizer step's samples are
split into micro-batches and ranks, training is the same; the same seed gives the same run; a
resumed run continues the uninterrupted one."""

import os

import pytest
import torch

from trainkit.engine.cell.launch import run_cell
from trainkit.engine.train.loop import Trainer

from .conftest import flat_params, small_config, train

RTOL = 1e-5


def assert_same_training(a: Trainer, b: Trainer, rtol: float = RTOL) -> None:
    torch.testing.assert_close(a.loss_curve(), b.loss_curve(), rtol=rtol, atol=1e-7)
    torch.testing.assert_close(flat_params(a), flat_params(b), rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_accumulation_equivalence(model):
    """fp32, batch 8 x accum 4 == batch 32 x accum 1: final loss and parameters."""
    common = {"steps": 5, "lr": 0.1}  # SGD: Adam would amplify rounding in near-zero gradients
    accumulated = train(small_config(model, batch_size=8, grad_accum=4, **common))
    whole = train(small_config(model, batch_size=32, grad_accum=1, **common))
    assert_same_training(accumulated, whole)
    assert accumulated.loss_curve()[-1] < accumulated.loss_curve()[0]  # it does learn


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_accumulation_equivalence_with_a_short_last_window(model):
    """112 samples per epoch: batch 8 x accum 4 makes windows of 4, 4, 4 and 2 micro-batches,
    batch 32 makes batches of 32, 32, 32 and 16. The short window is divided by what it holds."""
    common = {"epochs": 2, "dataset_size": 112}
    accumulated = Trainer(small_config(model, batch_size=8, grad_accum=4, **common), torch.device("cpu"))
    forwards = []
    accumulated.raw_model.register_forward_hook(lambda *_: forwards.append(accumulated.step))
    accumulated.run(accumulated.total_steps)
    whole = train(small_config(model, batch_size=32, grad_accum=1, **common))
    assert accumulated.data.steps_per_epoch == whole.data.steps_per_epoch == 4
    assert accumulated.step_samples == whole.step_samples == [32, 32, 32, 16] * 2
    assert [forwards.count(step) for step in range(8)] == [4, 4, 4, 2] * 2  # micro-batches per step
    assert_same_training(accumulated, whole)


def _final_params(tmp_path, name, **changes):
    ckpt_dir = os.path.join(tmp_path, name)
    config = small_config("mlp", steps=4, checkpoint_dir=ckpt_dir, checkpoint_every=4, **changes)
    record = run_cell(config, timeout_s=120)
    assert record["status"] == "ok", record["status_detail"]
    state = torch.load(os.path.join(ckpt_dir, "step00000004.pt"), weights_only=False)
    return record, torch.cat([v.flatten() for v in state["model"].values()])


@pytest.mark.slow
def test_world_size_equivalence(tmp_path):
    """2 ranks x batch 16 (gloo) == 1 rank x batch 32, and 2 ranks x batch 8 x accum 2 too."""
    one, params_one = _final_params(tmp_path, "one", batch_size=32)
    two, params_two = _final_params(tmp_path, "two", batch_size=16, world_size=2)
    two_acc, params_two_acc = _final_params(tmp_path, "two_acc", batch_size=8, grad_accum=2, world_size=2)
    assert two["config"]["distributed_backend"] == "gloo" and two["ranks_reported"] == 2
    for other, params in ((two, params_two), (two_acc, params_two_acc)):
        torch.testing.assert_close(torch.tensor(other["loss"]["curve"]), torch.tensor(one["loss"]["curve"]),
                                   rtol=RTOL, atol=1e-7)
        torch.testing.assert_close(params, params_one, rtol=RTOL, atol=1e-7)


def test_same_seed_same_curve_other_seed_other_curve():
    a = train(small_config("gpt", steps=4, seed=3))
    b = train(small_config("gpt", steps=4, seed=3))
    c = train(small_config("gpt", steps=4, seed=4))
    assert torch.equal(a.loss_curve(), b.loss_curve())
    assert not torch.equal(a.loss_curve(), c.loss_curve())


@pytest.mark.parametrize("changes", [
    {"model": "mlp", "optimizer": "adamw", "schedule": "cosine", "lr_warmup_steps": 2, "precision": "amp-fp16"},
    {"model": "mlp", "epochs": 3, "dataset_size": 40, "schedule": "exponential"},
])
def test_resume_continues_the_same_loss_curve(tmp_path, changes):
    model = changes.pop("model")
    run_config = small_config(model, steps=6, checkpoint_dir=str(tmp_path / "a"), checkpoint_every=3, **changes)
    uninterrupted = train(run_config)
    checkpoint = tmp_path / "a" / "step00000003.pt"
    assert checkpoint.exists()
    resumed = train(run_config.replace(checkpoint_dir=str(tmp_path / "b"), resume_from=str(checkpoint)))
    assert resumed.resumed_from_step == 3
    assert_same_training(uninterrupted, resumed, rtol=0)
    assert resumed.optimizer.param_groups[0]["lr"] == uninterrupted.optimizer.param_groups[0]["lr"]
