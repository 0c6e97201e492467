"""Distribution profiles: mergeable histograms of feature values, scores and served items.

Everything a worker adds per event is a count in a bin, so profiles merge by addition like every other
window sum (Redis ``HINCRBY``; exact under any split of the stream into batches and workers):

- numeric values -> :class:`LinearBins` (a declared range, with under/overflow bins) or
  :class:`SignedLogBins` (any real number, bounded relative bin width);
- categorical values -> the value itself, capped per feature like segment values (:class:`ValueCap`);
- served items -> :class:`ItemBuckets`, a stable hash of the item id into ``m`` buckets: enough to
  estimate distinct items (linear counting), the share of the most served items and a Gini coefficient
  without keeping item ids.

The distances and tests that compare two such histograms (PSI, Jensen-Shannon, Wasserstein, the drift
p-value) are in :mod:`stream_monitor.core.stats.distributions`.

Pure: standard library only.
"""

from __future__ import annotations

import hashlib
import math

from stream_monitor.core.fields import SEP_METRIC, SEP_SERIES

__all__ = [
    "ItemBuckets",
    "LinearBins",
    "SignedLogBins",
    "ValueCap",
]


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
