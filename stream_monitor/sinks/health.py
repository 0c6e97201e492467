"""Health sinks: where canary verdict documents go (``recs.health``, the state store, metrics, files).

The engine hands each window's verdict documents (schema ``stream-monitor.health/v1``, see
stream_monitor.core.gate and docs/deployment-safety.md) to one :class:`HealthSink`; a
:class:`CompositeHealthSink` fans them out. The Kafka sink is in stream_monitor.runtime.kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson

from stream_monitor.core.gate import gate_response, health_key, load_verdicts, select_verdict

if TYPE_CHECKING:
    from stream_monitor.sinks.metrics import MonitorMetrics
    from stream_monitor.state.base import StateStore

__all__ = [
    "CompositeHealthSink",
    "HealthSink",
    "JsonLinesHealthSink",
    "ListHealthSink",
    "MetricsHealthSink",
    "StoreHealthSink",
    "read_gate",
]

log = logging.getLogger(__name__)


class HealthSink(Protocol):
    """Receives the verdict documents of a window close (at-least-once, like alerts)."""

    def emit(self, docs: Sequence[dict[str, Any]]) -> None: ...


class NullHealthSink:
    """Drops verdicts (the engine's default when nothing consumes them)."""

    def emit(self, docs: Sequence[dict[str, Any]]) -> None:
        return None


class ListHealthSink:
    """Keeps the documents in a list (tests, replay).

    >>> sink = ListHealthSink()
    >>> sink.emit([{"model": "m", "deployment": "v2@1"}])
    >>> sink.keys()
    ['m/v2@1']
    """

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []

    def emit(self, docs: Sequence[dict[str, Any]]) -> None:
        self.docs.extend(docs)

    def keys(self) -> list[str]:
        return [health_key(doc) for doc in self.docs]


class JsonLinesHealthSink:
    """Writes one verdict document per line, like the alerts beside them in ``stream-monitor replay``
    (the Kafka key of each is ``model/deployment``: :func:`health_key`)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def emit(self, docs: Sequence[dict[str, Any]]) -> None:
        for doc in docs:
            self.stream.write(orjson.dumps(doc) + b"\n")
        self.count += len(docs)
        self.stream.flush()


class StoreHealthSink:
    """Keeps each verdict in the state store, where every worker's gate and the CLI read it."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def emit(self, docs: Sequence[dict[str, Any]]) -> None:
        for doc in docs:
            self.store.put_verdict(doc["model"], health_key(doc), orjson.dumps(doc), int(doc["emitted_at"]))


class MetricsHealthSink:
    """Sets the ``stream_monitor_canary_*`` gauges from the newest verdict per model and kind."""

    def __init__(self, metrics: MonitorMetrics) -> None:
        self.metrics = metrics

    def emit(self, docs: Sequence[dict[str, Any]]) -> None:
        self.metrics.set_verdicts(docs)


class CompositeHealthSink:
    """Hands the documents to each sink in turn (put the durable one, Kafka, first)."""

    def __init__(self, *sinks: HealthSink) -> None:
        self.sinks = sinks

    def emit(self, docs: Sequence[dict[str, Any]]) -> None:
        if not docs:
            return
        for sink in self.sinks:
            sink.emit(docs)


def read_gate(
    store: StateStore,
    model: str,
    now_ms: int,
    version: str | None = None,
    deployment: str | None = None,
    kind: str | None = None,
) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """(HTTP status, gate body, verdict document) for a model, from what :class:`StoreHealthSink` kept.

    Blocking (it reads the store): the web views run it off the event loop.

    >>> from stream_monitor.state.memory import MemoryStore
    >>> read_gate(MemoryStore(), "home-ranker", now_ms=0)[:1]
    (404,)
    """
    docs, bad = load_verdicts(store.verdicts(model))
    for key in bad:
        log.error("verdict %s in the store is not a JSON object; ignored", key)
    doc = select_verdict(docs, version=version, deployment=deployment, kind=kind)
    status, body = gate_response(doc, now_ms)
    return status, body, doc
