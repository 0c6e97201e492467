"""The engine asks for a commit once a batch has accumulated many fields (bounded commit scripts)."""

from __future__ import annotations

import orjson

from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

START = 1_764_086_400_000


def test_commit_is_due_past_the_field_cap_and_not_after_a_flush() -> None:
    sink = ListSink()
    engine = Engine(
        load_topology(),
        MemoryStore(),
        sink,
        sink,
        ManualClock(START + 60_000),
        options=EngineOptions(auto_claim=True, max_commit_fields=500),
    )
    events = [e for kind, _, e in TrafficSimulator(3, START, 50).events(30) if kind == "serving"]
    due_after = None
    for offset, event in enumerate(events):
        engine.ingest("serving", "recs.serving", 0, offset, None, orjson.dumps(event))
        if engine.commit_due():
            due_after = offset + 1
            break
    assert due_after is not None and due_after < len(events)
    assert engine.accumulator.field_count() >= 500
    assert engine.flush().applied == ["recs.serving/0"]
    assert engine.accumulator.field_count() == 0 and not engine.commit_due()
