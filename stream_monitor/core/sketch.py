"""Mergeable quantile sketch: log-spaced histogram buckets with bounded relative error.

A value ``x > 0`` lands in bucket ``ceil(log(x) / log(gamma))``; any quantile read back is within
``relative_accuracy`` of the true one (the DDSketch construction). Buckets are plain integer counts, so
two sketches merge by adding counts: that is what lets workers flush partial windows to Redis with
``HINCRBY`` and the closer read the exact merged sketch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["LogBuckets"]

ZERO_BUCKET = -(2**31)


class LogBuckets:
    """Bucket indexing and quantile estimation for one relative accuracy.

    >>> lb = LogBuckets(relative_accuracy=0.02)
    >>> counts: dict[int, int] = {}
    >>> for ms in range(1, 101):
    ...     b = lb.bucket(float(ms))
    ...     counts[b] = counts.get(b, 0) + 1
    >>> p99 = lb.quantile(counts, 0.99)  # the true p99 of 1..100 is 99
    >>> abs(p99 - 99) / 99 <= lb.relative_accuracy
    True
    """

    def __init__(self, relative_accuracy: float = 0.02, min_value: float = 1e-3) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.relative_accuracy = relative_accuracy
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self.min_value = min_value

    def bucket(self, value: float) -> int:
        """Bucket index for ``value`` (values at or below ``min_value`` share the zero bucket)."""
        if value <= self.min_value:
            return ZERO_BUCKET
        return math.ceil(math.log(value) * self._inv_log_gamma)

    def value_of(self, bucket: int) -> float:
        """Representative value of a bucket (relative error at most ``relative_accuracy``)."""
        if bucket == ZERO_BUCKET:
            return 0.0
        return 2.0 * self.gamma**bucket / (self.gamma + 1.0)

    def quantile(self, counts: Mapping[int, int | float], q: float) -> float:
        """The ``q``-quantile of the values counted in ``counts`` (NaN when empty)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        total = sum(counts.values())
        if total <= 0:
            return math.nan
        rank = q * (total - 1)
        seen = 0.0
        for bucket in sorted(counts):
            seen += counts[bucket]
            if seen > rank:
                return self.value_of(bucket)
        return self.value_of(max(counts))

    @staticmethod
    def merge(parts: Iterable[Mapping[int, int | float]]) -> dict[int, float]:
        """Sum bucket counts of several sketches (associative and commutative)."""
        merged: dict[int, float] = {}
        for part in parts:
            for bucket, count in part.items():
                merged[bucket] = merged.get(bucket, 0) + count
        return merged
