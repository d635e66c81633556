"""Sections of the matrix report beyond its summary and charts: the frontier of the axes beyond
precision and accumulation (compile, checkpointing, FP8, allocator) and the profile."""
