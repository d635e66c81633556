"""The matrix's tests: one benchmark per matrix cell, and the library's cost beside a hand-written loop.

The plugin (trainkit.bench) collects this file when the matrix is asked for without paths
(`pytest --benchmark-only -p trainkit.bench`); the checkout's bench/test_train.py and
bench/test_overhead.py hand these tests on, so `pytest bench --benchmark-only` runs them there.
"""

import inspect

import pytest

from trainkit.engine.spec.config import RunConfig

from .clock import advance, worker_clock
from .matrix import param_names
from .overhead import run_in_worker
from .runner import end_cell


@pytest.mark.bench
@pytest.mark.benchmark(timer=worker_clock)
def test_train(benchmark, bench_session, cell_spec, **params):
    """Warm up in the cell's own worker(s), then time single optimizer steps of the library's step.
    `params` are the cell's axis values and repeat (cell_spec holds them too): pytest passes them
    because they are the test's parameters, which is what --benchmark-group-by param:NAME reads."""
    record = bench_session.run(cell_spec, benchmark)
    end_cell(record, bench_session.options.strict_cells)


# pytest reads a test's parameters from its signature: the fixtures, then one parameter per axis of
# the registry (trainkit.engine.spec.axes.AXES) and the repeat, so an axis added there needs no edit here.
test_train.__signature__ = inspect.Signature(
    [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
     for name in ("benchmark", "bench_session", "cell_spec", *param_names())])


# The library's cost: trainkit's loop against the seeds' hand-written loop, side by side.
CASES = {
    # The seed MLP at the seed's batch of 64, and a CPU-sized ResNet-18.
    # Many short interleaved blocks: a shared CPU's speed drifts by tens of percent within seconds.
    "mlp": (RunConfig(model="mlp", batch_size=64, momentum=0.9), 60, 50),
    "resnet18": (RunConfig(model="resnet18", batch_size=32, image_size=32, lr=0.05), 20, 2),
}


@pytest.mark.bench
@pytest.mark.benchmark(timer=worker_clock, group="overhead")
# A measurement that fails has already failed the test; pytest-benchmark's "fixture was not used"
# warning would only add a teardown error (an error under filterwarnings=error) hiding the cause.
@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")
@pytest.mark.parametrize("model", list(CASES))
def test_overhead(benchmark, model, request):
    if not request.config.getoption("tk_overhead"):
        pytest.skip("pass --overhead to measure trainkit against a hand-written loop")
    config, blocks, steps_per_block = CASES[model]
    blocks = request.config.getoption("tk_overhead_blocks") or blocks
    min_ratio = request.config.getoption("tk_overhead_min_ratio")
    device = request.config.getoption("tk_device")
    result = run_in_worker(config.replace(device=device), blocks, steps_per_block)
    times = iter(result["trainkit_step_s"])  # measured in the worker; replayed to the benchmark
    benchmark.pedantic(lambda: advance(next(times)), rounds=blocks, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(result)
    assert result["throughput_ratio"] >= min_ratio, (
        f"trainkit reached {result['throughput_ratio']:.3f} of the hand-written loop's throughput (< {min_ratio})")
