"""Robust location and scale of a short history: what a baseline is measured against.

>>> robust_location_scale([10.0, 10.0, 11.0, 10.0, 500.0])  # the centre ignores the outlier, the spread not
(10.0, 123.07406)
>>> robust_location_scale([10.0, 10.0, 11.0, 10.0, 10.0])  # a quantised series: its resolution
(10.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MAD_TO_SIGMA", "MEAN_AD_TO_SIGMA", "median_sorted", "robust_location_scale"]


# 1.4826 x MAD estimates the standard deviation of normal data (R's mad() applies the same constant).
MAD_TO_SIGMA = 1.4826


# When more than half the values are equal the MAD is 0; 1.2533 x the mean absolute deviation is then the
# consistent estimate (the "modified z-score" fallback).
MEAN_AD_TO_SIGMA = 1.2533


def robust_location_scale(values: Sequence[float], min_scale: float = 0.0) -> tuple[float, float]:
    """Median and a robust standard deviation of ``values`` (at least ``min_scale``).

    The spread is the largest of three estimates, each consistent for normal data or a floor:

    * 1.4826 x the MAD: robust to outliers, but it underestimates discrete or skewed noise (a p99 from a
      few hundred requests, an error count of 0-3 per window) and is 0 when most values are equal;
    * 1.2533 x the mean absolute deviation from the median: follows those heavier tails (one outlier
      raises it by outlier / n, the price of that);
    * the smallest non-zero deviation, i.e. the series' resolution (one error more, one latency bucket
      up): a single step of a quantised series is never an anomaly on its own.

    >>> robust_location_scale([1.0, 2.0, 3.0, 4.0, 5.0])
    (3.0, 1.50396)
    >>> robust_location_scale([0.0, 0.0, 0.0, 0.0, 1.0])  # MAD 0; one step up is the resolution
    (0.0, 1.0)
    """
    ordered = sorted(values)
    center = median_sorted(ordered)
    deviations = sorted(abs(v - center) for v in ordered)
    mad = MAD_TO_SIGMA * median_sorted(deviations)
    mean_ad = MEAN_AD_TO_SIGMA * math.fsum(deviations) / len(deviations)
    resolution = next((d for d in deviations if d > 0.0), 0.0)
    return center, max(mad, mean_ad, resolution, min_scale)


def median_sorted(ordered: Sequence[float]) -> float:
    """The median of values already in ascending order.

    >>> median_sorted([1.0, 2.0, 4.0, 9.0])
    3.0
    """
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
