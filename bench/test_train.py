"""One benchmark per matrix cell: the test is the package's (trainkit.bench.cells), collected here
so that `pytest bench --benchmark-only` runs the matrix in the checkout."""

from trainkit.bench.cells import test_train  # noqa: F401
