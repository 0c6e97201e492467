"""All Prometheus metrics of stream-monitor in one bundle, built against an injected registry.

Label values are bounded: topics and reasons come from fixed sets, series labels from the capped
series keyer (``other`` past the cap), and signal gauges of series that went away are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_monitor.core.signals import SignalValue

if TYPE_CHECKING:
    from stream_monitor.core.labels import JoinDelta, LabelJoin

__all__ = ["MonitorMetrics"]

# Outcomes counted by the label join (see stream_monitor.core.labels).
JOIN_OUTCOMES = ("eng", "late", "orphan", "capped", "dup", "late_serving", "unjoined")

SERIES_LABELS = ("model", "model_version", "arm", "surface", "segment")


class MonitorMetrics:
    """The metrics bundle.

    >>> registry = CollectorRegistry()
    >>> m = MonitorMetrics(registry)
    >>> m.consumed.labels(topic="recs.serving").inc(3)
    >>> registry.get_sample_value("stream_monitor_events_consumed_total", {"topic": "recs.serving"})
    3.0
    """

    def __init__(self, registry: CollectorRegistry, segment_dims: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self.segment_dims = segment_dims
        ns = "stream_monitor"
        self.consumed = Counter(
            "events_consumed", "Messages read from input topics.", ["topic"], namespace=ns, registry=registry
        )
        self.accepted = Counter(
            "events_accepted",
            "Valid events counted into windows.",
            ["topic"],
            namespace=ns,
            registry=registry,
        )
        self.deadlettered = Counter(
            "events_deadlettered",
            "Messages sent to the dead-letter topic, by reason.",
            ["topic", "reason"],
            namespace=ns,
            registry=registry,
        )
        self.late = Counter(
            "events_late", "Events that arrived after their window closed.", namespace=ns, registry=registry
        )
        self.skipped = Counter(
            "events_replayed_skipped",
            "Messages re-read after a restart or rebalance that were already counted (skipped).",
            ["topic"],
            namespace=ns,
            registry=registry,
        )
        self.series_folded = Counter(
            "series_folded",
            "Events whose key dimension values were folded into 'other' by the cardinality cap.",
            namespace=ns,
            registry=registry,
        )
        self.commits = Counter(
            "state_commits",
            "State store commits per partition delta, by result (applied / refused).",
            ["result"],
            namespace=ns,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "state_commit_seconds",
            "Time to commit one batch to the state store.",
            namespace=ns,
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.store_up = Gauge(
            "state_store_up",
            "1 when the state store answered the last call, else 0.",
            namespace=ns,
            registry=registry,
        )
        self.watermark = Gauge(
            "watermark_timestamp_seconds",
            "Event-time watermark (epoch seconds).",
            namespace=ns,
            registry=registry,
        )
        self.window_lag = Gauge(
            "window_lag_seconds",
            "Wall-clock time minus the end of the newest closed window.",
            namespace=ns,
            registry=registry,
        )
        self.windows_closed = Counter(
            "windows_closed", "Windows closed and evaluated.", namespace=ns, registry=registry
        )
        self.signal = Gauge(
            "signal_value",
            "Latest value of each signal per series (roll-ups have '*' dimensions).",
            ["signal", "metric", *SERIES_LABELS],
            namespace=ns,
            registry=registry,
        )
        self.open_alerts = Gauge(
            "open_alerts", "Alerts currently firing.", ["signal", "severity"], namespace=ns, registry=registry
        )
        self.alerts = Counter(
            "alerts",
            "Alert messages emitted.",
            ["signal", "severity", "status"],
            namespace=ns,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages on the broker not yet counted: log-end offset minus the offset committed to the "
            "state store, per partition this worker owns.",
            ["topic", "partition"],
            namespace=ns,
            registry=registry,
        )
        self.label_events = Counter(
            "label_join_events",
            "Label join outcomes committed: sampled engagement events (eng), late, orphan; serving requests "
            "not buffered (capped, dup, late_serving, unjoined); requests whose labels matured (matured).",
            ["outcome"],
            namespace=ns,
            registry=registry,
        )
        self.label_pending = Gauge(
            "label_pending_requests",
            "Served requests waiting in this worker's label join for their labels to mature.",
            namespace=ns,
            registry=registry,
        )
        self.label_refused = Counter(
            "label_join_refused",
            "Join-group deltas the state store refused (a partition of the group is owned elsewhere).",
            namespace=ns,
            registry=registry,
        )
        self.anomaly_suppressed = Counter(
            "anomaly_suppressed",
            "Anomaly alerts not opened because the anomaly layer's alarm budget was spent.",
            namespace=ns,
            registry=registry,
        )
        self.anomaly_series = Gauge(
            "anomaly_series",
            "Per-window series the anomaly detectors watch (capped by the topology's anomaly.max_series).",
            namespace=ns,
            registry=registry,
        )
        self._signal_labels: set[tuple[str, ...]] = set()

    def record_joins(
        self, joins: Sequence[JoinDelta], refused: Sequence[str], join: LabelJoin | None
    ) -> None:
        """Count the outcomes of the join deltas a commit applied."""
        skip = set(refused)
        self.label_refused.inc(len(skip))
        for delta in joins:
            if delta.group in skip:
                continue
            for outcome in JOIN_OUTCOMES:
                n = delta.count(outcome)
                if n:
                    self.label_events.labels(outcome=outcome).inc(n)
            matured = sum(v for w in delta.sums.values() for k, v in w.items() if k.endswith("#req"))
            if matured:
                self.label_events.labels(outcome="matured").inc(matured)
        if join is not None:
            self.label_pending.set(join.pending)

    def set_signals(self, values: Iterable[SignalValue]) -> None:
        """Replace the signal gauges with one window's values (series no longer present are removed)."""
        fresh: set[tuple[str, ...]] = set()
        for v in values:
            labels = self.series_labels(v.signal, v.metric, v.key)
            self.signal.labels(*labels).set(v.value)
            fresh.add(labels)
        for stale in self._signal_labels - fresh:
            self.signal.remove(*stale)
        self._signal_labels = fresh

    def series_labels(self, signal: str, metric: str, key: tuple[str, ...]) -> tuple[str, ...]:
        segment = ",".join(f"{d}={v}" for d, v in zip(self.segment_dims, key[4:], strict=False) if v != "*")
        return (signal, metric, *key[:4], segment or "*")
