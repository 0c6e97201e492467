"""End to end in this process: simulated traffic -> InProcessPipeline -> Engine -> MemoryStore -> alerts.

The wiring is the demo's (stream_monitor/cli/demo.py) with event time for the clock: every incident kind of
the simulator, injected at its default magnitude on one slice, must raise an alert on its ground-truth
signal naming that slice within a few windows of the onset, and clear after it ends; clean traffic must
raise nothing. The rest checks the engine's accounting: dead letters, late events and replays.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert
from stream_monitor.core.events import MAX_EVENT_BYTES
from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import INCIDENT_KINDS, GroundTruth, Incident, SimConfig, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000  # 2025-11-25T00:00:00Z, a window boundary
MINUTE = 60_000
RATE = 40.0  # requests per simulated second
STEP_MS = 10_000  # commit and close every 10 simulated seconds
ONSET_MS = START + 15 * MINUTE
INCIDENT_MS = 10 * MINUTE
RUN_MINUTES = 30
INCIDENT_SEED = 11
# A second clean day in the slow tier: each is ~20-25 s of simulation.
CLEAN_SEEDS = (1, pytest.param(2, marks=pytest.mark.slow))
DETECT_WITHIN_WINDOWS = 3
TOPICS = Topics()
# Kinds judged on late labels (release_ctr) need engagement and maturity: tests/unit/test_labels_inprocess.py.
WINDOW_KINDS = sorted(k for k, spec in INCIDENT_KINDS.items() if not spec.release)
ALERT_SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "alert.schema.json"


@functools.cache
def _topology() -> Topology:
    return load_topology()


@dataclass
class Run:
    sim: TrafficSimulator
    engine: Engine
    pipeline: InProcessPipeline
    clock: EventTimeClock
    alerts: ListSink = field(default_factory=ListSink)
    dead: ListSink = field(default_factory=ListSink)

    @property
    def store(self) -> MemoryStore:
        store = self.engine.store
        assert isinstance(store, MemoryStore)
        return store

    def drive(
        self, until_ms: int, extra: dict[int, list[tuple[str, bytes | None, bytes]]] | None = None
    ) -> None:
        """Feed simulated events up to ``until_ms``, stepping every STEP_MS; ``extra`` adds raw messages."""
        t = self.clock.now_ms()
        while t < until_ms:
            t = min(t + STEP_MS, until_ms)
            for kind, key, event in self.sim.events_until(t):
                self.pipeline.feed(kind, key, orjson.dumps(event))
            for kind, key, raw in (extra or {}).get(t, []):
                self.pipeline.feed(kind, key, raw)
            self.clock.observe(t)
            self.pipeline.step()


def _start(
    seed: int, incidents: tuple[Incident, ...] = (), engagement: bool = False, rate: float = RATE
) -> Run:
    sim = TrafficSimulator(
        seed=seed,
        start_ms=START,
        rate_per_s=rate,
        incidents=incidents,
        config=SimConfig(engagement=engagement),
    )
    alerts, dead = ListSink(), ListSink()
    clock = EventTimeClock(START)
    engine = Engine(
        _topology(), MemoryStore(), alerts, dead, clock, options=EngineOptions(worker_id="t", auto_claim=True)
    )
    return Run(sim, engine, InProcessPipeline(engine, TOPICS, partitions=4), clock, alerts, dead)


@functools.cache
def _incident_run(kind: str) -> tuple[Incident, Run]:
    # Engagement events carry no segment: a logging break is injected (and seen) fleet-wide.
    fleet_wide = INCIDENT_KINDS[kind].global_key
    target = {} if fleet_wide else {"region": "eu"}
    incident = Incident(kind, onset_ms=ONSET_MS, duration_ms=INCIDENT_MS, target=target)
    run = _start(INCIDENT_SEED, (incident,), engagement=fleet_wide)
    run.drive(START + RUN_MINUTES * MINUTE)
    return incident, run


def _names_slice(alert: Alert, truth: GroundTruth) -> bool:
    """The alert's key is the ground-truth slice: its dimensions set, every other segment dim rolled up."""
    segment = _topology().segment_dims
    if any(alert.key[d] != truth.key.get(d, "*") for d in segment):
        return False
    return all(alert.key[d] == v for d, v in truth.key.items() if d not in segment)


def _matches(alert: Alert, truth: GroundTruth) -> bool:
    if alert.signal != truth.signal or not _names_slice(alert, truth):
        return False
    return truth.stage is None or alert.metric == f"p99.{truth.stage}"


def _window_ms(alert: Alert) -> int:
    return alert.window["start"]


