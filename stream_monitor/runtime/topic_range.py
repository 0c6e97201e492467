"""Read the messages of a Kafka topic that fall in a time range, bounded in count and time.

``offsets_for_times`` finds, per partition, the first offset at or after the range's start; reading stops
per partition at the high watermark seen at the start or at the first message past the range's end, and
overall after ``max_messages`` or ``timeout_s``. No consumer group offsets are committed: this is a
read-only look at the topic (``stream-monitor incident`` live mode).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

__all__ = ["TopicRange", "TopicRangeError", "read_topic_range"]


class TopicRangeError(RuntimeError):
    """The topic cannot be read (unknown topic, broker unreachable)."""


@dataclass(slots=True)
class TopicRange:
    """The values read, and whether a bound (count or time) cut the read short."""

    topic: str
    values: list[bytes] = field(default_factory=list)
    truncated: str | None = None


def read_topic_range(
    conf: Mapping[str, Any],
    topic: str,
    since_ms: int,
    until_ms: int,
    max_messages: int = 100_000,
    timeout_s: float = 30.0,
) -> TopicRange:
    """Values of ``topic`` with a timestamp in ``[since_ms, until_ms)`` (``conf``: librdkafka settings)."""
    if max_messages < 1 or timeout_s <= 0:
        raise ValueError("max_messages must be >= 1 and timeout_s > 0")
    deadline = time.monotonic() + timeout_s
    consumer = Consumer(
        {
            **conf,
            "group.id": f"stream-monitor-incident-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    out = TopicRange(topic)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            raise TopicRangeError(f"cannot list topic {topic}: {exc}") from exc
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise TopicRangeError(f"topic {topic} does not exist (or has no partitions)")
        wanted = [TopicPartition(topic, p, since_ms) for p in sorted(found.partitions)]
        try:
            starts = consumer.offsets_for_times(wanted, timeout=max(1.0, deadline - time.monotonic()))
        except KafkaException as exc:
            raise TopicRangeError(f"cannot look up offsets of {topic} at {since_ms}: {exc}") from exc
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for tp in starts:
            if tp.offset < 0:
                continue  # no message at or after since_ms in this partition
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=max(1.0, deadline - time.monotonic())
            )
            if tp.offset < high:
                ends[tp.partition] = high
                assign.append(TopicPartition(topic, tp.partition, tp.offset))
        if not assign:
            return out
        consumer.assign(assign)
        while ends:
            if time.monotonic() > deadline:
                out.truncated = f"stopped after {timeout_s:g} s"
                break
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                continue
            part, offset = msg.partition(), msg.offset()
            if part is None or offset is None or part not in ends:
                continue
            _kind, ts = msg.timestamp()
            if ts >= until_ms:
                del ends[part]
                continue
            value = msg.value()
            if value is not None and ts >= since_ms:
                out.values.append(value)
                if len(out.values) >= max_messages:
                    out.truncated = f"stopped at {max_messages} messages"
                    break
            if offset + 1 >= ends[part]:
                del ends[part]
    finally:
        consumer.close()
    return out
