"""One benchmark per matrix cell (the cells come from conftest.py's presets and options)."""

import pytest

from .clock import worker_clock
from .runner import end_cell


@pytest.mark.bench
@pytest.mark.benchmark(timer=worker_clock)
def test_train(benchmark, bench_session, cell_spec, model, precision, batch_size, grad_accum, gpus, compile,
               activation_checkpointing, alloc_conf, repeat):
    """Warm up in the cell's own worker(s), then time single optimizer steps of the library's step."""
    record = bench_session.run(cell_spec, benchmark)
    end_cell(record, bench_session.options.strict_cells)
