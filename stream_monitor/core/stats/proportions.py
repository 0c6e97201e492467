"""Bounds on a proportion from counts: honest on small counts, where a plain ``k / n`` is not.

Wilson score bounds are what every rate signal tests against (an error rate, a CTR, an orphan share): they
stay inside [0, 1] and keep their coverage at a few requests a window. Clopper-Pearson is the exact
(conservative) interval, used where a bench reports a false-alarm rate from a few hundred runs.

>>> wilson_lower_bound(0, 10, 2.326), round(wilson_upper_bound(0, 10, 2.326), 3)
(0.0, 0.351)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["clopper_pearson", "poisson_cdf", "wilson_lower_bound", "wilson_upper_bound"]

# Below this count poisson_cdf sums the exact terms; above it the Wilson-Hilferty approximation of the
# gamma tail is good to a fraction of a percent of the probability.
_EXACT_POISSON_MAX = 200


def wilson_lower_bound(successes: float, trials: float, z: float) -> float:
    """One-sided Wilson score lower bound of a proportion (z = 2.326 for 99 % confidence).

    >>> round(wilson_lower_bound(4, 198, 2.326), 4), round(wilson_lower_bound(120, 800, 2.326), 3)
    (0.0067, 0.123)
    """
    if trials <= 0:
        return 0.0
    p = successes / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - margin) / (1 + z2 / trials))


def wilson_upper_bound(successes: float, trials: float, z: float) -> float:
    """One-sided Wilson score upper bound of a proportion.

    >>> round(wilson_upper_bound(20, 1000, 3.09), 4)
    0.0389
    """
    if trials <= 0:
        return 1.0
    return 1.0 - wilson_lower_bound(trials - successes, trials, z)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a rate ``k / n`` (by bisection on the binomial tail; no scipy).

    >>> lo, hi = clopper_pearson(0, 200)
    >>> lo, round(hi, 4)
    (0.0, 0.0183)
    """
    if n <= 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2

    def tail_ge(p: float) -> float:  # P(X >= k)
        return 1.0 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k))

    def tail_le(p: float) -> float:  # P(X <= k)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    def solve(f: Any, target: float, increasing: bool) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (f(mid) < target) == increasing:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(tail_ge, a, True)
    upper = 1.0 if k == n else solve(tail_le, a, False)
    return lower, upper


def poisson_cdf(count: float, mean: float) -> float:
    """P(X <= count) for X ~ Poisson(mean): how unlikely a window this small is at that rate.

    Exact (summed in log space) up to 200; the Wilson-Hilferty approximation of the equivalent gamma
    tail above. A count is floored (events are whole).

    >>> round(poisson_cdf(0, 10), 7), round(poisson_cdf(9, 20), 4), round(poisson_cdf(10, 10), 4)
    (4.54e-05, 0.005, 0.583)
    >>> round(poisson_cdf(400, 500) * 1e6, 1), poisson_cdf(5, 0)
    (2.1, 1.0)
    """
    k = math.floor(count)
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    if k <= _EXACT_POISSON_MAX:
        log_term = -mean  # log P(X = 0)
        total = math.exp(log_term)
        for i in range(1, k + 1):
            log_term += math.log(mean / i)
            total += math.exp(log_term)
        return min(1.0, total)
    # P(X <= k) = P(Gamma(k + 1) > mean); Wilson-Hilferty: (G / a)^(1/3) is nearly normal.
    a = k + 1.0
    z = ((mean / a) ** (1 / 3) - (1 - 1 / (9 * a))) / math.sqrt(1 / (9 * a))
    return 0.5 * math.erfc(z / math.sqrt(2))
