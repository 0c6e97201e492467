"""Shadow analysis end to end in this process: simulator (shadow arm) -> pipeline -> Engine -> health sink.

* healthy shadows (the simulator's default: the control's ranking with small differences) are never
  rolled back over several seeds, and are promoted;
* the three bad shadows of the simulator are rolled back, naming what diverged;
* ``stream-monitor replay`` writes shadow verdicts beside canary ones, valid against the health schema;
* the verdicts reach the gate (``kind=shadow``) and ``stream-monitor canary --kind shadow`` through the
  store;
* a crash and restart from the store (memory, and Redis under the integration marker) neither loses nor
  double-counts a pair;
* the simulator's shadow only adds events: without its events the stream is the one without a shadow.
"""

from __future__ import annotations

import functools
import io
import json
import zlib
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from stream_monitor.bench.shadow import BAD_SHADOWS, run_shadow
from stream_monitor.cli.canary import show
from stream_monitor.cli.main import main
from stream_monitor.core.clock import ManualClock
from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock
from stream_monitor.sim import SHADOW_INCIDENT_KINDS, Incident, SimConfig, TrafficSimulator, parse_incident
from stream_monitor.sinks.base import ListSink
from stream_monitor.sinks.health import StoreHealthSink, read_gate
from stream_monitor.state import MemoryStore, StateStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "health.schema.json").read_text(encoding="utf-8"))
START = 1_764_028_800_000
MINUTE = 60_000
TOPIC = {"serving": "recs.serving", "engagement": "recs.engagement", "deployment": "recs.deployments"}
SHADOW_VERSION = SimConfig().shadow_version


@functools.cache
def _topology() -> Topology:
    return load_topology()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_shadow_is_never_rolled_back_and_is_promoted(seed: int) -> None:
    run = run_shadow(_topology(), seed, None, minutes=7, rate=30)
    assert not run.rolled_back, run.reason
    assert run.promoted and run.decision == "PROMOTE", run.reason


@pytest.mark.parametrize(
    ("kind", "metric"),
    [
        ("shadow_divergence", "overlap.rbo"),
        ("shadow_score_shift", "score"),
        ("shadow_empty", "empty_slate_rate"),
    ],
)
@pytest.mark.parametrize("seed", [11, 12])
def test_a_bad_shadow_is_rolled_back_naming_what_diverged(kind: str, metric: str, seed: int) -> None:
    run = run_shadow(_topology(), seed, kind, minutes=5, rate=30)
    assert run.rolled_back and run.decision == "ROLLBACK", run.reason
    assert metric in run.reason


def test_the_bad_shadow_kinds_are_the_benchmarked_ones() -> None:
    assert set(BAD_SHADOWS) == set(SHADOW_INCIDENT_KINDS)


def test_replay_writes_shadow_verdicts_beside_the_alerts(tmp_path: Path) -> None:
    recording = tmp_path / "shadow.jsonl"
    sim = TrafficSimulator(
        seed=5,
        start_ms=START,
        rate_per_s=40,
        incidents=(Incident("shadow_divergence", START),),
        config=SimConfig(shadow_share=0.5, canary_share=0.2),
    )
    sim.to_jsonl(recording, 240)
    out = tmp_path / "out.jsonl"
    assert main(["replay", str(recording), "--out", str(out)]) == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    verdicts = [d for d in docs if d.get("schema") == "stream-monitor.health/v1"]
    validator = Draft202012Validator(SCHEMA)
    for doc in verdicts:
        assert list(validator.iter_errors(doc)) == []
    kinds = {d["kind"] for d in verdicts}
    assert kinds == {"canary", "shadow"}  # both analyses run side by side
    shadow = [d for d in verdicts if d["kind"] == "shadow"]
    assert shadow[-1]["decision"] == "ROLLBACK"
    assert shadow[-1]["candidate"]["version"] == SHADOW_VERSION
    assert shadow[-1]["candidate"]["arm"] == "shadow"
    assert shadow[-1]["baseline"]["version"] == SimConfig().control_version
    assert shadow[-1]["candidate"]["lineage"]["feature_set"] == "home-features@v13"
    # A shadow's serving events are no requests users saw: they raise no alert of their own here.
    assert not [d for d in docs if "signal" in d and d["key"].get("arm") == "shadow"]


