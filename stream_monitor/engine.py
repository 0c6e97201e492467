"""The engine: ingest messages into window deltas, commit them to the state store, close windows.

One engine serves both paths: the in-process demo and replay (memory store, sinks in this process) and
the Faust worker (Redis store, Kafka sinks). It holds no Kafka or Faust objects: the runtime hands it
message coordinates and bytes, and it hands back alerts through the sinks it was given.

Guarantees (see docs/operations.md): window sums are exactly-once per input message, because a
partition's delta and its offsets commit together and are fenced by the claim epoch; alerts and dead
letters are at-least-once, with deterministic alert ids so consumers can de-duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple, Protocol

import orjson

from stream_monitor.core.aggregates import PartitionDelta, WindowAccumulator
from stream_monitor.core.alerts import Alert, AlertBook, DetectorState, StateFormatError
from stream_monitor.core.anomaly import ANOMALY_SIGNAL, AnomalyLayer
from stream_monitor.core.canary import CanaryAnalyzer, Verdict, decoded_deployments
from stream_monitor.core.clock import Clock
from stream_monitor.core.datasets import DatasetArrival, check_datasets
from stream_monitor.core.events import (
    NDJSON,
    DatasetEvent,
    DeploymentEvent,
    EngagementEvent,
    Event,
    EventError,
    ServingEvent,
    is_ndjson,
    parse_event,
)
from stream_monitor.core.labels import JoinDelta, LabelEvaluator, LabelJoin
from stream_monitor.core.lineage import DeploymentRecord, LineageError, ReleaseHistory, build_history
from stream_monitor.core.lineage import lineage_for as _lineage_for
from stream_monitor.core.observers import (
    ANOMALY,
    DATASETS,
    LABELS,
    SIGNALS,
    SLO,
    ClosedWindow,
    WindowObserver,
)
from stream_monitor.core.series import SignalValue
from stream_monitor.core.shadow import EMPTY, ERROR, FALLBACK, OK, ShadowAnalyzer, ShadowPairing
from stream_monitor.core.signals import WindowEvaluator
from stream_monitor.core.topology import Topology
from stream_monitor.core.traces import TraceBatch, TraceCapture
from stream_monitor.core.window_log import WindowEntry
from stream_monitor.core.windows import PartitionProgress, watermark
from stream_monitor.sinks.base import AlertSink, DeadLetter, DeadLetterSink
from stream_monitor.sinks.health import HealthSink, NullHealthSink
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.base import CommitResult, PartitionClaim, StateLost, StateStore
from stream_monitor.state.traces import TraceStore, example_ids

__all__ = ["NDJSON_HEADERS", "Engine", "EngineOptions", "MessageRecord", "PendingCommit", "Record"]

log = logging.getLogger(__name__)

# Example request ids per alert (newest traced requests of its slice).
EXAMPLES_PER_ALERT = 3


class MessageRecord(Protocol):
    """A Kafka message as ``Engine.ingest_batch`` reads it; aiokafka's ``ConsumerRecord`` is one."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None:
        """The message's Kafka timestamp in epoch milliseconds."""

    @property
    def headers(self) -> Any:
        """``(name, value)`` pairs; ``content-type: application/x-ndjson`` marks a batched message."""


class Record(NamedTuple):
    """A message for ``Engine.ingest_batch`` built by hand (replays, tests, other clients' messages).

    >>> Record(7, None, b'{"type": "serving"}').offset
    7
    """

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None
    headers: Any = ()


NDJSON_HEADERS: Final = (("content-type", NDJSON),)


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """Deltas taken from the accumulator and the claim epochs they are committed under."""

    deltas: dict[str, PartitionDelta]
    epochs: dict[str, int]
    joins: list[JoinDelta] = field(default_factory=list)
    # Per partition, the offset this worker last saw the store count it to (a store below it went back).
    counted: dict[str, int] = field(default_factory=dict)
    # Traces captured with these deltas (written best-effort after the commit; see docs/traces.md).
    traces: TraceBatch | None = None


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """Tuning that is not part of the topology."""

    worker_id: str = "worker"
    idle_timeout_ms: int = 30_000
    max_future_ms: int = 300_000
    lease_ttl_ms: int = 15_000
    max_catch_up_windows: int = 1_440
    # A commit writes every accumulated field in one atomic script; past this many the runtime commits
    # mid-batch, so one script never holds Redis for seconds (2M fields took longer than its 5 s limit).
    max_commit_fields: int = 100_000
    auto_claim: bool = False
    late_to_deadletter: bool = True
    # The co-partitioned topics the label join pairs (partition p of one with partition p of the other).
    serving_topic: str = "recs.serving"
    engagement_topic: str = "recs.engagement"


