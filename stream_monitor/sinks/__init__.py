"""Where results go: alerts, dead letters and Prometheus metrics (no Kafka or Faust imports here)."""

from stream_monitor.sinks.base import AlertSink, DeadLetter, DeadLetterSink, ListSink
from stream_monitor.sinks.metrics import MonitorMetrics

__all__ = ["AlertSink", "DeadLetter", "DeadLetterSink", "ListSink", "MonitorMetrics"]
