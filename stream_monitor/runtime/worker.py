"""The Faust worker: the input topics' messages reach the engine in batches and drive it.

With ``delivery = "batch"`` (the default) each fetch of Faust's consumer is one batch of per-partition
runs of records, ingested by one task (runtime/delivery.py: Faust's per-message hand-over is what limits a
Faust worker); with ``"stream"`` one agent per input topic takes batches off its Faust stream. Either way,
per batch the worker ingests every message (``Engine.ingest_batch`` per partition run), then commits the
engine's deltas to the state store (one commit at a time, across agents, retried while the store is
down), and only then acks the messages so Faust may commit their Kafka offsets. A message of a partition
whose delta was refused (another worker owns it now) is not acked: its new owner counts it. Windows are
closed by a timer on every worker; the store's closer lease lets exactly one of them do it.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import faust
from confluent_kafka import Consumer
from faust.types import TP
from prometheus_client import CollectorRegistry

from stream_monitor.config import Settings
from stream_monitor.core.clock import SystemClock
from stream_monitor.core.topology import Topology
from stream_monitor.core.windows import CatchUpAlignment, PartitionProgress
from stream_monitor.engine import Engine, EngineOptions, Record
from stream_monitor.runtime.delivery import BatchDeliveryConsumer, Fetch, StoreAlignedConsumer
from stream_monitor.runtime.gate import add_gate_views
from stream_monitor.runtime.kafka import (
    KafkaAlertSink,
    KafkaDeadLetterSink,
    KafkaHealthSink,
    client_config,
    ensure_topics,
    make_producer,
)
from stream_monitor.sinks.health import CompositeHealthSink, MetricsHealthSink, StoreHealthSink
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.base import PartitionClaim, StateLost, StateStore, StoreUnavailable

__all__ = ["WorkerRuntime", "build_worker"]

log = logging.getLogger(__name__)

EXIT_STATE_LOST = 75  # EX_TEMPFAIL: restart me
# How long the seek of an assignment waits for its claim (below Faust's broker_request_timeout, 90 s).
REWIND_CLAIM_WAIT_S = 60.0
COMMIT_CHECK_EVERY = 64  # messages between checks of the accumulated commit size
# Catch-up alignment waits at least this long for a slowest partition that does not advance.
ALIGNMENT_STALL_S = 10.0


class WorkerRuntime:
    """Owns the Faust app, the engine and the commit discipline between them."""

    def __init__(
        self, settings: Settings, topology: Topology, store: StateStore, registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.inputs = {
            settings.topics.serving: "serving",
            settings.topics.engagement: "engagement",
            settings.topics.deployments: "deployment",
            settings.topics.datasets: "dataset",
        }
        worker_id = f"{socket.gethostname()}-{os.getpid()}"
        producer = make_producer(settings, **{"client.id": f"stream-monitor-{worker_id}"})
        self.alert_sink = KafkaAlertSink(producer, settings.topics.alerts)
        self.deadletter_sink = KafkaDeadLetterSink(producer, settings.topics.deadletter)
        self.metrics = MonitorMetrics(registry, topology.segment_dims)
        # Verdicts: on the compacted health topic first (durable), then the store (the gate and the CLI
        # read it there), then the gauges.
        self.health_sink = CompositeHealthSink(
            KafkaHealthSink(producer, settings.topics.health),
            StoreHealthSink(store),
            MetricsHealthSink(self.metrics),
        )
        self.engine = Engine(
            topology,
            store,
            self.alert_sink,
            self.deadletter_sink,
            SystemClock(),
            self.metrics,
            EngineOptions(
                worker_id=worker_id,
                idle_timeout_ms=round(settings.idle_partition_timeout_s * 1000),
                max_future_ms=round(settings.max_future_s * 1000),
                late_to_deadletter=settings.late_events == "deadletter",
                serving_topic=settings.topics.serving,
                engagement_topic=settings.topics.engagement,
                auto_claim=False,
            ),
            health_sink=self.health_sink,
            traces=_trace_store(store, topology),
        )
        self._commit_lock = asyncio.Lock()
        # Batch delivery reads a backlog in event-time order (core.windows.CatchUpAlignment).
        self._alignment = (
            CatchUpAlignment(
                lead_ms=round(settings.catch_up_lead_s * 1000),
                # A slowest partition that the fetcher has not advanced for this long is not waited for.
                stall_ms=round(max(settings.idle_partition_timeout_s, ALIGNMENT_STALL_S) * 1000),
            )
            if settings.catch_up_lead_s > 0
            else None
        )
        # Batch delivery: fetched batches wait here for the one task that ingests them (in fetch order).
        # Two deep, so the next fetch overlaps the current batch and a slow store holds back the fetcher.
        self._batches: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=2)
        # Set while the engine holds claims for the current assignment. Faust resumes fetching before
        # the on_partitions_assigned receivers run, and a message of a partition assigned but not yet
        # claimed would be passed over (its offset already read), so batches wait for this.
        self._claimed = asyncio.Event()
        # The log-end offsets of the partitions at their claim (catch-up alignment's first progress).
        self._claimed_ends: dict[str, int] = {}
        # The state store's committed offsets of the partitions at their claim (those it has one of):
        # where to read from when Kafka's committed offset is ahead of them (StoreAlignedConsumer).
        self._store_offsets: dict[str, int] = {}
        # A group-less consumer used only to ask the broker for log-end offsets (the lag metric).
        self._watermarks = Consumer(
            client_config(settings)
            | {"group.id": f"{settings.app_id}-lag-probe", "enable.auto.commit": False}
        )
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        # Faust wants a data directory (for tables; this app has none: its state is in the store). Its
        # default is "<app id>-data" under the working directory, which left one per run in whatever
        # directory the worker was started from; a temporary one goes away with the process.
        datadir = tempfile.mkdtemp(prefix=f"{s.app_id}-faust-")
        atexit.register(shutil.rmtree, datadir, ignore_errors=True)
        app = faust.App(
            s.app_id,
            datadir=datadir,
            broker=[f"kafka://{host.strip()}" for host in s.kafka_bootstrap.split(",")],
            broker_credentials=_faust_credentials(s),
            store="memory://",
            value_serializer="raw",
            key_serializer="raw",
            topic_partitions=s.topic_partitions,
            topic_replication_factor=1,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.broker_session_timeout_s,
            broker_heartbeat_interval=min(3.0, s.broker_session_timeout_s / 3),
            broker_commit_interval=1.0,
            web_enabled=True,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            stream_buffer_maxsize=max(4096, s.batch_max * 2),
        )
        topics = {
            name: app.topic(
                name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            )
            for name in self.inputs
        }
        if s.delivery == "batch":
            # Faust still owns the consumer (group membership, rebalancing, offset commits); only the
            # hand-over of the input topics' messages changes (runtime/delivery.py).
            app.transport.Consumer = functools.partial(  # type: ignore[assignment,misc]
                BatchDeliveryConsumer,
                batch_topics=frozenset(self.inputs),
                deliver=self._batches.put,
                rewind=self._rewind,
            )
            for topic in topics.values():
                app.topics.add(topic)
            app.task(self._ingest_batches)
        else:
            app.transport.Consumer = functools.partial(  # type: ignore[assignment,misc]
                StoreAlignedConsumer, rewind=self._rewind
            )
            for name, topic in topics.items():
                app.agent(topic, name=f"stream_monitor.{self.inputs[name]}")(
                    self._agent_for(self.inputs[name])
                )

        add_gate_views(app, self.engine.store, self.engine.clock, claims_held=self._claimed.is_set)
        app.timer(interval=s.close_interval_s)(self._close_windows)
        app.timer(interval=s.lag_interval_s)(self._export_lag)
        # Faust's signal typing predates async receivers with keyword arguments; the call is documented.
        app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        return app

    async def _ingest(self, fetch: Fetch, limit: int | None = None) -> tuple[set[str], Fetch, Fetch]:
        """Ingest partitions' runs of records and commit them.

        With ``limit`` (catch-up alignment), a partition's run stops once the partition's event time is
        past it. Returns the partitions still ours, the runs ingested (ack those of our partitions once
        committed) and the runs left over, in order (not ingested: to ingest later, or drop).
        """
        engine, inputs = self.engine, self.inputs
        since_check = 0
        taken: Fetch = []
        rest: Fetch = []
        for tp, records in fetch:
            kind = inputs[tp.topic]
            key = f"{tp.topic}/{tp.partition}"
            for first in range(0, len(records), COMMIT_CHECK_EVERY):
                if limit is not None and engine.event_time(key) > limit:
                    rest.append((tp, records[first:]))
                    records = records[:first]
                    break
                if since_check >= COMMIT_CHECK_EVERY:
                    since_check = 0
                    if engine.commit_due():
                        # Many new series in one batch: commit what is there (acks still wait for the
                        # final commit below, which is safe: the store holds the offsets).
                        await self.commit()
                piece = records[first : first + COMMIT_CHECK_EVERY]
                engine.ingest_batch(kind, tp.topic, tp.partition, piece)
                since_check += len(piece)
            if records:
                taken.append((tp, records))
        consumer = self.app.consumer
        for tp, _records in fetch:
            try:
                highwater = consumer.highwater(tp)
            except AssertionError:  # aiokafka: "Partition is not assigned" (a rebalance is under way)
                highwater = None
            engine.note_highwater(tp.topic, tp.partition, highwater)
        await self.commit()
        return set(engine.claims), taken, rest

    async def _ingest_batches(self) -> None:
        """The batch-delivery task: ingest each fetch, then ack what was counted.

        With catch-up alignment, runs of partitions read past the event-time limit wait in ``deferred``
        (already in memory: at most what was fetched before their partition was held) and go first once
        their partition is within the limit again. Their offsets are neither counted nor acked until
        then, and the engine's offsets make them safe across a rebalance like any redelivery.
        """
        step = self.settings.batch_max
        consumer = self.app.consumer
        assert isinstance(consumer, BatchDeliveryConsumer)
        engine = self.engine
        deferred: Fetch = []
        while True:
            limit = await self._read_limit(consumer)
            if deferred and (
                limit is None
                or any(engine.event_time(f"{tp.topic}/{tp.partition}") <= limit for tp, _ in deferred)
            ):
                fetched = [] if self._batches.empty() else self._batches.get_nowait()  # go on now
            elif deferred or consumer.held:
                try:  # wake up to look again even if no fetch comes (the limit can lapse)
                    fetched = await asyncio.wait_for(self._batches.get(), timeout=0.2)
                except TimeoutError:
                    fetched = []
            else:
                fetched = await self._batches.get()
            fetch, deferred = [*deferred, *fetched], []
            # A fetch can hold everything prefetched; commit (and ack) at most batch_max messages at a
            # time so a commit, and the work a crash loses, stay bounded whatever the backlog.
            for chunk in _chunks(fetch, step):
                await self._claimed.wait()
                limit = await self._read_limit(consumer)
                # Runs behind one already left over stay behind it: a partition's offsets go in order.
                waiting = {tp for tp, _records in deferred}
                deferred += [(tp, records) for tp, records in chunk if tp in waiting]
                chunk = [(tp, records) for tp, records in chunk if tp not in waiting]
                claims, taken, rest = await self._ingest(chunk, limit)
                deferred += rest
                for tp, records in taken:
                    if f"{tp.topic}/{tp.partition}" in claims:
                        consumer.ack_offsets(tp, [record.offset for record in records])

    async def _read_limit(self, consumer: BatchDeliveryConsumer) -> int | None:
        """The event time not to read past now (None: no limit); holds the partitions already past it."""
        if self._alignment is None:
            return None
        engine = self.engine
        now = engine.clock.now_ms()
        progress = {}
        for tp, claim in engine.claims.items():
            seen = engine.local_progress.get(tp)
            if seen is None:  # nothing committed since the claim: behind if the claim saw a backlog
                seen = PartitionProgress(claim.next_offset, 0, now, self._claimed_ends.get(tp))
            progress[tp] = seen
        # Called between chunks, when everything ingested is committed: progress is the event time.
        limit = self._alignment.limit(progress, now)
        held = set()
        for tp in self._alignment.past(progress, limit):
            topic, _, partition = tp.rpartition("/")
            held.add(TP(topic, int(partition)))
        await consumer.hold(held)
        self.metrics.partitions_held.set(len(held))
        return limit

    def _agent_for(self, kind: str) -> Any:
        batch_max, within = self.settings.batch_max, self.settings.batch_within_s

        async def agent(stream: faust.StreamT[Any]) -> None:
            # noack_take: we ack each message ourselves, only once its delta is in the state store.
            async for events in stream.noack_take(batch_max, within=within):  # type: ignore[attr-defined]
                claims, _taken, _rest = await self._ingest(_runs([event.message for event in events]))
                for event in events:
                    message = event.message
                    if f"{message.topic}/{message.partition}" in claims:
                        await stream.ack(event)

        agent.__name__ = f"{kind}_agent"
        return agent

    async def commit(self) -> None:
        """Commit everything ingested so far; retries (blocking the agents) while the store is down."""
        async with self._commit_lock:
            delay = 0.2
            while True:
                pending = self.engine.prepare_commit()
                if pending is None:
                    return
                try:
                    result = await asyncio.to_thread(self.engine.commit_pending, pending)
                except Exception as exc:
                    self.engine.abort_commit(pending)
                    level = logging.WARNING if isinstance(exc, StoreUnavailable) else logging.ERROR
                    log.log(level, "state commit failed (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                try:
                    self.engine.finish_commit(result, pending)
                except StateLost as exc:
                    # Nothing of this batch is acked; exiting now is the same as a crash, which the
                    # commit protocol makes safe. The supervisor restarts us against the fresh store.
                    log.critical(
                        "%s; exiting so a restart can resume from the store's offsets (Kafka's where the "
                        "store has none)",
                        exc,
                    )
                    logging.shutdown()
                    os._exit(EXIT_STATE_LOST)
                return

    async def _close_windows(self) -> None:
        try:
            await asyncio.to_thread(self.engine.close_ready)
        except StoreUnavailable as exc:
            log.warning("window close skipped: %s", exc)
        except Exception:
            log.exception("window close failed; will retry")

    async def _export_lag(self) -> None:
        try:
            await asyncio.to_thread(self._update_lag)
        except Exception as exc:  # the broker may be away; the metric just keeps its last value
            log.debug("lag export skipped: %s", exc)

    def _update_lag(self) -> None:
        # Log-end offsets from the broker itself, against what this worker has committed to the state
        # store: the lag keeps growing while the worker is stalled (e.g. Redis down), unlike a lag read
        # off the batches the stalled agents are not taking.
        # The probe is never subscribed or consumed from: polling it serves its queued log lines (which
        # librdkafka hands over only on a poll; see runtime/kafka.py), so they do not pile up while the
        # broker is away.
        self._watermarks.poll(0)
        for tp, counted in list(self.engine.committed_offsets.items()):
            topic, _, partition = tp.rpartition("/")
            self.metrics.consumer_lag.labels(topic=topic, partition=partition).set(
                max(0, self._log_end(tp) - counted)
            )

    def _log_end(self, tp: str) -> int:
        """The broker's log-end offset of partition ``tp`` ("topic/partition"); KafkaException if none."""
        from confluent_kafka import TopicPartition

        topic, _, partition = tp.rpartition("/")
        _low, high = self._watermarks.get_watermark_offsets(
            TopicPartition(topic, int(partition)), timeout=2.0
        )
        return int(high)

    def _log_ends(self, partitions: list[str]) -> dict[str, int]:
        """The broker's log-end offsets of ``partitions`` (those it answered within the timeout).

        Given to the claim so that a partition with a backlog holds the watermark back until it is
        counted, even when the fetcher reaches it only after the idle timeout (docs/operations.md).
        """
        from confluent_kafka import KafkaException

        ends: dict[str, int] = {}
        for tp in partitions:
            try:
                ends[tp] = self._log_end(tp)
            except KafkaException as exc:  # claim without it: the idle timeout rule still applies
                log.warning("no log-end offset for %s at claim (%s); claiming without", tp, exc)
                break  # the broker is not answering: do not wait 2 s for each of the others
        return ends

    def _ours(self, tps: Iterable[Any]) -> list[str]:
        return sorted(f"{tp.topic}/{tp.partition}" for tp in tps if tp.topic in self.inputs)

    async def _on_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        ours = self._ours(assigned)
        store = self.engine.store

        def claim() -> tuple[dict[str, PartitionClaim], int | None]:
            ends = self._log_ends(ours) if ours else {}
            self._claimed_ends = ends
            self._store_offsets = store.offsets(ours)
            # closed_before too, so late events of the very first batch are recognised as late.
            return store.claim(ours, self.engine.clock.now_ms(), ends), store.closed_before()

        async with self._commit_lock:
            while True:
                try:
                    claims, closed_before = await asyncio.to_thread(claim)
                    break
                except StoreUnavailable as exc:
                    log.warning("cannot claim partitions yet: %s", exc)
                    await asyncio.sleep(1.0)
            self.engine.adopt(claims, closed_before)
            self._claimed.set()
        log.info(
            "claimed %d partitions: %s",
            len(claims),
            ", ".join(f"{c.partition}@{c.next_offset}" for c in claims.values()),
        )

    async def _rewind(self, committed: Mapping[TP, int]) -> dict[TP, int]:
        """The input partitions whose state store offset is behind Kafka's committed one, and that offset.

        Faust asks this (StoreAlignedConsumer) before it lets the fetcher deliver the assignment's
        records; the claim that reads the store's offsets runs beside it, so wait for it (bounded: Faust
        gives its seek ``broker_request_timeout``). Kafka's offset is committed only after the store
        applied what is below it, so a store behind it lost commits (a failover to a lagging replica):
        reading from the store's offset counts those messages again, into the store's older state.
        """
        try:
            await asyncio.wait_for(self._claimed.wait(), timeout=REWIND_CLAIM_WAIT_S)
        except TimeoutError:
            log.warning(
                "partitions not claimed within %.0f s: reading from Kafka's offsets", REWIND_CLAIM_WAIT_S
            )
            return {}
        floors: dict[TP, int] = {}
        for tp, offset in committed.items():
            name = f"{tp.topic}/{tp.partition}"
            # What the store has counted as this worker knows it: its offset at the claim, advanced by
            # every commit since (Faust also seeks back mid-assignment, after a fetch that crossed a
            # rebalance: by then Kafka's offset trails the store's again). A partition the store had
            # no offset of at the claim (a new or an empty store) starts at Kafka's offset.
            stored = self.engine.committed_offsets.get(name) if name in self._store_offsets else None
            if tp.topic not in self.inputs or stored is None or offset is None or not 0 <= stored < offset:
                continue
            floors[tp] = stored
            log.warning(
                "partition %s/%d: the state store has counted to offset %d, behind Kafka's committed offset "
                "%d (it went back in time, e.g. a failover to a lagging replica): reading the %d messages "
                "in between again",
                tp.topic,
                tp.partition,
                stored,
                offset,
                offset - stored,
            )
            self.metrics.store_rewinds.labels(topic=tp.topic).inc()
            self.metrics.store_rewound_messages.labels(topic=tp.topic).inc(offset - stored)
        return floors

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self._claimed.clear()
        ours = self._ours(revoked)
        await self.commit()
        self.engine.revoke(ours)

    def prepare_topics(self) -> None:
        t = self.topics
        ensure_topics(
            self.settings,
            [t.serving, t.engagement, t.deployments, t.datasets, t.alerts, t.deadletter, t.health],
            self.settings.topic_partitions,
            compacted=[t.health],
        )


