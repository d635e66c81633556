"""Pure bf16 with stochastic rounding and Kahan summation, the optimizer-state axis, and the check of
what ran: the roundings happen (eager and compiled, and a planted nearest rounding is caught), the
rounding optimizer is torch.optim's arithmetic, every built-in model under every mode runs what its
precision declares, a model cast to bf16 under fp32 ends precision-mismatch (in-process, in
`trainkit run`, the matrix and check-workload), and the parity verdicts on a workload whose Adam
updates are below half a bf16 ulp: half-bf16 worse, half-bf16-sr and half-bf16-kahan equivalent."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from trainkit.analysis.parity.verdicts import judge
from trainkit.engine.cell.record import STATUSES, append_jsonl, check_record, merge_ranks, read_jsonl
from trainkit.engine.cell.worker import RankWorker
from trainkit.engine.estimate.check import check_what_ran, run_checks
from trainkit.engine.measure.what_ran import observe
from trainkit.engine.spec import axes
from trainkit.engine.spec.config import ProfileConfig, RunConfig
from trainkit.engine.spec.precision_facts import OPTIMIZER_STATES, PRECISION_FACTS, facts_of, precision_names
from trainkit.engine.train import rounding
from trainkit.engine.train.hardware import Hardware
from trainkit.engine.train.loop import Trainer
from trainkit.engine.train.precision import Float8Precision, Unsupported, policy_class
from trainkit.engine.train.rounding import RoundingOptimizer, accumulation_check
from trainkit.engine.workloads.resolve import build_workload
from trainkit.reports.build import render, status_class
from trainkit.reports.records import read_runs

from .conftest import REPO, inprocess_pytest, small_config
from .test_estimate import TF32OnCPU

CPU = torch.device("cpu")
PLANTED = "tests.halfprec_workloads:cast_to_bf16"
SUBULP = "tests.halfprec_workloads:subulp"
EXAMPLE = os.path.join(REPO, "reports", "examples", "cpu-halfprec", "parity.json")
SUBULP_EXAMPLE = os.path.join(REPO, "reports", "examples", "cpu-halfprec", "subulp", "parity.json")


# --- the roundings happen --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["nearest", "stochastic", "kahan"])
def test_a_thousand_small_additions_stay_at_one_to_nearest_and_reach_two_otherwise(mode):
    result = accumulation_check(mode)
    assert result.holds, result.line
    assert result.expected == (1.0 if mode == "nearest" else 2.0)


def nearest_anyway(weights, increment, mode, compensation):
    """A planted fault: the optimizer's write rounds to nearest whatever rounding it claims."""
    rounding.write_update(weights, weights.float() + increment, "nearest", None)


def naive_kahan(weights, increment, mode, compensation):
    """Kahan written as a cast down and back up: compiled, inductor keeps the fp32 value and the
    compensation is always zero (the fault trainkit's nearest_bf16_as_fp32 avoids)."""
    target = weights.float() + increment + compensation.float()
    weights.copy_(target)
    compensation.copy_(target - weights.float())


@pytest.mark.parametrize("mode", ["stochastic", "kahan"])
def test_a_planted_nearest_rounding_is_caught(mode):
    result = accumulation_check(mode, step=nearest_anyway)
    assert not result.holds and result.mean == 1.0 and "NOT as claimed" in result.line


