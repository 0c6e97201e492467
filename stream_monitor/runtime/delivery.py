"""Batch delivery: the input topics' messages reach the engine a fetch at a time, not one by one.

Faust hands every message to its streams through the conductor, and its fetch loop awaits
``wait_first(callback(message), suspend_flow.wait())`` per message: two tasks and a wait per message,
which caps a worker at 11-14k messages/s on a 2-core machine whatever the agent does (a bare agent
measures the same; py-spy puts the monitor's own code at 8 % of the worker). This module keeps Faust's
consumer (aiokafka, group membership, rebalancing, offset commits, flow control) and replaces only that
loop: the records of the *batch topics* of one fetch are handed over as one list per partition, the rest
still go through the conductor as before.

Per message, Faust's loop also builds a ``Message`` object, asks for the partition's highwater, and, once
the stream is done, acks it under a lock. Here the records stay aiokafka's ``ConsumerRecord`` (the
engine reads their offset, key, value, timestamp and headers), the highwater is read once per partition
and fetch, and ``ack_offsets`` acks a partition's run of offsets under one lock: the same bookkeeping as
``Consumer.ack`` (Faust then commits the contiguous acked offsets as usual).

The handler acks when it is done, exactly as a stream would. Nothing is tracked as in-flight
(``track_message``): a rebalance does not wait for a batch in progress, because the worker's commit
lock already orders the batch before the revocation and the state store's offsets make redelivery
harmless (see runtime/worker.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

__all__ = ["BatchDeliveryConsumer", "BatchHandler", "Fetch", "Rewind", "StoreAlignedConsumer"]

# One fetch of the batch topics: each partition with its records, in offset order.
Fetch = list[tuple[TP, list[Any]]]
BatchHandler = Callable[[Fetch], Awaitable[None]]
# Given Kafka's committed offsets, the partitions to read from further back (the state store's offsets).
Rewind = Callable[[Mapping[TP, int]], Awaitable[Mapping[TP, int]]]


class StoreAlignedConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, starting each assigned partition where the state store says, not Kafka.

    Faust seeks every assigned partition to its committed offset before it lets the fetcher deliver
    anything (``perform_seek``, on each assignment). Kafka's offset is only committed after the store
    applied the counts below it, so normally the store is at or ahead of it and the engine skips what
    the store already counted. A store *behind* Kafka (Redis failed over to a replica that missed the
    last commits) would lose the messages in between: ``rewind`` names those partitions and the offset
    to read from instead, and Faust's own bookkeeping (read and committed offsets) starts there too.
    """

    def __init__(self, *args: Any, rewind: Rewind | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rewind = rewind

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = dict(await super().seek_to_committed())
        if self.rewind is None:
            return committed
        floors = {
            tp: offset
            for tp, offset in (await self.rewind(committed)).items()
            if 0 <= offset < committed.get(tp, -1)
        }
        if floors:
            await self._thread.call_thread(self._apply_rewind, floors)
            committed.update(floors)
        return committed

    async def _apply_rewind(self, floors: Mapping[TP, int]) -> None:
        from aiokafka import TopicPartition

        consumer = self._thread._ensure_consumer()
        for tp, offset in floors.items():
            consumer.seek(TopicPartition(tp.topic, tp.partition), offset)


class BatchDeliveryConsumer(StoreAlignedConsumer):
    """Faust's aiokafka consumer, delivering the records of ``batch_topics`` a fetch at a time to ``deliver``.

    Install it on an app before its consumer is created (``app.transport.Consumer = functools.partial(
    BatchDeliveryConsumer, batch_topics=..., deliver=...)``); the topics must still be registered with
    the app (``app.topics.add(app.topic(name))``) so that the consumer subscribes to them and acks count.
    """

    def __init__(
        self, *args: Any, batch_topics: Collection[str], deliver: BatchHandler, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_topics = frozenset(batch_topics)
        self.deliver = deliver
        self._held: frozenset[TP] = frozenset()

    @property
    def held(self) -> frozenset[TP]:
        """The partitions ``hold`` last asked to leave unread."""
        return self._held

    async def hold(self, partitions: Collection[TP]) -> None:
        """Leave ``partitions`` unread (paused in aiokafka) until a later call leaves them out.

        aiokafka drops what it had fetched of a paused partition and fetches from where it was read
        once resumed, so holding costs no memory and does not stall the other partitions (a partition
        whose fetched records are not drained holds back every fetch from its broker). Faust never
        pauses partitions in aiokafka (its own flow control is bookkeeping of its own), and a rebalance
        resets them, so the held set starts empty again with each assignment.
        """
        wanted = frozenset(partitions)
        if wanted == self._held:
            return
        self._held = wanted
        # On the consumer's thread, which owns aiokafka's state; queued, not awaited (nothing waits
        # behind a fetch in progress), and applied in order.
        await self._thread.cast_thread(self._apply_hold, wanted)

    async def _apply_hold(self, wanted: frozenset[TP]) -> None:
        from aiokafka import TopicPartition

        consumer = self._thread._ensure_consumer()
        assigned = consumer.assignment()
        paused = consumer.paused()
        wanted_tps = {TopicPartition(tp.topic, tp.partition) for tp in wanted}
        resume = [tp for tp in paused if tp not in wanted_tps]
        if resume:
            consumer.resume(*resume)
        pause = [tp for tp in wanted_tps if tp in assigned and tp not in paused]
        if pause:
            consumer.pause(*pause)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._held = frozenset()  # aiokafka's partition state is new: nothing is paused
        await super().on_partitions_assigned(assigned, generation_id)

    def ack_offsets(self, tp: TP, offsets: Iterable[int]) -> int:
        """Ack a partition's offsets as ``Consumer.ack`` acks a message's; the number newly acked."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return 0
        with ack_lock:
            committed = self._committed_offset[tp]
            acked_index = self._acked_index[tp]
            new = [
                offset
                for offset in dict.fromkeys(offsets)  # each once, in order
                if (committed is None or offset >= committed) and offset not in acked_index
            ]
            if new:
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)
            return len(new)

    async def _seek_back(self) -> None:
        try:
            await self.perform_seek()
        except Exception as exc:  # as Faust: the next rebalance seeks again
            self.log.warning("seek to the committed offsets after a rebalance failed: %r", exc)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by the worker
        # Faust's loop (faust/transport/consumer.py: _drain_messages and getmany) with the per-message
        # hand-over replaced for the batch topics. The read-offset and gap bookkeeping is the same, so
        # commits stay contiguous; what Faust checks per message (flow, generation, active partition,
        # highwater) is checked per fetch and partition.
        callback = self.callback
        read_offset = self._read_offset
        batch_topics = self.batch_topics
        acks_enabled_for = self.app.topics.acks_enabled_for
        track_end_offset = self.app.monitor.track_tp_end_offset
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                generation = self.app.consumer_generation_id
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    await asyncio.sleep(0)
                    continue
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    # Fetched across a rebalance: the records may come from before or after its seek to
                    # the committed offsets, and the fetcher's position has moved past them. Drop them
                    # and seek back, as Faust's getmany does when the flow stopped: dropping without
                    # the seek skipped those records for good (a worker stalled short of its backlog).
                    await self._seek_back()
                    continue
                fetch: Fetch = []
                for tp, tp_records in records.items():
                    if not tp_records or not (
                        active is None or tp in active or tp in self._buffered_partitions
                    ):
                        continue
                    try:
                        highwater = self.highwater(tp)
                    except AssertionError:  # aiokafka: "Partition is not assigned" (revoked since)
                        continue
                    track_end_offset(tp, highwater)
                    last = read_offset[tp]
                    if last is not None and tp_records[0].offset < last:
                        # Already read (a seek back): Faust drops these too.
                        tp_records = [record for record in tp_records if record.offset >= last]
                        if not tp_records:
                            continue
                    first, end = tp_records[0].offset, tp_records[-1].offset
                    if acks_enabled_for(tp.topic) and not (
                        (last is None or first <= last + 1) and end - first == len(tp_records) - 1
                    ):
                        # Offsets that will never arrive (compaction, transaction markers) must not
                        # hold back the committed offset.
                        previous = last
                        for record in tp_records:
                            if previous and record.offset - previous > 1:
                                await self._add_gap(tp, previous + 1, record.offset)
                            previous = record.offset
                    read_offset[tp] = end
                    if tp.topic in batch_topics:
                        fetch.append((tp, tp_records))
                        continue
                    for record in tp_records:
                        if self.app.consumer_generation_id != generation or not self.flow_active:
                            break  # as Faust's getmany: the rebalance's seek re-reads the rest
                        message = self._to_message(tp, record)
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                if fetch and not self.should_stop:
                    await self.deliver(fetch)
                else:
                    await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
