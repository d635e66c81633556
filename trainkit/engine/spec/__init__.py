"""What a run is, in words and numbers: the run's config, the command-line option types, the
matrix's axes, the fixed choices, the precision modes' facts and the record's schema.

The ground floor of the engine: no torch, and nothing of trainkit's outside this room, so the
command lines, bench's collection and the reports can all read it for nothing.
"""
