"""The precision table is the one home of what a mode is: a mode added as one table row plus one
policy class reaches the config, bench's ids and skip rules, the record and the reports with no
other edit."""

from __future__ import annotations

import pytest

from trainkit.bench.matrix import build_matrix, skip_reason
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import PRECISION_FACTS, PrecisionFacts, precision_names, unsupported_reason
from trainkit.engine.spec.presets import preset
from trainkit.engine.train.hardware import Hardware
from trainkit.engine.train.precision import POLICIES, MixedBF16Precision

CPU_HW = Hardware("cpu", cpu_count=2)
MADE_UP = "bf16-madeup"


@pytest.fixture
def made_up_precision(monkeypatch):
    """A mode added the way a new one is added: one row in the table, one policy class."""
    facts = PrecisionFacts(name=MADE_UP, summary="a test mode: bf16 autocast that needs a Hopper GPU",
                           compute_dtype="bfloat16", param_dtype="float32", optimizer_state_dtype="float32",
                           min_capability=(9, 0), slow_conv_on_cpu=True, peak_kind="bf16", color="#123456")

    class MadeUpPrecision(MixedBF16Precision):
        name = MADE_UP

    monkeypatch.setitem(PRECISION_FACTS, MADE_UP, facts)
    monkeypatch.setitem(POLICIES, MADE_UP, MadeUpPrecision)
    return facts


def test_every_mode_has_exactly_one_policy_class():
    assert tuple(POLICIES) == precision_names()
    assert len(set(POLICIES.values())) == len(POLICIES)
    assert all(cls.name == name for name, cls in POLICIES.items())


def test_a_new_mode_is_a_valid_config_and_an_id(made_up_precision):
    assert RunConfig(precision=MADE_UP).cell_id == f"mlp-{MADE_UP}-bs64-ga1-gpus1"
    # The presets' "every precision" blocks take it up, so it gets bench ids without a preset edit.
    quick = preset("quick", on_gpu=False)
    ids = {c.id for c in build_matrix(quick, CPU_HW, {}, quick.steps, quick.warmup_steps)}
    assert {f"mlp-{MADE_UP}-bs32-ga1-gpus1", f"gpt-{MADE_UP}-bs32-ga4-gpus2"} <= ids


@pytest.mark.parametrize(("model", "hw", "reason"), [
    ("gpt", Hardware("cuda", 1, (8, 0), "NVIDIA A100"),
     f"{MADE_UP} needs compute capability >= 9.0 (NVIDIA A100 is 8.0)"),
    ("gpt", Hardware("cuda", 1, (9, 0), "NVIDIA H100"), None),
    ("resnet18", CPU_HW, "bf16 convolutions on the CPU are ~100x slower than fp32"),
    ("mlp", CPU_HW, None),
])
def test_a_new_mode_gets_its_skip_reasons_from_the_table(made_up_precision, model, hw, reason):
    got = skip_reason(model, MADE_UP, 1, hw)
    assert got == reason if reason is None else got.startswith(reason), got


def test_the_policy_and_bench_give_the_same_reason():
    """Bench asks the policy; the policy reads the table: one sentence, written once."""
    hw = Hardware("cuda", 1, (7, 5), "Tesla T4")
    for name in ("tf32", "amp-bf16", "half-bf16"):
        assert skip_reason("mlp", name, 1, hw) == POLICIES[name].unsupported_on("cuda", (7, 5), "Tesla T4") \
            == unsupported_reason(name, "cuda", (7, 5), "Tesla T4")
    assert skip_reason("mlp", "tf32", 1, CPU_HW) == "tf32 needs a CUDA GPU with compute capability >= 8.0"


def test_a_new_mode_reaches_the_record_and_the_reports_order_and_colours(made_up_precision):
    pytest.importorskip("pandas", reason="reports need the `reports` extra")
    pytest.importorskip("plotly", reason="reports need the `reports` extra")
    import torch

    from trainkit.engine.cell.record import merge_ranks
    from trainkit.engine.cell.worker import RankWorker
    from trainkit.reports.figures import charts_for
    from trainkit.reports.load import to_frame
    from trainkit.reports.summary import summary

    records = []
    for precision in (MADE_UP, "half-bf16", "fp32"):  # the new mode first: reports must reorder it
        config = RunConfig(model="mlp", precision=precision, batch_size=8, steps=3, warmup_steps=1, device="cpu")
        worker = RankWorker(config, profile=None)
        worker.warmup()
        worker.run_timed()
        records.append(merge_ranks(config, [worker.collect()]))
    made_up = records[0]
    assert made_up["status"] == "ok" and made_up["config"]["compute_dtype"] == str(torch.bfloat16)
    assert made_up["scaler"]["enabled"] is False  # its row says: no loss scaling

    frame = to_frame(records)
    assert list(summary(frame)["precision"]) == ["fp32", "half-bf16", MADE_UP]  # table order, new mode last
    colours = {trace.name: trace.line.color for chart in charts_for(summary(frame), frame) if chart.figure
               for trace in chart.figure.data if getattr(trace, "line", None) is not None and trace.line.color}
    assert colours[MADE_UP] == "#123456" and colours["fp32"] == PRECISION_FACTS["fp32"].color