def _chunks(fetch: Fetch, size: int) -> Iterator[Fetch]:
    """A fetch cut into pieces of at most ``size`` records (a partition's run may be cut in two)."""
    chunk: Fetch = []
    room = size
    for tp, records in fetch:
        start = 0
        while start < len(records):
            piece = records[start : start + room]
            chunk.append((tp, piece))
            start += len(piece)
            room -= len(piece)
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _runs(messages: list[Any]) -> Fetch:
    """Faust messages (stream delivery) as runs of records per partition, in the order they came."""
    runs: dict[Any, list[Any]] = {}
    for message in messages:
        timestamp = round(message.timestamp * 1000) if message.timestamp else None
        record = Record(message.offset, message.key, message.value, timestamp, message.headers)
        runs.setdefault(message.tp, []).append(record)
    return list(runs.items())


def _faust_credentials(s: Settings) -> Any:
    """Faust's broker credentials from the same settings as the confluent-kafka clients."""
    context = None
    if s.kafka_security_protocol.upper() in ("SSL", "SASL_SSL"):
        import ssl

        context = ssl.create_default_context(cafile=str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else None)
        if s.kafka_ssl_certfile is not None:
            key_password = s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
            context.load_cert_chain(
                str(s.kafka_ssl_certfile),
                str(s.kafka_ssl_keyfile) if s.kafka_ssl_keyfile else None,
                key_password,
            )
    if s.kafka_sasl_mechanism:
        password = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=s.kafka_sasl_username or "",
            password=password,
            mechanism=s.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def _trace_store(store: StateStore, topology: Topology) -> Any:
    """Traces beside the Redis state store (docs/traces.md); none for other stores or when disabled."""
    from stream_monitor.state.redis_store import RedisStore
    from stream_monitor.state.redis_traces import RedisTraceStore

    if not topology.traces.active or not isinstance(store, RedisStore):
        return None
    return RedisTraceStore.beside(store, topology.traces)


def build_worker(
    settings: Settings, topology: Topology, store: StateStore, registry: CollectorRegistry
) -> WorkerRuntime:
    return WorkerRuntime(settings, topology, store, registry)
