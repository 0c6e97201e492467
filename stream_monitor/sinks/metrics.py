"""All Prometheus metrics of stream-monitor in one bundle, built against an injected registry.

Label values are bounded: topics and reasons come from fixed sets, series labels from the capped
series keyer (``other`` past the cap), and signal gauges of series that went away are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_monitor.core.series import SignalValue

if TYPE_CHECKING:
    from stream_monitor.core.labels import JoinDelta, LabelJoin
    from stream_monitor.core.lineage import DeploymentRecord

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
        self.partitions_held = Gauge(
            "partitions_held",
            "Input partitions this worker leaves unread for now because they are more than the catch-up "
            "lead of event time ahead of its slowest partition with a backlog (catch_up_lead_s).",
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
        self.store_rewinds = Counter(
            "store_rewinds",
            "Input partitions read again from the state store's offset because the store was behind "
            "Kafka's committed offset at their assignment (it went back in time, e.g. a Redis failover "
            "to a lagging replica); messages is how many were read again.",
            ["topic"],
            namespace=ns,
            registry=registry,
        )
        self.store_rewound_messages = Counter(
            "store_rewound_messages",
            "Messages between the state store's offset and Kafka's committed offset read again at an "
            "assignment (see stream_monitor_store_rewinds_total).",
            ["topic"],
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
        self._init_deployment_safety(registry, ns)

    # -- deployment safety (docs/deployment-safety.md) -------------------------------------------------

    def _init_deployment_safety(self, registry: CollectorRegistry, ns: str) -> None:
        self.model_info = Gauge(
            "model_info",
            "1 per model version live on an arm (from recs.deployments), with short lineage labels.",
            ["model", "arm", "version", "code_commit", "artifact_digest"],
            namespace=ns,
            registry=registry,
        )
        self.canary_verdict = Gauge(
            "canary_verdict",
            "Decision of the newest canary verdict per model and kind: PROMOTE=1, HOLD=0, ROLLBACK=-1.",
            ["model", "kind"],
            namespace=ns,
            registry=registry,
        )
        self.canary_decision = Gauge(
            "canary_decision",
            "1 for the decision of the newest verdict per model and kind, 0 for the other decisions.",
            ["model", "kind", "decision"],
            namespace=ns,
            registry=registry,
        )
        self.canary_score = Gauge(
            "canary_score",
            "Score (0-100) of the newest canary verdict per model and kind.",
            ["model", "kind"],
            namespace=ns,
            registry=registry,
        )
        self.canary_valid_until = Gauge(
            "canary_verdict_valid_until_timestamp_seconds",
            "Until when the newest verdict holds (epoch seconds); past it the gate answers HOLD.",
            ["model", "kind"],
            namespace=ns,
            registry=registry,
        )
        # Shadow analysis (core/shadow.py): the newest shadow verdict's mean overlaps, and the waiting events.
        self.shadow_overlap = Gauge(
            "shadow_overlap_ratio",
            "Mean top-k overlap of the shadow's slates with the control's (newest shadow verdict; "
            "measure: jaccard or rbo).",
            ["model", "measure"],
            namespace=ns,
            registry=registry,
        )
        self.shadow_pending = Gauge(
            "shadow_pending_events",
            "Serving events waiting for their control/shadow partner on this worker.",
            namespace=ns,
            registry=registry,
        )
        self._model_info_labels: set[tuple[str, ...]] = set()
        self._verdict_seen: dict[tuple[str, str], int] = {}

    def set_model_info(self, live: Iterable[DeploymentRecord]) -> None:
        """Replace ``model_info`` with the versions live now (versions no longer live are removed)."""
        fresh: set[tuple[str, ...]] = set()
        for record in live:
            labels = (
                record.model,
                record.arm,
                record.version,
                _short_label(record.lineage.get("code_commit"), 12),
                _short_label(record.lineage.get("artifact_digest"), 19),
            )
            self.model_info.labels(*labels).set(1)
            fresh.add(labels)
        for stale in self._model_info_labels - fresh:
            self.model_info.remove(*stale)
        self._model_info_labels = fresh

    def set_verdicts(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Set the canary gauges from verdict documents (an older one than already shown is skipped)."""
        from stream_monitor.core.gate import DECISION_VALUES

        for doc in docs:
            decision, emitted = doc.get("decision"), doc.get("emitted_at")
            if decision not in DECISION_VALUES or not isinstance(emitted, int):
                continue
            series = (str(doc.get("model")), str(doc.get("kind")))
            if self._verdict_seen.get(series, -1) > emitted:
                continue
            self._verdict_seen[series] = emitted
            self.canary_verdict.labels(*series).set(DECISION_VALUES[decision])
            for name in DECISION_VALUES:
                self.canary_decision.labels(*series, name).set(1 if name == decision else 0)
            score = doc.get("score")
            if isinstance(score, int | float) and not isinstance(score, bool):
                self.canary_score.labels(*series).set(score)
            valid_until = doc.get("valid_until")
            if isinstance(valid_until, int):
                self.canary_valid_until.labels(*series).set(valid_until / 1000)
            if doc.get("kind") == "shadow":
                self._set_overlap(series[0], doc.get("metrics"))

    def _set_overlap(self, model: str, metrics: object) -> None:
        """The shadow overlap gauges from a shadow verdict's metrics (measures not yet judged are left)."""
        if not isinstance(metrics, list):
            return
        for metric in metrics:
            if not isinstance(metric, dict) or metric.get("name") not in ("overlap.jaccard", "overlap.rbo"):
                continue
            estimate = metric.get("estimate")
            if isinstance(estimate, int | float) and not isinstance(estimate, bool):
                self.shadow_overlap.labels(model, str(metric["name"]).split(".", 1)[1]).set(estimate)

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


def _short_label(value: object, limit: int) -> str:
    """A bounded label value: lineage strings are cut (a 12-digit commit or digest prefix identifies)."""
    return value[:limit] if isinstance(value, str) else ""