# SLO burn alerts are symptoms of a whole series (model, version, arm, surface), not localised diagnoses:
# an error spike in one region rightly burns the series' error budget too. tests/unit/test_slo_inprocess.py
# covers them; the localisation checks here leave them out.
SLO_SIGNAL = "error_budget_burn"


def _diagnoses(alerts: list[Alert]) -> list[Alert]:
    top = set(_topology().segment_dims)
    slo = [a for a in alerts if a.signal == SLO_SIGNAL]
    assert all(a.key[d] == "*" for a in slo for d in top), [a.series for a in slo]
    return [a for a in alerts if a.signal != SLO_SIGNAL]


# -- every incident kind is detected, localised and cleared ---------------------------------------------


@pytest.mark.parametrize("kind", WINDOW_KINDS)
def test_incident_fires_on_its_ground_truth_slice(kind: str) -> None:
    incident, run = _incident_run(kind)
    truth = incident.ground_truth
    assert truth.key == ({} if INCIDENT_KINDS[kind].global_key else {"region": "eu"})
    size = _topology().window.size_ms
    onset_window = _topology().window.start_of(truth.onset_ms)

    firing = _diagnoses([a for a in run.alerts.alerts if a.status == "firing"])
    assert all(_window_ms(a) >= onset_window for a in firing), "an alert fired before the incident began"
    hits = sorted((a for a in firing if _matches(a, truth)), key=_window_ms)
    assert hits, (
        f"no {truth.signal} alert on {truth.key}; alerts: {[(a.signal, a.metric, a.series) for a in firing]}"
    )
    first = hits[0]
    assert onset_window <= _window_ms(first) < onset_window + DETECT_WITHIN_WINDOWS * size
    assert _names_slice(first, truth)
    if truth.stage is not None:
        assert first.metric == f"p99.{truth.stage}"
    if truth.detail is not None:  # the stale feature or the lost source is named in the metric
        assert first.metric.endswith(f".{truth.detail}")
    # Localised: nothing fires outside the ground-truth slice (latency may also fire on the total stage).
    assert all(_names_slice(a, truth) and a.signal == truth.signal for a in firing), [
        (a.signal, a.metric, a.series) for a in firing
    ]


def test_low_traffic_latency_regression_is_localised() -> None:
    # The demo's seed and the CLI demo test's rate; the eu slice sees ~390 requests per window.
    # Regression: web and eu tied at p99.ranking 299 ms (one sketch bucket); the narrower web was kept
    # first and never re-checked once eu was kept, so platform=web alerts fired too.
    incident = Incident("latency_regression", onset_ms=START + 10 * MINUTE, target={"region": "eu"})
    run = _start(7, (incident,), rate=20.0)
    run.drive(START + 20 * MINUTE)
    firing = [a for a in run.alerts.alerts if a.status == "firing"]
    assert any(_matches(a, incident.ground_truth) for a in firing)
    assert [(a.metric, a.series) for a in firing if not _names_slice(a, incident.ground_truth)] == []


@pytest.mark.parametrize("kind", WINDOW_KINDS)
def test_incident_alert_resolves_after_the_incident_ends(kind: str) -> None:
    incident, run = _incident_run(kind)
    truth = incident.ground_truth
    assert truth.end_ms is not None
    size = _topology().window.size_ms
    first = min((a for a in run.alerts.alerts if a.status == "firing" and _matches(a, truth)), key=_window_ms)
    resolved = [a for a in run.alerts.alerts if a.status == "resolved" and a.id == first.id]
    assert len(resolved) == 1
    (done,) = resolved
    assert truth.end_ms <= _window_ms(done) < truth.end_ms + DETECT_WITHIN_WINDOWS * size
    assert done.opened_at == first.opened_at
    assert done.dedupe_key == first.dedupe_key
    # Nothing is left open once the incident is over (an SLO ticket may be: its 30 min window still
    # holds the incident).
    diagnoses = _diagnoses(run.alerts.alerts)
    open_ids = {a.id for a in diagnoses if a.status == "firing"} - {
        a.id for a in diagnoses if a.status == "resolved"
    }
    assert open_ids == set()


@pytest.mark.parametrize("kind", WINDOW_KINDS)
def test_incident_alerts_follow_the_alert_schema(kind: str) -> None:
    _, run = _incident_run(kind)
    validator = Draft202012Validator(json.loads(ALERT_SCHEMA.read_text(encoding="utf-8")))
    assert run.alerts.alerts
    for alert in run.alerts.alerts:
        doc = orjson.loads(orjson.dumps(alert.to_dict()))
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == [], errors
        assert alert.topology == _topology().name
        assert alert.window["size_ms"] == _topology().window.size_ms


