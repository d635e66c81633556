"""The benchmark matrix as a pytest plugin: `pytest --benchmark-only -p trainkit.bench` (or, with the
package installed, `pytest --benchmark-only`: the wheel registers this module under pytest11).

This face hands pytest the plugin's hooks and fixtures (plugin.py); the matrix is built by
matrix.py, run cell by cell by runner.py (or as cluster jobs by executors.py), and its tests are
cells.py. Inert unless the matrix is asked for (see plugin.py).
"""

from .plugin import (
    bench_session,
    cell_spec,
    pytest_addoption,
    pytest_benchmark_update_machine_info,
    pytest_collection,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

__all__ = ["bench_session", "cell_spec", "pytest_addoption", "pytest_benchmark_update_machine_info",
           "pytest_collection", "pytest_collection_modifyitems", "pytest_configure", "pytest_generate_tests",
           "pytest_sessionfinish", "pytest_terminal_summary"]
