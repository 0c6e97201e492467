"""The simulator's dataset events and the ``dataset_late`` incident: on schedule when clean, opt-in (nothing
else in the stream changes), chunk-independent, and late exactly where the incident says."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_monitor.core.events import DatasetEvent, parse_event
from stream_monitor.sim import (
    DATA_INCIDENT_KINDS,
    INCIDENT_KINDS,
    Incident,
    SimConfig,
    TrafficSimulator,
    parse_incident,
)

pytestmark = pytest.mark.unit

START = 1_764_028_800_000  # 2025-11-25T00:00:00Z
HOUR = 3_600_000
HOURLY = ("user_features_hourly", 3600.0, 5000)
FIVE_MIN = ("snapshots", 300.0, 2000)
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "dataset.schema.json"


def _run(
    duration_s: float, incidents: tuple[Incident, ...] = (), **config: Any
) -> list[tuple[str, Any, Any]]:
    sim = TrafficSimulator(3, START, 1.0, incidents, SimConfig(engagement=False, **config))
    return list(sim.events(duration_s))


def _datasets(events: list[tuple[str, Any, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [e for kind, _, e in events if kind == "dataset" and name in (None, e["name"])]


def test_datasets_are_opt_in_and_change_nothing_else() -> None:
    plain = _run(3 * 3600)
    assert _datasets(plain) == []
    with_datasets = _run(3 * 3600, datasets=(HOURLY, FIVE_MIN))
    assert [x for x in with_datasets if x[0] != "dataset"] == plain
    sim = TrafficSimulator(3, START, 1.0, config=SimConfig(engagement=False, datasets=(HOURLY,)))
    list(sim.events(3 * 3600))
    assert sim.counts["dataset"] == 3  # at 0 h, ~1 h 05 and ~2 h 05; the one due at 3 h lands after the run


def test_clean_partitions_land_on_schedule() -> None:
    events = _run(4 * 3600, datasets=(HOURLY, FIVE_MIN))
    hourly = _datasets(events, HOURLY[0])
    assert [e["partition"] for e in hourly] == [
        "2025-11-24T23:00",
        "2025-11-25T00:00",
        "2025-11-25T01:00",
        "2025-11-25T02:00",
    ]
    assert hourly[0]["ts"] == START  # the partition of the period before the start is there at the start
    for k, event in enumerate(hourly[1:], 1):
        delay = event["ts"] - (START + k * HOUR)
        assert 0 < delay <= HOUR / 3  # median 5 min, never past a third of the period
        assert 4500 <= event["rows"] <= 5500
    snapshots = _datasets(events, FIVE_MIN[0])
    assert len(snapshots) == 4 * 12
    assert all(0 <= e["ts"] - (START + k * 300_000) <= 100_000 for k, e in enumerate(snapshots))
    # Every event follows the contract and the stream stays in time order.
    validator = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    for event in hourly + snapshots:
        assert list(validator.iter_errors(event)) == []
        assert isinstance(parse_event(orjson.dumps(event), expected="dataset"), DatasetEvent)
    assert all(a[2]["ts"] <= b[2]["ts"] for a, b in itertools.pairwise(events))
    keys = {key for kind, key, _ in events if kind == "dataset"}
    assert keys == {HOURLY[0].encode(), FIVE_MIN[0].encode()}


def test_dataset_events_do_not_depend_on_how_the_stream_is_pulled() -> None:
    config = SimConfig(engagement=False, datasets=(HOURLY, FIVE_MIN))
    whole = list(TrafficSimulator(3, START, 1.0, config=config).events(2 * 3600))
    sim = TrafficSimulator(3, START, 1.0, config=config)
    pieces: list[Any] = []
    for minute in range(1, 121):
        pieces.extend(sim.events_until(START + minute * 60_000))
    assert pieces == whole


def test_dataset_late_moves_only_its_partitions_due_in_its_window() -> None:
    late = Incident("dataset_late", onset_ms=START + HOUR, duration_ms=HOUR, magnitude=5400)
    clean = _run(5 * 3600, datasets=(HOURLY, FIVE_MIN))
    hit = _run(5 * 3600, (late,), datasets=(HOURLY, FIVE_MIN))
    # Everything but the hourly dataset is the same event for event.
    assert [x for x in hit if x[0] != "dataset" or x[2]["name"] != HOURLY[0]] == [
        x for x in clean if x[0] != "dataset" or x[2]["name"] != HOURLY[0]
    ]
    before = {e["partition"]: e for e in _datasets(clean, HOURLY[0])}
    after = {e["partition"]: e for e in _datasets(hit, HOURLY[0])}
    assert set(before) == set(after)
    moved = {p: after[p]["ts"] - before[p]["ts"] for p in before if after[p] != before[p]}
    assert moved == {"2025-11-25T00:00": 5_400_000}  # the one due at 01:00, in [onset, onset + 1 h)
    assert after["2025-11-25T00:00"]["rows"] == before["2025-11-25T00:00"]["rows"]


def test_dataset_late_ground_truth_and_validation() -> None:
    assert "dataset_late" not in INCIDENT_KINDS  # the request-path registry is unchanged
    spec = DATA_INCIDENT_KINDS["dataset_late"]
    assert (spec.signal, spec.default_magnitude, spec.global_key) == ("dataset_arrival", 7200.0, True)
    inc = parse_incident("dataset_late:dataset=snapshots,magnitude=600,onset=60,duration=300", START)
    assert (inc.dataset, inc.magnitude, inc.onset_ms, inc.end_ms) == (
        "snapshots",
        600.0,
        START + 60_000,
        START + 360_000,
    )
    truth = inc.ground_truth
    assert (truth.signal, truth.key, truth.detail, truth.onset_ms) == (
        "dataset_arrival",
        {},
        "snapshots",
        START + 60_000,
    )
    assert "dataset=snapshots" in inc.describe()
    with pytest.raises(ValueError, match="hits a dataset, not a slice"):
        Incident("dataset_late", 0, target={"region": "eu"})
    with pytest.raises(ValueError, match="dataset applies only to dataset_late"):
        parse_incident("error_spike:dataset=snapshots", START)
    with pytest.raises(ValueError, match="dataset applies only to dataset_late, not traffic_drop"):
        Incident("traffic_drop", 0, dataset="snapshots")
    with pytest.raises(ValueError, match=r"out of range for dataset_late: expected \(0, 604800\]"):
        Incident("dataset_late", 0, magnitude=0)
    with pytest.raises(ValueError, match=r"does not schedule; SimConfig.datasets has \['snapshots'\]"):
        TrafficSimulator(1, START, 1.0, [Incident("dataset_late", START)], SimConfig(datasets=(FIVE_MIN,)))
    with pytest.raises(ValueError, match="names must be unique"):
        SimConfig(datasets=(FIVE_MIN, FIVE_MIN))
    with pytest.raises(ValueError, match="every_s > 0"):
        SimConfig(datasets=(("x", 0.0, 5),))
