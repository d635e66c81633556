"""Loss parity, pure: records of every (precision, seed) cell in, a typed verdict per precision out.

    verdicts     the analysis: seeds paired, intervals, the verdict and its reasons
    document     the parity document's types (what `trainkit parity` writes)
    stats        statistics over seeds: t intervals, paired differences, equivalence
    diagnostics  which numerics figure stands out beside fp32's
"""
