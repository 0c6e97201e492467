"""Batch delivery: the input topics' messages reach the engine a fetch at a time, not one by one.

Faust hands every message to its streams through the conductor, and its fetch loop awaits
``wait_first(callback(message), suspend_flow.wait())`` per message: two tasks and a wait per message,
which caps a worker at 11-14k messages/s on a 2-core machine whatever the agent does (a bare agent
measures the same; py-spy puts the monitor's own code at 8 % of the worker). This module keeps Faust's
consumer (aiokafka, group membership, rebalancing, offset commits, flow control) and replaces only that
loop: messages of the *batch topics* of one ``getmany`` are collected and handed over as one list, the
rest still go through the conductor as before.

The handler receives a list of Faust ``Message`` objects and acks them (``consumer.ack``) when it is
done, exactly as a stream would; Faust then commits their offsets. Nothing is tracked as in-flight
(``track_message``): a rebalance does not wait for a batch in progress, because the worker's commit
lock already orders the batch before the revocation and the state store's offsets make redelivery
harmless (see runtime/worker.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

__all__ = ["BatchDeliveryConsumer", "BatchHandler"]

BatchHandler = Callable[[list[Any]], Awaitable[None]]


class BatchDeliveryConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, delivering the messages of ``batch_topics`` in batches to ``deliver``.

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

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by the worker
        # Faust's loop (faust/transport/consumer.py) with the per-message hand-over replaced for the
        # batch topics; the read-offset and gap bookkeeping is the same, so commits stay contiguous.
        callback = self.callback
        read_offset = self._read_offset
        batch_topics = self.batch_topics
        acks_enabled_for = self.app.topics.acks_enabled_for
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                batch: list[Any] = []
                async for tp, message in self.getmany(timeout=1.0):
                    offset = message.offset
                    last = read_offset[tp]
                    if last is not None and offset < last:
                        continue  # already read (a seek back): Faust drops these too
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        # Offsets that will never arrive (compaction, transaction markers) must not
                        # hold back the committed offset.
                        await self._add_gap(tp, last + 1, offset)
                    read_offset[tp] = offset
                    if message.topic in batch_topics:
                        batch.append(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                if batch and not self.should_stop:
                    await self.deliver(batch)
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
