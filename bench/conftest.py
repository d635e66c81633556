"""`pytest bench --benchmark-only` in the checkout: the matrix's machinery is the installed package's
pytest plugin (trainkit.bench); this folder only points pytest at it. Where the package is installed,
the plugin is already registered under the same name and this is a no-op."""

pytest_plugins = ["trainkit.bench"]
