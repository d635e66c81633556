"""trainkit.analysis.paired: the median of per-round ratios and its interval over rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainkit.analysis.paired import MOVER_SCALE, PairedRatio, paired_ratio, unpaired_ratio


def test_a_paired_ratio_is_the_median_of_per_round_ratios():
    reference = [100.0, 50.0, 100.0, 100.0, 100.0, 100.0]  # round 2: the machine slowed both cells
    candidate = [120.0, 60.0, 121.0, 119.0, 118.0, 122.0]
    result = paired_ratio(reference, candidate)
    assert isinstance(result, PairedRatio) and result.n_rounds == 6 and result.reason is None
    assert result.per_round == pytest.approx((1.2, 1.2, 1.21, 1.19, 1.18, 1.22))
    assert result.ratio == pytest.approx(1.2)
    assert 1.18 <= result.low < result.ratio < result.high <= 1.22 and result.holds(1.0) is False
    # Unpaired, the slow round would be a 2x swing of one cell: the pairing is what cancels it.
    shuffled = paired_ratio(reference, candidate[1:] + candidate[:1])
    assert shuffled.high - shuffled.low > 0.5


def test_too_few_rounds_give_the_ratio_without_an_interval():
    result = paired_ratio([1.0, 1.0, 1.0], [1.1, 1.3, 1.2])
    assert result.ratio == pytest.approx(1.2) and result.low is None and result.high is None
    assert "3 rounds" in result.reason and "at least 6" in result.reason and result.holds(1.0) is None
    assert paired_ratio([None, 2.0], [1.0, None]).ratio is None  # no round with both
    assert paired_ratio([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0], [2.0] * 6).n_rounds == 5
    assert "5 rounds" in paired_ratio([1.0] * 5, [2.0] * 5).reason  # min to max of 5: 93.75 %


@pytest.mark.parametrize("reference, candidate, match", [
    ([1.0, 2.0], [1.0], "2 reference rounds and 1 candidate"),
    ([1.0, 0.0], [1.0, 1.0], r"reference\[1\] = 0.0"),
    ([1.0, 1.0], [1.0, math.inf], r"candidate\[1\] = inf"),
])
def test_bad_rounds_are_named(reference, candidate, match):
    with pytest.raises(ValueError, match=match):
        paired_ratio(reference, candidate)


def test_the_unpaired_ratio_combines_the_two_intervals_on_the_log_scale():
    ratio, low, high = unpaired_ratio(2.0, 1.8, 2.2, 4.0, 3.6, 4.4)
    assert ratio == pytest.approx(2.0)
    # Each side is 10 % off: MOVER's half-width is sqrt(2) x one side's on the logs, not the sum of both.
    assert math.log(ratio / low) == pytest.approx(MOVER_SCALE * math.hypot(math.log(4 / 3.6), math.log(2.2 / 2)))
    assert math.log(high / ratio) == pytest.approx(MOVER_SCALE * math.hypot(math.log(4.4 / 4), math.log(2 / 1.8)))
    assert low > 3.6 / 2.2 and high < 4.4 / 1.8  # narrower than the worst case of both
    arrays = unpaired_ratio(np.array([1.0, 1.0]), np.array([0.9, np.nan]), np.array([1.1, np.nan]),
                            np.array([2.0, 2.0]), np.array([1.8, 1.8]), np.array([2.2, 2.2]))
    assert np.isfinite(arrays[1][0]) and np.isnan(arrays[1][1])
