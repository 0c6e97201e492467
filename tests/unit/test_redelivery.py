"""A consumer that seeks back re-delivers messages the engine has counted: each is counted once.

Faust seeks a partition back to Kafka's committed offset at a rebalance, and Kafka's offsets trail the
state store's (messages are acked after their commit), so the engine sees offsets again: before the
claim, committed since the claim, or accumulated in the batch not yet committed.
"""

from __future__ import annotations

import orjson

from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

START = 1_764_086_400_000


def _engine(store: MemoryStore) -> Engine:
    sink = ListSink()
    return Engine(
        load_topology(),
        store,
        sink,
        sink,
        ManualClock(START + 60_000),
        options=EngineOptions(auto_claim=True),
    )


def test_offsets_seen_again_are_skipped_before_and_after_the_commit() -> None:
    serving = [
        orjson.dumps(e) for kind, _, e in TrafficSimulator(3, START, 20).events(30) if kind == "serving"
    ]
    assert len(serving) >= 12
    store = MemoryStore()
    engine = _engine(store)

    def feed(offsets: range) -> None:
        for offset in offsets:
            engine.ingest("serving", "recs.serving", 0, offset, None, serving[offset])

    feed(range(0, 6))
    feed(range(3, 9))  # a seek back within the uncommitted batch
    assert engine.flush().applied == ["recs.serving/0"]
    feed(range(0, 12))  # a seek back to the start after the commit
    engine.flush()
    assert store.totals()["consumed"] == 12

    # A new worker claims where the store is (offset 12) and skips everything below it.
    restarted = _engine(store)
    for offset in range(0, 12):
        restarted.ingest("serving", "recs.serving", 0, offset, None, serving[offset])
    restarted.flush()
    assert store.totals()["consumed"] == 12
