"""The memory estimate against a GPU's caching allocator: within 10% of `torch_max_allocated_bytes`
for mlp, resnet50 and GPT-2 124M in every precision the GPU runs, at two batch sizes each.

Skips without a CUDA GPU. On a GPU host:

    python -m pytest tests/test_plan_gpu.py -v -s     # -s prints the table of estimates and peaks
"""

from __future__ import annotations

import pytest
import torch

from trainkit.engine.cell.launch import call_in_fresh_process, probe, run_cell
from trainkit.engine.cell.worker import serve_estimates
from trainkit.engine.spec.config import RunConfig
from trainkit.engine.spec.precision_facts import precision_names
from trainkit.engine.spec.presets import GPU_GPT, RECIPES
from trainkit.engine.train.precision import policy_class

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: the estimate is checked against the CUDA caching "
                                       "allocator's peak, which a CPU does not have")

TOLERANCE = 0.10
MODELS = {"mlp": ({}, (1024, 4096)), "resnet50": ({}, (32, 64)), "gpt": (GPU_GPT, (4, 8))}


@pytest.fixture(scope="module")
def gpu():
    return probe("cuda")


@pytest.mark.parametrize("precision", precision_names())
@pytest.mark.parametrize("model", list(MODELS))
def test_the_estimate_is_within_10_percent_of_the_allocators_peak(model, precision, gpu):
    capability = tuple(gpu["capability"])
    reason = policy_class(precision).unsupported_on("cuda", capability, gpu["gpu_name"])
    if reason:
        pytest.skip(reason)
    options, batches = MODELS[model]
    base = RunConfig(model=model, precision=precision, device="cuda", steps=3, warmup_steps=2,
                     **{**RECIPES[model], **options})
    for batch in batches:
        config = base.replace(batch_size=batch)
        record = run_cell(config, timeout_s=600, evaluate=False)
        assert record["status"] == "ok", record["status_detail"]
        request = {"config": config.to_dict(), "device": "cuda", "capability": list(capability),
                   "points": [[batch, 1]]}
        (answer,) = call_in_fresh_process(serve_estimates, [request], timeout_s=600, what="the estimate")
        estimate = answer["estimates"][0]
        measured = record["memory"]["torch_max_allocated_bytes"]
        error = (estimate["total_bytes"] - measured) / measured
        print(f"{gpu['gpu_name']} {config.cell_id}: estimate {estimate['total_bytes'] / 2**20:,.1f} MiB, "
              f"allocated peak {measured / 2**20:,.1f} MiB, error {error:+.1%}; terms {estimate['terms']}")
        assert abs(error) <= TOLERANCE, f"{config.cell_id}: estimate off by {error:+.1%}"
