"""The commands of ``python -m trainkit``: run, plan and parity, on top of the engine and the reports."""
