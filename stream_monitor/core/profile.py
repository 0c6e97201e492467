"""Distribution profiles: mergeable histograms of feature values, scores and served items, and the
distances and tests that compare a window's profile with a reference.

Everything a worker adds per event is a count in a bin, so profiles merge by addition like every other
window sum (Redis ``HINCRBY``; exact under any split of the stream into batches and workers):

- numeric values -> :class:`LinearBins` (a declared range, with under/overflow bins) or
  :class:`SignedLogBins` (any real number, bounded relative bin width);
- categorical values -> the value itself, capped per feature like segment values (:class:`ValueCap`);
- served items -> :class:`ItemBuckets`, a stable hash of the item id into ``m`` buckets: enough to
  estimate distinct items (linear counting), the share of the most served items and a Gini coefficient
  without keeping item ids.

Comparisons (:func:`psi`, :func:`jensen_shannon`, :func:`wasserstein`) take two histograms as
``{bin: count}``. :func:`drift_pvalue` turns the PSI of two samples into a p-value (``PSI * n*m/(n+m)``
is approximately chi-square with ``bins - 1`` degrees of freedom under "same distribution"), so that a
window of 200 requests is not judged like one of 200,000.

Pure: standard library only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import TypeVar

from stream_monitor.core.fields import SEP_METRIC, SEP_SERIES

__all__ = [
    "ItemBuckets",
    "LinearBins",
    "SignedLogBins",
    "ValueCap",
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


class LinearBins:
    """``n`` equal bins over ``[lo, hi)``; bin ``-1`` holds values below, bin ``n`` values at or above.

    >>> bins = LinearBins(0.0, 1.0, 20)
    >>> bins.bin(0.0), bins.bin(0.51), bins.bin(-3.0), bins.bin(1.0)
    (0, 10, -1, 20)
    >>> bins.value_of(10)
    0.525
    """

    def __init__(self, lo: float, hi: float, n: int) -> None:
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"bins need finite lo < hi, got lo={lo!r} hi={hi!r}")
        if not 1 <= n <= 1000:
            raise ValueError(f"bins: n must be in [1, 1000], got {n!r}")
        self.lo, self.hi, self.n = float(lo), float(hi), int(n)
        self._scale = n / (hi - lo)

    def bin(self, value: float) -> int:
        if value < self.lo:
            return -1
        if value >= self.hi:
            return self.n
        # min(): rounding can put a value just under hi at n.
        return min(int((value - self.lo) * self._scale), self.n - 1)

    def value_of(self, bin_: int) -> float:
        """A representative value (the centre; the range's ends for the outer bins)."""
        if bin_ < 0:
            return self.lo
        if bin_ >= self.n:
            return self.hi
        return self.lo + (bin_ + 0.5) / self._scale


class SignedLogBins:
    """Bins of bounded relative width for any real number: ``0`` for ``|x| <= min_abs``, ``+k`` / ``-k``
    for positive / negative values, bin width ``relative_width`` of the value.

    >>> bins = SignedLogBins(relative_width=0.1)
    >>> bins.bin(0.0), bins.bin(100.0) == bins.bin(104.0), bins.bin(-100.0) == -bins.bin(100.0)
    (0, True, True)
    >>> round(bins.value_of(bins.bin(100.0)) / 100, 1)
    1.0
    """

    def __init__(self, relative_width: float = 0.1, min_abs: float = 1e-3, max_abs: float = 1e12) -> None:
        if not 0.0 < relative_width < 1.0:
            raise ValueError(f"relative_width must be in (0, 1), got {relative_width!r}")
        self.gamma = (1.0 + relative_width) / (1.0 - relative_width)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self.min_abs = min_abs
        self._log_min = math.log(min_abs)
        self._top = math.ceil((math.log(max_abs) - self._log_min) * self._inv_log_gamma)

    def bin(self, value: float) -> int:
        magnitude = abs(value)
        if magnitude <= self.min_abs:
            return 0
        k = min(self._top, math.ceil((math.log(magnitude) - self._log_min) * self._inv_log_gamma))
        return k if value > 0 else -k

    def value_of(self, bin_: int) -> float:
        if bin_ == 0:
            return 0.0
        k = abs(bin_)
        centre = self.min_abs * 2.0 * self.gamma**k / (self.gamma + 1.0)
        return centre if bin_ > 0 else -centre


class ValueCap:
    """Keeps at most ``max_values`` distinct categorical values per feature; later newcomers are ``other``.

    >>> cap = ValueCap(max_values=2)
    >>> [cap.value("country", v) for v in ("US", "FR", "JP", "US")]
    ['US', 'FR', 'other', 'US']
    """

    OTHER = "other"

    def __init__(self, max_values: int = 64) -> None:
        self.max_values = max_values
        # Per feature: raw value -> the value written (cleaned), and how many distinct values are kept.
        self._seen: dict[str, dict[str, str]] = {}
        self._kept: dict[str, set[str]] = {}

    def value(self, feature: str, value: str) -> str:
        seen = self._seen.get(feature)
        if seen is None:
            seen = self._seen[feature] = {}
            self._kept[feature] = set()
        known = seen.get(value)
        if known is not None:
            return known
        kept = self._kept[feature]
        # Separators of the window-sum field names must not appear in a value.
        clean = value.replace(SEP_SERIES, "_").replace(SEP_METRIC, "_")[:64]
        if clean not in kept:
            if len(kept) >= self.max_values:
                return self.OTHER
            kept.add(clean)
        seen[value] = clean
        return clean


class ItemBuckets:
    """A stable hash of item ids (BLAKE2b, so every worker and window agrees): one item in ``sample`` is
    kept, in one of ``m`` buckets; the others map to ``-1``.

    Sampling the catalogue, not the traffic, keeps every impression of a kept item: coverage (distinct
    items, scaled back by ``sample``) and concentration are estimated on a fixed subset of the catalogue,
    in at most ``m`` counters per series.

    >>> items = ItemBuckets(256, sample=1)
    >>> items.bucket("s42") == ItemBuckets(256, sample=1).bucket("s42"), 0 <= items.bucket("s42") < 256
    (True, True)
    >>> sampled = ItemBuckets(256, sample=16)
    >>> kept = sum(1 for i in range(16_000) if sampled.bucket(f"s{i}") >= 0)
    >>> 800 < kept < 1200
    True
    """

    def __init__(self, m: int = 256, sample: int = 16, cache_size: int = 200_000) -> None:
        if not 16 <= m <= 65_536:
            raise ValueError(f"item buckets: m must be in [16, 65536], got {m!r}")
        if not 1 <= sample <= 1_000_000:
            raise ValueError(f"item sample must be in [1, 1000000], got {sample!r}")
        self.m = m
        self.sample = sample
        # id -> bucket, read directly by the profiler's hot loop.
        self.cache: dict[str, int] = {}
        self._cache_size = cache_size

    def bucket(self, item_id: str) -> int:
        found = self.cache.get(item_id)
        if found is None:
            # Not CRC-32: it is linear, so similar ids (s1, s2, ...) spread more evenly than at random
            # and linear counting over-counts them. Each id is hashed once, then cached.
            h = int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")
            found = (h // self.sample) % self.m if h % self.sample == 0 else -1
            if len(self.cache) < self._cache_size:
                self.cache[item_id] = found
        return found


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
