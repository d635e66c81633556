"""Pure analyses over result records that return typed, documented documents (frozen dataclasses).

No torch, no pages, no commands: a module here imports only trainkit.engine (and its own
statistics libraries); the commands run cells and write what these analyses return, and reports
render it.
"""
