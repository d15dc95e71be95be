"""95 % intervals for the benchmark's small counts.

The clap benchmark has 12 scenes a cell and a handful of false triggers in an hour of
audio: one scene more or less moves a recall by 0.08 and a trigger rate by 1 per hour.
Printing the interval with the figure keeps a reader (and us) from reading noise as
progress. Pure math, no scipy: the daemon's and the benchmark's dependencies stay small.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def _poisson_cdf(k: int, mu: float) -> float:
    """P(X <= k) for X ~ Poisson(mu), summed in log space so large k do not overflow."""
    if mu <= 0.0:
        return 1.0
    log_terms = [i * math.log(mu) - mu - math.lgamma(i + 1) for i in range(k + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def _solve_decreasing(f, target: float, hi: float) -> float:
    """x in [0, hi] with f(x) = target for f falling from 1 towards 0 (bisection)."""
    lo = 0.0
    while f(hi) > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def poisson_interval(k: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood) interval for the mean of a Poisson count `k`."""
    if k < 0:
        raise ValueError(f"count must be >= 0, got {k}")
    hi_start = k + 10.0 + 10.0 * math.sqrt(k + 1)
    upper = _solve_decreasing(lambda mu: _poisson_cdf(k, mu), alpha / 2, hi_start)
    if k == 0:
        return 0.0, upper
    lower = _solve_decreasing(lambda mu: _poisson_cdf(k - 1, mu), 1.0 - alpha / 2, hi_start)
    return lower, upper


def rate_interval(k: int, exposure: float, alpha: float = 0.05) -> tuple[float, float]:
    """Interval for a rate: `k` events in `exposure` units (hours of audio)."""
    if exposure <= 0:
        raise ValueError(f"exposure must be positive, got {exposure}")
    lo, hi = poisson_interval(k, alpha)
    return lo / exposure, hi / exposure


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (sensible at 0 or n of a dozen, unlike
    the normal approximation)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n the bound is exactly 0 or 1; the formula leaves rounding dust.
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper
