"""Run the engine in this process, without Kafka or Redis: the path behind ``demo`` and ``replay``.

Messages are spread over a few emulated partitions per topic by key, with per-partition offsets, so the
engine sees the same shape of input as from Kafka.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert
from stream_monitor.engine import Engine

__all__ = ["EventTimeClock", "InProcessPipeline"]

KINDS = ("serving", "engagement", "deployment", "dataset")


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


class InProcessPipeline:
    """Feeds messages to an engine as if they came from Kafka topics with ``partitions`` partitions."""

    def __init__(self, engine: Engine, topics: Topics, partitions: int = 4) -> None:
        self.engine = engine
        self.partitions = partitions
        self.topic_of: Mapping[str, str] = {
            "serving": topics.serving,
            "engagement": topics.engagement,
            "deployment": topics.deployments,
            "dataset": topics.datasets,
        }
        self._offsets: dict[tuple[str, int], int] = {}
        self.fed = 0

    def feed(self, kind: str | None, key: bytes | None, value: bytes) -> None:
        """One message; ``kind`` None means "whatever its type says" (mixed files)."""
        topic = self.topic_of.get(kind or "", "replay")
        partition = zlib.crc32(key) % self.partitions if key else 0
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        self.engine.ingest(kind, topic, partition, offset, key, value)
        self.fed += 1

    def step(self, final: bool = False) -> list[Alert]:
        """Commit what was fed and close every window that is ready."""
        self.engine.flush()
        return self.engine.close_ready(final=final)
