"""The detector's own precision and recall, on generated series of known truth.

Each series is forty nights of throughput around 100 samples/s with log-normal noise of a given
relative sigma (2-10 %: the night-to-night spread GPU nights show),
and, by scenario:

    step     one step of a given relative size (down or up) at a random night in [8, 32)
    none     no change (every change point found is a false positive)
    outlier  no change, but one night 30 % slow (a busy runner; it must not become a change point)
    edge     the same at a series' ends (EDGE_NIGHTS), where a split's two-night side holds it
    drift    a linear drift of a given total size over all forty nights (the drift check's case)

Scoring: a change point within `slack` nights of the true step, in its direction, is a true positive;
every other change point is a false positive; a step none matches is a false negative. The drift
check is scored apart: detected drifts of the drift series against false drifts of the others,
with the first `drift_window` nights as the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .detect import analyse, drift
from .params import DetectorParams
from .series import STATISTICAL, Point, Series
from .store import RunInfo

NIGHTS = 40
EDGE_NIGHTS = (1, 2, NIGHTS - 1, NIGHTS)
"""Nights of the edge scenario's lone slow night: a split needs two nights a side, so these are where
one bad night can make a two-night segment."""
LEVELS = tuple((noise, size) for noise in (0.02, 0.05, 0.10) for size in (0.05, 0.10, 0.15, 0.25))
"""(noise, step size) pairs `python -m reports history quality` scores."""


@dataclass(frozen=True)
class Score:
    """Counts over one batch of generated series."""

    noise: float
    step: float
    """Relative size of the steps (or drifts) injected."""
    true_positives: int
    false_positives: int
    false_negatives: int
    drifts_found: int
    drifts: int
    false_drifts: int
    series: int

    @property
    def precision(self) -> float | None:
        """Right change points over all found; None when none was found (nothing to be right about)."""
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else None

    @property
    def recall(self) -> float | None:
        """Steps found over steps injected; None without a step."""
        real = self.true_positives + self.false_negatives
        return self.true_positives / real if real else None

    @property
    def drift_recall(self) -> float:
        return self.drifts_found / self.drifts if self.drifts else 1.0


def _runs() -> dict[int, RunInfo]:
    return {i: RunInfo(i, f"commit{i:02d}", "main", f"2026-01-01T00:00:{i:02d}+00:00", None, None, None, None)
            for i in range(1, NIGHTS + 1)}


def _series(values: np.ndarray) -> Series:
    return Series("generated", {"cpu": "generated"}, "throughput", "throughput_samples_per_s", STATISTICAL,
                  tuple(Point(i + 1, float(v), 1) for i, v in enumerate(values)))


def generate(rng: np.random.Generator, noise: float, scenario: str, size: float) -> tuple[np.ndarray, int | None]:
    """One series and the night of its step (None without one)."""
    values = 100.0 * np.exp(rng.normal(0.0, noise, NIGHTS))
    at = None
    if scenario == "step":
        at = int(rng.integers(8, 32))
        values[at:] *= 1 + size * (1 if rng.random() < 0.5 else -1)
    elif scenario == "outlier":
        values[int(rng.integers(1, NIGHTS))] *= 0.7
    elif scenario == "edge":
        values[EDGE_NIGHTS[int(rng.integers(0, len(EDGE_NIGHTS)))] - 1] *= 0.7
    elif scenario == "drift":
        values *= 1 - size * np.linspace(0.0, 1.0, NIGHTS)
    return values, at


def score(noise: float, size: float, repeats: int = 20, seed: int = 0, slack: int = 1,
          params: DetectorParams = DetectorParams()) -> Score:
    """Precision and recall over `repeats` series of each scenario at one noise level and size."""
    rng = np.random.default_rng(seed)
    runs = _runs()
    tp = fp = fn = drifts_found = false_drifts = 0
    for scenario in ("step", "none", "outlier", "edge", "drift"):
        for _ in range(repeats):
            values, at = generate(rng, noise, scenario, size)
            series = _series(values)
            found = analyse(series, runs, params=params).change_points
            if scenario == "step":
                up = math.copysign(1, np.median(values[at:]) - np.median(values[:at]))
                hit = [c for c in found if abs(c.index - at) <= slack and math.copysign(1, c.magnitude) == up]
                tp, fn = tp + bool(hit), fn + (not hit)
                fp += len(found) - bool(hit)
            else:
                fp += len(found) if scenario != "drift" else 0  # a drift is not a step: neither right nor wrong
            checked = drift(series, 1, runs, params)
            if scenario == "drift":
                drifts_found += bool(checked and checked.drifted)
            elif scenario in ("none", "outlier"):
                false_drifts += bool(checked and checked.drifted)
    return Score(noise, size, tp, fp, fn, drifts_found, repeats, false_drifts, 5 * repeats)
