"""Optimizers, schedules and checkpoints of the loop."""

import math

import pytest
import torch

from trainkit.engine.train.loop import Trainer

from .conftest import CPU, small_config, train


def test_no_weight_decay_on_norms_and_biases():
    trainer = Trainer(small_config("gpt", optimizer="adamw", weight_decay=0.1), CPU)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    norm_and_bias = {id(p) for n, p in trainer.raw_model.named_parameters() if "ln" in n or n.endswith("bias")}
    assert norm_and_bias <= {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_each_optimizer_trains(optimizer):
    trainer = train(small_config(optimizer=optimizer, lr=1e-2 if optimizer == "sgd" else 1e-3, steps=8))
    curve = trainer.loss_curve()
    assert torch.isfinite(curve).all() and curve[-1] < curve[0]


@pytest.mark.parametrize(("schedule", "expected"), [
    ("constant", lambda s, total: 1.0),
    ("exponential", lambda s, total: 0.5 ** s),
    ("lambda", lambda s, total: 1 - s / total),
    ("cosine", lambda s, total: (s + 1) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / (total - 2)))),
])
def test_schedules_step_once_per_optimizer_step(schedule, expected):
    trainer = Trainer(small_config(schedule=schedule, lr=0.1, lr_gamma=0.5, lr_warmup_steps=2, steps=6,
                                   grad_accum=3), CPU)
    lrs = []
    for _ in range(6):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.run(1)
    assert lrs == pytest.approx([0.1 * expected(s, 6) for s in range(6)])


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    trainer = train(small_config(precision="amp-fp16", schedule="exponential", steps=4,
                                 checkpoint_dir=str(tmp_path), checkpoint_every=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step00000002.pt", "step00000004.pt"]
    state = torch.load(tmp_path / "step00000004.pt", weights_only=False)
    assert set(state) == {"step", "config", "model", "optimizer", "scheduler", "precision", "loss_curve",
                          "skipped", "rng"}
    assert state["step"] == 4 and state["config"]["precision"] == "amp-fp16"
    assert "scaler" in state["precision"] and len(state["loss_curve"]) == 4
    torch.testing.assert_close(state["loss_curve"], trainer.loss_curve())


def test_a_checkpoint_past_the_run_is_refused(tmp_path):
    train(small_config(steps=4, checkpoint_dir=str(tmp_path), checkpoint_every=4))
    with pytest.raises(ValueError, match="past this run's 2 steps"):
        Trainer(small_config(steps=2, resume_from=str(tmp_path / "step00000004.pt")), CPU)
