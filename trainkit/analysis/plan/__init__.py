"""The planner, pure: the search over batch sizes and the plan document it writes.

    search    the search against an oracle (batch -> Probe) and its recommendation
    document  the plan's typed parts, written under the plan file's keys
    file      a plan file read back and held against a cell
"""
