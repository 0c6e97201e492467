"""Hostile and broken input through the whole engine: nothing crashes, nothing disappears, nothing grows.

The parser has its own property tests (test_core_events.py); here arbitrary messages go through
``Engine.ingest``, the commit and the window close with every signal enabled, and the books must balance:
consumed = accepted + rejected, one dead letter per rejected message.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sinks.base import ListSink
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

T0 = 1_764_086_400_000
TOPOLOGY = load_topology()


def _engine() -> tuple[Engine, ListSink, CollectorRegistry]:
    sink = ListSink()
    registry = CollectorRegistry()
    engine = Engine(
        TOPOLOGY,
        MemoryStore(),
        sink,
        sink,
        ManualClock(T0 + 3_600_000),
        MonitorMetrics(registry, TOPOLOGY.segment_dims),
        EngineOptions(auto_claim=True),
    )
    return engine, sink, registry


def _serving(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "type": "serving",
        "request_id": "r1",
        "ts": T0 + 1_000,
        "model": "home-ranker",
        "model_version": "v1",
        "arm": "control",
        "surface": "home",
        "segment": {"platform": "ios", "region": "us", "tenure": "new"},
        "latency_ms": {"total": 80.0, "ranking": 20.0},
        "funnel": {"retrieved": 100, "filtered": 50, "ranked": 40, "returned": 20},
        "sources": {"collab": 60, "trending": 40},
        "items": [{"id": "s1", "score": 0.5, "source": "collab"}],
        "features": {"watch_minutes_7d": 3.0},
        "feature_ts": {"watch_minutes_7d": T0},
        "fallback": False,
        "error": None,
    }
    event.update(overrides)
    return event


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson can write; huger ones: HOSTILE_BYTES
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(list(_serving()))
MUTATIONS = st.lists(st.tuples(FIELDS, JSON), max_size=4)

HOSTILE_BYTES = [
    b"",
    b"{",
    b"\xff\xfe\xfd",
    b"null",
    b"[" * 10_000 + b"]" * 10_000,  # deeply nested
    b'{"type": "serving", "ts": 1e400}',
    b'{"type": "serving", "ts": NaN}',
    b'{"type": "serving", "ts": 99999999999999999999999999999}',
    orjson.dumps(_serving(request_id="x" * 100_000)),
    orjson.dumps(_serving(items=[{"id": str(i)} for i in range(50_000)])),
    b" " * 1_000_001,
    orjson.dumps(_serving(latency_ms={"total": -1})),
    orjson.dumps(_serving(segment={"platform": ["ios"]})),
    orjson.dumps(_serving(sources={"collab": "many"}, funnel={"retrieved": -3})),
    orjson.dumps(_serving(feature_ts={"watch_minutes_7d": "yesterday"})),
]


def _reconcile(engine: Engine, sink: ListSink, messages: int) -> None:
    # One good event ten minutes later makes the fuzzed windows complete, so closing evaluates every
    # signal on whatever the fuzzed events left in them.
    later = orjson.dumps(_serving(ts=T0 + 600_000))
    engine.ingest("serving", "recs.serving", 1, 0, b"k", later)
    engine.flush()
    engine.close_ready(final=True)
    totals = engine.store.totals()
    if totals.get("accepted", 0) > 1:  # some fuzzed event was valid: its window was closed and evaluated
        assert engine.windows_closed >= 1
    assert totals.get("consumed", 0) == messages + 1
    assert totals.get("consumed", 0) == totals.get("accepted", 0) + totals.get("rejected", 0)
    assert len(sink.dead_letters) == totals.get("rejected", 0)


def test_a_catalogue_of_hostile_messages() -> None:
    engine, sink, _ = _engine()
    good = orjson.dumps(_serving())
    messages = [m for bad in HOSTILE_BYTES for m in (bad, good)]
    for offset, value in enumerate(messages):
        engine.ingest("serving", "recs.serving", 0, offset, b"k", value)
    _reconcile(engine, sink, len(messages))
    assert engine.store.totals()["accepted"] >= len(HOSTILE_BYTES)  # every good message counted
    assert {d.reason for d in sink.dead_letters} <= {
        "invalid_json",
        "invalid_field",
        "missing_field",
        "unknown_type",
        "too_large",
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(MUTATIONS, min_size=1, max_size=5), min_size=1, max_size=4))
def test_mutated_events_never_crash_and_always_balance(batches: list[list[list[tuple[str, object]]]]) -> None:
    engine, sink, _ = _engine()
    offset = 0
    for batch in batches:
        for mutation in batch:
            event = _serving(**dict(mutation))
            engine.ingest("serving", "recs.serving", 0, offset, b"k", orjson.dumps(event))
            offset += 1
        engine.flush()
        engine.close_ready()
    _reconcile(engine, sink, offset)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.binary(max_size=40) | st.just(orjson.dumps(_serving())), max_size=12))
def test_ndjson_batches_of_anything_balance_per_line(lines: list[bytes]) -> None:
    engine, sink, _ = _engine()
    engine.ingest("serving", "recs.serving", 0, 0, None, b"\n".join(lines), ndjson=True)
    counted = sum(1 for line in b"\n".join(lines).split(b"\n") if line.strip())
    _reconcile(engine, sink, counted)


def test_duplicate_request_ids_are_counted_as_sent() -> None:
    # The monitor counts what producers send; a duplicate request id is not an error of the event.
    engine, sink, _ = _engine()
    for offset in range(5):
        engine.ingest("serving", "recs.serving", 0, offset, b"k", orjson.dumps(_serving(request_id="same")))
    _reconcile(engine, sink, 5)
    assert engine.store.totals()["accepted"] == 5 + 1  # and the terminating event


def test_cardinality_attack_is_folded_and_bounded() -> None:
    """50,000 events, each with a fresh segment value, model version, feature and stage name."""
    engine, _, registry = _engine()
    n = 50_000
    for i in range(n):
        event = _serving(
            request_id=f"r{i}",
            ts=T0 + 3 * i,  # 150 s: two complete windows get closed and evaluated
            model_version=f"v{i}",
            segment={"platform": f"p{i}", "region": f"r{i}", "tenure": f"t{i}", f"dim{i}": "x"},
            latency_ms={"total": 50.0, f"stage{i}": 1.0},
            features={f"f{i}": 1.0},
            feature_ts={f"f{i}": T0},
            sources={f"source{i}": 10},
        )
        engine.ingest("serving", "recs.serving", 0, i, b"k", orjson.dumps(event))
    engine.flush()
    engine.close_ready(final=True)
    cap = TOPOLOGY.max_values_per_dim
    assert engine.windows_closed >= 2
    fields = engine.store.read_window(TOPOLOGY.window.start_of(T0))
    series = {name.rpartition("#")[0] for name in fields}
    assert len(series) <= cap + 1  # each dimension keeps `cap` values, then everything is "other"
    assert max(len(name) for name in fields) < 200
    folded = registry.get_sample_value("stream_monitor_series_folded_total")
    assert folded is not None and folded >= n - cap
    signal_series = [
        s
        for family in registry.collect()
        if family.name == "stream_monitor_signal_value"
        for s in family.samples
    ]
    # Roll-ups of at most (cap + 1) values per dimension, a few metrics each: bounded, not 50,000.
    assert len(signal_series) < 20 * (cap + 1) * len(TOPOLOGY.group_by)
    print(
        f"\nCARDINALITY: {n} hostile events -> {len(series)} series, {len(fields)} window fields, "
        f"{len(signal_series)} signal gauges, {int(folded)} folded"
    )
