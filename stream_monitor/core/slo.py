"""Error-budget burn rates: multiwindow, multi-burn-rate SLO alerts (the SRE workbook's "Alerting on SLOs").

An SLO says which requests are *good* and what share of them must be (``objective``, e.g. 99.9 %); the
*error budget* is the rest (0.1 %). The burn rate over a stretch of time is how fast that stretch spends
the budget::

    burn = (bad / total) / (1 - objective)

A burn rate of 1 spends exactly the whole budget over the budget period (30 days); 14.4 spends 2 % of a
30-day budget in one hour (14.4 x 1 h / 720 h). An alert rule
(:class:`~stream_monitor.core.topology.BurnAlert`) fires when the burn rate over *both* its long and its
short window is above its factor: the long window makes sure enough budget went to matter, the short one
that it is still going now, so the alert resets within the short window once the problem stops. The value
exported for a rule, and compared with its factor, is therefore ``min(long burn, short burn)``.

Each closed window adds one ``(total, bad)`` pair per tracked series and objective to a bounded history,
kept by the caller (it is part of the detector checkpoint): a ``dict[str, list[int]]`` keyed
``"<objective>|<series>"`` whose list is ``[total_0, bad_0, total_1, bad_1, ...]``, oldest first, at most as
many windows as the longest alert window. Only the top-level series (model, model_version, arm, surface)
are tracked by default, at most ``max_series`` of them per objective; a series idle for the whole longest
window is forgotten.

Pure: standard library and other ``core`` modules only.
"""

from __future__ import annotations

from collections.abc import Mapping

from stream_monitor.core.fields import ALL, join_series, split_series
from stream_monitor.core.series import Breach, SeriesStats, SignalValue
from stream_monitor.core.sketch import LogBuckets
from stream_monitor.core.topology import KEY_DIMS, SloObjective, SloRule

__all__ = ["SIGNAL", "BurnRateTracker", "burn_rate", "duration_label", "good_and_bad"]

SIGNAL = "error_budget_burn"


def burn_rate(bad: float, total: float, objective: float) -> float | None:
    """How many times faster than sustainable the budget burns (None without requests).

    >>> burn_rate(bad=3, total=1000, objective=0.999)  # 0.3 % errors against a 0.1 % budget
    3.0
    >>> round(burn_rate(bad=144, total=10_000, objective=0.99), 6), burn_rate(0, 0, 0.99)
    (1.44, None)
    """
    if total <= 0:
        return None
    # round() hides the binary noise of 1 - objective (1 - 0.999 is 0.0010000000000000009).
    return round((bad / total) / round(1.0 - objective, 12), 12)


def good_and_bad(objective: SloObjective, stats: SeriesStats, buckets: LogBuckets) -> tuple[int, int]:
    """(requests judged, bad requests) of one window's series for one objective.

    Latency is judged on the log-bucket counts: a bucket is bad when its representative value is above
    the threshold, so a request within ``relative_accuracy`` of the threshold may land on either side.

    >>> lb = LogBuckets(0.02)
    >>> stats = SeriesStats(n=4, counters={"err": 1},
    ...                     latency={"total": {lb.bucket(80.0): 2, lb.bucket(400.0): 2}})
    >>> good_and_bad(SloObjective("availability", "availability", 0.999), stats, lb)
    (4, 1)
    >>> good_and_bad(SloObjective("latency", "latency", 0.99, threshold_ms=300.0), stats, lb)
    (4, 2)
    """
    if objective.kind == "availability":
        return int(stats.n), int(stats.counters.get("err", 0))
    counts = stats.latency.get(objective.stage, {})
    threshold = objective.threshold_ms if objective.threshold_ms is not None else float("inf")
    total = bad = 0.0
    for bucket, count in counts.items():
        total += count
        if buckets.value_of(bucket) > threshold:
            bad += count
    return int(total), int(bad)


