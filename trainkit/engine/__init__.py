"""The engine: what a run is, how it trains, and how it is measured.

Nothing here imports the reports or a command: they stand on top of it.
"""
