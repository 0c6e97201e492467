"""Context capture in the engine: traces are stored per commit, alerts name traced requests of their slice."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert, DetectorState
from stream_monitor.core.topology import TraceRule
from stream_monitor.core.traces import TraceBatch
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, TrafficSimulator
from stream_monitor.sinks.base import JsonLinesSink, ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.state.traces import MemoryTraceStore, load_trace
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_763_942_400_000


class FailingTraceStore(MemoryTraceStore):
    def put(self, batch: TraceBatch) -> None:
        raise ConnectionError("trace store down")

    def slices(self) -> list[str]:
        raise ConnectionError("trace store down")

    def pin(self, request_ids: object) -> None:
        raise ConnectionError("trace store down")


def run(traces: MemoryTraceStore, minutes: int = 25) -> tuple[Engine, ListSink, MemoryStore]:
    topology = load_topology(None)
    topology = replace(topology, traces=TraceRule(sample_rate=0.5, per_slice_per_window=20, per_window=2000))
    incident = Incident("source_outage", START + 900_000, None, target={"region": "eu"})
    sim = TrafficSimulator(seed=3, start_ms=START, rate_per_s=12.0, incidents=[incident])
    sink, store, clock = ListSink(), MemoryStore(), EventTimeClock(START)
    engine = Engine(
        topology,
        store,
        sink,
        sink,
        clock,
        options=EngineOptions(worker_id="t", auto_claim=True),
        traces=traces,
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=2)
    until = START
    while until < START + minutes * 60_000:
        until += 20_000
        for kind, key, event in sim.events_until(until):
            pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(until)
        pipeline.step()
    return engine, sink, store


def test_alerts_carry_example_request_ids_of_their_slice() -> None:
    traces = MemoryTraceStore()
    engine, sink, store = run(traces)
    dims = engine.topology.key_dims
    firing = [a for a in sink.alerts if a.status == "firing"]
    outage = [a for a in firing if a.signal == "candidate_source" and a.key["region"] == "eu"]
    assert outage, [(a.signal, a.key) for a in firing]
    for alert in firing:
        assert 1 <= len(alert.example_request_ids) <= 3, alert
        for rid in alert.example_request_ids:
            record = load_trace(traces, rid)
            assert record is not None, rid
            assert record.ts < alert.window["end"]
            values = dict(zip(dims, record.series.split("|"), strict=True))
            exact = all(v in ("*", values[d]) for d, v in alert.key.items())
            wide = values["model"] == alert.key["model"] and alert.key["model_version"] in (
                "*",
                values["model_version"],
            )
            assert exact or wide, (alert.key, record.series)
    # The outage's slice has traces of its own: its examples are from region=eu, and show the outage
    # (the source that went dark gave no candidates).
    for alert in outage:
        for rid in alert.example_request_ids:
            record = load_trace(traces, rid)
            assert record is not None and record.segment["region"] == "eu"
            assert record.ts >= alert.window["start"] - 60_000
    # Engagement that followed a traced request is attached to it.
    assert any(r.engagement for r in (load_trace(traces, rid) for rid in traces._traces) if r is not None)
    # In the published document and JSON lines; never in the detector checkpoint.
    schema = orjson.loads((Path(__file__).parents[2] / "docs/schemas/alert.schema.json").read_bytes())
    assert not list(Draft202012Validator(schema).iter_errors(outage[0].to_dict()))
    out = io.BytesIO()
    JsonLinesSink(out).emit(outage)
    assert (
        orjson.loads(out.getvalue().splitlines()[0])["example_request_ids"] == outage[0].example_request_ids
    )
    raw = store.load_detector_state()
    assert raw is not None
    state = DetectorState.from_json_dict(orjson.loads(raw))
    assert state.open_alerts and all("example_request_ids" not in d for d in state.open_alerts.values())
    assert all(Alert.from_dict(d).example_request_ids == [] for d in state.open_alerts.values())
    assert engine.trace_capture is not None and engine.trace_capture.captured > 0


def test_a_failing_trace_store_never_fails_a_commit_or_an_alert() -> None:
    engine, sink, store = run(FailingTraceStore(), minutes=18)
    assert engine.trace_write_failures > 0
    assert any(a.signal == "candidate_source" for a in sink.alerts)
    assert all(a.example_request_ids == [] for a in sink.alerts)
    assert store.totals()["consumed"] > 10_000


def test_no_capture_without_a_trace_store_or_when_disabled() -> None:
    topology = load_topology(None)
    engine = Engine(topology, MemoryStore(), ListSink(), ListSink(), EventTimeClock(START))
    assert engine.trace_capture is None
    off = replace(topology, traces=TraceRule(enabled=False))
    engine = Engine(
        off, MemoryStore(), ListSink(), ListSink(), EventTimeClock(START), traces=MemoryTraceStore()
    )
    assert engine.trace_capture is None and engine.trace_store is None


def test_traces_of_a_commit_the_store_refused_as_lost_are_not_written() -> None:
    """A Redis that came back empty refuses the commit (the worker exits and recounts from Kafka): the
    traces of that batch must not land in it either, or they would describe counts the store lacks."""
    topology = replace(load_topology(None), traces=TraceRule(sample_rate=1.0))
    traces, store, clock = MemoryTraceStore(), MemoryStore(), EventTimeClock(START)
    engine = Engine(
        topology,
        store,
        ListSink(),
        ListSink(),
        clock,
        options=EngineOptions(worker_id="t", auto_claim=True),
        traces=traces,
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=2)
    sim = TrafficSimulator(seed=5, start_ms=START, rate_per_s=20.0)
    for kind, key, event in sim.events_until(START + 30_000):
        pipeline.feed(kind, key, orjson.dumps(event))
    clock.observe(START + 30_000)
    pipeline.step()
    assert traces._traces, "the first, accepted commit stored traces"
    written = dict(traces._traces)

    engine.store = MemoryStore()  # the restarted, empty store: no partition is known
    for kind, key, event in sim.events_until(START + 60_000):
        pipeline.feed(kind, key, orjson.dumps(event))
    pending = engine.prepare_commit()
    assert pending is not None and pending.traces
    result = engine.commit_pending(pending)
    assert result.lost and not result.applied
    assert traces._traces == written
