"""The benchmark's 95 % intervals against textbook values (chi-square and Wilson tables)."""

from __future__ import annotations

import math

import pytest

from bench.intervals import poisson_interval, rate_interval, wilson_interval


@pytest.mark.parametrize(
    ("k", "lower", "upper"),
    [
        (0, 0.0, -math.log(0.025)),  # no event: the "rule of three" (3.69)
        (1, 0.02532, 5.5716),
        (6, 2.20189, 13.05947),
        (263, 232.1722, 296.7820),  # large counts: no overflow
    ],
)
def test_poisson_interval_matches_the_exact_garwood_interval(k, lower, upper) -> None:
    lo, hi = poisson_interval(k)
    assert lo == pytest.approx(lower, rel=1e-4, abs=1e-9)
    assert hi == pytest.approx(upper, rel=1e-4)


def test_rate_interval_scales_by_the_exposure() -> None:
    lo, hi = rate_interval(6, 65.2 / 60)
    assert lo == pytest.approx(2.20189 * 60 / 65.2, rel=1e-4)
    assert hi == pytest.approx(13.05947 * 60 / 65.2, rel=1e-4)
    with pytest.raises(ValueError):
        rate_interval(1, 0.0)


def test_wilson_interval() -> None:
    assert wilson_interval(9, 12) == pytest.approx((0.46769, 0.91106), rel=1e-4)
    lo, hi = wilson_interval(12, 12)
    assert hi == 1.0 and lo == pytest.approx(0.75751, rel=1e-4)
    lo, hi = wilson_interval(0, 12)
    assert lo == 0.0 and hi == pytest.approx(0.24249, rel=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(13, 12)
