"""One benchmark per matrix cell (the cells come from conftest.py's presets and options)."""

import inspect

import pytest

from .clock import worker_clock
from .matrix import param_names
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
