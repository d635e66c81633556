"""The nightly GPU job and its regression gate: `python -m nightly run|preflight|matrix|report|compare|status|promote`,
and the GPU check: `python -m nightly gpu-check`.

All of the job's logic lives here, so it runs the same on a CI runner, any GPU host or a cluster
login node, and on a CPU with a small preset. The workflow (.github/workflows/nightly-gpu.yml)
only calls these commands. One run writes everything into one directory (see rundir.py):

    preflight   is the machine fit to measure?   GPU visible, idle, free memory; clocks and
                throttle reasons recorded                                  -> preflight.json
    matrix      the bench matrix, every cell repeated in fresh workers    -> results.jsonl, benchmark.json
    report      the HTML report of the run                                 -> report.html, .csv, .md
    compare     the gate: against the baseline of the same environment     -> compare.html, .csv, .md
    status      the run's verdict as an exit status (and GitHub outputs)   -> summary.md

Beside the job, `gpu-check` (gpucheck/) runs a few cells and checks each figure against an
independent measure (wall clock, analytic memory floor, fp64 matmuls, a profile, published
anchors, NVML's power): gpu-check.md, gpu-check.json, results.jsonl, report.html. On a CPU its
GPU-only checks skip with their reasons.

Exit status, the same for every command:

    0  pass (or no comparable baseline: said plainly, not a regression)
    1  regression: a gated cell regressed, drifted or started to fail (gpu-check: a check failed)
    2  bad input: an option, a file or a preset that cannot be used here
    3  infrastructure failure: the pre-flight failed or the matrix could not run; not a regression
       (gpu-check: the device cannot be used, e.g. --device cuda without a GPU)
    4  inconclusive: nothing regressed, but the gate could not see a gated cell (too noisy at its
       size, a baseline that cannot judge it, no record tonight, refused by the code), named with
       its reason; the runner's or the baseline's problem (quiet it, re-run; re-promote), not the code's,
       and never a pass. (`python -m reports compare` says 3 for this; 3 is taken here.)
"""

PASS, REGRESSION, BAD_INPUT, INFRASTRUCTURE, INCONCLUSIVE = 0, 1, 2, 3, 4
LABELS = {PASS: "pass", REGRESSION: "regression", BAD_INPUT: "bad input", INFRASTRUCTURE: "infrastructure failure",
          INCONCLUSIVE: "inconclusive"}
NO_BASELINE = "no comparable baseline"
