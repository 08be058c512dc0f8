"""evaluation.aggregate: the quantile behind "30" is numpy's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.aggregate import linear_quantile


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.7, 1.0, 0.2999999999999999])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 7, 38])
def test_linear_quantile_is_numpys_bit_for_bit(n, q):
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n), rng.exponential(size=n) * 1e6, np.round(rng.normal(size=n), 1)):
        assert linear_quantile(values, q) == np.quantile(values, q)


@pytest.mark.parametrize("special", [[np.inf], [-np.inf], [np.nan], [np.inf, np.inf], [np.inf, -np.inf, 1.0]])
@pytest.mark.parametrize("q", [0.0, 0.3, 0.7, 1.0])
def test_linear_quantile_with_inf_and_nan_is_numpys(special, q):
    values = np.array([0.5, 2.0, 1.0, *special])
    with np.errstate(invalid="ignore"):  # as aggregate.summary: inf - inf is NaN, quietly
        expected, ours = np.quantile(values, q), linear_quantile(values, q)
    assert ours == expected or (np.isnan(expected) and np.isnan(ours))
