"""Dataset arrival (stream_monitor.core.datasets): the late and rows checks, the topology section, and
the engine's handling of dataset events (stored with the commit, unknown names ignored, future ones
dead-lettered)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from stream_monitor.core.clock import ManualClock
from stream_monitor.core.datasets import DatasetArrival, check_datasets
from stream_monitor.core.topology import DatasetRule, Topology
from stream_monitor.core.windows import WindowSpec
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import TopologyError, load_topology, parse_topology

pytestmark = pytest.mark.unit

T0 = 1_764_028_800_000
MINUTE = 60_000
HOURLY = DatasetRule("hourly", every_ms=60 * MINUTE, grace_ms=30 * MINUTE, min_rows=1000)


def _check(arrival: DatasetArrival | None, end: int, rules: tuple[DatasetRule, ...] = (HOURLY,)) -> Any:
    latest = {} if arrival is None else {arrival.name: arrival}
    values, breaches = check_datasets(rules, latest, end, n_dims=4)
    return {v.metric: v.value for v in values}, [(b.metric, b.observed, b.threshold) for b in breaches]


def test_on_time_late_and_short_by_hand() -> None:
    arrival = DatasetArrival("hourly", "2025-11-25T00:00", T0, 5000)
    # 90 minutes old is exactly the deadline: not late yet; one more second is.
    assert _check(arrival, T0 + 90 * MINUTE) == ({"late.hourly": 5400.0, "rows.hourly": 5000.0}, [])
    assert _check(arrival, T0 + 90 * MINUTE + 1000)[1] == [("late.hourly", 5401.0, 5400.0)]
    short = DatasetArrival("hourly", "p", T0, 999)
    assert _check(short, T0 + MINUTE)[1] == [("rows.hourly", 999.0, 1000.0)]
    assert _check(DatasetArrival("hourly", "p", T0, 1000), T0 + MINUTE)[1] == []


def test_a_partition_after_the_window_end_counts_as_arrived() -> None:
    future = DatasetArrival("hourly", "p", T0 + 10 * MINUTE, 5000)
    assert _check(future, T0)[0]["late.hourly"] == 0.0


def test_a_dataset_never_seen_is_not_judged_and_others_are_ignored() -> None:
    assert _check(None, T0) == ({}, [])
    stranger = DatasetArrival("stranger", "p", 0, 0)
    assert _check(stranger, T0) == ({}, [])


def test_the_alert_names_the_dataset_and_the_partition() -> None:
    arrival = DatasetArrival("hourly", "2025-11-25T00:00", T0, 5000)
    _, (breach,) = check_datasets([HOURLY], {"hourly": arrival}, T0 + 3 * 60 * MINUTE, n_dims=5)
    assert breach.key == ("*",) * 5 and breach.unit == "s" and breach.severity == "warning"
    assert breach.message == (
        "dataset hourly is late: its newest partition '2025-11-25T00:00' landed 3.0 h ago, a partition is "
        "due every 60 min (+30 min grace)"
    )


def test_stored_records_that_are_not_arrivals_are_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        DatasetArrival.from_json(b'{"name": "x"}')
    with pytest.raises(ValueError, match="malformed"):
        DatasetArrival.from_json(b"not json")


def test_the_default_topology_declares_datasets() -> None:
    rules = {r.name: r for r in load_topology().datasets}
    assert rules["user_features_hourly"] == DatasetRule("user_features_hourly", 3_600_000, 1_800_000, 1000)


@pytest.mark.parametrize(
    ("datasets", "fragment"),
    [
        ({"d": {"grace": "1h"}}, "datasets.d: expected a mapping with at least every"),
        ({"d": {"every": "soon"}}, "datasets.d.every: 'soon' is not a duration"),
        ({"d": {"every": "1h", "grace": "-5m"}}, "datasets.d.grace"),
        ({"d": {"every": "1h", "min_rows": -1}}, "need every > 0, grace >= 0 and min_rows >= 0"),
        ({"d": {"every": "1h", "rows": 5}}, "datasets.d: unknown keys ['rows']"),
        ({"d": {"every": "1h", "severity": "page"}}, "severity 'page'"),
        ({"d": "1h"}, "datasets.d: expected a mapping"),
    ],
)
def test_bad_dataset_sections_are_refused_precisely(datasets: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(fragment)):
        parse_topology({"name": "t", "datasets": datasets})


def _engine() -> tuple[Engine, ListSink, MemoryStore]:
    topology = Topology("t", WindowSpec(MINUTE), datasets=(HOURLY,))
    sink, store = ListSink(), MemoryStore()
    clock = ManualClock(T0)
    engine = Engine(topology, store, sink, sink, clock, options=EngineOptions(auto_claim=True))
    return engine, sink, store


def _dataset(**changes: Any) -> bytes:
    return orjson.dumps(
        {"type": "dataset", "name": "hourly", "partition": "p", "ts": T0, "rows": 5, **changes}
    )


def test_the_engine_stores_configured_datasets_with_the_commit() -> None:
    engine, sink, store = _engine()
    engine.ingest("dataset", "recs.datasets", 0, 0, b"hourly", _dataset())
    engine.ingest("dataset", "recs.datasets", 0, 1, b"x", _dataset(name="unlisted"))
    engine.ingest("dataset", "recs.datasets", 0, 2, b"hourly", _dataset(ts=T0 - 1, partition="older"))
    assert store.datasets() == {}  # nothing before the commit
    assert engine.flush().applied == ["recs.datasets/0"]
    assert DatasetArrival.from_json(store.datasets()["hourly"]) == DatasetArrival("hourly", "p", T0, 5)
    assert set(store.datasets()) == {"hourly"}
    assert store.totals()["accepted"] == 3 and sink.dead_letters == []


def test_bad_and_future_dataset_events_are_dead_lettered() -> None:
    engine, sink, store = _engine()
    engine.ingest("dataset", "recs.datasets", 0, 0, b"hourly", _dataset(rows=-3))
    engine.ingest("dataset", "recs.datasets", 0, 1, b"hourly", _dataset(ts=T0 + 3_600_000))
    engine.ingest("dataset", "recs.datasets", 0, 2, b"hourly", _dataset(type="deployment"))
    engine.flush()
    assert [(d.reason, d.offset) for d in sink.dead_letters] == [
        ("invalid_field", 0),
        ("future_event", 1),
        ("unknown_type", 2),
    ]
    assert sink.dead_letters[1].detail == f"ts: {T0 + 3_600_000} is 3600 s in the future"
    assert store.datasets() == {} and store.totals()["rejected"] == 3
