"""Event-time tumbling windows and the watermark: pure functions of integer milliseconds.

A window ``[start, start + size)`` may close once the watermark has passed ``start + size + lateness``.
The watermark is the smallest of the per-partition maxima of event time, so one partition replaying a
backlog holds windows open until it catches up; partitions that have gone quiet (in wall-clock time)
while caught up with their log do not hold it back, and when every partition is quiet the watermark
advances with the wall clock so that a total outage still closes windows (and shows up as silence
instead of as nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CatchUpAlignment", "PartitionProgress", "WindowSpec", "watermark"]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Tumbling windows of ``size_ms`` that accept events up to ``allowed_lateness_ms`` after they end.

    >>> spec = WindowSpec(size_ms=60_000, allowed_lateness_ms=30_000)
    >>> spec.start_of(1_764_086_400_123)
    1764086400000
    >>> spec.closes_at(1_764_086_400_000)
    1764086490000
    """

    size_ms: int
    allowed_lateness_ms: int = 0

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ValueError(f"window size must be positive, got {self.size_ms} ms")
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed lateness cannot be negative, got {self.allowed_lateness_ms} ms")

    def start_of(self, ts_ms: int) -> int:
        """Start of the window holding ``ts_ms``."""
        return ts_ms - ts_ms % self.size_ms

    def end_of(self, start_ms: int) -> int:
        """Exclusive end of the window starting at ``start_ms``."""
        return start_ms + self.size_ms

    def closes_at(self, start_ms: int) -> int:
        """Watermark at which the window starting at ``start_ms`` may close."""
        return start_ms + self.size_ms + self.allowed_lateness_ms

    def closable_before(self, watermark_ms: int) -> int:
        """Every window starting before the returned value may close at ``watermark_ms``.

        >>> WindowSpec(60_000, 30_000).closable_before(190_000)
        120000
        """
        return self.start_of(watermark_ms - self.allowed_lateness_ms)


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """How far one input partition has been consumed and counted (``max_event_ms`` 0: nothing yet)."""

    next_offset: int
    max_event_ms: int
    updated_wall_ms: int
    highwater: int | None = None

    @property
    def caught_up(self) -> bool:
        """Everything the broker had for this partition (when last asked) has been counted."""
        return self.highwater is None or self.next_offset >= self.highwater


def watermark(progress: Iterable[PartitionProgress], now_wall_ms: int, idle_timeout_ms: int) -> int | None:
    """The event-time watermark over all partitions (``None`` before any event was counted).

    >>> p = [PartitionProgress(10, 5_000, 1_000), PartitionProgress(7, 3_000, 1_000)]
    >>> watermark(p, now_wall_ms=2_000, idle_timeout_ms=30_000)
    3000
    >>> watermark(p, now_wall_ms=61_000, idle_timeout_ms=30_000)  # all idle: wall clock carries it on
    35000
    """
    parts = list(progress)
    if not parts:
        return None
    active = [
        p.max_event_ms for p in parts if now_wall_ms - p.updated_wall_ms < idle_timeout_ms or not p.caught_up
    ]
    if active:
        return min(active)
    newest = max(parts, key=lambda p: p.max_event_ms)
    last_update = max(p.updated_wall_ms for p in parts)
    return newest.max_event_ms + max(0, now_wall_ms - last_update - idle_timeout_ms)


class CatchUpAlignment:
    """How far in event time each partition may be read for now, so that a backlog is read in order.

    Kafka hands a consumer its partitions by *bytes* (whole producer batches, often compressed), so while
    a worker catches up, a topic of small messages (engagement) races many minutes of event time ahead of
    one of large messages (serving). The watermark waits for the slowest partition anyway, so the lead
    buys nothing: it only keeps more windows open and parks engagement events in the label join until
    their requests arrive. ``limit`` is the event time no partition should be read past: ``lead_ms``
    ahead of the slowest partition that still has a backlog (Flink's watermark alignment; Kafka Streams
    picks records by timestamp for the same reason).

    The slowest partition with a backlog is never past the limit, so reading always goes on. A partition
    with a backlog and no events counted yet is the slowest of all (event time 0: every partition that
    has events waits for its first ones). If the slowest stops advancing for ``stall_ms`` (a partition
    the fetcher cannot read), there is no limit until it moves again: alignment must never stop a
    worker. Partitions caught up with their log (or whose log end is unknown) set no limit.

    >>> def p(offset, event_ms, highwater):
    ...     return PartitionProgress(offset, event_ms, 0, highwater)
    >>> align = CatchUpAlignment(lead_ms=60_000, stall_ms=30_000)
    >>> progress = {
    ...     "serving/0": p(100, 1_000_000, 5_000),       # behind: the slowest with a backlog
    ...     "engagement/0": p(900, 1_200_000, 9_000),    # 200 s ahead of it
    ...     "engagement/1": p(900, 1_050_000, 9_000),    # 50 s ahead: within the lead
    ...     "deployments/0": p(3, 2_000_000, 3),         # caught up: sets no limit, may be held
    ... }
    >>> align.limit(progress, now_ms=0)
    1060000
    >>> sorted(align.ahead(progress, now_ms=0))
    ['deployments/0', 'engagement/0']
    >>> print(align.limit(progress, now_ms=31_000))  # the slowest has not moved for 31 s
    None
    >>> progress["serving/0"] = p(200, 1_100_000, 5_000)
    >>> align.limit(progress, now_ms=32_000)  # it moved: a limit again (engagement/1 is now the slowest)
    1110000
    >>> progress["serving/1"] = p(0, 0, 4_000)  # newly claimed, backlog, nothing counted yet
    >>> align.limit(progress, now_ms=33_000)
    60000
    """

    def __init__(self, lead_ms: int, stall_ms: int) -> None:
        if lead_ms <= 0 or stall_ms <= 0:
            raise ValueError(f"lead and stall times must be positive, got {lead_ms} and {stall_ms} ms")
        self.lead_ms = lead_ms
        self.stall_ms = stall_ms
        self._slowest = -1
        self._moved_at = 0

    def limit(self, progress: Mapping[str, PartitionProgress], now_ms: int) -> int | None:
        """The event time (ms) not to read past for now; ``None``: no limit."""
        behind = [p.max_event_ms for p in progress.values() if not p.caught_up]
        if not behind:
            return None
        slowest = min(behind)
        if slowest != self._slowest:
            self._slowest, self._moved_at = slowest, now_ms
        elif now_ms - self._moved_at > self.stall_ms:
            return None
        return slowest + self.lead_ms

    def ahead(self, progress: Mapping[str, PartitionProgress], now_ms: int) -> set[str]:
        """The partitions of ``progress`` already read past the limit (to leave unread for now)."""
        return self.past(progress, self.limit(progress, now_ms))

    @staticmethod
    def past(progress: Mapping[str, PartitionProgress], limit: int | None) -> set[str]:
        """The partitions of ``progress`` read past ``limit`` (none when there is no limit)."""
        if limit is None:
            return set()
        return {tp for tp, p in progress.items() if p.max_event_ms > limit}