def test_incident_runs_account_for_every_message() -> None:
    _, run = _incident_run("error_spike")
    totals = run.store.totals()
    assert run.dead.dead_letters == []
    assert totals["consumed"] == totals["accepted"] == run.pipeline.fed
    assert totals.get("rejected", 0) == 0
    # 30 minutes of windows, the last one or two still waiting for the watermark.
    assert RUN_MINUTES - 2 <= run.engine.windows_closed <= RUN_MINUTES


def test_global_incident_is_reported_once_at_the_top_level() -> None:
    # Regression: a fleet-wide error spike was reported 11 times (the total and every platform, region,
    # tenure) by the first version of WindowEvaluator.explain_away.
    incident = Incident("error_spike", onset_ms=ONSET_MS, duration_ms=INCIDENT_MS, target={})
    run = _start(INCIDENT_SEED, (incident,))
    run.drive(ONSET_MS + 3 * MINUTE)
    firing = _diagnoses([a for a in run.alerts.alerts if a.status == "firing"])
    assert [(a.signal, {k: v for k, v in a.key.items() if v != "*"}) for a in firing] == [
        (
            "error_rate",
            {
                "model": "home-ranker",
                "model_version": SimConfig().control_version,
                "arm": "control",
                "surface": "home",
            },
        )
    ]


# -- clean traffic --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", CLEAN_SEEDS)
def test_clean_traffic_raises_no_alert(seed: int) -> None:
    run = _start(seed)
    run.drive(START + 60 * MINUTE)
    assert [(a.signal, a.metric, a.series, _window_ms(a)) for a in run.alerts.alerts] == []
    assert run.dead.dead_letters == []
    assert run.engine.windows_closed >= 58
    totals = run.store.totals()
    assert totals["consumed"] == totals["accepted"] == run.pipeline.fed


# -- accounting: dead letters, late events, replays -----------------------------------------------------


def _serving(ts: int, request_id: str = "bad-1", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "serving",
        "request_id": request_id,
        "ts": ts,
        "model": "home-ranker",
        "model_version": "2026.11.20-3",
        "arm": "control",
        "surface": "home",
        "segment": {"platform": "ios", "region": "eu", "tenure": "new"},
        "latency_ms": {"total": 80.0},
        "funnel": {"returned": 20},
    }
    doc.update(changes)
    return doc


def test_bad_messages_are_dead_lettered_and_counted() -> None:
    run = _start(3, engagement=True)
    at = START + 2 * MINUTE
    too_large = orjson.dumps(_serving(at, features={"blob": "x" * MAX_EVENT_BYTES}))
    no_model = {k: v for k, v in _serving(at).items() if k != "model"}
    click = {"type": "engagement", "request_id": "r", "ts": at, "action": "click"}
    bad: list[tuple[str, bytes | None, bytes, str]] = [
        ("serving", b"k1", b"not json", "invalid_json"),
        ("serving", b"k2", b"\xff\xfe{}", "invalid_json"),
        ("serving", b"k3", b"[1, 2]", "invalid_json"),
        ("serving", b"k4", orjson.dumps(_serving(at, arm="beta")), "invalid_field"),
        ("serving", b"k5", orjson.dumps(_serving(at, latency_ms={"total": -3.0})), "invalid_field"),
        ("serving", b"k6", orjson.dumps(no_model), "missing_field"),
        ("serving", None, orjson.dumps(click), "unknown_type"),
        ("engagement", b"k7", orjson.dumps(_serving(at)), "unknown_type"),
        ("serving", b"k8", too_large, "too_large"),
        ("serving", b"k9", orjson.dumps(_serving(at + 3_600_000)), "future_event"),
    ]
    run.drive(START + 4 * MINUTE, extra={at: [(k, key, raw) for k, key, raw, _ in bad]})

    dead = run.dead.dead_letters
    assert Counter(d.reason for d in dead) == Counter(reason for *_, reason in bad)
    by_value = {d.value: d for d in dead}
    for kind, key, raw, reason in bad:
        record = by_value[raw]
        assert record.reason == reason
        assert record.key == key
        assert record.topic == (TOPICS.engagement if kind == "engagement" else TOPICS.serving)
        assert record.worker == "t"
        assert record.detail
    totals = run.store.totals()
    assert totals["consumed"] == run.pipeline.fed
    assert totals["consumed"] == totals["accepted"] + totals["rejected"]
    assert totals["rejected"] == len(bad)
    for reason, n in Counter(reason for *_, reason in bad).items():
        assert totals[f"rejected.{reason}"] == n
    assert run.alerts.alerts == []