def duration_label(ms: int) -> str:
    """A short name for a duration, as used in metric names (``burn_5m``, ``burn_6h``).

    >>> [duration_label(ms) for ms in (300_000, 21_600_000, 259_200_000, 90_000)]
    ['5m', '6h', '3d', '90s']
    """
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class BurnRateTracker:
    """Keeps the per-window SLO history and turns it into burn rates and burn alerts.

    >>> from stream_monitor.core.topology import BurnAlert
    >>> rule = SloRule(objectives=(SloObjective("availability", "availability", 0.999),),
    ...                alerts=(BurnAlert("page", 3_600_000, 300_000, 14.4, "critical"),), min_events=0)
    >>> tracker = BurnRateTracker(rule, window_ms=60_000, buckets=LogBuckets(0.02))
    >>> key = ("m", "v1", "control", "home", "*")
    >>> history: dict[str, list[int]] = {}
    >>> for errors in (0, 0, 50):  # two clean windows of 1000 requests, then 5 % errors
    ...     values, breaches = tracker.update({key: SeriesStats(n=1000, counters={"err": errors})}, history)
    >>> {v.metric: round(v.value, 3) for v in values}  # 50 bad of 3000 = 1.67 % against a 0.1 % budget
    {'availability.burn_5m': 16.667, 'availability.burn_1h': 16.667, 'availability.page': 16.667}
    >>> [(b.metric, b.severity) for b in breaches], history["availability|m|v1|control|home|*"]
    ([('availability.page', 'critical')], [1000, 0, 1000, 0, 1000, 50])
    """

    def __init__(
        self, rule: SloRule, window_ms: int, buckets: LogBuckets, n_base: int = len(KEY_DIMS)
    ) -> None:
        self.rule = rule
        self.buckets = buckets
        self.n_base = n_base
        # Window counts of each alert's (long, short) window; a duration not a multiple of the window
        # size is rounded up to whole windows.
        self._spans = {
            a.name: (_windows(a.long_ms, window_ms), _windows(a.short_ms, window_ms)) for a in rule.alerts
        }
        self._labels: dict[int, str] = {}
        for alert in rule.alerts:
            for ms in (alert.short_ms, alert.long_ms):
                self._labels.setdefault(_windows(ms, window_ms), duration_label(ms))
        self.max_windows = max((long for long, _ in self._spans.values()), default=1)

    def tracks(self, key: tuple[str, ...]) -> bool:
        """Whether a series of this roll-up level gets SLOs (the top level, or every level with ``all``)."""
        return self.rule.levels == "all" or all(v == ALL for v in key[self.n_base :])

    def update(
        self, levels: Mapping[tuple[str, ...], SeriesStats], history: dict[str, list[int]]
    ) -> tuple[list[SignalValue], list[Breach]]:
        """Add one closed window to ``history`` (in place); burn rates and breaches of the tracked series."""
        values: list[SignalValue] = []
        breaches: list[Breach] = []
        present = {join_series(k): s for k, s in levels.items() if self.tracks(k)}
        keep = 2 * self.max_windows
        for objective in self.rule.objectives:
            prefix = f"{objective.name}|"
            counts = {series: good_and_bad(objective, s, self.buckets) for series, s in present.items()}
            known = [name[len(prefix) :] for name in history if name.startswith(prefix)]
            # Newcomers by traffic, largest first, while there is room under the cap.
            room = self.rule.max_series - len(known)
            new = sorted((s for s in counts if prefix + s not in history), key=lambda s: (-counts[s][0], s))
            for series in new[: max(0, room)]:
                history[prefix + series] = []
                known.append(series)
            for series in sorted(known):
                name = prefix + series
                past = history[name]
                past.extend(counts.get(series, (0, 0)))
                del past[:-keep]
                if not any(past[0::2]):
                    del history[name]  # idle for the whole longest window: forget it
                    continue
                self._evaluate(objective, split_series(series), past, values, breaches)
        return values, breaches

    def _evaluate(
        self,
        objective: SloObjective,
        key: tuple[str, ...],
        past: list[int],
        values: list[SignalValue],
        breaches: list[Breach],
    ) -> None:
        burns: dict[int, tuple[float | None, int]] = {}
        for windows in sorted(self._labels):
            tail = past[-2 * windows :]
            total, bad = sum(tail[0::2]), sum(tail[1::2])
            burns[windows] = (burn_rate(bad, total, objective.objective), total)
            rate = burns[windows][0]
            if rate is not None:
                values.append(
                    SignalValue(SIGNAL, f"{objective.name}.burn_{self._labels[windows]}", key, rate)
                )
        for alert in self.rule.alerts:
            long_w, short_w = self._spans[alert.name]
            (long_burn, long_total), (short_burn, _) = burns[long_w], burns[short_w]
            if long_burn is None or short_burn is None or long_total < self.rule.min_events:
                continue  # too little data to judge: an open alert stays open
            value = min(long_burn, short_burn)
            metric = f"{objective.name}.{alert.name}"
            values.append(SignalValue(SIGNAL, metric, key, value))
            if value > alert.factor:
                lasts_h = self.rule.budget_period_ms / 3_600_000 / long_burn
                breaches.append(
                    Breach(
                        SIGNAL,
                        metric,
                        key,
                        value,
                        None,
                        alert.factor,
                        "x",
                        alert.severity,
                        f"{_describe(objective)} error budget burns {long_burn:.1f}x over "
                        f"{self._labels[long_w]} and {short_burn:.1f}x over {self._labels[short_w]} "
                        f"({alert.name} above {alert.factor:g}x): at this rate the "
                        f"{duration_label(self.rule.budget_period_ms)} budget lasts {lasts_h:.1f} h",
                    )
                )


def _windows(ms: int, window_ms: int) -> int:
    return max(1, -(-ms // window_ms))


def _describe(objective: SloObjective) -> str:
    target = f"{objective.objective * 100:g} %"
    if objective.kind == "availability":
        return f"{objective.name} ({target} without error)"
    return f"{objective.name} ({target} {objective.stage} <= {objective.threshold_ms:g} ms)"