def test_replay_without_a_shadow_writes_no_shadow_verdicts(tmp_path: Path) -> None:
    recording = tmp_path / "plain.jsonl"
    TrafficSimulator(seed=5, start_ms=START, rate_per_s=20).to_jsonl(recording, 180)
    out = tmp_path / "out.jsonl"
    assert main(["replay", str(recording), "--out", str(out)]) == 0
    assert '"kind":"shadow"' not in out.read_text()


# -- restart from the store -------------------------------------------------------------------------------


@functools.cache
def _messages(parts: int = 2) -> tuple[tuple[str, str, int, int, bytes, int], ...]:
    """(kind, topic, partition, offset, value, ts) of 8 simulated minutes with a shadow, production order."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    config = SimConfig(shadow_share=0.5, engagement=False)
    for kind, key, event in TrafficSimulator(4, START, 20.0, config=config).events(8 * 60):
        partition = zlib.crc32(key) % parts if key else 0
        offset = offsets.get((kind, partition), 0)
        offsets[(kind, partition)] = offset + 1
        out.append((kind, TOPIC[kind], partition, offset, orjson.dumps(event), int(event["ts"])))
    return tuple(out)


def _engine(store: StateStore, clock: EventTimeClock, name: str) -> Engine:
    sink = ListSink()
    return Engine(
        _topology(), store, sink, sink, clock, options=EngineOptions(worker_id=name, auto_claim=True)
    )


def _pair_sums(store: StateStore) -> dict[int, dict[str, float]]:
    out = {}
    for start in range(START, START + 10 * MINUTE, MINUTE):
        fields = {k: v for k, v in store.read_labels(start).items() if k.startswith("~shadow|")}
        if fields:
            out[start] = fields
    return out


def _straight(store: StateStore) -> dict[int, dict[str, float]]:
    clock = EventTimeClock(START)
    engine = _engine(store, clock, "straight")
    for i, (kind, topic, partition, offset, value, ts) in enumerate(_messages()):
        engine.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
        if i % 500 == 0:
            engine.flush()
    engine.flush()
    return _pair_sums(store)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def stores(request: pytest.FixtureRequest) -> tuple[StateStore, StateStore]:
    """Two empty stores of one kind: one for the crash run, one for the uninterrupted run."""
    if request.param == "memory":
        return MemoryStore(), MemoryStore()
    from stream_monitor.state.redis_store import RedisStore

    first: StateStore = request.getfixturevalue("redis_store")
    url = request.getfixturevalue("redis_url")
    second = RedisStore.from_url(url, prefix=first.prefix + "-straight")  # type: ignore[attr-defined]
    request.addfinalizer(lambda: _drop_keys(second))
    return first, second


def _drop_keys(store: object) -> None:
    client, prefix = store.client, store.prefix  # type: ignore[attr-defined]
    keys = list(client.scan_iter(f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.parametrize("crash_at", [0.3, 0.7])
def test_a_crash_and_restart_neither_lose_nor_double_count_pairs(
    crash_at: float, stores: tuple[StateStore, StateStore]
) -> None:
    store, straight_store = stores
    messages = _messages()
    clock = EventTimeClock(START)
    first = _engine(store, clock, "first")
    cut = int(len(messages) * crash_at)
    for i, (kind, topic, partition, offset, value, ts) in enumerate(messages[:cut]):
        first.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
        if i % 700 == 0:
            first.flush()
    # Crash: what `first` ingested since its last flush is lost. A new owner claims everything and Kafka
    # re-delivers every partition from the start (offsets below the claims are skipped).
    second = _engine(store, clock, "second")
    second.assign(sorted({f"{topic}/{partition}" for _, topic, partition, *_ in messages}))
    assert second.shadow_pairing is not None and second.shadow_pairing.pending > 0  # came back from the store
    for i, (kind, topic, partition, offset, value, ts) in enumerate(messages):
        second.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
        if i % 900 == 0:
            second.flush()
    second.flush()
    # The stale owner is refused, its pairing state included.
    first.ingest(*messages[-1][:4], None, messages[-1][4])
    result = first.flush()
    assert result.applied == [] and result.refused
    assert all(g.startswith("shadow:") or g.isdigit() for g in result.join_refused)
    sums = _pair_sums(store)
    assert sums == _straight(straight_store)
    pairs = sum(f.get(f"~shadow|home-ranker|{SHADOW_VERSION}#pairs", 0) for f in sums.values())
    assert pairs > 2_000


# -- the gate -------------------------------------------------------------------------------------------


def test_shadow_verdicts_reach_the_gate_and_the_canary_command() -> None:
    store = MemoryStore()
    clock = EventTimeClock(START)
    sink = ListSink()
    engine = Engine(
        replace(_topology(), canary=replace(_topology().canary, enabled=False)),
        store,
        sink,
        sink,
        clock,
        options=EngineOptions(worker_id="gate", auto_claim=True),
        health_sink=StoreHealthSink(store),
    )
    config = SimConfig(shadow_share=0.5, engagement=False)
    sim = TrafficSimulator(3, START, 30.0, incidents=(Incident("shadow_empty", START),), config=config)
    for kind, key, event in sim.events(4 * 60):
        partition = zlib.crc32(key) % 2 if key else 0
        engine.ingest(kind, TOPIC[kind], partition, sim.counts[kind], None, orjson.dumps(event))
        clock.observe(int(event["ts"]))
    engine.flush()
    engine.close_ready(final=True)
    now = clock.now_ms()
    status, gate, doc = read_gate(store, "home-ranker", now, kind="shadow")
    assert doc is not None and doc["kind"] == "shadow" and gate["decision"] == "ROLLBACK"
    assert status == 412  # the gate's answer to a ROLLBACK (core/gate.py)
    assert read_gate(store, "home-ranker", now, kind="canary")[2] is None  # no canary deployed
    out = io.StringIO()
    code = show(store, "home-ranker", kind="shadow", clock=ManualClock(now), out=out)
    assert code != 0 and "ROLLBACK" in out.getvalue() and "empty_slate_rate" in out.getvalue()


# -- the simulator ----------------------------------------------------------------------------------------


def test_a_shadow_only_adds_events_to_the_stream() -> None:
    plain = list(TrafficSimulator(seed=9, start_ms=START, rate_per_s=50).events(90))
    with_shadow = list(
        TrafficSimulator(seed=9, start_ms=START, rate_per_s=50, config=SimConfig(shadow_share=0.4)).events(90)
    )
    added = [e for e in with_shadow if e[2].get("arm") == "shadow"]
    assert [e for e in with_shadow if e[2].get("arm") != "shadow"] == plain
    control_ids = {e[2]["request_id"] for e in plain if e[0] == "serving"}
    serving = [e for e in added if e[0] == "serving"]
    assert 0.35 < len(serving) / len(control_ids) < 0.45
    assert all(e[2]["request_id"] in control_ids and e[2]["model_version"] == SHADOW_VERSION for e in serving)
    assert [e[2]["arm"] for e in added if e[0] == "deployment"] == ["shadow"]
    # Users never see a shadow's slate: no engagement names a request only the shadow served.
    assert {e[2]["request_id"] for e in with_shadow if e[0] == "engagement"} <= control_ids


@pytest.mark.parametrize("kind", sorted(SHADOW_INCIDENT_KINDS))
def test_bad_shadows_bend_only_the_shadow_events(kind: str) -> None:
    config = SimConfig(shadow_share=0.3)
    clean = list(TrafficSimulator(seed=9, start_ms=START, rate_per_s=50, config=config).events(60))
    bent = list(
        TrafficSimulator(
            seed=9, start_ms=START, rate_per_s=50, incidents=(Incident(kind, START),), config=config
        ).events(60)
    )
    assert [e for e in bent if e[2].get("arm") != "shadow"] == [
        e for e in clean if e[2].get("arm") != "shadow"
    ]
    assert [e for e in bent if e[2].get("arm") == "shadow"] != [
        e for e in clean if e[2].get("arm") == "shadow"
    ]


def test_shadow_incidents_need_a_shadow_and_target_it() -> None:
    assert parse_incident("shadow_divergence", START).target == {"arm": "shadow"}
    with pytest.raises(ValueError, match="target arm must be shadow"):
        Incident("shadow_empty", START, target={"arm": "control"})
    with pytest.raises(ValueError, match="gets no traffic"):
        TrafficSimulator(1, START, 10, incidents=(Incident("shadow_empty", START),))
    with pytest.raises(ValueError, match="cannot target the shadow arm"):
        TrafficSimulator(
            1,
            START,
            10,
            incidents=(parse_incident("error_spike:arm=shadow", START),),
            config=SimConfig(shadow_share=0.2),
        )


def test_the_shadow_verdict_sets_the_overlap_and_decision_gauges() -> None:
    from prometheus_client import CollectorRegistry

    from stream_monitor.sinks.health import MetricsHealthSink
    from stream_monitor.sinks.metrics import MonitorMetrics

    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    store, clock, sink = MemoryStore(), EventTimeClock(START), ListSink()
    engine = Engine(
        _topology(),
        store,
        sink,
        sink,
        clock,
        metrics=metrics,
        options=EngineOptions(worker_id="m", auto_claim=True),
        health_sink=MetricsHealthSink(metrics),
    )
    for kind, topic, partition, offset, value, ts in _messages():
        engine.ingest(kind, topic, partition, offset, None, value)
        clock.observe(ts)
    engine.flush()
    assert registry.get_sample_value("stream_monitor_shadow_pending_events") is not None
    engine.close_ready(final=True)
    labels = {"model": "home-ranker"}
    rbo = registry.get_sample_value("stream_monitor_shadow_overlap_ratio", {**labels, "measure": "rbo"})
    jac = registry.get_sample_value("stream_monitor_shadow_overlap_ratio", {**labels, "measure": "jaccard"})
    assert rbo is not None and jac is not None and 0.8 < rbo < 0.95 and 0.75 < jac < 0.9
    verdict = registry.get_sample_value("stream_monitor_canary_verdict", {**labels, "kind": "shadow"})
    assert verdict == 1.0  # PROMOTE: the simulator's healthy shadow


def test_odd_items_and_arms_do_not_stop_the_pairing() -> None:
    store, clock, sink = MemoryStore(), EventTimeClock(START), ListSink()
    engine = Engine(_topology(), store, sink, sink, clock, options=EngineOptions(auto_claim=True))

    def serving(arm: str, version: str, ts: int, items: list[object]) -> bytes:
        return orjson.dumps(
            {"type": "serving", "request_id": "r1", "ts": ts, "model": "m", "model_version": version,
             "arm": arm, "surface": "home", "latency_ms": {"total": 20.0}, "items": items}
        )  # fmt: skip

    odd: list[object] = [1, None, {"id": 5}, {"id": "a"}, "b", {"score": 0.3}]
    engine.ingest("serving", "recs.serving", 0, 0, None, serving("shadow", "v2", START, odd))
    engine.ingest("serving", "recs.serving", 0, 1, None, serving("control", "v1", START + 5, [{"id": "a"}]))
    engine.ingest("serving", "recs.serving", 0, 2, None, serving("canary", "v3", START + 6, odd))
    assert engine.flush().applied == ["recs.serving/0"] and not sink.dead_letters
    sums = store.read_labels(START)
    # The shadow's comparable items are "a" and "b"; the control's "a": Jaccard 1/2.
    assert sums["~shadow|m|v2#pairs"] == 1 and sums["~shadow|m|v2#jac_u"] == 500_000


def test_shadow_events_do_not_dilute_the_engagement_ratio() -> None:
    from stream_monitor.core.signals import WindowEvaluator

    evaluator = WindowEvaluator(_topology())
    base = {"m|v1|control|home|ios|us|new#n": 2_000.0, "*#eng.impression": 5_000.0}
    with_shadow = {**base, "m|v2|shadow|home|ios|us|new#n": 1_000.0}

    def ratio(fields: dict[str, float]) -> float:
        values = evaluator.evaluate(fields, {}, {}, {}).all_values
        return next(v.value for v in values if v.signal == "engagement_ratio")

    assert ratio(with_shadow) == ratio(base) == 2.5
