"""Mergeable window aggregates and the per-batch accumulator that feeds them.

Every aggregate is a flat map ``"<series>#<metric>" -> number`` per window, where every number is a sum
(counts, histogram bucket counts). Sums merge by addition, so partial aggregates from any number of
workers and batches add up to exactly the aggregate of the whole window, in any order: that is what makes
the Redis flush a plain ``HINCRBY`` and a restart safe.

Deltas are kept per input partition because the state store accepts or refuses each partition's delta on
its own (a partition this worker no longer owns is refused, the rest still count).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stream_monitor.core.events import ACTIONS, EngagementEvent, ServingEvent
from stream_monitor.core.fields import (
    ENGAGEMENT_SERIES,
    OTHER,
    SEP_METRIC,
    SEP_SERIES,
    clean_value,
    field_name,
    join_series,
    metric_prefix,
    split_series,
)
from stream_monitor.core.profiler import Profiler
from stream_monitor.core.sketch import LogBuckets
from stream_monitor.core.topology import Topology

__all__ = [
    "ENGAGEMENT_SERIES",
    "OTHER",
    "SEP_METRIC",
    "SEP_SERIES",
    "PartitionDelta",
    "SeriesKeyer",
    "WindowAccumulator",
]

FUNNEL_STAGES = frozenset({"retrieved", "filtered", "ranked", "returned"})
UNKNOWN = "unknown"
# Engagement field names per action, built once (add_engagement runs for 3 of 4 events).
_ENGAGEMENT_NAMES = {a: field_name(ENGAGEMENT_SERIES, f"eng.{a}") for a in ACTIONS}


@dataclass(slots=True)
class PartitionDelta:
    """What one batch added for one input partition: offsets covered and window sums.

    ``first_offset`` is the offset of the first message the batch saw on the partition, ``next_offset``
    one past the last; ``counts`` are consumed / accepted / dead-lettered message counters.
    """

    partition: str
    first_offset: int
    next_offset: int
    max_event_ms: int = 0
    windows: dict[int, dict[str, float]] = field(default_factory=dict)
    window_events: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    # Log-end offset of the partition when the batch was read (None: unknown). Lets the watermark tell
    # a partition that is quiet because it is caught up from one that is behind.
    highwater: int | None = None
    # Deployment records (model, arm, JSON) seen in the batch, stored with the same commit.
    deployments: list[tuple[str, str, bytes]] = field(default_factory=list)
    # Dataset arrivals (name, ts, JSON) seen in the batch; the store keeps the newest per name by ts.
    datasets: list[tuple[str, int, bytes]] = field(default_factory=list)

    def count(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by


class SeriesKeyer:
    """Turns an event's key dimensions into a canonical series string with bounded cardinality.

    Each dimension keeps at most ``max_values`` distinct values; later newcomers fold into ``other``
    (counted in ``folded``) so a flood of made-up segment values cannot grow state or metrics. Capping
    each dimension still allows their product to grow, so at most ``max_series`` distinct series are
    kept; an event of a new series past that counts under the series whose every dimension is
    ``other``.

    >>> keyer = SeriesKeyer(("model", "region"), max_values=2)
    >>> [keyer.key(("m", r)) for r in ("us", "eu", "apac", "us")]
    ['m|us', 'm|eu', 'm|other', 'm|us']
    >>> keyer.folded
    1
    >>> small = SeriesKeyer(("model", "region"), max_values=10, max_series=2)
    >>> [small.key(("m", r)) for r in ("us", "eu", "apac")]
    ['m|us', 'm|eu', 'other|other']
    """

    def __init__(self, dims: tuple[str, ...], max_values: int, max_series: int = 10_000) -> None:
        self.dims = dims
        self.max_values = max_values
        self.max_series = max_series
        self._seen: list[set[str]] = [set() for _ in dims]
        self._series: set[str] = set()
        self._overflow = join_series(OTHER for _ in dims)
        self._cache: dict[tuple[str, ...], str] = {}
        self.folded = 0

    def key(self, values: tuple[str, ...]) -> str:
        cached = self._cache.get(values)
        if cached is not None:
            return cached
        parts: list[str] = []
        folded = False
        for value, seen in zip(values, self._seen, strict=True):
            clean = clean_value(value)  # a real value must never look like a separator or "rolled up"
            if clean not in seen:
                if len(seen) >= self.max_values:
                    clean, folded = OTHER, True
                else:
                    seen.add(clean)
            parts.append(clean)
        series = join_series(parts)
        if series not in self._series:
            if len(self._series) >= self.max_series:
                series, folded = self._overflow, True
            else:
                self._series.add(series)
        if folded:
            self.folded += 1
        elif len(self._cache) < 65_536:
            self._cache[values] = series
        return series

    def split(self, series: str) -> dict[str, str]:
        """The dimension values of a series string."""
        return dict(zip(self.dims, split_series(series), strict=True))


class WindowAccumulator:
    """Accumulates one batch of events into per-partition window deltas (the worker's hot path).

    >>> from stream_monitor.core.windows import WindowSpec
    >>> topo = Topology(name="t", window=WindowSpec(60_000), segment_dims=("region",))
    >>> acc = WindowAccumulator(topo)
    >>> ev = ServingEvent("r1", 1_764_086_400_123, "m", "v1", "control", "home", {"region": "eu"},
    ...                   {"total": 80.0})
    >>> acc.add_serving("recs.serving/0", 41, ev)
    >>> delta = acc.take()["recs.serving/0"]
    >>> delta.first_offset, delta.next_offset, delta.windows[1_764_086_400_000]["m|v1|control|home|eu#n"]
    (41, 42, 1)
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.keyer = SeriesKeyer(topology.key_dims, topology.max_values_per_dim, topology.max_series)
        self.buckets = LogBuckets(topology.relative_accuracy)
        self._size = topology.window.size_ms
        self._stages = topology.latency.stages
        self._features = topology.freshness.features
        self._sources = frozenset(topology.sources.sources)
        self._segment_dims = topology.segment_dims
        self._parts: dict[str, PartitionDelta] = {}
        profiler = Profiler(topology)
        self._profiler = profiler if profiler.enabled else None
        # Series key of the last serving event added (the label join keys its requests by it).
        self.last_series = ""

    def _delta(self, partition: str, offset: int) -> PartitionDelta:
        delta = self._parts.get(partition)
        if delta is None:
            delta = self._parts[partition] = PartitionDelta(partition, offset, offset + 1)
        else:  # offsets only grow within a partition, so the last one seen is the highest
            delta.next_offset = offset + 1
        delta.count("consumed")
        return delta

    def _window(self, delta: PartitionDelta, ts: int) -> dict[str, float]:
        start = ts - ts % self._size
        window = delta.windows.get(start)
        if window is None:
            window = delta.windows[start] = {}
            delta.window_events[start] = 0
        delta.window_events[start] += 1
        if ts > delta.max_event_ms:
            delta.max_event_ms = ts
        return window

    def add_serving(self, partition: str, offset: int, event: ServingEvent) -> None:
        """Count one valid serving event."""
        delta = self._delta(partition, offset)
        delta.count("accepted")
        window = self._window(delta, event.ts)
        segment = event.segment
        values = (
            event.model,
            event.model_version,
            event.arm,
            event.surface,
            *(segment.get(d, UNKNOWN) for d in self._segment_dims),
        )
        series = self.last_series = self.keyer.key(values)
        prefix = metric_prefix(series)
        _add(window, prefix + "n", 1)
        if event.error is not None:
            _add(window, prefix + "err", 1)
        if event.fallback:
            _add(window, prefix + "fb", 1)
        if event.empty_slate:
            _add(window, prefix + "empty", 1)
        latency = event.latency_ms
        bucket = self.buckets.bucket
        for stage in self._stages:
            ms = latency.get(stage)
            if ms is not None:
                _add(window, f"{prefix}lat.{stage}.{bucket(ms)}", 1)
        if self._features:
            feature_ts = event.feature_ts
            for feature in self._features:
                updated = feature_ts.get(feature)
                if isinstance(updated, int) and not isinstance(updated, bool):
                    # Age in seconds; a feature "from the future" (clock skew) counts as fresh.
                    _add(window, f"{prefix}age.{feature}.{bucket(max(0, event.ts - updated) / 1000)}", 1)
        if event.error is None:
            for stage, count in event.funnel.items():
                if stage in FUNNEL_STAGES:
                    _add(window, f"{prefix}fun.{stage}", count)
            if self._sources:
                for source, count in event.sources.items():
                    if isinstance(count, int | float) and count >= 0:
                        name = source if source in self._sources else OTHER
                        _add(window, f"{prefix}src.{name}", count)
            profiler = self._profiler
            if profiler is not None:
                profiler.add(window, prefix, event)

    def add_engagement(self, partition: str, offset: int, event: EngagementEvent) -> None:
        """Count one valid engagement event."""
        # The hot path (3 of 4 events): _delta and _window inlined, the field name built once per action.
        delta = self._parts.get(partition)
        if delta is None:
            delta = self._parts[partition] = PartitionDelta(partition, offset, offset + 1)
        else:
            delta.next_offset = offset + 1
        counts = delta.counts
        counts["consumed"] = counts.get("consumed", 0) + 1
        counts["accepted"] = counts.get("accepted", 0) + 1
        ts = event.ts
        start = ts - ts % self._size
        window = delta.windows.get(start)
        if window is None:
            window = delta.windows[start] = {}
            delta.window_events[start] = 1
        else:
            delta.window_events[start] += 1
        if ts > delta.max_event_ms:
            delta.max_event_ms = ts
        action = event.action  # one of ACTIONS from the parser; built here for events made in code
        name = _ENGAGEMENT_NAMES.get(action) or field_name(ENGAGEMENT_SERIES, f"eng.{action}")
        window[name] = window.get(name, 0) + 1

    def note_highwater(self, partition: str, highwater: int | None) -> None:
        """Record the partition's log-end offset as the consumer last saw it."""
        delta = self._parts.get(partition)
        if delta is not None and highwater is not None:
            delta.highwater = highwater

    def add_rejected(self, partition: str, offset: int, reason: str) -> None:
        """Advance past a message that was dead-lettered (so a restart does not reprocess it)."""
        delta = self._delta(partition, offset)
        delta.count("rejected")
        delta.count(f"rejected.{reason}")

    def add_other(self, partition: str, offset: int) -> None:
        """Advance past a valid message that carries no window data."""
        self._delta(partition, offset).count("accepted")

    def add_deployment(self, partition: str, offset: int, model: str, arm: str, record: bytes) -> None:
        """Keep a deployment record to be stored with the batch's commit (exactly once, in order)."""
        delta = self._delta(partition, offset)
        delta.count("accepted")
        delta.deployments.append((model, arm, record))

    def add_dataset(self, partition: str, offset: int, name: str, ts: int, record: bytes) -> None:
        """Keep a dataset arrival to be stored with the batch's commit (exactly once)."""
        delta = self._delta(partition, offset)
        delta.count("accepted")
        delta.datasets.append((name, ts, record))

    def pending(self) -> bool:
        return bool(self._parts)

    def field_count(self) -> int:
        """Window-sum fields accumulated so far (what the next commit writes)."""
        return sum(len(w) for delta in self._parts.values() for w in delta.windows.values())

    def next_offset(self, partition: str) -> int | None:
        """One past the last offset accumulated for ``partition`` since the last take (None: none)."""
        delta = self._parts.get(partition)
        return None if delta is None else delta.next_offset

    def max_event_ms(self, partition: str) -> int:
        """The newest event time accumulated for ``partition`` since the last take (0: none)."""
        delta = self._parts.get(partition)
        return 0 if delta is None else delta.max_event_ms

    def discard(self, partitions: Iterable[str]) -> None:
        """Forget what was accumulated for ``partitions`` (they were re-claimed and restart counting)."""
        for partition in partitions:
            self._parts.pop(partition, None)

    def restore(self, parts: dict[str, PartitionDelta]) -> None:
        """Put deltas back (a commit failed); only valid right after :meth:`take`."""
        if self._parts:
            raise RuntimeError("restore() after new events were added; merge them first")
        self._parts = parts

    def take(self) -> dict[str, PartitionDelta]:
        """Hand over the accumulated deltas and start afresh."""
        parts, self._parts = self._parts, {}
        return parts


def _add(window: dict[str, float], name: str, by: float) -> None:
    window[name] = window.get(name, 0) + by
