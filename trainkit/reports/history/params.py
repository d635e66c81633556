"""The detector's parameters: a module of its own, without numpy, scipy or ruptures, so the command
line can offer them as options without importing the detector."""

from __future__ import annotations

from dataclasses import dataclass

from .series import EXACT


@dataclass(frozen=True)
class DetectorParams:
    """The detector's parameters (printed on every chart of the trend page)."""

    max_pvalue: float = 0.001
    """A change point's t-test must give p below this, after the Bonferroni factor (Otava's default)."""
    min_magnitude: float = 0.05
    """...and a relative change at least this large (asv's default regression threshold, 5 %)."""
    min_size: int = 2
    """Fewest nights in a segment: a statistical change point needs two nights on each side."""
    memory_tolerance: float = 0.0
    """Deterministic memory (allocator peaks): relative departure that starts a segment (0: exact)."""
    loss_tolerance: float = 1e-3
    """Final loss: relative departure that starts a segment (near-exact: kernels may reorder sums)."""
    drift_window: int = 5
    """Nights averaged at the reference and at the end for the drift check."""
    drift_threshold: float = 0.05
    """A drift counts when the last nights differ from the reference's by this much (relative)..."""
    drift_pvalue: float = 0.01
    """...with the t-test's p (reference nights against the last) below this (statistical series)."""

    def __post_init__(self) -> None:
        for name in ("max_pvalue", "drift_pvalue"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} {getattr(self, name)!r} is not a p-value in (0, 1]")
        for name in ("min_magnitude", "memory_tolerance", "loss_tolerance", "drift_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)!r} must be >= 0")
        for name, least in (("min_size", 1), ("drift_window", 2)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} {getattr(self, name)!r} must be >= {least}")

    def tolerance(self, metric: str) -> float:
        return self.loss_tolerance if metric == "loss" else self.memory_tolerance

    def describe(self, method: str, metric: str) -> str:
        if method == EXACT:
            return f"exact rule: tolerance {self.tolerance(metric):.2g} relative; a lone departing night is an outlier"
        return (f"binary segmentation (ruptures, L2 on log values, ≥{self.min_size} nights a segment) + "
                f"t-test p<{self.max_pvalue:g} (Bonferroni over the splits), change ≥{self.min_magnitude:.0%}")
