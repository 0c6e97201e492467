"""Event-time tumbling windows and the watermark: pure functions of integer milliseconds.

A window ``[start, start + size)`` may close once the watermark has passed ``start + size + lateness``.
The watermark is the smallest of the per-partition maxima of event time, so one partition replaying a
backlog holds windows open until it catches up; partitions that have gone quiet (in wall-clock time)
while caught up with their log do not hold it back, and when every partition is quiet the watermark
advances with the wall clock so that a total outage still closes windows (and shows up as silence
instead of as nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PartitionProgress", "WindowSpec", "watermark"]


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
