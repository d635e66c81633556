"""trainkit's loop against a hand-written loop (--overhead): the package's test (trainkit.bench.cells),
collected here so that `pytest bench --benchmark-only --overhead` runs it in the checkout."""

from trainkit.bench.cells import test_overhead  # noqa: F401
