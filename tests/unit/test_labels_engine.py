"""The label join inside the engine: a crash and restart from the store, and broken co-partitioning.

Messages are fed with Kafka-like offsets per partition. A "crash" drops everything not committed; the
restarted engine claims the partitions again (the store tells it where to resume, Kafka re-delivers from
there) and must end with the same label sums as one uninterrupted engine.
"""

from __future__ import annotations

import functools
import zlib

import orjson
import pytest

from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000
MINUTE = 60_000
PARTS = 2
TOPIC = {"serving": "recs.serving", "engagement": "recs.engagement", "deployment": "recs.deployments"}


@functools.cache
def _topology() -> Topology:
    return load_topology()


@functools.cache
def _messages() -> tuple[tuple[str, str, int, int, bytes, int], ...]:
    """(kind, topic, partition, offset, value, ts) of 30 simulated minutes, in production order."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for kind, key, event in TrafficSimulator(4, START, 12.0).events(30 * 60):
        partition = zlib.crc32(key) % PARTS if key else 0
        offset = offsets.get((kind, partition), 0)
        offsets[(kind, partition)] = offset + 1
        out.append((kind, TOPIC[kind], partition, offset, orjson.dumps(event), int(event["ts"])))
    return tuple(out)


def _engine(store: MemoryStore, clock: EventTimeClock, name: str, auto_claim: bool = True) -> Engine:
    sink = ListSink()
    options = EngineOptions(worker_id=name, auto_claim=auto_claim)
    return Engine(_topology(), store, sink, sink, clock, options=options)


def _labels(store: MemoryStore) -> dict[int, dict[str, float]]:
    return {s: f for s in range(START, START + 40 * MINUTE, MINUTE) if (f := store.read_labels(s))}


def _straight() -> dict[int, dict[str, float]]:
    store, clock = MemoryStore(), EventTimeClock(START)
    engine = _engine(store, clock, "straight")
    for i, (kind, topic, partition, offset, value, ts) in enumerate(_messages()):
        engine.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
        if i % 500 == 0:
            engine.flush()
    engine.flush()
    return _labels(store)


@pytest.mark.parametrize("crash_at", [0.3, 0.7])
def test_a_crash_and_restart_leave_the_joined_sums_exact(crash_at: float) -> None:
    messages = _messages()
    store, clock = MemoryStore(), EventTimeClock(START)
    first = _engine(store, clock, "first")
    cut = int(len(messages) * crash_at)
    for i, (kind, topic, partition, offset, value, ts) in enumerate(messages[:cut]):
        first.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
        if i % 700 == 0:
            first.flush()
    # Crash: whatever `first` ingested since its last flush is lost. A new owner claims everything and
    # Kafka re-delivers every partition from the start (offsets below the claims are skipped).
    second = _engine(store, clock, "second")
    second.assign(sorted({f"{topic}/{partition}" for _, topic, partition, *_ in messages}))
    assert second.labels is not None and second.labels.pending > 0  # the join state came back from the store
    for i, (kind, topic, partition, offset, value, ts) in enumerate(messages):
        second.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
        if i % 900 == 0:
            second.flush()
    second.flush()
    # The stale owner (its uncommitted batch and one more message) is refused, join state included.
    first.ingest(*messages[-1][:4], None, messages[-1][4])
    result = first.flush()
    assert result.applied == [] and result.refused and set(result.join_refused) <= {"0", "1"}
    assert _labels(store) == _straight()


def test_a_group_split_between_two_workers_counts_orphans_instead_of_joining() -> None:
    """Co-partitioning broken: one engine owns serving/0, another engagement/0. Nothing crashes, the
    join state stays untouched, and the engagement shows up as orphan."""
    store, clock = MemoryStore(), EventTimeClock(START)
    # No auto-claim: ownership is set by hand, one partition of the group each.
    serving_side = _engine(store, clock, "s", auto_claim=False)
    engagement_side = _engine(store, clock, "e", auto_claim=False)
    serving_side.assign(["recs.serving/0"])
    engagement_side.assign(["recs.engagement/0"])
    for kind, topic, partition, offset, value, ts in _messages():
        if partition == 0 and kind in ("serving", "engagement"):
            (serving_side if kind == "serving" else engagement_side).ingest(
                kind, topic, partition, offset, None, value
            )
            clock.observe(ts)
    assert serving_side.flush().join_refused == [] and engagement_side.flush().join_refused == []
    sums = _labels(store)
    total = {name: sum(f.get(name, 0) for f in sums.values()) for name in ("*#unjoined", "*#orphan", "*#eng")}
    assert total["*#unjoined"] > 1000 and total["*#orphan"] == total["*#eng"] > 3000
    assert not any(k.endswith("#req") for f in sums.values() for k in f)
    assert store.load_join("0") == ({}, {})
