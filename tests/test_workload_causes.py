"""check-workload as a newcomer meets it: their own transformer-encoder classifier (dropout 0.1,
LayerNorm, learned positions, a module-level constant tensor), written outside the repository,
passes with dropout handled; a summed loss, a BatchNorm and a vector loss each fail with their own
named cause, and a model that mixes samples is named as such."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

from trainkit.bench.matrix import build_matrix
from trainkit.engine.cell.launch import call_in_fresh_process, run_cell
from trainkit.engine.cell.protocol import Reply
from trainkit.engine.estimate.check import (
    check_accumulation,
    check_independent,
    check_loss_mean,
    probe,
    run_checks,
)
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.presets import preset
from trainkit.engine.train.hardware import Hardware
from trainkit.engine.workloads.resolve import build_workload, model_choice

from .conftest import REPO
from .test_workload import write_user_module

ENCODER = '''
import torch
import torch.nn.functional as F
from torch import nn

from trainkit.engine.workloads import Workload

VOCAB, SEQ, CLASSES, WIDTH = 32, 8, 4, 16
POSITIONS = torch.linspace(-1, 1, SEQ).unsqueeze(1)  # module-level constants, used in build() and forward
SCALE = torch.full((WIDTH,), 0.5)


class EncoderClassifier(nn.Module):
    def __init__(self, dropout, norm):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(POSITIONS * 0.01 + torch.randn(SEQ, WIDTH) * 0.02)
        layer = nn.TransformerEncoderLayer(WIDTH, 2, 2 * WIDTH, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(WIDTH) if norm == "layer" else nn.BatchNorm1d(WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids):
        x = self.embed(ids) * (1 + SCALE.to(self.pos.dtype)) + self.pos
        return self.head(self.norm(self.encoder(x).mean(1)))


class BatchMixer(EncoderClassifier):
    def forward(self, ids):
        out = super().forward(ids)
        return out - out.mean(0, keepdim=True)  # every sample's output depends on the others'


def batch(n, generator, device):
    ids = torch.randint(VOCAB, (n, SEQ), generator=generator)
    return ids.to(device), (ids[:, 0] % CLASSES).to(device)


def encoder(dropout=0.1, loss="mean", norm="layer", mix=False, blocks=True):
    def loss_fn(out, target):
        return F.cross_entropy(out, target, reduction={"mean": "mean", "sum": "sum", "vector": "none"}[loss])

    model = BatchMixer if mix else EncoderClassifier
    return Workload(name="encoder", build=lambda: model(dropout, norm), loss_fn=loss_fn, make_batch=batch,
                    num_classes=CLASSES, tokens_per_sample=SEQ,
                    checkpoint_blocks=(nn.TransformerEncoderLayer,) if blocks else None)
'''


@pytest.fixture
def encoder_path(tmp_path):
    assert not str(tmp_path).startswith(REPO)
    yield write_user_module(tmp_path, "encoder", ENCODER)
    sys.modules.pop("encoder", None)


def setup(path: str, options: str = "") -> tuple[RunConfig, object]:
    chosen = model_choice(f"{path}:encoder{options}")
    config = RunConfig(model=chosen.model, workload=chosen.workload, device="cpu", batch_size=4, steps=2,
                       warmup_steps=0)
    return config, build_workload(config)


def rows(report) -> dict[str, tuple[str, str]]:
    return {c.check: (c.verdict, c.detail) for c in report.checks}


def test_the_dropout_encoder_s_accumulation_is_exact_with_its_dropout_off_and_fails_with_it_on(encoder_path):
    """The newcomer's case, the accumulation row alone: dropout 0.1 in 4 layers, turned off for the
    check and said so; left on (the planted fault: the probe blind to training-mode randomness), the
    same check fails."""
    config, workload = setup(encoder_path)
    found = probe(workload, config.batch_size)
    row = check_accumulation(config, torch.device("cpu"), workload, found, [])
    assert row.verdict == "ok" and "4 dropout layers off for this check" in row.detail, row
    blind = dataclasses.replace(found, random_in_training=False)
    assert check_accumulation(config, torch.device("cpu"), workload, blind, []).verdict == "fails"


def checks_in_a_fresh_process(conn, path: str, environ: dict[str, str]) -> None:
    """check-workload's checks of the encoder in a process of their own, as a user's command runs
    them: nothing an earlier test left in the test's process (compiled code, hooks, global flags)
    reaches them. Sends [(check, verdict, detail)] (trainkit.engine.cell.launch.call_in_fresh_process)."""
    os.environ.clear()
    os.environ.update(environ)
    try:
        config, workload = setup(path)
        report = run_checks("encoder:encoder", workload, config, torch.device("cpu"), ("fp32",))
        conn.send((Reply.OK, [(c.check, c.verdict, c.detail) for c in report.checks]))
    except BaseException as exc:
        conn.send((Reply.FAILED, f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow
def test_the_newcomer_s_dropout_encoder_passes_with_dropout_off_for_the_accumulation_check(encoder_path):
    checks = call_in_fresh_process(checks_in_a_fresh_process, encoder_path, timeout_s=600, what="check-workload")
    table = {check: (verdict, detail) for check, verdict, detail in checks}
    assert not any(verdict == "fails" for verdict, _ in table.values()), {
        check: row for check, row in table.items() if row[0] == "fails"}
    assert [check for check, _, _ in checks][:10] == [
        "builds", "loss is a scalar", "loss is a mean", "samples independent", "accumulation exact", "deterministic",
        "FLOPs per sample", "FP8 layers", "planner estimate", "precision fp32"]
    verdict, detail = table["accumulation exact"]
    # dropout, dropout1, dropout2 and the attention's own
    assert verdict == "ok" and "4 dropout layers off for this check" in detail
    assert table["planner estimate"][0] == "ok"  # a constant tensor in forward: the fake step takes it
    # With dropout left on, the same check fails: the handling is what makes it pass.
    config, workload = setup(encoder_path)
    found = dataclasses.replace(probe(workload, config.batch_size), random_in_training=False)
    assert check_accumulation(config, torch.device("cpu"), workload, found, []).verdict == "fails"


@pytest.mark.parametrize("options, row, verdict, words", [
    ('?loss="sum"', "loss is a mean", "fails", "the loss is a sum over the micro-batch, not a mean"),
    ("?mix=True", "samples independent", "fails", "the model mixes samples of a batch"),
])
def test_a_real_bug_fails_with_its_own_cause_and_accumulation_names_it(encoder_path, options, row, verdict, words):
    config, workload = setup(encoder_path, options)
    found = probe(workload, config.batch_size)
    causes = [check_loss_mean(found, config.batch_size), check_independent(workload, found, config.batch_size)]
    named = {c.check: c for c in causes}
    assert named[row].verdict == verdict and words in named[row].detail
    assert [c.check for c in causes if c.verdict == "fails"] == [row]  # the other cause is not blamed
    accumulation = check_accumulation(config, torch.device("cpu"), workload, found, causes)
    assert accumulation.verdict == "fails" and accumulation.detail.endswith(f"cause: {row!r} above")


def test_batchnorm_is_expected_not_blamed_on_the_loss_or_the_samples(encoder_path):
    config, workload = setup(encoder_path, '?norm="batch"')
    found = probe(workload, config.batch_size)
    causes = [check_loss_mean(found, config.batch_size), check_independent(workload, found, config.batch_size)]
    assert [c.verdict for c in causes] == ["ok", "ok"]
    accumulation = check_accumulation(config, torch.device("cpu"), workload, found, causes)
    assert accumulation.verdict == "expected" and accumulation.detail.startswith("BatchNorm: statistics per micro")


def test_a_vector_loss_is_one_line_giving_its_shape_and_nothing_else_runs(encoder_path):
    config, workload = setup(encoder_path, '?loss="vector"')
    report = run_checks("encoder:encoder", workload, config, torch.device("cpu"), ("fp32",))
    assert [(c.check, c.verdict) for c in report.checks] == [("builds", "ok"), ("loss is a scalar", "fails")]
    assert report.checks[1].detail.startswith("workload 'encoder': loss_fn returned a tensor of shape (8,), not a "
                                              "scalar")


@pytest.mark.slow
def test_the_encoder_runs_checkpointed_in_a_cell_and_its_record_counts_its_tokens(encoder_path):
    """A user's model that names its blocks: activation checkpointing wraps them in the worker (an
    nn.TransformerEncoder reads its layers' attributes through the wrapper), the gradients are the
    unwrapped model's, and the record's tokens per second are the workload's tokens per sample."""
    config, _ = setup(encoder_path, "?dropout=0.0")
    config = config.replace(steps=2, warmup_steps=1)
    plain = run_cell(config)
    checkpointed = run_cell(config.replace(activation_checkpointing="full"))
    assert plain["status"] == checkpointed["status"] == "ok", checkpointed["status_detail"]
    assert checkpointed["config"]["checkpointed_modules"] == ["encoder.layers.0"]
    assert checkpointed["loss"]["curve"] == pytest.approx(plain["loss"]["curve"], rel=1e-6)
    assert checkpointed["config"]["tokens_per_sample"] == 8
    assert checkpointed["tokens_per_s"] == pytest.approx(8 * checkpointed["throughput_samples_per_s"])


def test_a_matrix_leaves_out_the_checkpointed_cells_of_a_model_that_names_no_blocks(encoder_path):
    left_out: dict[str, str] = {}
    cells = build_matrix(preset("quick", on_gpu=False), Hardware("cpu", cpu_count=2),
                         {"model": (f"{encoder_path}:encoder?blocks=False", f"{encoder_path}:encoder"),
                          "precision": ("fp32",), "gpus": (1,), "activation_checkpointing": ("none", "full")},
                         2, 1, left_out=left_out)
    named = {c.config.workload.endswith("blocks=False") for c in cells if c.activation_checkpointing == "full"}
    assert named == {False} and not any(c.skip_reason for c in cells)
    assert set(left_out.values()) == {"encoder names no blocks to checkpoint (Workload.checkpoint_blocks)"}
