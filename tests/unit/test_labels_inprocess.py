"""Late labels end to end in this process: simulator -> InProcessPipeline -> Engine -> MemoryStore -> alerts.

* ``ctr_drop_after_release`` (a new control version with a lower click probability) raises a
  ``release_ctr`` alert naming the new version, once its first serving window has matured, and resolves
  once the rollback has matured;
* clean traffic over several simulated hours raises no label alert;
* the joined sums do not depend on how requests are spread over partitions (the worker's murmur2 and the
  in-process crc32 give the same label windows), which the Kafka test relies on.
"""

from __future__ import annotations

import functools

import pytest

from stream_monitor.core.alerts import Alert
from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.runtime.kafka import murmur2_partition
from stream_monitor.sim import INCIDENT_KINDS, Incident, SimConfig, TrafficSimulator, parse_incident
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000
MINUTE = 60_000
STEP_MS = 10_000
LABEL_SIGNALS = ("label_ctr", "release_ctr", "label_join")


@functools.cache
def _topology() -> Topology:
    return load_topology()


def run(
    seed: int, minutes: int, incidents: tuple[Incident, ...] = (), rate: float = 40.0, murmur: bool = False
) -> tuple[list[Alert], MemoryStore, Engine]:
    sim = TrafficSimulator(
        seed=seed, start_ms=START, rate_per_s=rate, incidents=incidents, config=SimConfig()
    )
    sink, store, clock = ListSink(), MemoryStore(), EventTimeClock(START)
    pipeline = InProcessPipeline.build(
        _topology(),
        alerts=sink,
        deadletters=sink,
        clock=clock,
        partitions=4,
        worker_id="t",
        store=store,
        partition_of=murmur2_partition if murmur else None,
    )
    engine = pipeline.engine
    for _ in pipeline.drive(sim, START, START + minutes * MINUTE, STEP_MS):
        pass
    return sink.alerts, store, engine


def label_sums(store: MemoryStore, minutes: int = 200) -> dict[int, dict[str, float]]:
    return {start: store.read_labels(start) for start in range(START, START + minutes * MINUTE, MINUTE)}


def test_the_release_incident_deploys_a_version_and_names_it_in_its_ground_truth() -> None:
    spec = INCIDENT_KINDS["ctr_drop_after_release"]
    assert (spec.signal, spec.default_magnitude, spec.release) == ("release_ctr", 0.5, True)
    inc = parse_incident("ctr_drop_after_release:onset=60,duration=60,version=v9", START)
    assert inc.target == {"arm": "control"} and inc.ground_truth.detail == "v9"
    sim = TrafficSimulator(3, START, 20.0, [inc])
    events = list(sim.events(180))
    deployments = [e for kind, _, e in events if kind == "deployment"]
    assert [(d["ts"] - START, d["model_version"], d["reason"]) for d in deployments[1:]] == [
        (60_000, "v9", "release"),
        (120_000, SimConfig().control_version, "rollback"),
    ]
    versions = {
        (e["ts"] >= START + 60_000 and e["ts"] < START + 120_000, e["model_version"])
        for k, _, e in events
        if k == "serving"
    }
    assert versions == {(False, SimConfig().control_version), (True, "v9")}
    # Requests served outside the release, and their engagement, are the clean stream's, event for event.
    released = {e["request_id"] for k, _, e in events if k == "serving" and e["model_version"] == "v9"}

    def outside(stream: list[tuple[str, bytes | None, dict[str, object]]]) -> list[object]:
        return [e for k, _, e in stream if k != "deployment" and e["request_id"] not in released]

    clean = list(TrafficSimulator(3, START, 20.0).events(180))
    assert released and outside(events) == outside(clean)


@pytest.mark.slow
def test_ctr_drop_after_release_fires_on_the_new_version_and_resolves_after_rollback() -> None:
    onset, duration = START + 20 * MINUTE, 10 * MINUTE
    incident = Incident(
        "ctr_drop_after_release", onset_ms=onset, duration_ms=duration, target={"arm": "control"}
    )
    alerts, _store, engine = run(11, 50, (incident,))
    truth = incident.ground_truth
    maturity = _topology().labels.maturity_ms
    first_label_window = onset + MINUTE + maturity  # the onset window's labels mature then
    firing = [a for a in alerts if a.status == "firing"]
    hits = [a for a in firing if a.signal == truth.signal and a.key["model_version"] == truth.detail]
    assert hits, [(a.signal, a.series) for a in firing]
    first = min(hits, key=lambda a: a.window["start"])
    assert first_label_window <= first.window["start"] < first_label_window + 3 * MINUTE
    assert first.key["arm"] == "control" and all(first.key[d] == "*" for d in _topology().segment_dims)
    assert f"previous version {SimConfig().control_version}" in first.message
    # Nothing but the release's own alerts fired (no label alert elsewhere, no window alert at all).
    assert {(a.signal, a.key["model_version"]) for a in firing} == {(truth.signal, truth.detail)}
    resolved = [a for a in alerts if a.status == "resolved" and a.id == first.id]
    assert resolved and resolved[0].window["start"] >= onset + duration + MINUTE + maturity
    # Bounded by maturity: about (window + maturity) of requests wait (the peak rate is 1.3 x 40/s).
    assert engine.labels is not None and 0 < engine.labels.pending < 1.3 * 40 * 60 * 18


@pytest.mark.slow
def test_clean_traffic_for_hours_raises_no_label_alert() -> None:
    # Three simulated hours (about 2.5 minutes here): marked slow.
    alerts, store, _ = run(2, 180, rate=25.0)
    label_alerts = [(a.signal, a.metric, a.series) for a in alerts if a.signal in LABEL_SIGNALS]
    assert label_alerts == []
    assert alerts == []
    windows = [w for w in label_sums(store).values() if w]
    assert len(windows) > 150
    eng = sum(w.get("*#eng", 0) for w in windows)
    assert sum(w.get("*#orphan", 0) for w in windows) < 0.001 * eng


def test_joined_sums_do_not_depend_on_the_partitioner() -> None:
    _, crc, _ = run(5, 25, rate=20.0)
    _, murmur, _ = run(5, 25, rate=20.0, murmur=True)
    # Label windows up to a minute before the end have matured in every partition of both runs.
    sums = label_sums(crc, minutes=24)
    assert sum(1 for w in sums.values() if any(k.endswith("#req") for k in w)) >= 8
    assert label_sums(murmur, minutes=24) == sums
