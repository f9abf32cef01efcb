"""The out-of-distribution thresholds (mslesion.ood): the pass rate they promise holds on new lesions."""

from __future__ import annotations

import numpy as np
import pytest

from mslesion.ood import conformal_threshold


def pass_rate_on_new_lesions(threshold_of, n_calibration: int, trials: int = 4000, seed: int = 0) -> float:
    """Mean share of new in-distribution scores at or below the threshold set on n calibration scores."""
    rng = np.random.default_rng(seed)
    calibration = rng.gamma(2.0, size=(trials, n_calibration))  # skewed, like squared distances
    new = rng.gamma(2.0, size=(trials, 200))
    thresholds = np.array([threshold_of(c) for c in calibration])
    return float((new <= thresholds[:, None]).mean())


@pytest.mark.parametrize("n", [20, 40, 87, 200])
def test_conformal_threshold_passes_at_least_the_promised_share(n):
    rate = pass_rate_on_new_lesions(lambda c: conformal_threshold(c, 0.95), n)
    assert rate >= 0.95 - 0.003  # the guarantee, up to the Monte Carlo error of 800,000 draws
    assert rate <= 0.95 + 1 / (n + 1) + 0.003  # and not needlessly loose: the upper conformal bound


@pytest.mark.parametrize("n", [20, 40, 87])
def test_plain_quantile_passes_fewer_than_promised(n):
    # why the conformal rank is used: the plain quantile of a small calibration set falls short on new lesions
    assert pass_rate_on_new_lesions(lambda c: float(np.quantile(c, 0.95)), n) < 0.95 - 0.003


def test_conformal_threshold_is_a_rank_of_the_scores():
    scores = np.arange(1.0, 101.0)[::-1]  # order must not matter
    assert conformal_threshold(scores, 0.95) == 96.0  # ⌈101 × 0.95⌉ = 96th smallest
    assert conformal_threshold(scores[:10], 0.95) == 100.0  # too few for the rank: the largest
    with pytest.raises(ValueError):
        conformal_threshold(np.array([]), 0.95)
