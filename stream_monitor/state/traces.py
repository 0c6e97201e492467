"""Trace stores: where captured request traces live for a while (docs/traces.md).

A :class:`TraceStore` keeps, under a TTL, each traced request's encoded trace (by request id), the
engagement that followed it (attached only to a stored trace, earliest ``max_engagement`` kept), an
index per series (slice) of its newest ``per_slice`` request ids by event time, and a registry of the
series that have traces. Trimming a slice's index deletes the traces that fall off it, so the store never
holds more than ``per_slice`` traces per slice whatever the TTL, except the few that alerts name: those
are *pinned* and kept until their TTL, so an alert's links keep working. Writes are best-effort and
idempotent (a retried batch writes the same values again).

:class:`MemoryTraceStore` here (tests, replay); ``stream_monitor.state.redis_traces.RedisTraceStore`` for
the worker. The helpers :func:`example_ids`, :func:`load_trace` and :func:`recent_traces` work on either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from stream_monitor.core.traces import (
    TraceBatch,
    TraceFormatError,
    TraceRecord,
    decode_trace,
    fallback_pattern,
    matching_slices,
)

__all__ = ["MemoryTraceStore", "TraceStore", "example_ids", "load_trace", "recent_traces"]

log = logging.getLogger(__name__)


class TraceStore(Protocol):
    """Storage for traces; see the module docstring."""

    def put(self, batch: TraceBatch) -> None:
        """Store a batch's traces (indexed by series, capped, under the TTL) and attach its engagement.

        The TTL runs on the store's own clock (Redis: the server's), not on event time.
        """
        ...

    def pin(self, request_ids: Sequence[str]) -> None:
        """Keep these traces until their TTL even when newer ones push them off their slice's index."""
        ...

    def get(self, request_id: str) -> tuple[bytes, list[bytes]] | None:
        """The stored trace and its engagement entries (None when not stored or expired)."""
        ...

    def ttl_ms(self, request_id: str) -> int | None:
        """How long the trace is kept still (None when it is not stored)."""
        ...

    def slices(self) -> list[str]:
        """The series with traces written within the TTL."""
        ...

    def recent(self, series: Sequence[str], limit: int, until_ms: int | None = None) -> list[tuple[str, int]]:
        """(request id, event ts) of the newest stored traces of ``series`` (before ``until_ms``)."""
        ...


def _wall_ms() -> int:
    return int(time.time() * 1000)


