"""A made-up axis of the benchmark matrix, as one row (tests/test_bench.py): the seed, with a skip
rule no hardware has. Loaded by pytest as a plugin (-p tests.made_up_axis), it registers the row
before the bench plugin (trainkit.bench) reads the registry; imported, it only defines it."""

from trainkit.engine.spec import axes
from trainkit.engine.spec.axes import Axis
from trainkit.engine.spec.options import Option, comma_list, integer

SEED_AXIS = Axis("seed", "seed", Option("--seed", comma_list(integer(0)), "A,B", "integers >= 0"), 0,
                 tag=lambda v: f"-seed{v['seed']}" if v["seed"] else "",
                 label=lambda v: f"seed={v['seed']}" if v["seed"] else "",
                 skip=lambda v, hw: "seed 13 is unlucky" if v["seed"] == 13 else None)


def pytest_addoption(parser) -> None:
    """Called as pytest registers this plugin, before the bench plugin's own options, which read the axes."""
    axes.AXES = (*axes.AXES, SEED_AXIS)
