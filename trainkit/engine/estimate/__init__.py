"""What a run would cost before it runs: the planner's memory estimator, its fake-tensor step,
and the checks of a workload before GPU hours go into it (`check-workload`).
"""
