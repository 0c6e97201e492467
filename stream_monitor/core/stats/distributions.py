"""Distances and tests between two histograms ``{bin: count}``, and shape statistics of one.

Comparisons (:func:`psi`, :func:`jensen_shannon`, :func:`wasserstein`) take two histograms.
:func:`drift_pvalue` turns the PSI of two samples into a p-value (``PSI * n*m/(n+m)`` is approximately
chi-square with ``bins - 1`` degrees of freedom under "same distribution"), so that a window of 200
requests is not judged like one of 200,000; :func:`benjamini_hochberg` controls the false discovery rate
over many such tests. :func:`linear_count`, :func:`top_share`, :func:`effective_count` and :func:`gini`
describe hashed item buckets (how many distinct items, how concentrated).

>>> psi({0: 50, 1: 50}, {0: 50, 1: 50})
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = [
    "Histogram",
    "benjamini_hochberg",
    "chi2_sf",
    "drift_pvalue",
    "effective_count",
    "gini",
    "jensen_shannon",
    "linear_count",
    "normalised_entropy",
    "psi",
    "top_share",
    "wasserstein",
]


_T = TypeVar("_T")


Histogram = Mapping[int, float] | Mapping[str, float]


def _probabilities(p: Histogram, q: Histogram, pseudo: float) -> tuple[list[float], list[float]]:
    keys = set(p) | set(q)
    np_, nq = sum(p.values()), sum(q.values())
    k = len(keys)
    pp = [(p.get(b, 0.0) + pseudo) / (np_ + pseudo * k) for b in keys]  # type: ignore[call-overload]
    qq = [(q.get(b, 0.0) + pseudo) / (nq + pseudo * k) for b in keys]  # type: ignore[call-overload]
    return pp, qq


def psi(current: Histogram, reference: Histogram, pseudo: float = 0.5) -> float:
    """Population stability index: ``sum (c - r) * ln(c / r)`` over bins, with a pseudo-count per bin so
    an empty bin on one side is finite. 0 for identical shapes; 0.1 is usually read as a moderate shift
    and 0.25 as a major one.

    >>> round(psi({0: 50, 1: 50}, {0: 50, 1: 50}), 6)
    0.0
    >>> round(psi({0: 90, 1: 10}, {0: 50, 1: 50}), 3)
    0.853
    """
    if not current or not reference:
        return 0.0
    c, r = _probabilities(current, reference, pseudo)
    return sum((a - b) * math.log(a / b) for a, b in zip(c, r, strict=True))


def jensen_shannon(current: Histogram, reference: Histogram) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1] (0: same distribution, 1: disjoint supports).

    >>> jensen_shannon({0: 1}, {1: 1}), jensen_shannon({0: 3, 1: 1}, {0: 6, 1: 2})
    (1.0, 0.0)
    """
    if not current or not reference:
        return 0.0
    c, r = _probabilities(current, reference, 0.0)
    total = 0.0
    for a, b in zip(c, r, strict=True):
        m = (a + b) / 2
        if a > 0:
            total += a * math.log2(a / m) / 2
        if b > 0:
            total += b * math.log2(b / m) / 2
    return min(1.0, max(0.0, total))


def wasserstein(
    current: Mapping[int, float], reference: Mapping[int, float], value_of: Callable[[int], float]
) -> float:
    """Earth mover's distance (W1) between two binned distributions, in the values' unit, with each bin
    at its representative value.

    >>> from stream_monitor.core.profile import LinearBins
    >>> bins = LinearBins(0, 10, 10)
    >>> wasserstein({2: 1}, {5: 1}, bins.value_of)
    3.0
    """
    if not current or not reference:
        return 0.0
    nc, nr = sum(current.values()), sum(reference.values())
    if nc <= 0 or nr <= 0:
        return 0.0
    points = sorted(set(current) | set(reference), key=value_of)
    distance = cdf_c = cdf_r = 0.0
    previous = value_of(points[0])
    for b in points:
        x = value_of(b)
        distance += abs(cdf_c - cdf_r) * (x - previous)
        cdf_c += current.get(b, 0.0) / nc
        cdf_r += reference.get(b, 0.0) / nr
        previous = x
    return distance


