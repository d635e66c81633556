"""What is trained: the `Workload` type, the built-in models, the resolver from a `--model`
string to a Workload, the adapters (hf:, timm:), the teachers that label synthetic data, and the
data pipeline that feeds a run its micro-batches.

`from trainkit.engine.workloads import Workload` is the user's door: the face hands on only the
type and its error, from the room's bottom module, so importing it creates no cycle.
"""

from .workload import Workload, WorkloadError

__all__ = ["Workload", "WorkloadError"]
