"""An example trainkit workload package: a small residual MLP on feature vectors (workloads.py),
and the same kind of model in the minimal module form (minimal.py)."""