@pytest.mark.slow
def test_the_roundings_hold_under_torch_compile_and_a_compiled_round_trip_is_caught():
    """Compiled with inductor (~10 s each on a loaded CPU): stochastic rounding and Kahan still reach
    2.0; the naive Kahan, right eagerly, silently rounds to nearest once compiled."""
    for mode in ("stochastic", "kahan"):
        result = accumulation_check(mode, compiled=True)
        assert result.holds, result.line
    assert accumulation_check("kahan", step=naive_kahan).holds  # eager: the naive form is right
    caught = accumulation_check("kahan", compiled=True, step=naive_kahan)
    assert not caught.holds and caught.mean == 1.0, caught.line


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours():
    value = torch.full((20000,), 1.0 + 2**-9, dtype=torch.float32)  # a quarter of the way to the next bf16
    rounded = rounding.stochastic_round(value)
    assert set(rounded.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert rounded.float().mean().item() == pytest.approx(1.0 + 2**-9, abs=4 * 2**-7 * 0.433 / 20000**0.5)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_the_rounding_optimizer_in_fp32_is_torch_optims_arithmetic(kind):
    torch.manual_seed(0)
    ours, theirs = (torch.nn.Parameter(torch.randn(6, 5)) for _ in range(2))
    with torch.no_grad():
        theirs.copy_(ours)
    options = {"lr": 0.01, "weight_decay": 0.1}
    reference = {"sgd": lambda p: torch.optim.SGD(p, momentum=0.9, **options),
                 "adam": lambda p: torch.optim.Adam(p, **options),
                 "adamw": lambda p: torch.optim.AdamW(p, **options)}[kind]([theirs])
    mine = RoundingOptimizer([ours], kind=kind, rounding="nearest", state_dtype=None, momentum=0.9, **options)
    for _ in range(5):
        grad = torch.randn(6, 5)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_kahan_keeps_what_rounding_lost_and_sr_moves_weights_nearest_leaves():
    """Adam at lr 1e-4 on bf16 weights at 1: nearest never moves them, the other two do (SR by the fp32
    amount on average; Kahan's weight plus its compensation by the fp32 amount)."""
    moved = {}
    for mode in ("nearest", "stochastic", "kahan"):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
        # fp32 state: Adam's update is then exactly lr per step (bf16 moments would round it too)
        optimizer = RoundingOptimizer([weight], kind="adam", lr=1e-4, rounding=mode, state_dtype=torch.float32)
        for _ in range(100):
            weight.grad = torch.ones_like(weight)
            optimizer.step()
        held = weight.float() + (optimizer.state[weight]["compensation"].float() if mode == "kahan" else 0)
        moved[mode] = 1.0 - held.mean().item()  # Kahan's weight is the bf16 nearest; its buffer holds the rest
    assert moved["nearest"] == 0.0
    assert moved["kahan"] == pytest.approx(0.01, rel=0.02) and moved["stochastic"] == pytest.approx(0.01, rel=0.1)


# --- the modes and the optimizer-state axis ----------------------------------------------------------

def test_the_new_modes_are_rows_with_their_rounding_and_buffers():
    sr, kahan = facts_of("half-bf16-sr"), facts_of("half-bf16-kahan")
    assert (sr.weight_rounding, sr.compensation_dtype) == ("stochastic", None)
    assert (kahan.weight_rounding, kahan.compensation_dtype) == ("kahan", "bfloat16")
    assert all(f.param_dtype == f.optimizer_state_dtype == "bfloat16" and f.master_dtype is None for f in (sr, kahan))
    assert set(OPTIMIZER_STATES) == {"fp32", "bf16", "8bit", "fp8"}


@pytest.mark.parametrize("precision", ["half-bf16", "half-bf16-sr", "half-bf16-kahan", "half-bf16-master", "fp32"])
def test_bytes_per_parameter_with_adam(precision):
    """Weights, gradients and Adam's state per parameter, from a real run's tensors: pure bf16 2 + 2 + 4
    = 8, with Kahan's buffer 10, fp32 16, bf16 with fp32 masters 2 + 2 + 4 + 4 + 8 = 20 (its fp32 main
    gradients included). torch-optimi's table says 10 and 12 for the pure-bf16 rows: 2 bytes more
    each, which no tensor of a trainkit step holds (the issue quotes optimi's figures)."""
    trainer = Trainer(small_config("mlp", precision=precision, optimizer="adam"), CPU)
    trainer.train_step()
    params = sum(p.numel() for p in trainer.raw_model.parameters())
    persistent = sum(p.numel() * p.element_size() for p in trainer.raw_model.parameters())
    persistent += trainer.policy.master_bytes
    persistent += sum(v.numel() * v.element_size() for s in trainer.optimizer.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor) and v.ndim > 0)
    gradients = {"half-bf16-master": 2 + 4, "fp32": 4}.get(precision, 2)
    expected = {"half-bf16": 8, "half-bf16-sr": 8, "half-bf16-kahan": 10, "half-bf16-master": 20, "fp32": 16}
    assert persistent / params + gradients == expected[precision]