class MemoryTraceStore:
    """A TraceStore in this process, with the Redis store's bounds and TTLs.

    >>> from stream_monitor.core.traces import TraceBatch
    >>> store = MemoryTraceStore(ttl_ms=60_000, per_slice=1, now=lambda: 0)
    >>> store.put(TraceBatch([("r1", "m|v1", 5, b"{}"), ("r2", "m|v1", 9, b"{}")]))
    >>> store.recent(["m|v1"], 5), store.get("r1")
    ([('r2', 9)], None)
    """

    def __init__(
        self,
        ttl_ms: int = 86_400_000,
        per_slice: int = 100,
        max_engagement: int = 20,
        now: Callable[[], int] = _wall_ms,
    ) -> None:
        self.keep_ms = ttl_ms
        self.per_slice = per_slice
        self.max_engagement = max_engagement
        self._now = now
        self._lock = threading.Lock()
        self._traces: dict[str, tuple[int, bytes]] = {}  # rid -> (expires at, doc)
        self._engagement: dict[str, dict[bytes, int]] = {}  # rid -> {doc: ts}
        self._index: dict[str, dict[str, int]] = {}  # series -> {rid: ts}
        self._index_expires: dict[str, int] = {}
        self._registry: dict[str, int] = {}  # series -> last written (wall ms)
        self._pinned: dict[str, int] = {}  # rid -> when pinned

    def put(self, batch: TraceBatch) -> None:
        now_ms = self._now()
        expires = now_ms + self.keep_ms
        with self._lock:
            touched: set[str] = set()
            for rid, series, ts, doc in batch.traces:
                self._traces[rid] = (expires, doc)
                self._index.setdefault(series, {})[rid] = ts
                touched.add(series)
            for series in touched:
                index = self._index[series]
                excess = len(index) - self.per_slice
                if excess > 0:
                    # Oldest first by (ts, id), as a Redis sorted set orders equal scores.
                    for rid in sorted(index, key=lambda r: (index[r], r))[:excess]:
                        del index[rid]
                        if rid not in self._pinned:
                            self._traces.pop(rid, None)
                            self._engagement.pop(rid, None)
                self._index_expires[series] = expires
                self._registry[series] = now_ms
            for rid, ts, doc in batch.engagement:
                stored = self._traces.get(rid)
                if stored is None or stored[0] <= now_ms:
                    continue
                kept = self._engagement.setdefault(rid, {})
                kept[doc] = ts
                if len(kept) > self.max_engagement:
                    for old in sorted(kept, key=lambda d: (kept[d], d))[self.max_engagement :]:
                        del kept[old]
            for series in [s for s, at in self._registry.items() if at < now_ms - self.keep_ms]:
                del self._registry[series]
            for rid in [r for r, at in self._pinned.items() if at < now_ms - self.keep_ms]:
                del self._pinned[rid]
            for rid in [r for r, (at, _doc) in self._traces.items() if at <= now_ms]:
                del self._traces[rid]  # expired (Redis drops them by itself)
                self._engagement.pop(rid, None)

    def pin(self, request_ids: Sequence[str]) -> None:
        with self._lock:
            now = self._now()
            for rid in request_ids:
                self._pinned[rid] = now

    def get(self, request_id: str) -> tuple[bytes, list[bytes]] | None:
        with self._lock:
            stored = self._traces.get(request_id)
            if stored is None or stored[0] <= self._now():
                return None
            kept = self._engagement.get(request_id, {})
            return stored[1], sorted(kept, key=lambda d: (kept[d], d))

    def ttl_ms(self, request_id: str) -> int | None:
        with self._lock:
            stored = self._traces.get(request_id)
            left = stored[0] - self._now() if stored is not None else 0
            return left if left > 0 else None

    def slices(self) -> list[str]:
        with self._lock:
            now = self._now()
            return sorted(s for s, at in self._registry.items() if self._index_expires.get(s, 0) > now)

    def recent(self, series: Sequence[str], limit: int, until_ms: int | None = None) -> list[tuple[str, int]]:
        with self._lock:
            now = self._now()
            found = [
                (rid, ts)
                for s in series
                if self._index_expires.get(s, 0) > now
                for rid, ts in self._index.get(s, {}).items()
                if (until_ms is None or ts < until_ms) and rid in self._traces and self._traces[rid][0] > now
            ]
        found.sort(key=lambda x: (-x[1], x[0]))
        return found[:limit]


def example_ids(
    store: TraceStore,
    key_dims: Sequence[str],
    pattern: Mapping[str, str],
    limit: int = 3,
    until_ms: int | None = None,
    slices: Sequence[str] | None = None,
) -> list[str]:
    """Ids of a few recent traces of the slice ``pattern`` names (``*``: any value), newest first.

    When that slice has none, the model and version's (:func:`fallback_pattern`). ``until_ms`` prefers
    traces before it (e.g. an alert window's end) and falls back to the newest. ``slices``: the store's
    registry when the caller has read it already (one read for all the alerts of a window).
    """
    known = store.slices() if slices is None else slices
    wide = fallback_pattern(pattern)
    for candidate in (pattern, *([wide] if wide is not None else [])):
        series = matching_slices(known, key_dims, candidate)
        if not series:
            continue
        found = store.recent(series, limit, until_ms)
        if not found and until_ms is not None:
            found = store.recent(series, limit)
        if found:
            return [rid for rid, _ts in found]
    return []


def load_trace(store: TraceStore, request_id: str) -> TraceRecord | None:
    """The stored trace with its engagement; None when absent or unreadable (logged, never raised)."""
    stored = store.get(request_id)
    if stored is None:
        return None
    try:
        return decode_trace(*stored)
    except TraceFormatError as exc:
        log.warning("trace %r in the store is unreadable (%s); skipped", request_id, exc)
        return None


def recent_traces(
    store: TraceStore, key_dims: Sequence[str], pattern: Mapping[str, str], limit: int
) -> list[TraceRecord]:
    """The newest readable traces of the slice ``pattern`` names (unreadable ones are skipped)."""
    series = matching_slices(store.slices(), key_dims, pattern)
    out: list[TraceRecord] = []
    for rid, _ts in store.recent(series, limit * 2):
        record = load_trace(store, rid)
        if record is not None:
            out.append(record)
        if len(out) >= limit:
            break
    return out
