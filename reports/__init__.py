"""`python -m reports`: the reports' command, whose code is trainkit.reports.

This folder also holds the committed example runs (examples/) and the nightly baselines
(baselines/); reports the commands write go to out/ (not committed).
"""