def test_the_optimizer_state_axis_builds_each_state_and_refuses_what_cannot_run():
    config = small_config("mlp", precision="fp32", optimizer="adam", optimizer_state="bf16")
    trainer = Trainer(config, CPU)
    trainer.train_step()
    assert isinstance(trainer.optimizer, RoundingOptimizer)
    assert {v.dtype for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"} == {torch.bfloat16}
    assert observe(trainer)["mismatch"] is None
    assert config.cell_id == "mlp-fp32-bs8-ga1-gpus1-osbf16"
    with pytest.raises(Unsupported, match="optimizer_state=8bit needs optimizer adam or adamw"):
        Trainer(small_config("mlp", precision="fp32", optimizer="sgd", optimizer_state="8bit"), CPU)
    with pytest.raises(Unsupported, match="no Kahan compensation"):
        Trainer(small_config("mlp", precision="half-bf16-kahan", optimizer="adam", optimizer_state="fp8"), CPU)


@pytest.mark.slow
@pytest.mark.parametrize("state", ["8bit", "fp8"])
def test_torchaos_low_bit_states_run_on_a_cpu_and_are_observed_as_such(state):
    """torchao compiles its step (~15 s the first time on a loaded CPU). mlp's 784x128 and 128x64
    weights are quantized; its biases and 64x10 weight stay fp32 (under 4096 elements)."""
    config = small_config("mlp", precision="fp32", optimizer="adamw", optimizer_state=state)
    trainer = Trainer(config, CPU)
    trainer.train_step()
    observed = observe(trainer)
    assert observed["mismatch"] is None, observed
    row = next(r for r in observed["rows"] if r["tensor"] == "optimizer state")
    assert row["observed"] == ",".join(sorted({state, "float32"}))


def test_the_matrix_skips_a_state_the_cell_cannot_keep_with_the_reason():
    cpu, no_compiler = Hardware("cpu", cpu_count=2), Hardware("cpu", cpu_count=2, compile_unsupported="no g++")
    sgd = small_config("mlp", optimizer="sgd", optimizer_state="8bit").to_dict()
    assert "needs optimizer adam or adamw" in axes.skip_reason(sgd, cpu)
    adam = small_config("mlp", optimizer="adam", optimizer_state="8bit").to_dict()
    assert axes.skip_reason(adam, no_compiler) == "optimizer_state=8bit: torchao compiles its optimizer step; no g++"
    assert axes.skip_reason({**adam, "optimizer_state": "bf16"}, no_compiler) is None
    assert axes.named("optimizer_state").option.type("none,8bit") == (None, "8bit")


def test_a_low_bit_state_without_torchao_is_unsupported_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(Unsupported, match=r"trainkit\[fp8\]"):
        Trainer(small_config("mlp", precision="fp32", optimizer="adam", optimizer_state="8bit"), CPU)


# --- what ran ---------------------------------------------------------------------------------------

def cpu_policy(config: RunConfig):
    if config.precision == "tf32":
        return TF32OnCPU(CPU, config)
    if config.precision.startswith("fp8"):
        return policy_class(config.precision)(CPU, config, emulate=True)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet18", "resnet50", "gpt"])
def test_every_built_in_model_under_every_mode_runs_what_it_declares(model):
    """Every mode (tf32 with its CPU hooks, FP8 emulated) on every built-in model: one step, then the
    observed one, whose table holds no mismatch. FP8's matmul row is reported, not judged; FP8 on the
    conv models (no linear layer with dimensions of multiples of 16) is unsupported, as in the matrix."""
    # The ResNets on 16x16 images, 2 per micro-batch: what is checked is the dtypes their layers hold
    # and make (BatchNorm's included), which no image size or batch changes; 32x32 x 4 cost 4x the time.
    shape = {"image_size": 16, "batch_size": 2} if model.startswith("resnet") else {"batch_size": 4}
    torch.set_num_threads(1)  # a busy neighbour stalls 2-thread ops on their straggler (restored after)
    for precision in precision_names():
        optimizer = "adamw" if model == "gpt" else "sgd"
        config = small_config(model, precision=precision, optimizer=optimizer, grad_accum=2, **shape)
        if model in ("cnn", "resnet18", "resnet50") and facts_of(precision).slow_conv_on_cpu:
            continue  # fp16 convolutions on a CPU: the matrix skips these cells too
        try:
            trainer = Trainer(config, CPU, policy=cpu_policy(config))
        except Unsupported as exc:  # FP8 on a model without a linear layer float8 can run: no cell to check
            assert precision.startswith("fp8") and "no linear layer" in str(exc), exc
            continue
        trainer.train_step()
        observed = observe(trainer)
        assert observed["mismatch"] is None, (model, precision, observed["rows"])
        judged = {r["tensor"] for r in observed["rows"] if r["matches"] is not None}
        assert "parameters" in judged and "optimizer state" in judged
        if not isinstance(trainer.policy, Float8Precision):
            assert "matmul outputs" in judged


def test_a_model_cast_to_bf16_under_fp32_is_named_with_both_dtypes():
    trainer = Trainer(RunConfig(model="castbf16", workload=PLANTED, precision="fp32", optimizer="adam",
                                batch_size=8, steps=1, warmup_steps=0, device="cpu"), CPU)
    trainer.train_step()
    observed = observe(trainer)
    assert observed["mismatch"] == "parameters: declared float32, observed bfloat16 (4 tensors)"
    wrong = {r["tensor"] for r in observed["rows"] if r["matches"] is False}
    # OpenTau#177's fault exactly: the "fp32" optimizer state is bf16.
    assert {"parameters", "gradients", "optimizer state", "matmul outputs"} <= wrong


PLANTED_CONFIG = RunConfig(model="castbf16", workload=PLANTED, precision="fp32", optimizer="adam", batch_size=8,
                           steps=2, warmup_steps=1, device="cpu")


@pytest.fixture(scope="module")
def planted_record() -> dict:
    worker = RankWorker(PLANTED_CONFIG, profile=ProfileConfig(phase_steps=0))
    worker.warmup()
    worker.run_timed()
    return merge_ranks(PLANTED_CONFIG, [worker.collect()])


def test_a_mismatch_is_the_cells_status_and_the_record_keeps_the_table(planted_record):
    record, config = planted_record, PLANTED_CONFIG
    assert "precision-mismatch" in STATUSES and check_record(record) == []
    assert record["status"] == "precision-mismatch"
    assert record["status_detail"] == "parameters: declared float32, observed bfloat16 (4 tensors)"
    assert record["what_ran"]["rows"][0]["observed"] == "bfloat16"
    fine = merge_ranks(config.replace(model="subulp", workload=SUBULP), [])
    assert fine["status"] == "ok"  # no rank reported a table: nothing to judge


def test_the_report_colours_the_cell_and_shows_what_ran(planted_record, tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl(planted_record, str(path))
    page, _ = render(read_runs([str(path)]))
    failures = page[page.index('id="failures"'):]
    assert 'class="status-mismatch"' in failures and "What ran in castbf16-fp32-bs8-ga1-gpus1" in failures
    assert "MISMATCH" in failures and "bfloat16" in failures
    assert status_class("precision-mismatch") == "status-mismatch" and status_class("crashed") == "status-failed"


def test_check_workload_fails_the_planted_fault_and_keeps_its_table():
    config = RunConfig(model="castbf16", workload=PLANTED, precision="fp32", batch_size=4, steps=2, device="cpu")
    tables: dict = {}
    row = check_what_ran(config, CPU, tables)
    assert row.verdict == "fails" and "declared float32, observed bfloat16" in row.detail
    assert tables["fp32"]["mismatch"].startswith("parameters")


@pytest.mark.slow
def test_check_workload_runs_what_ran_and_the_roundings_beside_its_other_checks():
    """All of check-workload for one mode: its what-ran row, and the rounding rows (two compiled)."""
    config = RunConfig(model="castbf16", workload=PLANTED, precision="fp32", batch_size=4, steps=2, device="cpu")
    report = run_checks(PLANTED, build_workload(config), config, CPU, ("half-bf16-sr",))
    verdicts = {c.check: c.verdict for c in report.checks}
    assert verdicts["what ran half-bf16-sr"] == "ok" and list(report.what_ran) == ["half-bf16-sr"]
    assert {verdicts[f"rounding {r}{c}"] for r in ("nearest", "stochastic") for c in ("", " compiled")} == {"ok"}


@pytest.mark.slow
def test_trainkit_run_and_the_matrix_end_the_planted_cell_precision_mismatch(tmp_path, capsys):
    """End to end, in fresh workers: the command's record and a bench matrix cell (both front ends
    in this process, their cells in worker processes: a fresh interpreter each added ~5 s, and what
    a shell sees of a refusal is other tests')."""
    from trainkit.commands.cli import main

    output = tmp_path / "run.json"
    main(["run", "--model", PLANTED, "--precision", "fp32", "--optimizer", "adam", "--steps", "2",
          "--warmup-steps", "1", "--device", "cpu", "--output", str(output)])
    stderr = capsys.readouterr().err
    assert "precision-mismatch: parameters: declared float32, observed bfloat16" in stderr, stderr[-2000:]
    assert json.loads(output.read_text())["status"] == "precision-mismatch"
    results = tmp_path / "matrix.jsonl"
    bench = inprocess_pytest(["bench/test_train.py", "--benchmark-only", "-p", "no:randomly", "--no-report",
                              "--report-dir", str(tmp_path / "out"), "--results-file", str(results), "--model", PLANTED,
                              "--precision", "fp32", "--batch-size", "8", "--grad-accum", "1", "--gpus", "1",
                              "--compile", "off", "--activation-checkpointing", "none", "--steps", "2",
                              "--warmup-steps", "1", "--rounds", "2"])
    records = list(read_jsonl(str(results)))
    assert [r["status"] for r in records] == ["precision-mismatch"], bench.stdout[-3000:] + bench.stderr[-3000:]
    assert "observed bfloat16" in records[0]["status_detail"]


# --- parity on a workload whose updates are below half a bf16 ulp --------------------------------------

SUBULP_STEPS, SUBULP_SEEDS = 600, (0, 1, 2, 3, 4)


def subulp_record(precision: str, seed: int) -> dict:
    config = RunConfig(model="subulp", workload=SUBULP, precision=precision, optimizer="adam", lr=1e-4,
                       batch_size=32, steps=SUBULP_STEPS, warmup_steps=0, seed=seed, device="cpu", cpu_threads=1)
    worker = RankWorker(config, profile=ProfileConfig(phase_steps=0))
    worker.warmup()
    worker.run_timed()
    return merge_ranks(config, [worker.collect()])


@pytest.fixture(scope="module")
def subulp_verdicts():
    modes = ("half-bf16", "half-bf16-sr", "half-bf16-kahan", "half-bf16-master")
    reference = [subulp_record("fp32", s) for s in SUBULP_SEEDS]
    return judge(reference, {m: [subulp_record(m, s) for s in SUBULP_SEEDS] for m in modes})


def test_below_half_an_ulp_half_bf16_is_worse_and_its_fixes_are_equivalent(subulp_verdicts):
    """The issue's "done when": 5 seeds, a 0.5 % margin, paired t intervals of the eval loss."""
    verdicts = {name: entry.verdict for name, entry in subulp_verdicts.precisions.items()}
    assert verdicts == {"half-bf16": "worse", "half-bf16-sr": "equivalent", "half-bf16-kahan": "equivalent",
                        "half-bf16-master": "equivalent"}, {n: e.loss for n, e in subulp_verdicts.precisions.items()}
    assert all(e.loss.test == "paired t" for e in subulp_verdicts.precisions.values())


def test_the_committed_parity_examples_hold_the_new_modes_and_their_verdicts():
    """reports/examples/cpu-halfprec: `trainkit parity` on gpt and mlp, and on subulp (--lr 1e-4
    --batch-size 32 --steps 600 --warmup-steps 0: AdamW without decay, Adam's arithmetic)."""
    with open(EXAMPLE) as f:
        doc = json.load(f)
    for model in ("gpt", "mlp"):
        assert {"half-bf16-sr", "half-bf16-kahan"} <= set(doc["models"][model]["precisions"])
    assert {n: e["verdict"] for n, e in doc["models"]["gpt"]["precisions"].items()} == {
        "fp32": "reference", "half-bf16": "worse", "half-bf16-sr": "equivalent", "half-bf16-kahan": "equivalent",
        "half-bf16-master": "equivalent"}
    with open(SUBULP_EXAMPLE) as f:
        subulp = json.load(f)["models"]["subulp"]["precisions"]
    assert {n: e["verdict"] for n, e in subulp.items()} == {
        "fp32": "reference", "half-bf16": "worse", "half-bf16-sr": "equivalent", "half-bf16-kahan": "equivalent",
        "half-bf16-master": "equivalent"}
    assert set(PRECISION_FACTS) >= set(subulp)


def test_a_checkpoint_resumes_the_rounding_optimizer_with_its_state_dtypes(tmp_path):
    """torch.optim casts a loaded state to its parameter's dtype; a bf16 state of fp32 weights stays bf16."""
    config = small_config("mlp", precision="fp32", optimizer="adam", optimizer_state="bf16", steps=2,
                          checkpoint_dir=str(tmp_path), checkpoint_every=1)
    first = Trainer(config, CPU)
    first.run(1)
    resumed = Trainer(config.replace(resume_from=first.checkpoint_path(1)), CPU)
    assert {v.dtype for s in resumed.optimizer.state.values() for k, v in s.items() if k != "step"} == {torch.bfloat16}
    resumed.run(1)
    assert observe(resumed)["mismatch"] is None
