"""A closed window as per-series statistics, and what evaluating it yields: the types every signal shares.

A closed window arrives as the flat sums the workers flushed (``"<series>#<metric>" -> number``, see
:mod:`stream_monitor.core.fields`). :func:`parse_window` turns them into one :class:`SeriesStats` per
series, :func:`rollup` merges series to the topology's ``group_by`` levels, and each signal family
(rates and quantiles, profiles, SLO burn rates, labels) reports :class:`SignalValue` s and
:class:`Breach` es. This module depends on no signal family, so every family can depend on it.

>>> stats, _ = parse_window({"m|eu#n": 2, "m|us#n": 3}, n_dims=2)
>>> {k: v.n for k, v in rollup(stats, ("model", "region"), keep=("model",)).items()}
{('m', '*'): 5}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from stream_monitor.core.fields import ALL, ENGAGEMENT_SERIES, split_field, split_series

__all__ = [
    "MAX_BASELINES",
    "Breach",
    "SeriesStats",
    "SignalValue",
    "matches_slice",
    "merged",
    "parse_window",
    "rollup",
    "touch_history",
]


_HIST_PREFIXES = ("fv.", "fc.", "sc.", "it.")


@dataclass(slots=True)
class SeriesStats:
    """Sums for one series in one window."""

    n: float = 0
    counters: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[int, float]] = field(default_factory=dict)
    ages: dict[str, dict[int, float]] = field(default_factory=dict)
    # Profile histograms (core/profiler.py): "fv.<feature>", "fc.<feature>", "sc", "it" -> {bin: count}.
    hists: dict[str, dict[str, float]] = field(default_factory=dict)

    def merge(self, other: SeriesStats) -> None:
        self.n += other.n
        for name, value in other.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        for name, theirs in other.hists.items():
            mine_hist = self.hists.setdefault(name, {})
            for b, count in theirs.items():
                mine_hist[b] = mine_hist.get(b, 0) + count
        for mine_all, theirs_all in ((self.latency, other.latency), (self.ages, other.ages)):
            for name, buckets in theirs_all.items():
                mine = mine_all.setdefault(name, {})
                for bucket, count in buckets.items():
                    mine[bucket] = mine.get(bucket, 0) + count


@dataclass(frozen=True, slots=True)
class SignalValue:
    """One computed signal value (exported as a metric).

    ``trials`` is set on a share of requests (an error rate, a source's share of candidates): the number
    of requests it was measured on, from which the anomaly layer knows how far the share moves by chance
    alone. It is not part of the value's identity (the window log does not keep it).
    """

    signal: str
    metric: str
    key: tuple[str, ...]
    value: float
    trials: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Breach:
    """A signal value outside its bounds for one key."""

    signal: str
    metric: str
    key: tuple[str, ...]
    observed: float
    expected: float | None
    threshold: float | None
    unit: str
    severity: str
    message: str

    @property
    def identity(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.signal, self.metric, self.key)


def parse_window(
    fields: Mapping[str, float], n_dims: int
) -> tuple[dict[tuple[str, ...], SeriesStats], dict[str, float]]:
    """Per-series statistics and engagement counts from a window's flat sums.

    >>> stats, eng = parse_window({"m|v|control|home|eu#n": 3, "*#eng.click": 2}, n_dims=5)
    >>> stats[("m", "v", "control", "home", "eu")].n, eng
    (3, {'click': 2})
    """
    series: dict[tuple[str, ...], SeriesStats] = {}
    engagement: dict[str, float] = {}
    for name, value in fields.items():
        series_name, metric = split_field(name)
        if series_name == ENGAGEMENT_SERIES:
            if metric.startswith("eng."):
                engagement[metric[4:]] = engagement.get(metric[4:], 0) + value
            continue
        key = split_series(series_name)
        if len(key) != n_dims:
            continue  # written under another topology's dimensions; not comparable
        stats = series.get(key)
        if stats is None:
            stats = series[key] = SeriesStats()
        if metric == "n":
            stats.n += value
        elif metric.startswith(("lat.", "age.")):
            name, _, bucket = metric[4:].rpartition(".")
            histograms = stats.latency if metric[0] == "l" else stats.ages
            buckets = histograms.setdefault(name, {})
            buckets[int(bucket)] = buckets.get(int(bucket), 0) + value
        elif metric.startswith(_HIST_PREFIXES):
            if metric[0] != "f":  # "sc.<bin>", "it.<bucket>"
                hist_name, bin_ = metric[:2], metric[3:]
            else:  # "fv.<feature>.<bin>", "fc.<feature>.<value>" (feature names have no ".")
                feature, _, bin_ = metric[3:].partition(".")
                hist_name = metric[:3] + feature
            hist = stats.hists.setdefault(hist_name, {})
            hist[bin_] = hist.get(bin_, 0) + value
        else:
            stats.counters[metric] = stats.counters.get(metric, 0) + value
    return series, engagement


def rollup(
    series: Mapping[tuple[str, ...], SeriesStats],
    key_dims: tuple[str, ...],
    keep: Iterable[str],
) -> dict[tuple[str, ...], SeriesStats]:
    """Merge series over every dimension not in ``keep`` (those become ``*``).

    >>> s = {("m", "eu"): SeriesStats(n=2), ("m", "us"): SeriesStats(n=3)}
    >>> {k: v.n for k, v in rollup(s, ("model", "region"), keep=("model",)).items()}
    {('m', '*'): 5}
    """
    kept = {i for i, d in enumerate(key_dims) if d in set(keep)}
    merged: dict[tuple[str, ...], SeriesStats] = {}
    for key, stats in series.items():
        rolled = tuple(v if i in kept else ALL for i, v in enumerate(key))
        target = merged.get(rolled)
        if target is None:
            target = merged[rolled] = SeriesStats()
        target.merge(stats)
    return merged


MAX_BASELINES = 20_000


def touch_history(history: dict[str, list[float]], key: str) -> list[float]:
    """The history under ``key``, moved to the end of the (insertion-ordered) dict.

    The dict is thereby ordered by last use, so the least recently used histories (of series that went
    away) are the first dropped once there are more than MAX_BASELINES.
    """
    past = history.pop(key, [])
    history[key] = past
    while len(history) > MAX_BASELINES:
        del history[next(iter(history))]
    return past


def merged(parts: Iterable[SeriesStats]) -> SeriesStats:
    """The sum of several series' statistics (a slice made of its members).

    >>> merged([SeriesStats(n=2), SeriesStats(n=3)]).n
    5
    """
    total = SeriesStats()
    for part in parts:
        total.merge(part)
    return total


def matches_slice(key: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a full series key falls in the slice ``pattern`` (``*`` matches anything)."""
    return all(p in (ALL, k) for k, p in zip(key, pattern, strict=True))
