"""One cell of the matrix, run: the launcher and its worker processes, their protocol, the
failure board, the record a cell writes, the allocator settings, and the passes that run after
the timed steps (profile, diagnostics).
"""
