"""Rank statistics of binned samples: Mann-Whitney U, the Hodges-Lehmann shift, quantile bounds.

Samples are ``{value: count}`` histograms (each bin a run of tied values), so the cost depends on the
number of bins, not of observations, and partial histograms from any number of windows merge by addition.

>>> mann_whitney({1.0: 5}, {1.0: 5}).theta
0.5
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["MannWhitney", "hodges_lehmann", "mann_whitney", "quantile_bounds"]

_N = NormalDist()


@dataclass(frozen=True, slots=True)
class MannWhitney:
    """The Mann-Whitney U test of sample ``a`` against ``b`` from binned counts.

    ``u`` is U of ``a`` (pairs with a > b, ties counted 1/2), ``theta = u / (n_a n_b)`` the probability of
    superiority, ``var_u`` the tie-corrected null variance of U, ``p_value`` the two-sided asymptotic
    p-value with continuity correction (as ``scipy.stats.mannwhitneyu(method="asymptotic")``).
    """

    u: float
    n_a: float
    n_b: float
    var_u: float
    p_value: float

    @property
    def theta(self) -> float:
        return self.u / (self.n_a * self.n_b) if self.n_a and self.n_b else 0.5

    @property
    def var_theta(self) -> float:
        return self.var_u / (self.n_a * self.n_b) ** 2 if self.n_a and self.n_b else math.inf


def mann_whitney(a: Mapping[float, float], b: Mapping[float, float]) -> MannWhitney:
    """Mann-Whitney U of two binned samples ``{value: count}`` (each bin is a run of tied values).

    >>> mw = mann_whitney({1.0: 3, 2.0: 1}, {2.0: 2, 3.0: 2})
    >>> mw.u, round(mw.p_value, 4)
    (1.0, 0.0471)
    """
    n_a = float(sum(a.values()))
    n_b = float(sum(b.values()))
    if n_a <= 0 or n_b <= 0:
        return MannWhitney(0.0, n_a, n_b, 0.0, 1.0)
    u = 0.0
    below_b = 0.0
    ties = 0.0
    for value in sorted(set(a) | set(b)):
        ca, cb = a.get(value, 0.0), b.get(value, 0.0)
        u += ca * (below_b + 0.5 * cb)
        below_b += cb
        t = ca + cb
        ties += t * t * t - t
    total = n_a + n_b
    var_u = n_a * n_b / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0))) if total > 1 else 0.0
    mean = n_a * n_b / 2.0
    big = max(u, n_a * n_b - u)
    if var_u <= 0:
        p_value = 1.0
    else:
        z = (big - mean - 0.5) / math.sqrt(var_u)
        p_value = min(1.0, 2.0 * (1.0 - _N.cdf(z)))
    return MannWhitney(u, n_a, n_b, var_u, p_value)


def hodges_lehmann(
    a: Mapping[float, float], b: Mapping[float, float], z: float, var_u: float | None = None
) -> tuple[float, float, float]:
    """Hodges-Lehmann shift of ``a`` over ``b`` (median of all differences ``a_i - b_j``) and the
    interval that inverts the rank test at ``z`` (Moses), from binned counts.

    >>> shift, lo, hi = hodges_lehmann({float(v): 1 for v in range(10, 30)},
    ...                                {float(v): 1 for v in range(0, 20)}, z=1.96)
    >>> shift, lo <= 10 <= hi
    (10.0, True)
    """
    n_a = sum(a.values())
    n_b = sum(b.values())
    if n_a <= 0 or n_b <= 0:
        return math.nan, math.nan, math.nan
    pairs = n_a * n_b
    if var_u is None:
        total = n_a + n_b
        var_u = n_a * n_b * (total + 1) / 12.0
    # No spread (every value in one tie) or an infinite z: the interval is the whole range of differences.
    spread = z * math.sqrt(var_u) if var_u > 0 and math.isfinite(z) else (0.0 if var_u > 0 else math.inf)
    k = max(1.0, math.floor(pairs / 2.0 - spread)) if math.isfinite(spread) else 1.0
    # The k-th smallest pair difference by bisection on the difference d: counting the pairs with
    # a - b <= d takes one pass over a's bins and a binary search in b's, so binned samples of any size
    # cost O(bins log bins) per step instead of one entry per pair of bins.
    av = sorted(v for v, c in a.items() if c > 0)
    aw = [a[v] for v in av]
    bv = sorted(v for v, c in b.items() if c > 0)
    above = [0.0] * (len(bv) + 1)  # above[j]: weight of b's bins j.. (values >= bv[j])
    for j in range(len(bv) - 1, -1, -1):
        above[j] = above[j + 1] + b[bv[j]]
    integral = all(float(v).is_integer() for v in av) and all(float(v).is_integer() for v in bv)

    def count_le(d: float) -> float:
        return sum(w * above[bisect_left(bv, va - d - 1e-12)] for va, w in zip(av, aw, strict=True))

    def rank(r: float) -> float:
        lo, hi = av[0] - bv[-1], av[-1] - bv[0]
        if integral:
            low, high = int(lo), int(hi)
            while low < high:
                mid = (low + high) // 2
                if count_le(mid) >= r - 1e-9:
                    high = mid
                else:
                    low = mid + 1
            return float(low)
        for _ in range(60):
            half = (lo + hi) / 2
            if count_le(half) >= r - 1e-9:
                hi = half
            else:
                lo = half
        return round(hi, 9)

    # Shift: the median pair difference; bounds: the k-th smallest and the k-th largest.
    return rank((pairs + 1) / 2.0), rank(k), rank(pairs - k + 1)


def _weighted_rank(order: Sequence[tuple[float, float]], rank: float) -> float:
    seen = 0.0
    for value, weight in order:
        seen += weight
        if seen >= rank - 1e-9:
            return value
    return order[-1][0]


def quantile_bounds(counts: Mapping[float, float], q: float, z: float) -> tuple[float, float, float]:
    """The q-quantile of binned values with distribution-free (order statistic) bounds at ``z``."""
    n = sum(counts.values())
    spread = z * math.sqrt(n * q * (1.0 - q))
    order = sorted(counts.items())
    return (
        _weighted_rank(order, max(1.0, q * n)),
        _weighted_rank(order, max(1.0, q * n - spread)),
        _weighted_rank(order, min(n, q * n + spread + 1.0)),
    )