def chi2_sf(x: float, dof: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty normal approximation; good to a few
    percent of the p-value in the tails this module uses it for).

    >>> round(chi2_sf(3.84, 1), 2), round(chi2_sf(18.31, 10), 3)
    (0.05, 0.05)
    """
    if dof <= 0 or x <= 0:
        return 1.0
    k = float(dof)
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def drift_pvalue(current: Histogram, reference: Histogram) -> float:
    """p-value of "both samples come from one distribution", from the PSI of the two histograms.

    PSI is the symmetrised Kullback-Leibler divergence; scaled by the effective sample size
    ``n*m/(n+m)`` it is asymptotically chi-square with (non-empty bins - 1) degrees of freedom.

    >>> same = drift_pvalue({0: 500, 1: 500}, {0: 5000, 1: 5000})
    >>> moved = drift_pvalue({0: 600, 1: 400}, {0: 5000, 1: 5000})
    >>> same > 0.5, moved < 1e-6
    (True, True)
    """
    n, m = sum(current.values()), sum(reference.values())
    if n <= 0 or m <= 0:
        return 1.0
    used = [b for b, c in current.items() if c > 0] + [b for b, c in reference.items() if c > 0]
    bins = len(set(used))
    if bins < 2:
        return 1.0
    # Pseudo-counts bias PSI upwards only for tiny bins; 0.5 keeps empty bins finite.
    return chi2_sf(psi(current, reference) * n * m / (n + m), bins - 1)


def benjamini_hochberg(pvalues: Mapping[_T, float], q: float) -> set[_T]:
    """The tests rejected at false discovery rate ``q`` (Benjamini-Hochberg step-up).

    >>> sorted(benjamini_hochberg({"a": 0.001, "b": 0.02, "c": 0.04, "d": 0.5}, q=0.05))
    ['a', 'b']
    """
    ranked = sorted(pvalues.items(), key=lambda kv: kv[1])
    m = len(ranked)
    cut = 0
    for i, (_, p) in enumerate(ranked, start=1):
        if p <= q * i / m:
            cut = i
    return {name for name, _ in ranked[:cut]}


def linear_count(buckets: Mapping[int, float], m: int) -> float:
    """Distinct items estimated from which of ``m`` hash buckets are non-empty (linear counting;
    good up to a few times ``m``; ``inf`` once every bucket is hit).

    >>> round(linear_count({i: 1 for i in range(100)}, 1024))
    105
    """
    empty = m - sum(1 for c in buckets.values() if c > 0)
    if empty <= 0:
        return math.inf
    return -m * math.log(empty / m)


def top_share(buckets: Mapping[int, float], k: int) -> float:
    """Share of all counts in the ``k`` fullest buckets (popularity concentration).

    >>> top_share({0: 50, 1: 30, 2: 20}, 1)
    0.5
    """
    total = sum(buckets.values())
    if total <= 0:
        return 0.0
    return sum(sorted(buckets.values(), reverse=True)[:k]) / total


def effective_count(buckets: Mapping[int, float]) -> float:
    """The number of equally served items that would be as concentrated as ``buckets`` (inverse Simpson
    index, with the unbiased estimate of the sum of squared shares, so it does not depend on the volume).

    >>> round(effective_count({i: 10 for i in range(50)})), round(effective_count({0: 990, 1: 10}), 2)
    (55, 1.02)
    """
    total = sum(buckets.values())
    if total < 2:
        return 0.0
    pairs = sum(c * (c - 1) for c in buckets.values())
    if pairs <= 0:
        return float(len(buckets))
    return total * (total - 1) / pairs


def gini(buckets: Mapping[int, float], m: int) -> float:
    """Gini coefficient of the counts over all ``m`` buckets (empty ones included): 0 when every bucket
    is served equally, towards 1 when a few take everything.

    >>> gini({i: 1 for i in range(4)}, 4), round(gini({0: 1}, 4), 2)
    (0.0, 0.75)
    """
    values = sorted(buckets.values())
    total = sum(values)
    if total <= 0 or m <= 1:
        return 0.0
    zeros = m - len(values)
    # Sorted ascending with the zeros first: G = sum_i (2i - m - 1) x_i / (m * total), i from 1.
    weighted = sum((2 * (zeros + i) - m - 1) * x for i, x in enumerate(values, start=1))
    return weighted / (m * total)


def normalised_entropy(histogram: Histogram, n_bins: int) -> float:
    """Shannon entropy of a histogram divided by its maximum, ``ln(n_bins)``: 0 when everything falls in
    one bin (collapsed scores), 1 when it is spread evenly over all of them.

    >>> normalised_entropy({0: 5}, 4), normalised_entropy({0: 1, 1: 1, 2: 1, 3: 1}, 4)
    (0.0, 1.0)
    """
    counts = [c for c in histogram.values() if c > 0]
    total = sum(counts)
    if total <= 0 or n_bins < 2:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in counts)
    return max(0.0, h / math.log(n_bins))
