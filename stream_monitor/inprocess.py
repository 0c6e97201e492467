"""Run the engine in this process, without Kafka or Redis: the harness behind demo, replay, diagnose,
profile and the benches.

:meth:`InProcessPipeline.build` makes the engine every in-process tool runs (memory store unless given
one, partitions claimed as they appear, event time from the input). Messages are spread over a few
emulated partitions per topic by key, with per-partition offsets, so the engine sees the shape of input
it sees from Kafka: a recorded line goes to the topic its ``type`` names, keyed as the producers key it
(``request_id`` for serving and engagement, ``model`` for deployments, ``name`` for datasets). That is
what puts a request's serving event and its engagement on the co-partitioned pair of partitions the
late-label join reads, and deployments on the topic the registry reads, exactly as in the worker.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol

import orjson

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert
from stream_monitor.core.clock import Clock
from stream_monitor.core.events import Event, EventError, decode_document, parse_document
from stream_monitor.core.observers import WindowObserver
from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine, EngineOptions, Record
from stream_monitor.sinks.base import AlertSink, DeadLetterSink
from stream_monitor.sinks.health import HealthSink
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.base import StateStore
from stream_monitor.state.memory import MemoryStore
from stream_monitor.state.traces import TraceStore

__all__ = ["UNROUTED_TOPIC", "EventSource", "EventTimeClock", "InProcessPipeline", "crc32_partition"]

KINDS: Final = ("serving", "engagement", "deployment", "dataset")
# The topic a line goes to when it names no event type (not JSON, not an object, an unknown type): the
# engine dead-letters it there, as the worker would on whichever topic it came.
UNROUTED_TOPIC: Final = "replay"
# The field each event type is keyed by (the Kafka key its producers give it).
_KEY_FIELD: Final = {
    "serving": "request_id",
    "engagement": "request_id",
    "deployment": "model",
    "dataset": "name",
}
# A recording's event time is the only clock: nothing in it is "in the future" of the input.
_NO_FUTURE_LIMIT_MS: Final = 10**12


def crc32_partition(key: bytes, partitions: int) -> int:
    """The in-process partitioner: crc32 stands in for Kafka's murmur2. What matters is that one key
    always lands on one partition number, the same on the serving and the engagement topic.

    >>> crc32_partition(b"r1", 4) == crc32_partition(b"r1", 4) < 4
    True
    """
    return zlib.crc32(key) % partitions


class EventTimeClock:
    """A clock that reads the event time of the input (for simulated or recorded traffic).

    >>> clock = EventTimeClock(5)
    >>> clock.observe(9); clock.observe(7); clock.now_ms()
    9
    """

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def observe(self, ts_ms: int) -> None:
        if ts_ms > self._now:
            self._now = ts_ms


class EventSource(Protocol):
    """Generated traffic (``stream_monitor.sim.TrafficSimulator`` is one): (topic kind, key, event) up to
    an event time, in order, each event once across calls."""

    def events_until(self, ts_ms: int) -> Iterable[tuple[str, bytes | None, dict[str, Any]]]: ...


class InProcessPipeline:
    """Feeds messages to an engine as if they came from Kafka topics with ``partitions`` partitions.

    >>> from stream_monitor.sinks.base import ListSink
    >>> from stream_monitor.topology import load_topology
    >>> sink = ListSink()
    >>> pipeline = InProcessPipeline.build(load_topology(None), alerts=sink, deadletters=sink, partitions=2)
    >>> doc = pipeline.feed_line(b'{"type": "engagement", "request_id": "r1", "ts": 1764086400000,'
    ...                          b' "action": "click"}')
    >>> doc["request_id"], pipeline.clock.now_ms(), sorted(pipeline.engine.claims)
    ('r1', 1764086400000, ['recs.engagement/1', 'recs.serving/1'])
    >>> pipeline.feed_line(b'not json') is None, [d.reason for d in sink.dead_letters]
    (True, ['invalid_json'])
    """

    def __init__(
        self,
        engine: Engine,
        topics: Topics,
        partitions: int = 4,
        clock: EventTimeClock | None = None,
        partition_of: Callable[[bytes, int], int] = crc32_partition,
    ) -> None:
        self.engine = engine
        self.partitions = partitions
        self.partition_of = partition_of
        # Told each recorded line's event time before the engine sees it (None: the caller keeps time).
        self.clock = clock
        self.topic_of: Mapping[str, str] = {
            "serving": topics.serving,
            "engagement": topics.engagement,
            "deployment": topics.deployments,
            "dataset": topics.datasets,
        }
        self._offsets: dict[tuple[str, int], int] = {}
        self.fed = 0

    @classmethod
    def build(
        cls,
        topology: Topology,
        *,
        alerts: AlertSink,
        deadletters: DeadLetterSink,
        clock: Clock | None = None,
        topics: Topics | None = None,
        partitions: int = 1,
        worker_id: str = "in-process",
        store: StateStore | None = None,
        metrics: MonitorMetrics | None = None,
        health_sink: HealthSink | None = None,
        traces: TraceStore | None = None,
        observers: Sequence[WindowObserver] = (),
        partition_of: Callable[[bytes, int], int] | None = None,
    ) -> InProcessPipeline:
        """The engine of an in-process tool and the pipeline that feeds it.

        ``clock`` defaults to an :class:`EventTimeClock` that :meth:`feed_line` advances with each line;
        a caller that generates its traffic passes its own clock and advances it itself.
        ``partition_of`` maps a key to a partition (default :func:`crc32_partition`; the worker's Kafka
        producers use murmur2, ``stream_monitor.runtime.kafka.murmur2_partition``).
        """
        topics = topics or Topics()
        clock = clock if clock is not None else EventTimeClock()
        engine = Engine(
            topology,
            store if store is not None else MemoryStore(),
            alerts,
            deadletters,
            clock,
            metrics,
            EngineOptions(
                worker_id=worker_id,
                auto_claim=True,
                max_future_ms=_NO_FUTURE_LIMIT_MS,
                serving_topic=topics.serving,
                engagement_topic=topics.engagement,
            ),
            health_sink=health_sink,
            traces=traces,
            observers=observers,
        )
        event_clock = clock if isinstance(clock, EventTimeClock) else None
        return cls(engine, topics, partitions, event_clock, partition_of or crc32_partition)

    def feed(self, kind: str | None, key: bytes | None, value: bytes) -> None:
        """One message of topic ``kind``, as a producer sent it; ``None``: a line of no known type."""
        topic, partition, offset = self._place(kind, key)
        self.engine.ingest(kind, topic, partition, offset, key, value)
        self.fed += 1

    def feed_line(self, line: bytes) -> dict[str, Any] | None:
        """One recorded event (a JSONL line), decoded once and routed as the worker's topics carry it.

        Returns the decoded JSON object, or None when the line is not one (it is dead-lettered).
        """
        try:
            doc = decode_document(line)
        except EventError as exc:
            self._feed_parsed(None, None, line, exc)
            return None
        self.feed_document(line, doc)
        return doc

    def feed_document(self, line: bytes, doc: dict[str, Any]) -> None:
        """:meth:`feed_line` for a line the caller has decoded already (``doc`` is its JSON object)."""
        kind = doc.get("type")
        routed = kind if kind in _KEY_FIELD else None
        ts = doc.get("ts")
        if self.clock is not None and type(ts) is int:
            self.clock.observe(ts)
        ident = doc.get(_KEY_FIELD[routed]) if routed is not None else None
        key = ident.encode() if isinstance(ident, str) else None
        parsed: Event | EventError
        try:
            parsed = parse_document(doc, routed)
        except EventError as exc:
            parsed = exc
        self._feed_parsed(routed, key, line, parsed)

    def _feed_parsed(
        self, kind: str | None, key: bytes | None, line: bytes, parsed: Event | EventError
    ) -> None:
        topic, partition, offset = self._place(kind, key)
        self.engine.ingest_parsed(kind, topic, partition, ((Record(offset, key, line), parsed),))
        self.fed += 1

    def _place(self, kind: str | None, key: bytes | None) -> tuple[str, int, int]:
        topic = self.topic_of.get(kind or "", UNROUTED_TOPIC)
        partition = self.partition_of(key, self.partitions) if key else 0
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        return topic, partition, offset

    def drive(
        self, source: EventSource, start_ms: int, until_ms: int, step_ms: int = 10_000
    ) -> Iterator[int]:
        """Feed ``source``'s events step by step from ``start_ms`` to ``until_ms`` of event time.

        After each step of ``step_ms`` the clock is moved to the step's end and ready windows are closed,
        as a worker that polls every ``step_ms`` would; the step's end is yielded, so a caller can stop
        early (``break``) on what it has seen.
        """
        if self.clock is None:
            raise ValueError("drive needs the pipeline's EventTimeClock (InProcessPipeline.build gives one)")
        t = start_ms
        while t < until_ms:
            t = min(t + step_ms, until_ms)
            for kind, key, event in source.events_until(t):
                self.feed(kind, key, orjson.dumps(event))
            self.clock.observe(t)
            self.step()
            yield t

    def step(self, final: bool = False) -> list[Alert]:
        """Commit what was fed and close every window that is ready."""
        self.engine.flush()
        return self.engine.close_ready(final=final)