class Engine:
    """Ingest, commit and close; see the module docstring.

    >>> from stream_monitor.core.windows import WindowSpec
    >>> from stream_monitor.core.clock import ManualClock
    >>> from stream_monitor.sinks.base import ListSink
    >>> from stream_monitor.state.memory import MemoryStore
    >>> sink, store = ListSink(), MemoryStore()
    >>> engine = Engine(Topology("t", WindowSpec(60_000)), store, sink, sink, ManualClock(0),
    ...                 options=EngineOptions(auto_claim=True))
    >>> engine.ingest("serving", "recs.serving", 0, 0, None, b'not json')
    >>> engine.flush().applied, sink.dead_letters[0].reason
    (['recs.serving/0'], 'invalid_json')
    """

    def __init__(
        self,
        topology: Topology,
        store: StateStore,
        alerts: AlertSink,
        deadletters: DeadLetterSink,
        clock: Clock,
        metrics: MonitorMetrics | None = None,
        options: EngineOptions | None = None,
        health_sink: HealthSink | None = None,
        traces: TraceStore | None = None,
        observers: Sequence[WindowObserver] = (),
    ) -> None:
        self.topology = topology
        self.store = store
        self.alert_sink = alerts
        self.deadletters = deadletters
        self.clock = clock
        self.metrics = metrics
        self.options = options or EngineOptions()
        # Told of every window this engine closes (diagnose, bench detection): see core/observers.py.
        self.observers = list(observers)
        self.accumulator = WindowAccumulator(topology)
        self.evaluator = WindowEvaluator(topology)
        self.anomaly = AnomalyLayer(topology.anomaly, topology.key_dims, topology.window.size_ms)
        self._anomaly_suppressed_seen = 0
        self.book = AlertBook(
            topology.key_dims,
            topology.name,
            {**self.evaluator.clear_ratios(), ANOMALY_SIGNAL: topology.anomaly.clear_ratio},
            clear_windows=topology.alerts.clear_windows,
        )
        self._datasets = frozenset(rule.name for rule in topology.datasets)
        self.claims: dict[str, PartitionClaim] = {}
        self.fenced: set[str] = set()
        self._closed_before: int | None = None
        self._window = topology.window
        self._folded_seen = 0
        self.windows_closed = 0
        self._retry: PendingCommit | None = None
        # Next offset counted per partition, as this worker last committed it (for the lag metric).
        self.committed_offsets: dict[str, int] = {}
        # Next offset per partition of the commit prepared but not yet finished: the runtime ingests on
        # while a commit is written, and a re-delivered message of that commit must still be skipped.
        self._committing: dict[str, int] = {}
        # How far each claimed partition is counted, as of this worker's last commit of it (the runtime
        # aligns reading a backlog by it: core.windows.CatchUpAlignment).
        self.local_progress: dict[str, PartitionProgress] = {}
        self._consumed: dict[str, int] = {}
        self._accepted: dict[str, int] = {}
        self._skipped: dict[str, int] = {}
        self.labels: LabelJoin | None = None
        if topology.labels.enabled:
            self.labels = LabelJoin(
                topology.labels,
                topology.window.size_ms,
                self.options.serving_topic,
                self.options.engagement_topic,
            )
        self.label_evaluator = LabelEvaluator(topology)
        # Canary verdicts (docs/canary.md): "stream-monitor.health/v1" documents, one per model in canary
        # per closed window, handed to the health sink (Kafka / HTTP gate adapters plug in there).
        self.health_sink: HealthSink = health_sink if health_sink is not None else NullHealthSink()
        self.canary = CanaryAnalyzer(topology)
        # Context capture (docs/traces.md): only with a trace store and an active topology.traces rule.
        self.trace_store = traces if traces is not None and topology.traces.active else None
        self.trace_capture: TraceCapture | None = None
        if self.trace_store is not None:
            self.trace_capture = TraceCapture(topology.traces, topology.window.size_ms)
        self.trace_write_failures = 0
        # Shadow analysis (core/shadow.py): pairs of control/shadow serving events of one request id,
        # per serving partition, committed like the label join; verdicts of kind "shadow" beside the canary's.
        self.shadow = ShadowAnalyzer(topology)
        self.shadow_pairing: ShadowPairing | None = None
        if topology.shadow.enabled:
            # Every input partition may carry serving events (a replay mixes all kinds on one topic).
            self.shadow_pairing = ShadowPairing(topology.shadow, topology.window.size_ms)

    # -- ownership ------------------------------------------------------------------------------------

    def assign(self, partitions: Iterable[str]) -> dict[str, PartitionClaim]:
        """Claim newly assigned partitions; returns where counting resumes for each."""
        claims = self.store.claim(list(partitions), self.clock.now_ms())
        self.adopt(claims, self.store.closed_before())
        return claims

    def adopt(self, claims: dict[str, PartitionClaim], closed_before: int | None = None) -> None:
        """Start counting partitions claimed in the store (by :meth:`assign` or by the runtime).

        Anything ingested but not committed for these partitions is dropped: counting restarts at the
        claim's offset, and the consumer re-delivers from its committed offset, which is never ahead.
        """
        self.accumulator.discard(claims)
        if self._retry is not None:
            # A commit still waiting for its retry was made under the old claim: drop those partitions'
            # part of it (their messages were not acked and come again).
            for tp in claims:
                self._retry.deltas.pop(tp, None)
            if not self._retry.deltas:
                self._retry = None
        self.claims.update(claims)
        self.fenced.difference_update(claims)
        for tp, claim in claims.items():
            self.committed_offsets[tp] = claim.next_offset
        if closed_before is not None:
            self._closed_before = closed_before
        self._adopt_labels(claims)
        self._adopt_shadow(claims)

    def _adopt_labels(self, claims: dict[str, PartitionClaim]) -> None:
        """Load the stored join state of every group this worker now owns both partitions of."""
        labels = self.labels
        if labels is None:
            return
        touched = {g for tp in claims if (g := labels.group_of(tp)) is not None}
        if self._retry is not None:
            self._retry.joins[:] = [j for j in self._retry.joins if j.group not in touched]
        owned = set(labels.owns(self.claims))
        progress = self.store.progress() if touched & owned else {}
        for group in touched:
            labels.drop(group)
            if group in owned:
                entries, matured = self.store.load_join(group)
                serving, engagement = (progress.get(tp) for tp in labels.tps(group))
                buffer = labels.new_buffer()
                buffer.load(
                    entries,
                    matured,
                    serving.max_event_ms if serving else 0,
                    engagement.max_event_ms if engagement else 0,
                )
                labels.adopt(group, buffer)

    def _adopt_shadow(self, claims: dict[str, PartitionClaim]) -> None:
        """Load the stored shadow pairing state of every serving partition just claimed."""
        pairing = self.shadow_pairing
        if pairing is None:
            return
        groups = {g: tp for tp in claims if (g := pairing.group_of(tp)) is not None}
        if not groups:
            return
        if self._retry is not None:
            self._retry.joins[:] = [j for j in self._retry.joins if j.group not in groups]
        progress = self.store.progress()
        for group, tp in groups.items():
            entries, _matured = self.store.load_join(group)
            seen = progress.get(tp)
            pairing.adopt(group, entries, seen.max_event_ms if seen else 0)

    def revoke(self, partitions: Iterable[str]) -> None:
        """Stop counting revoked partitions (flush first: their pending deltas still count if ours).

        A revoked partition is fenced: stray messages of it are ignored until it is assigned again,
        never claimed back from its new owner.
        """
        for tp in partitions:
            self.claims.pop(tp, None)
            self.committed_offsets.pop(tp, None)
            self.local_progress.pop(tp, None)
            self.fenced.add(tp)
            group = self.labels.group_of(tp) if self.labels else None
            if self.labels is not None and group is not None:
                self.labels.drop(group)
            shadow_group = self.shadow_pairing.group_of(tp) if self.shadow_pairing else None
            if self.shadow_pairing is not None and shadow_group is not None:
                self.shadow_pairing.drop(shadow_group)

    # -- ingest ---------------------------------------------------------------------------------------

    def ingest(
        self,
        kind: str | None,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None = None,
        ndjson: bool = False,
    ) -> None:
        """Take one message. Never raises for bad input: that becomes a dead letter.

        With ``ndjson`` the message holds several events, one JSON object per line (a batched message:
        see docs/events.md); each line is validated and counted on its own.
        """
        headers = NDJSON_HEADERS if ndjson else ()
        self.ingest_batch(kind, topic, partition, (Record(offset, key, value, timestamp_ms, headers),))

    def ingest_batch(
        self, kind: str | None, topic: str, partition: int, records: Iterable[MessageRecord]
    ) -> None:
        """Take a run of one partition's messages, in offset order: what ``ingest`` does for each.

        The runtime's fast path (a fetch's messages of one partition): the claim, the offsets already
        counted, the clock and the counters are looked up once per run instead of once per message.
        ``records`` are Kafka consumer records or anything with the same attributes (``Record``).
        """
        tp = f"{topic}/{partition}"
        floor = self._counted_to(tp)
        if floor is None:
            return
        # Read the clock once per run of messages, not per event: the future-event check has minutes of
        # tolerance, and a run is one fetch.
        now = self.clock.now_ms()
        ingest_one = self._ingest_one
        skipped = consumed = accepted = 0
        for record in records:
            offset = record.offset
            if offset < floor:
                skipped += 1
                continue
            floor = offset + 1
            value = record.value
            if value is None:
                value = b""  # a tombstone: dead-lettered as not JSON like any other unparsable value
            headers = record.headers
            if not (headers and is_ndjson(headers)):
                consumed += 1
                accepted += ingest_one(
                    kind, tp, topic, partition, offset, record.key, value, record.timestamp, None, now
                )
                continue
            for number, line in enumerate(value.split(b"\n"), 1):
                if line.strip():
                    consumed += 1
                    accepted += ingest_one(
                        kind, tp, topic, partition, offset, record.key, line, record.timestamp, number, now
                    )
        self._count_run(topic, skipped, consumed, accepted)

    def ingest_parsed(
        self,
        kind: str | None,
        topic: str,
        partition: int,
        records: Iterable[tuple[Record, Event | EventError]],
    ) -> None:
        """What :meth:`ingest_batch` does, for messages the caller has already parsed (one event each).

        Each record comes with what :func:`~stream_monitor.core.events.parse_event` made of its value
        (the event, or the error it raised): the in-process harness decodes a recorded line once to
        route it to its topic and hands the result on instead of having it parsed twice.
        """
        tp = f"{topic}/{partition}"
        floor = self._counted_to(tp)
        if floor is None:
            return
        now = self.clock.now_ms()
        skipped = consumed = accepted = 0
        for record, parsed in records:
            offset = record.offset
            if offset < floor:
                skipped += 1
                continue
            floor = offset + 1
            consumed += 1
            value = record.value if record.value is not None else b""
            if isinstance(parsed, EventError):
                self._reject(
                    tp,
                    topic,
                    partition,
                    offset,
                    record.key,
                    value,
                    record.timestamp,
                    parsed.reason,
                    str(parsed),
                    None,
                )
                continue
            accepted += self._take(
                parsed, tp, topic, partition, offset, record.key, value, record.timestamp, None, now
            )
        self._count_run(topic, skipped, consumed, accepted)

    def _counted_to(self, tp: str) -> int | None:
        """The first offset of ``tp`` not counted yet, claiming it if need be; None: not ours."""
        claim = self.claims.get(tp)
        if claim is None:
            if tp in self.fenced or not self.options.auto_claim:
                return None  # not ours (any more): the owner counts it
            partner = self.labels.partner(tp) if self.labels else None
            # A join group's two partitions are claimed together, as Faust assigns them.
            pair = (
                [tp] if partner is None or partner in self.claims or partner in self.fenced else [tp, partner]
            )
            claim = self.assign(pair)[tp]
        # Already counted: before the claim, committed since, or in this batch. A consumer that seeks
        # back to Kafka's committed offsets (a rebalance) re-delivers messages this worker has counted;
        # the store would catch those below its offset, the in-memory offsets catch the rest.
        pending = self.accumulator.next_offset(tp)
        floor = self.committed_offsets.get(tp, claim.next_offset)
        committing = self._committing.get(tp)
        if committing is not None and committing > floor:
            floor = committing
        if pending is not None and pending > floor:
            floor = pending
        return floor

    def _count_run(self, topic: str, skipped: int, consumed: int, accepted: int) -> None:
        if skipped:
            self._count(self._skipped, topic, skipped)
        if consumed:
            self._count(self._consumed, topic, consumed)
        if accepted:
            self._count(self._accepted, topic, accepted)

    def _ingest_one(
        self,
        kind: str | None,
        tp: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None,
        line: int | None,
        now: int,
    ) -> bool:
        """Count one event; False when it was dead-lettered instead."""
        try:
            event = parse_event(value, expected=kind)
        except EventError as exc:
            self._reject(tp, topic, partition, offset, key, value, timestamp_ms, exc.reason, str(exc), line)
            return False
        return self._take(event, tp, topic, partition, offset, key, value, timestamp_ms, line, now)

    def _take(
        self,
        event: Event,
        tp: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None,
        line: int | None,
        now: int,
    ) -> bool:
        """Count one parsed event; False when it was dead-lettered instead (out of time)."""
        # Exact type tests (the event classes are final): cheaper than isinstance with a union, per event.
        if type(event) is EngagementEvent or type(event) is ServingEvent:
            ts = event.ts
            closed_before = self._closed_before
            if (closed_before is not None and ts < closed_before) or ts > now + self.options.max_future_ms:
                reason = self._timing_problem(ts, now)
                if reason is not None:
                    self._reject(tp, topic, partition, offset, key, value, timestamp_ms, *reason, line)
                    return False
            if type(event) is EngagementEvent:
                self.accumulator.add_engagement(tp, offset, event)
                if self.trace_capture is not None:
                    self.trace_capture.engagement(event)
                if self.labels is not None:
                    self.labels.engagement(tp, event.request_id, event.ts, event.action, event.position)
            else:
                self.accumulator.add_serving(tp, offset, event)
                # A trace is what a user saw: a shadow's copy of the request (same id) is not traced.
                if self.trace_capture is not None and event.arm != "shadow":
                    self.trace_capture.serving(event, self.accumulator.last_series)
                if self.shadow_pairing is not None and event.arm in ("control", "shadow"):
                    self._pair_shadow(tp, event)
                # Users never see a shadow's slate: it has no engagement to join (and shares its id).
                if self.labels is not None and event.arm != "shadow":
                    ok = event.error is None
                    self.labels.serving(
                        tp, event.request_id, event.ts, self.accumulator.last_series, len(event.items), ok
                    )
        elif isinstance(event, DatasetEvent):
            if not self._add_dataset(tp, topic, partition, offset, key, value, timestamp_ms, line, event):
                return False
        else:
            record = self._deployment_record(event)
            self.accumulator.add_deployment(tp, offset, event.model, event.arm, record)
        return True

    def _pair_shadow(self, tp: str, event: ServingEvent) -> None:
        status = (
            ERROR
            if event.error is not None
            else EMPTY
            if event.empty_slate
            else FALLBACK
            if event.fallback
            else OK
        )
        pairing = self.shadow_pairing
        if pairing is None:
            return
        # Items are not validated by the event parser: the pairing leaves out any without a string id.
        pairing.serving(
            tp, event.request_id, event.arm, event.model, event.model_version, event.ts, status, event.items
        )

    def _add_dataset(
        self,
        tp: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None,
        line: int | None,
        event: DatasetEvent,
    ) -> bool:
        """Keep a dataset arrival for the commit; False when it was dead-lettered instead."""
        now = self.clock.now_ms()
        if event.ts > now + self.options.max_future_ms:
            # A partition "from the future" would keep its dataset looking fresh until then.
            detail = f"ts: {event.ts} is {(event.ts - now) // 1000} s in the future"
            self._reject(tp, topic, partition, offset, key, value, timestamp_ms, "future_event", detail, line)
            return False
        if event.name in self._datasets:
            record = DatasetArrival(event.name, event.partition, event.ts, event.rows).to_json()
            self.accumulator.add_dataset(tp, offset, event.name, event.ts, record)
        else:
            # Only configured datasets are stored: a made-up name must not grow the state.
            self.accumulator.add_other(tp, offset)
        return True

    @staticmethod
    def _count(counts: dict[str, int], topic: str, n: int = 1) -> None:
        # Plain dict counts on the hot path; they reach Prometheus once per commit (labels() per event
        # would cost more than parsing the event).
        counts[topic] = counts.get(topic, 0) + n

    def event_time(self, tp: str) -> int:
        """The newest event time counted on partition ``tp`` ("topic/partition"), committed or not."""
        seen = self.local_progress.get(tp)
        return max(self.accumulator.max_event_ms(tp), seen.max_event_ms if seen is not None else 0)

    def note_highwater(self, topic: str, partition: int, highwater: int | None) -> None:
        """The partition's log-end offset as the consumer last saw it (see PartitionDelta.highwater)."""
        self.accumulator.note_highwater(f"{topic}/{partition}", highwater)

    def _timing_problem(self, ts: int, now: int) -> tuple[str, str] | None:
        if self._closed_before is not None and ts < self._closed_before:
            return ("late_event", f"ts: {ts} is in a window that closed at {self._closed_before}")
        if ts > now + self.options.max_future_ms:
            return ("future_event", f"ts: {ts} is {(ts - now) // 1000} s in the future")
        return None

    @staticmethod
    def _deployment_record(event: DeploymentEvent) -> bytes:
        return DeploymentRecord(
            event.ts,
            event.model,
            event.model_version,
            event.arm,
            event.traffic,
            event.baseline_version,
            event.lineage,
            event.actor,
            event.reason,
        ).to_json()

    def _reject(
        self,
        tp: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None,
        reason: str,
        detail: str,
        line: int | None = None,
    ) -> None:
        self.accumulator.add_rejected(tp, offset, reason)
        if line is not None:
            detail = f"line {line} of the message: {detail}"
        if reason == "late_event" and not self.options.late_to_deadletter:
            if self.metrics:
                self.metrics.late.inc()
            return
        self.deadletters.send(
            DeadLetter(
                reason,
                detail,
                topic,
                partition,
                offset,
                timestamp_ms,
                key,
                value,
                self.options.worker_id,
                self.clock.now_ms(),
            )
        )
        if self.metrics:
            self.metrics.deadlettered.labels(topic=topic, reason=reason).inc()

    # -- commit ---------------------------------------------------------------------------------------

    def flush(self) -> CommitResult:
        """Commit everything ingested since the last flush. On a store error the commit is kept for retry."""
        pending = self.prepare_commit()
        if pending is None:
            return CommitResult(closed_before=self._closed_before)
        try:
            result = self.commit_pending(pending)
        except Exception:
            self.abort_commit(pending)
            raise
        self.finish_commit(result, pending)
        return result

    def commit_due(self) -> bool:
        """Whether enough is accumulated that the runtime should commit before reading on."""
        return self.accumulator.field_count() >= self.options.max_commit_fields

    def prepare_commit(self) -> PendingCommit | None:
        """The commit to make next (on the ingesting thread).

        After a failed attempt that is the very same commit again: the store may have applied it even
        though the reply was lost (a timeout), and only an identical retry can be recognised as such.
        What was ingested meanwhile waits for the next commit.

        Ingesting may go on until ``finish_commit`` (the runtime counts the next batch while this one is
        written); messages of this commit that are re-delivered meanwhile are still skipped.
        """
        if self._retry is not None:
            return self._retry
        deltas = self.accumulator.take()
        if not deltas:
            self.publish_counts()
            return None
        self._committing = {tp: delta.next_offset for tp, delta in deltas.items()}
        epochs = {tp: claim.epoch for tp, claim in self.claims.items()}
        joins = self.labels.take(deltas, epochs) if self.labels is not None else []
        traces = self.trace_capture.take() if self.trace_capture is not None else None
        if self.shadow_pairing is not None:
            joins += self.shadow_pairing.take(list(deltas), epochs)
        counted = {tp: self.committed_offsets[tp] for tp in deltas if tp in self.committed_offsets}
        return PendingCommit(
            deltas, {tp: epochs[tp] for tp in deltas if tp in epochs}, joins, traces=traces, counted=counted
        )

    def commit_pending(self, pending: PendingCommit) -> CommitResult:
        """Write a prepared commit (may run on a worker thread; touches no engine state)."""
        # Dead letters of these messages must be durable before their offsets count as done.
        self.deadletters.flush()
        started = time.perf_counter()
        result = self.store.commit(
            list(pending.deltas.values()),
            pending.epochs,
            self.clock.now_ms(),
            pending.joins,
            pending.counted,
        )
        if self.metrics:
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
        # Only beside counts that landed: a store that lost its state (the worker exits and recounts)
        # or refused every partition (a fenced owner) must not be given context for counts it lacks.
        if pending.traces and result.applied and not result.lost and not result.behind:
            self._write_traces(pending.traces)
        return result

    def _write_traces(self, batch: TraceBatch) -> None:
        """Store a commit's traces; a failure drops them (traces are best-effort, counting is not)."""
        if self.trace_store is None:
            return
        try:
            self.trace_store.put(batch)
        except Exception as exc:  # the trace store's client errors: never fail a commit that applied
            self.trace_write_failures += 1
            log.warning("could not store %d traces (%s); they are dropped", len(batch), exc)

    def abort_commit(self, pending: PendingCommit) -> None:
        """A prepared commit failed: keep it, unchanged, for the next attempt."""
        self._retry = pending
        if self.metrics:
            self.metrics.store_up.set(0)

    def finish_commit(self, result: CommitResult, pending: PendingCommit | None = None) -> None:
        """Apply a commit's outcome (on the ingesting thread).

        Raises StateLost when the store no longer knows our partitions, or disagrees with us about what
        was counted: the worker must restart from Kafka's committed offsets.
        """
        self._retry = None
        self._committing = {}
        if result.lost:
            raise StateLost(f"the state store has no record of partitions {result.lost}: it lost its state")
        if result.conflict:
            raise StateLost(f"the state store's offsets for {result.conflict} disagree with this worker's")
        if result.behind:
            raise StateLost(
                f"the state store went back in time for partitions {result.behind} (a failover to a "
                "replica that missed the last commits?): its counts are older than this worker's"
            )
        for tp in result.refused:
            # Another worker claimed it since: drop our delta, stop counting it until it is assigned again.
            log.warning("partition %s was taken over; its uncommitted delta is dropped", tp)
            self.claims.pop(tp, None)
            self.local_progress.pop(tp, None)
            self.fenced.add(tp)
        for group in result.join_refused:
            # Its partitions are owned elsewhere now (or not both by us): forget the in-memory join.
            log.warning("label join of partition %s was refused; its pending labels are dropped here", group)
            if self.labels is not None:
                self.labels.drop(group)
            if self.shadow_pairing is not None:
                self.shadow_pairing.drop(group)
        if pending is not None:
            if self.metrics and pending.joins:
                self.metrics.record_joins(pending.joins, result.join_refused, self.labels)
            if self.metrics and self.shadow_pairing is not None:
                self.metrics.shadow_pending.set(self.shadow_pairing.pending)
            now = self.clock.now_ms()
            for tp in result.applied:
                delta = pending.deltas.get(tp)
                if delta is not None:
                    self.committed_offsets[tp] = delta.next_offset
                    seen = self.local_progress.get(tp)
                    max_event_ms, highwater = delta.max_event_ms, delta.highwater
                    if seen is not None:
                        max_event_ms = max(max_event_ms, seen.max_event_ms)
                        highwater = seen.highwater if highwater is None else highwater
                    self.local_progress[tp] = PartitionProgress(
                        delta.next_offset, max_event_ms, now, highwater
                    )
        self._closed_before = result.closed_before
        if self.metrics:
            self.publish_counts()
            self.metrics.store_up.set(1)
            self.metrics.commits.labels(result="applied").inc(len(result.applied))
            self.metrics.commits.labels(result="refused").inc(len(result.refused))
            self.metrics.late.inc(result.late_events)
            folded = self.accumulator.keyer.folded
            self.metrics.series_folded.inc(folded - self._folded_seen)
            self._folded_seen = folded

    def publish_counts(self) -> None:
        """Move the hot-path message counts into the Prometheus counters."""
        if self.metrics is None:
            return
        for counts, counter in (
            (self._consumed, self.metrics.consumed),
            (self._accepted, self.metrics.accepted),
            (self._skipped, self.metrics.skipped),
        ):
            for topic, n in counts.items():
                counter.labels(topic=topic).inc(n)
            counts.clear()

    # -- close ----------------------------------------------------------------------------------------

    def close_ready(self, final: bool = False) -> list[Alert]:
        """Close every window the watermark has passed (when ``final``: every complete window).

        Only the holder of the closer lease does this, so detection runs once per window however many
        workers there are.
        """
        now = self.clock.now_ms()
        if not self.store.acquire_lease("closer", self.options.worker_id, self.options.lease_ttl_ms):
            return []
        open_windows = self.store.open_windows()
        closed_before = self.store.closed_before()
        size = self._window.size_ms
        if final:
            # End of a recording: every partition is done, so close each window that the data covers
            # completely; the window holding the last event is partial and is not judged.
            progress = self.store.progress().values()
            if not progress:
                return []
            limit = self._window.start_of(max(p.max_event_ms for p in progress))
        else:
            mark = watermark(self.store.progress().values(), now, self.options.idle_timeout_ms)
            if mark is None:
                return []
            if self.metrics:
                self.metrics.watermark.set(mark / 1000)
            limit = self._window.closable_before(mark)
        start = closed_before if closed_before is not None else (open_windows[0] if open_windows else None)
        if start is None or start >= limit:
            return []
        if (limit - start) // size > self.options.max_catch_up_windows:
            # A long gap (e.g. the monitor was down for days): evaluate the windows that hold data and
            # the most recent stretch, not every empty window in between.
            recent = limit - self.options.max_catch_up_windows * size
            starts = sorted({s for s in open_windows if s < recent} | set(range(recent, limit, size)))
        else:
            starts = list(range(start, limit, size))
        state = self._load_state()
        arrivals = self._dataset_arrivals()
        histories: dict[str, ReleaseHistory | None] = {}  # read once per close, only for alerting models
        deployments = (
            decoded_deployments(self.store.deployments())
            if self.topology.canary.enabled or self.topology.shadow.enabled
            else {}
        )
        emitted: list[Alert] = []
        for window_start in starts:
            end = window_start + size
            fields = self.store.read_window(window_start)
            evaluation = self.evaluator.evaluate(
                fields,
                state.volume_history,
                state.volume_absent,
                state.baselines,
                profiles=state.profiles,
                slo_history=state.slo_history,
            )
            families: dict[str, tuple[SignalValue, ...]] = {
                SIGNALS: tuple(evaluation.values),
                SLO: tuple(evaluation.slo_values),
            }
            values = evaluation.all_values
            breaches = evaluation.breaches
            if arrivals is not None:
                more_values, more_breaches = check_datasets(
                    self.topology.datasets, arrivals, end, len(self.topology.key_dims)
                )
                families[DATASETS] = tuple(more_values)
                values.extend(more_values)
                breaches.extend(more_breaches)
            label_fields: dict[str, float] = {}
            if self.labels is not None:
                label_fields = self.store.read_labels(window_start)
                label_values, label_breaches = self.label_evaluator.evaluate(label_fields, state.baselines)
                families[LABELS] = tuple(label_values)
                values.extend(label_values)
                breaches.extend(label_breaches)
            if self.anomaly.enabled:
                scores, anomalies = self.anomaly.evaluate(
                    values, breaches, state.anomaly, end, state.open_alerts.keys()
                )
                families[ANOMALY] = tuple(scores)
                values.extend(scores)
                breaches.extend(anomalies)
            evaluated = {(v.signal, v.metric, v.key): v.value for v in values}
            alerts = self.book.update(state, breaches, (window_start, end), now, evaluated)
            state.last_closed_end = end
            # Emit before marking closed: a crash in between re-emits the same alert ids (at-least-once)
            # instead of losing them.
            if alerts:
                self._attach_lineage(alerts, histories)
                self._attach_examples(alerts)
                self.alert_sink.emit(alerts)
            if deployments:
                self._canary(state, deployments, fields, label_fields, (window_start, end), now)
                self._shadow(state, deployments, fields, label_fields, window_start, now)
            # The window's diagnosis log entry goes in with the close (atomic: none lost, none doubled).
            entry = WindowEntry.of(window_start, end, values, (a.to_dict() for a in alerts)).encode()
            if not self.store.close_window(window_start, end, orjson.dumps(state.to_json_dict()), entry):
                self.anomaly.forget()
                break  # someone else closed it: stop, and reload their state next time
            emitted.extend(alerts)
            self.windows_closed += 1
            self._record_close(values, alerts, state, end, now)
            if self.observers:
                closed = ClosedWindow(
                    window_start, end, now, families, evaluation.raw_breaches, tuple(alerts)
                )
                for observer in self.observers:
                    observer.on_closed(closed)
        self._closed_before = self.store.closed_before()
        if self.metrics and starts:
            self.publish_model_info()
        return emitted

    # -- lineage --------------------------------------------------------------------------------------

    def release_history(self, model: str) -> ReleaseHistory | None:
        """The model's release history from the store (None when a stored record is unreadable)."""
        try:
            return build_history(model, self.store.history(model))
        except LineageError as exc:
            log.error("release history of %s unreadable: %s", model, exc)
            return None

    def _attach_lineage(self, alerts: Sequence[Alert], histories: dict[str, ReleaseHistory | None]) -> None:
        """Give each alert the lineage of the model version(s) in its key (see core/lineage.py)."""
        for alert in alerts:
            model = alert.key.get("model")
            if model is None or model in ("*", "other"):
                continue
            if model not in histories:
                histories[model] = self.release_history(model)
            alert.lineage = _lineage_for(histories[model], alert.key.get("model_version"))

    def _attach_examples(self, alerts: Sequence[Alert]) -> None:
        """Give each alert a few recent traced request ids of its slice (docs/traces.md)."""
        if self.trace_store is None:
            return
        try:
            slices = self.trace_store.slices()  # one registry read for all the alerts of the window
            for alert in alerts:
                if alert.key.get("model", "*") == "*":
                    continue  # no model (a dataset's arrival): no slice of requests to show
                alert.example_request_ids = example_ids(
                    self.trace_store,
                    self.topology.key_dims,
                    alert.key,
                    limit=EXAMPLES_PER_ALERT,
                    until_ms=alert.window["end"],
                    slices=slices,
                )
            # Named by an alert: kept until the TTL even if newer traces push them off their slice.
            self.trace_store.pin(sorted({rid for a in alerts for rid in a.example_request_ids}))
        except Exception as exc:  # a trace store that cannot be read must not hold back the alerts
            log.warning("example request ids not attached to %d alerts: %s", len(alerts), exc)

    def publish_model_info(self) -> None:
        """Set ``stream_monitor_model_info`` from the latest deployment per model and arm."""
        if self.metrics is None:
            return
        live: list[DeploymentRecord] = []
        for model, arms in self.store.deployments().items():
            history: ReleaseHistory | None = None
            for arm, raw in arms.items():
                try:
                    record = DeploymentRecord.from_json(raw)
                except LineageError as exc:
                    log.error("deployment record of %s/%s unreadable: %s", model, arm, exc)
                    continue
                if not record.live:
                    continue
                if not record.lineage:
                    # A traffic step often repeats no lineage: take the version's from its history.
                    history = history or self.release_history(model)
                    if history is not None:
                        record = replace(record, lineage=history.lineage_of(record.version))
                live.append(record)
        self.metrics.set_model_info(live)

    def _canary(
        self,
        state: DetectorState,
        deployments: dict[str, dict[str, dict[str, object]]],
        fields: dict[str, float],
        label_fields: dict[str, float],
        window: tuple[int, int],
        now: int,
    ) -> None:
        """Canary verdicts of one closed window to the health sink (docs/canary.md)."""
        try:
            verdicts = self.canary.update(state.canary, deployments, fields, label_fields, window, now)
        except (ArithmeticError, ValueError, TypeError, KeyError) as exc:
            # A canary analysis that cannot be computed must not stop alerting: start it afresh.
            log.error("canary analysis failed for window %s (%r); its state is reset", window, exc)
            state.canary = {}
            return
        self._emit_verdicts(verdicts)

    def _shadow(
        self,
        state: DetectorState,
        deployments: dict[str, dict[str, dict[str, object]]],
        fields: dict[str, float],
        label_fields: dict[str, float],
        window_start: int,
        now: int,
    ) -> None:
        """Shadow verdicts of one closed window to the health sink (docs/canary.md "Shadow analysis")."""
        if not self.topology.shadow.enabled or not any("shadow" in arms for arms in deployments.values()):
            return
        if self.labels is None:
            # The pair sums live in the label windows, which the closer reads only with labels enabled.
            label_fields = self.store.read_labels(window_start)
        window = (window_start, window_start + self._window.size_ms)
        try:
            verdicts = self.shadow.update(state.shadow, deployments, fields, label_fields, window, now)
        except (ArithmeticError, ValueError, TypeError, KeyError) as exc:
            log.error("shadow analysis failed for window %s (%r); its state is reset", window, exc)
            state.shadow = {}
            return
        self._emit_verdicts(verdicts)

    def _emit_verdicts(self, verdicts: Sequence[Verdict]) -> None:
        """Verdicts (canary or shadow) to the health sink, with both versions' lineage."""
        if verdicts:
            docs = [v.to_json_dict() for v in verdicts]
            for doc in docs:
                self._verdict_lineage(doc)
            self.health_sink.emit(docs)

    def _verdict_lineage(self, doc: dict[str, Any]) -> None:
        """Lineage of both versions from the release history: the latest record on an arm is often a
        traffic step that repeats no lineage, the history keeps the version's own."""
        history = self.release_history(str(doc.get("model", "")))
        if history is None:
            return
        for side in ("candidate", "baseline"):
            entry = doc.get(side)
            if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                lineage = history.lineage_of(entry["version"])
                if lineage:
                    entry["lineage"] = lineage

    def _dataset_arrivals(self) -> dict[str, DatasetArrival] | None:
        """Newest stored arrival per configured dataset (None when the topology configures none)."""
        if not self.topology.datasets:
            return None
        out: dict[str, DatasetArrival] = {}
        for name, raw in self.store.datasets().items():
            try:
                out[name] = DatasetArrival.from_json(raw)
            except ValueError as exc:
                log.error("dataset %s: %s; not judged", name, exc)
        return out

    def _load_state(self) -> DetectorState:
        raw = self.store.load_detector_state()
        if raw is None:
            return DetectorState()
        try:
            return DetectorState.from_json_dict(orjson.loads(raw))
        except (orjson.JSONDecodeError, StateFormatError) as exc:
            log.error("detector checkpoint unreadable (%s); starting detection state afresh", exc)
            return DetectorState()

    def _record_close(
        self, values: Sequence[object], alerts: Sequence[Alert], state: DetectorState, end: int, now: int
    ) -> None:
        if not self.metrics:
            return
        m = self.metrics
        m.windows_closed.inc()
        m.window_lag.set(max(0.0, (now - end) / 1000))
        if self.anomaly.enabled:
            m.anomaly_suppressed.inc(self.anomaly.suppressed - self._anomaly_suppressed_seen)
            self._anomaly_suppressed_seen = self.anomaly.suppressed
            m.anomaly_series.set(len(state.anomaly.get("detectors", ())))
        m.set_signals(values)  # type: ignore[arg-type]
        for alert in alerts:
            m.alerts.labels(signal=alert.signal, severity=alert.severity, status=alert.status).inc()
        m.open_alerts.clear()
        for doc in state.open_alerts.values():
            m.open_alerts.labels(signal=doc["signal"], severity=doc["severity"]).inc()