def _n(window: dict[str, float]) -> float:
    return sum(v for k, v in window.items() if k.endswith("#n"))


def test_late_event_is_dead_lettered_and_not_counted() -> None:
    run = _start(4)
    run.drive(START + 5 * MINUTE)
    closed_before = run.store.closed_before()
    assert closed_before is not None and closed_before >= START + 3 * MINUTE
    first_window = run.store.read_window(START)
    assert _n(first_window) > 0

    late = orjson.dumps(_serving(START + 1_000, request_id="late-1"))
    on_time = orjson.dumps(_serving(closed_before + 1_000, request_id="ok-1"))
    run.pipeline.feed("serving", b"late-1", late)
    run.pipeline.feed("serving", b"ok-1", on_time)
    run.pipeline.step()

    (record,) = run.dead.dead_letters
    assert record.reason == "late_event"
    assert record.value == late
    assert record.detail.startswith("ts: ")
    assert run.store.read_window(START) == first_window  # the closed window did not change
    totals = run.store.totals()
    assert totals["rejected.late_event"] == 1
    assert totals["consumed"] == totals["accepted"] + totals["rejected"] == run.pipeline.fed


def _replay_engine() -> tuple[Engine, MemoryStore, ListSink]:
    store, sink = MemoryStore(), ListSink()
    clock = EventTimeClock(START + MINUTE)
    engine = Engine(
        _topology(), store, sink, sink, clock, options=EngineOptions(worker_id="t", auto_claim=True)
    )
    return engine, store, sink


TP = f"{TOPICS.serving}/2"


def _messages(n: int) -> list[bytes]:
    return [orjson.dumps(_serving(START + 1_000 * i, request_id=f"r{i}")) for i in range(n)]


def _ingest(engine: Engine, messages: list[bytes], offsets: range) -> None:
    for offset in offsets:
        engine.ingest("serving", TOPICS.serving, 2, offset, None, messages[offset])


def test_replay_after_reclaim_does_not_double_count() -> None:
    engine, store, _ = _replay_engine()
    messages = _messages(15)
    _ingest(engine, messages, range(10))
    assert engine.flush().applied == [TP]
    assert _n(store.read_window(START)) == 10

    # The partition is assigned again (a rebalance, a restart) and Kafka redelivers from an older offset.
    claim = engine.assign([TP])[TP]
    assert (claim.epoch, claim.next_offset) == (2, 10)
    _ingest(engine, messages, range(15))  # offsets 0..9 again, then 10..14 for the first time
    result = engine.flush()
    assert result.applied == [TP] and result.refused == []

    assert _n(store.read_window(START)) == 15
    totals = store.totals()
    assert totals["consumed"] == totals["accepted"] == 15
    assert store.progress()[TP].next_offset == 15

    # A second full replay counts nothing at all.
    engine.assign([TP])
    _ingest(engine, messages, range(15))
    engine.flush()
    assert _n(store.read_window(START)) == 15
    assert store.totals()["consumed"] == 15


def test_previous_owner_is_fenced_after_a_reclaim() -> None:
    store = MemoryStore()
    old, new = (
        Engine(
            _topology(),
            store,
            ListSink(),
            ListSink(),
            EventTimeClock(START + MINUTE),
            options=EngineOptions(worker_id=name, auto_claim=True),
        )
        for name in ("old", "new")
    )
    messages = _messages(10)
    _ingest(old, messages, range(5))  # claims the partition, counts 0..4 but has not committed yet
    new.assign([TP])  # the partition moves: epoch 2
    _ingest(new, messages, range(10))
    assert new.flush().applied == [TP]
    result = old.flush()
    assert result.refused == [TP] and result.applied == []
    assert TP in old.fenced
    assert _n(store.read_window(START)) == 10
    assert store.totals()["consumed"] == 10


def test_reclaim_with_an_uncommitted_batch_does_not_double_count() -> None:
    # Regression: assign() kept the uncommitted delta of the re-claimed partition and committed it, with
    # the replay on top, under the new epoch (10 messages counted 20 times).
    engine, store, _ = _replay_engine()
    messages = _messages(10)
    _ingest(engine, messages, range(10))  # ingested, not flushed
    engine.assign([TP])  # re-claimed: counting resumes at the store's offset 0
    _ingest(engine, messages, range(10))  # Kafka redelivers from there
    assert engine.flush().applied == [TP]
    assert _n(store.read_window(START)) == 10
    assert store.totals()["consumed"] == 10
    assert store.progress()[TP].next_offset == 10
