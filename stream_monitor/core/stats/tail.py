"""How unusual a statistic is against its own recent history: an empirical body and an exponential tail.

A detector's raw statistic (a z-score, the median of the last few z-scores) has no fixed distribution on
real series: residuals are autocorrelated, heavy-tailed, quantised, and some series spike as a matter of
routine. :class:`TailCalibrator` turns the statistic into a tail probability measured on the series' own
recent values of it, the idea behind the "anomaly likelihood" post-processing of streaming detectors
(Ahmad et al., "Unsupervised real-time anomaly detection for streaming data", Neurocomputing 2017) with
the tail of peaks-over-threshold detectors (Siffer et al., "Anomaly detection in streams with extreme
value theory", KDD 2017):

* below the top ``tail`` share of the history, the probability is the empirical survival function,
  interpolated linearly between order statistics (so it is continuous);
* above it, the exceedances over that threshold are taken as exponential (a generalised Pareto tail of
  shape 0), which extrapolates smoothly past the largest value seen. Its scale is the exceedances' mean
  excess, or with ``confidence`` above 0.5 an upper confidence bound on it (``2 k mean / scale`` is
  chi-squared with ``2 k`` degrees of freedom for ``k`` exponential exceedances), so that a tail fitted
  on few values can be judged as wide as it may be rather than as narrow as it happened to look. The
  default, 0.5, is the median-unbiased scale: the plain mean excess of ten exceedances understates the
  scale more often than not.

An exponential tail is conservative for light-tailed statistics (a normal z-score's true tail falls faster,
so the probability is overstated, never understated) and follows heavy ones as far as the history shows.
What recurs is learned: a spike type that makes up 2 % of the history has a tail probability of about
0.02, whatever its size.

>>> cal = TailCalibrator(size=500, min_history=50)
>>> for i in range(500):
...     cal.add((i * 7919 % 500) / 100.0)  # a uniform spread of values on [0, 5)
>>> round(cal.survival(2.5), 3), round(cal.survival(4.9), 4)
(0.499, 0.0199)
>>> cal.survival(6.0) < 1e-4 < cal.survival(5.1)
True
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Iterable

__all__ = ["TailCalibrator"]


class TailCalibrator:
    """Tail probability ``P(S >= s)`` of a statistic against its last ``size`` values.

    ``tail`` is the share of the history fitted as an exponential tail (at least ``min_exceedances``
    values, at most half of them); ``min_excess`` floors the tail's scale, in the statistic's own unit, so
    that a history of identical values (a constant series) does not make the smallest rise infinitely
    unlikely. :meth:`survival` is None until ``min_history`` values are held.

    >>> cal = TailCalibrator(min_history=3)
    >>> cal.survival(1.0) is None
    True
    >>> cal.extend([0.0, 1.0, 2.0])
    >>> cal.survival(-1.0), cal.survival(1.0)
    (1.0, 0.5)
    """

    def __init__(
        self,
        size: int = 2000,
        tail: float = 0.02,
        min_exceedances: int = 10,
        min_history: int = 50,
        min_excess: float = 0.1,
        confidence: float = 0.5,
    ) -> None:
        if size < 3 or not 3 <= min_history <= size:
            raise ValueError(f"need size >= 3 and 3 <= min_history <= size, got {size}, {min_history}")
        if not 0.0 < tail < 0.5 or min_exceedances < 1 or not min_excess > 0:
            raise ValueError("need 0 < tail < 0.5, min_exceedances >= 1 and min_excess > 0")
        if not 0.5 <= confidence < 1.0:
            raise ValueError(f"need 0.5 <= confidence < 1, got {confidence!r}")
        self.size = int(size)
        self.tail = float(tail)
        self.min_exceedances = int(min_exceedances)
        self.min_history = int(min_history)
        self.min_excess = float(min_excess)
        self.confidence = float(confidence)
        self._z = _normal_quantile(1.0 - self.confidence)
        self._order: deque[float] = deque(maxlen=self.size)  # time order, to know what to forget
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._sorted)

    @property
    def values(self) -> list[float]:
        """The held history, oldest first (what a checkpoint stores)."""
        return list(self._order)

    def add(self, value: float, cap: float | None = None) -> None:
        """Hold ``value``; with ``cap`` (a probability), no more than the value of survival ``cap``: an
        extreme enters as merely unusual, so one outlier does not stretch the tail it is judged against,
        while an outlier that keeps recurring still raises the tail a little each time until it is
        expected."""
        if cap is not None:
            value = min(value, self.inverse_survival(cap))
        if len(self._order) == self.size:
            oldest = self._order[0]
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.add(value)

    def inverse_survival(self, p: float) -> float:
        """The value whose survival is ``p`` in the fitted tail (``inf`` while too little is held, or when
        ``p`` is not in the tail).

        >>> cal = TailCalibrator(min_history=3)
        >>> cal.extend([0.0, 1.0, 2.0, 3.0])
        >>> x = cal.inverse_survival(0.01)
        >>> round(cal.survival(x), 6)
        0.01
        """
        ordered = self._sorted
        n = len(ordered)
        if n < self.min_history:
            return math.inf
        k = min(max(self.min_exceedances, math.ceil(self.tail * n)), n // 2)
        threshold = ordered[n - k - 1]
        at_threshold = (k + 1) / (n + 1)
        if not 0.0 < p < at_threshold:
            return math.inf
        return threshold + self._tail_scale(k, threshold) * math.log(at_threshold / p)

    def survival(self, value: float) -> float | None:
        """``P(S >= value)`` in ``(0, 1]`` from the held history (None while it is too short)."""
        ordered = self._sorted
        n = len(ordered)
        if n < self.min_history:
            return None
        k = min(max(self.min_exceedances, math.ceil(self.tail * n)), n // 2)
        # The i-th smallest value (0-based) has survival (n - i) / (n + 1); the threshold is the largest
        # value below the k exceedances.
        threshold = ordered[n - k - 1]
        if value > threshold:
            at_threshold = (k + 1) / (n + 1)
            return at_threshold * math.exp(-(value - threshold) / self._tail_scale(k, threshold))
        if value <= ordered[0]:
            return 1.0 if value < ordered[0] else n / (n + 1)
        i = bisect.bisect_right(ordered, value) - 1  # ordered[i] <= value < ordered[i + 1]
        if i + 1 == n:  # ties with the largest values held
            return 1 / (n + 1)
        low, high = ordered[i], ordered[i + 1]
        share = (value - low) / (high - low) if high > low else 0.0
        return (n - i - share) / (n + 1)

    def _tail_scale(self, k: int, threshold: float) -> float:
        """The upper ``confidence`` bound on the mean excess of the ``k`` largest values over
        ``threshold`` (Wilson-Hilferty for the chi-squared quantile), at least ``min_excess``."""
        excess = math.fsum(self._sorted[len(self._sorted) - k :]) / k - threshold
        dof = 2 * k
        h = 2.0 / (9.0 * dof)
        chi2_low = dof * max(1.0 - h + self._z * math.sqrt(h), 0.05) ** 3
        return max(excess * dof / chi2_low, self.min_excess)


def _normal_quantile(p: float) -> float:
    """The standard normal quantile of ``p``.

    >>> round(_normal_quantile(0.05), 4), round(_normal_quantile(0.5), 4)
    (-1.6449, 0.0)
    """
    return statistics.NormalDist().inv_cdf(p)
