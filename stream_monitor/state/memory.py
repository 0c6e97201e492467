"""In-memory StateStore: the same semantics as the Redis store, for the demo, replay and unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from stream_monitor.core.aggregates import PartitionDelta
from stream_monitor.core.labels import JoinDelta
from stream_monitor.core.windows import PartitionProgress
from stream_monitor.state.base import (
    HISTORY_LIMIT,
    VERDICTS_PER_MODEL,
    WINDOW_LOG_LIMIT,
    CommitResult,
    PartitionClaim,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """A StateStore held in this process (thread-safe; lost when the process ends).

    >>> store = MemoryStore()
    >>> store.claim(["recs.serving/0"], now_ms=0)["recs.serving/0"]
    PartitionClaim(partition='recs.serving/0', epoch=1, next_offset=0)
    """

    def __init__(self, window_log_limit: int = WINDOW_LOG_LIMIT) -> None:
        if window_log_limit < 0:
            raise ValueError(f"window_log_limit must be >= 0 (0: keep no log), not {window_log_limit}")
        self.window_log_limit = window_log_limit
        self._window_log: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._epoch: dict[str, int] = {}
        self._offset: dict[str, int] = {}
        self._max_ts: dict[str, int] = {}
        self._seen: dict[str, int] = {}
        self._highwater: dict[str, int] = {}
        self._windows: dict[int, dict[str, float]] = {}
        self._open: set[int] = set()
        self._closed_before: int | None = None
        self._detector: bytes | None = None
        self._totals: dict[str, int] = {}
        self._leases: dict[str, tuple[str, int]] = {}
        self._deployments: dict[str, dict[str, bytes]] = {}
        self._history: dict[str, list[bytes]] = {}
        self._verdicts: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._datasets: dict[str, tuple[int, bytes]] = {}
        self._joins: dict[str, dict[str, bytes]] = {}
        self._matured: dict[str, dict[int, str]] = {}
        self._labels: dict[int, dict[str, float]] = {}

    def claim(
        self, partitions: Sequence[str], now_ms: int, highwaters: Mapping[str, int] | None = None
    ) -> dict[str, PartitionClaim]:
        with self._lock:
            out = {}
            for tp in partitions:
                self._epoch[tp] = self._epoch.get(tp, 0) + 1
                self._max_ts.setdefault(tp, 0)
                self._seen[tp] = now_ms
                if highwaters is not None and tp in highwaters:
                    self._highwater[tp] = highwaters[tp]
                out[tp] = PartitionClaim(tp, self._epoch[tp], self._offset.get(tp, 0))
            return out

    def commit(
        self,
        deltas: Sequence[PartitionDelta],
        epochs: Mapping[str, int],
        now_ms: int,
        joins: Sequence[JoinDelta] = (),
        counted: Mapping[str, int] | None = None,
    ) -> CommitResult:
        result = CommitResult()
        counted = counted or {}
        with self._lock:
            closed = self._closed_before
            retried: set[str] = set()
            for delta in deltas:
                tp = delta.partition
                if tp not in self._epoch:
                    result.refused.append(tp)
                    result.lost.append(tp)
                    continue
                stored = self._offset.get(tp, 0)
                if self._epoch[tp] < epochs.get(tp, -1) or stored < counted.get(tp, 0):
                    result.refused.append(tp)
                    result.behind.append(tp)
                    continue
                if self._epoch[tp] != epochs.get(tp):
                    result.refused.append(tp)
                    continue
                if stored == delta.next_offset and stored > delta.first_offset:
                    result.applied.append(tp)  # already applied: a retry after a lost reply
                    retried.add(tp)
                    continue
                if stored > delta.first_offset:
                    result.refused.append(tp)
                    result.conflict.append(tp)
                    continue
                for model, arm, record in delta.deployments:
                    self._deployments.setdefault(model, {})[arm] = record
                    history = self._history.setdefault(model, [])
                    history.append(record)
                    del history[:-HISTORY_LIMIT]
                for name, ts, record in delta.datasets:
                    # The newest partition by event time; an equal ts (a re-published partition) replaces.
                    if ts >= self._datasets.get(name, (ts, b""))[0]:
                        self._datasets[name] = (ts, record)
                for start, sums in delta.windows.items():
                    if closed is not None and start < closed:
                        result.late_events += delta.window_events.get(start, 0)
                        continue
                    window = self._windows.setdefault(start, {})
                    for name, value in sums.items():
                        window[name] = window.get(name, 0) + value
                    self._open.add(start)
                for name, value in delta.counts.items():
                    self._totals[name] = self._totals.get(name, 0) + value
                self._offset[tp] = delta.next_offset
                if delta.highwater is not None:
                    self._highwater[tp] = delta.highwater
                if delta.max_event_ms > self._max_ts.get(tp, 0):
                    self._max_ts[tp] = delta.max_event_ms
                    self._seen[tp] = now_ms
                self._seen.setdefault(tp, now_ms)
                result.applied.append(tp)
            if result.late_events:
                self._totals["late"] = self._totals.get("late", 0) + result.late_events
            fresh = set(result.applied) - retried
            for join in joins:
                if all(tp in retried for tp in join.parts):
                    continue  # applied with the first attempt
                if (
                    not join.parts
                    or not all(tp in fresh for tp in join.parts)
                    or any(self._epoch.get(tp) != epoch for tp, epoch in join.fence.items())
                ):
                    result.join_refused.append(join.group)
                    continue
                self._apply_join(join, closed)
            result.closed_before = closed
        return result

    def _apply_join(self, join: JoinDelta, closed: int | None) -> None:
        entries = self._joins.setdefault(join.group, {})
        entries.update(join.put)
        for rid in join.delete:
            entries.pop(rid, None)
        matured = self._matured.setdefault(join.group, {})
        for serving_window, ids in join.matured.items():
            matured[serving_window] = matured.get(serving_window, "") + ids
        for serving_window in join.drop_matured:
            matured.pop(serving_window, None)
        for start, sums in join.sums.items():
            if closed is not None and start < closed:
                self._totals["labels_late"] = self._totals.get("labels_late", 0) + 1
                continue
            label_sums = self._labels.setdefault(start, {})
            for name, value in sums.items():
                label_sums[name] = label_sums.get(name, 0) + value

    def load_join(self, group: str) -> tuple[dict[str, bytes], dict[int, str]]:
        with self._lock:
            return dict(self._joins.get(group, {})), dict(self._matured.get(group, {}))

    def read_labels(self, start: int) -> dict[str, float]:
        with self._lock:
            return dict(self._labels.get(start, {}))

    def progress(self) -> dict[str, PartitionProgress]:
        with self._lock:
            return {
                tp: PartitionProgress(
                    self._offset.get(tp, 0), ts, self._seen.get(tp, 0), self._highwater.get(tp)
                )
                for tp, ts in self._max_ts.items()
            }

    def offsets(self, partitions: Sequence[str]) -> dict[str, int]:
        with self._lock:
            return {tp: self._offset[tp] for tp in partitions if tp in self._offset}

    def closed_before(self) -> int | None:
        return self._closed_before

    def open_windows(self) -> list[int]:
        with self._lock:
            return sorted(self._open)

    def read_window(self, start: int) -> dict[str, float]:
        with self._lock:
            return dict(self._windows.get(start, {}))

    def close_window(self, start: int, end: int, detector_state: bytes, log_entry: bytes = b"") -> bool:
        with self._lock:
            if self._closed_before is not None and self._closed_before >= end:
                return False
            self._closed_before = end
            self._open.discard(start)
            self._detector = detector_state
            if log_entry and self.window_log_limit:
                self._window_log[start] = log_entry
                for old in sorted(self._window_log)[: -self.window_log_limit]:
                    del self._window_log[old]
            # Closed windows stay readable (as in Redis until their TTL); keep a bounded number.
            for old in sorted(self._windows)[:-240]:
                if old not in self._open:
                    del self._windows[old]
            for old in sorted(self._labels)[:-240]:
                if old < end:
                    del self._labels[old]
            return True

    def window_log(self, since_ms: int | None = None, until_ms: int | None = None) -> list[bytes]:
        low = -(2**63) if since_ms is None else since_ms
        high = 2**63 if until_ms is None else until_ms
        with self._lock:
            return [self._window_log[s] for s in sorted(self._window_log) if low <= s < high]

    def load_detector_state(self) -> bytes | None:
        return self._detector

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def acquire_lease(self, name: str, owner: str, ttl_ms: int, now_ms: int | None = None) -> bool:
        now = int(time.monotonic() * 1000) if now_ms is None else now_ms
        with self._lock:
            holder = self._leases.get(name)
            if holder is None or holder[0] == owner or holder[1] <= now:
                self._leases[name] = (owner, now + ttl_ms)
                return True
            return False

    def put_deployment(self, model: str, arm: str, record: bytes) -> None:
        with self._lock:
            self._deployments.setdefault(model, {})[arm] = record

    def deployments(self) -> dict[str, dict[str, bytes]]:
        with self._lock:
            return {m: dict(arms) for m, arms in self._deployments.items()}

    def history(self, model: str) -> list[bytes]:
        with self._lock:
            return list(self._history.get(model, []))

    def put_verdict(self, model: str, key: str, doc: bytes, emitted_at: int) -> None:
        with self._lock:
            kept = self._verdicts.setdefault(model, {})
            if key in kept and kept[key][0] > emitted_at:
                return  # a re-delivered older verdict must not replace a newer one
            kept[key] = (emitted_at, doc)
            for old in sorted(kept, key=lambda k: (kept[k][0], k))[:-VERDICTS_PER_MODEL]:
                del kept[old]

    def verdicts(self, model: str) -> dict[str, bytes]:
        with self._lock:
            return {key: doc for key, (_ts, doc) in self._verdicts.get(model, {}).items()}

    def datasets(self) -> dict[str, bytes]:
        with self._lock:
            return {name: record for name, (_ts, record) in self._datasets.items()}
