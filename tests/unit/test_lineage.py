"""Release history and lineage: edge validation, the pure history, the engine's store, alerts, model_info."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert, AlertBook, DetectorState
from stream_monitor.core.clock import ManualClock
from stream_monitor.core.events import (
    LINEAGE_STRINGS,
    MAX_LINEAGE_CHARS,
    MAX_LINEAGE_EXTRA_BYTES,
    MAX_VALIDATION_METRICS,
    DeploymentEvent,
    EventError,
    parse_event,
)
from stream_monitor.core.lineage import (
    DeploymentRecord,
    LineageError,
    build_history,
    lineage_for,
)
from stream_monitor.core.series import Breach
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, SimConfig, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

T0 = 1_764_086_400_000
TOPOLOGY = load_topology()


def deployment(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "deployment",
        "ts": T0,
        "model": "home-ranker",
        "model_version": "2026.11.24-1",
        "arm": "canary",
        "traffic": 0.05,
        "baseline_version": "2026.11.20-3",
        "lineage": {
            "training_data": "warehouse.interactions@2026-11-23",
            "feature_set": "home-features:v12",
            "code_commit": "4f2c1e9",
            "artifact_digest": "sha256:" + "ab" * 32,
            "validation": {"ndcg@10": 0.41},
        },
        "actor": "ci",
        "reason": "weekly retrain",
    }
    event.update(changes)
    return event


def parse(doc: dict[str, Any]) -> DeploymentEvent:
    event = parse_event(orjson.dumps(doc), expected="deployment")
    assert isinstance(event, DeploymentEvent)
    return event


# -- validation at the edge ------------------------------------------------------------------------------


def test_a_full_lineage_is_kept_as_given() -> None:
    event = parse(deployment())
    assert event.lineage == deployment()["lineage"]
    assert (event.actor, event.reason) == ("ci", "weekly retrain")


def test_offline_validation_is_another_name_for_validation_and_extras_are_kept() -> None:
    lineage = {"offline_validation": {"ndcg@10": 0.4, "auc": 1}, "team": "recs", "code_commit": None}
    event = parse(deployment(lineage=lineage))
    assert event.lineage == {"validation": {"ndcg@10": 0.4, "auc": 1.0}, "team": "recs"}


@pytest.mark.parametrize(
    ("lineage", "field", "message"),
    [
        ("sha", "lineage", "is not a JSON object"),
        ({"code_commit": 4}, "lineage.code_commit", "4 is not a string"),
        ({"training_data": ["a"]}, "lineage.training_data", "is not a string"),
        ({"feature_set": "x" * (MAX_LINEAGE_CHARS + 1)}, "lineage.feature_set", "the limit is 512"),
        ({"artifact_digest": {"sha256": "ab"}}, "lineage.artifact_digest", "is not a string"),
        ({"validation": [0.4]}, "lineage.validation", "is not a JSON object of numbers"),
        ({"validation": {"ndcg@10": "high"}}, "lineage.validation.ndcg@10", "is not a number"),
        ({"validation": {"ndcg@10": True}}, "lineage.validation.ndcg@10", "is not a number"),
        ({"offline_validation": {"auc": None}}, "lineage.offline_validation.auc", "None is not a number"),
        (
            {"validation": {f"m{i}": 0.1 for i in range(MAX_VALIDATION_METRICS + 1)}},
            "lineage.validation",
            "65 metrics, the limit is 64",
        ),
        ({"validation": {"a": 1}, "offline_validation": {"a": 1}}, "lineage.offline_validation", "both"),
        ({"notes": "x" * MAX_LINEAGE_EXTRA_BYTES}, "lineage", "the limit is 4096"),
    ],
)
def test_bad_lineage_is_rejected_naming_the_field(lineage: object, field: str, message: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(orjson.dumps(deployment(lineage=lineage)))
    assert (caught.value.reason, caught.value.field) == ("invalid_field", field)
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["actor", "reason"])
def test_oversized_actor_or_reason_is_rejected(name: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(orjson.dumps(deployment(**{name: "x" * (MAX_LINEAGE_CHARS + 1)})))
    assert (caught.value.reason, caught.value.field) == ("invalid_field", name)


def test_a_bad_lineage_is_dead_lettered_and_kept_out_of_the_history() -> None:
    sink, store = ListSink(), MemoryStore()
    engine = Engine(TOPOLOGY, store, sink, sink, ManualClock(T0), options=EngineOptions(auto_claim=True))
    good, bad = deployment(), deployment(lineage={"code_commit": 7}, model_version="v-bad")
    for offset, event in enumerate((good, bad)):
        engine.ingest("deployment", "recs.deployments", 0, offset, b"home-ranker", orjson.dumps(event))
    engine.flush()
    assert [(d.reason, d.offset) for d in sink.dead_letters] == [("invalid_field", 1)]
    assert "lineage.code_commit: 7 is not a string" in sink.dead_letters[0].detail
    assert [DeploymentRecord.from_json(r).version for r in store.history("home-ranker")] == ["2026.11.24-1"]
    assert store.totals()["rejected"] == 1


# -- the pure history --------------------------------------------------------------------------------------


def record(ts: int, version: str, arm: str, traffic: float | None = 1.0, **kw: Any) -> bytes:
    return DeploymentRecord(ts, "m", version, arm, traffic, **kw).to_json()


def test_history_live_versions_and_rollback_targets() -> None:
    history = build_history(
        "m",
        [
            record(1, "v1", "control"),
            record(2, "v2", "canary", 0.05, baseline_version="v1", lineage={"code_commit": "c2"}),
            record(3, "v2", "canary", 0.25),  # the same version taking more traffic
            record(4, "v2", "control", 1.0, actor="alice", reason="promoted"),
            record(5, "v2", "canary", 0.0),  # canary arm taken down
            record(6, "v3", "canary", 0.05, lineage={"code_commit": "c3"}),
        ],
    )
    assert {arm: r.version for arm, r in history.live().items()} == {"canary": "v3", "control": "v2"}
    assert [r.previous for r in history.releases] == [None, None, None, "v1", None, None]
    assert history.rollback_target("control") == "v1"
    assert history.rollback_target("canary") is None  # v3 came after the arm was down: nothing to go back to
    assert history.rollback_target("shadow") is None
    assert history.lineage_of("v2") == {"code_commit": "c2"}  # the promotion event carried none
    doc = history.to_json_dict()
    assert doc["rollback_targets"] == {"canary": None, "control": "v1"}
    assert [r["previous_version"] for r in doc["releases"]][3] == "v1"


def test_a_rollback_is_a_release_too() -> None:
    history = build_history(
        "m", [record(1, "v1", "control"), record(2, "v2", "control"), record(3, "v1", "control")]
    )
    assert history.live()["control"].version == "v1"
    assert history.rollback_target("control") == "v2"


def test_lineage_for_a_key() -> None:
    history = build_history(
        "m",
        [
            record(1, "v1", "control", lineage={"code_commit": "c1"}),
            record(2, "v2", "canary", 0.1, lineage={"code_commit": "c2"}),
        ],
    )
    assert lineage_for(history, "v2") == {"v2": {"arm": "canary", "deployed_at": 2, "code_commit": "c2"}}
    assert set(lineage_for(history, "*")) == {"v1", "v2"} == set(lineage_for(history, "other"))
    assert lineage_for(history, "v9") == {} and lineage_for(None, "v1") == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1]", "expected a JSON object, got list"),
        (b'{"ts": "x", "model": "m", "model_version": "v", "arm": "a"}', "ts: 'x' is not epoch milliseconds"),
        (b'{"ts": 1, "model": "m", "model_version": "v", "arm": null}', "arm: None is not a string"),
        (b'{"ts": 1, "model": "m", "model_version": "v", "arm": "a", "traffic": "5%"}', "traffic: '5%'"),
        (b'{"ts": 1, "model": "m", "model_version": "v", "arm": "a", "lineage": [1]}', "lineage: [1]"),
        (b'{"ts": 1, "model": "n", "model_version": "v", "arm": "a"}', "record is for model 'n'"),
    ],
)
def test_malformed_records_give_precise_errors(raw: bytes, message: str) -> None:
    with pytest.raises(LineageError) as caught:
        build_history("m", [record(0, "v0", "control"), raw])
    assert str(caught.value).startswith("m history entry 2: ")
    assert message in str(caught.value)


# -- the engine: history in the store, lineage on alerts, model_info ----------------------------------------


def test_deployment_events_build_the_history_exactly_once_through_the_engine() -> None:
    sink, store = ListSink(), MemoryStore()
    engine = Engine(TOPOLOGY, store, sink, sink, ManualClock(T0), options=EngineOptions(auto_claim=True))
    events = [
        deployment(model_version="v1", arm="control", traffic=1.0),
        deployment(ts=T0 + 1, model_version="v2", traffic=0.05, baseline_version="v1"),
        deployment(ts=T0 + 2, model_version="v2", arm="control", traffic=1.0, actor="bob", reason="promote"),
    ]
    for offset, event in enumerate(events):
        engine.ingest("deployment", "recs.deployments", 0, offset, b"home-ranker", orjson.dumps(event))
    engine.flush()
    # The same messages delivered again (a restart before Kafka's commit) are skipped, not re-appended.
    for offset, event in enumerate(events):
        engine.ingest("deployment", "recs.deployments", 0, offset, b"home-ranker", orjson.dumps(event))
    engine.flush()
    history = engine.release_history("home-ranker")
    assert history is not None
    assert [(r.record.version, r.record.arm, r.previous) for r in history.releases] == [
        ("v1", "control", None),
        ("v2", "canary", None),
        ("v2", "control", "v1"),
    ]
    assert history.releases[2].record.actor == "bob"
    assert history.releases[0].record.lineage["code_commit"] == "4f2c1e9"


def test_alerts_carry_the_lineage_of_their_versions_and_model_info_is_exported() -> None:
    start = 1_764_028_800_000
    incident = Incident("error_spike", onset_ms=start + 8 * 60_000, duration_ms=6 * 60_000, target={})
    sim = TrafficSimulator(seed=3, start_ms=start, rate_per_s=30.0, incidents=(incident,), config=SimConfig())
    alerts, dead = ListSink(), ListSink()
    clock = EventTimeClock(start)
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, TOPOLOGY.segment_dims)
    engine = Engine(
        TOPOLOGY, MemoryStore(), alerts, dead, clock, metrics, EngineOptions(worker_id="t", auto_claim=True)
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=4)
    deployed: dict[tuple[str, str], dict[str, Any]] = {}
    t = start
    while t < start + 20 * 60_000:
        t += 10_000
        for kind, key, event in sim.events_until(t):
            if kind == "deployment":
                deployed[(str(event["model"]), str(event["model_version"]))] = event["lineage"]
            pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(t)
        pipeline.step()
    firing = [a for a in alerts.alerts if a.status == "firing"]
    assert firing and deployed, "the error spike raised no alert"
    for alert in firing:
        model, version = alert.key["model"], alert.key["model_version"]
        live = {v for (m, v) in deployed if m == model}
        expected = live if version in ("*", "other") else {version}
        assert set(alert.lineage) == expected, alert.series
        for v, entry in alert.lineage.items():
            sent = deployed[(model, v)]
            assert entry["code_commit"] == sent["code_commit"]
            assert entry["artifact_digest"] == sent["artifact_digest"]
            assert entry["validation"] == sent["validation"]
            assert entry["arm"] in ("control", "canary") and entry["deployed_at"] == start
    # model_info: one series per live (model, arm, version), value 1, with short lineage labels.
    samples = [s for m in registry.collect() if m.name == "stream_monitor_model_info" for s in m.samples]
    got = {(s.labels["model"], s.labels["version"]): s for s in samples}
    assert set(got) == set(deployed)
    for key, sample in got.items():
        assert sample.value == 1.0
        assert sample.labels["code_commit"] == deployed[key]["code_commit"][:12]
        assert sample.labels["artifact_digest"] == deployed[key]["artifact_digest"][:19]


def test_alerts_and_checkpoints_without_lineage_still_load() -> None:
    book, state = AlertBook(("model", "model_version"), topology="t"), DetectorState()
    breach = Breach("error_rate", "ratio", ("m", "v1"), 0.2, None, 0.02, "ratio", "critical", "errors")
    (alert,) = book.update(state, [breach], (0, 60_000), now_ms=1)
    assert alert.lineage == {}
    stored = next(iter(state.open_alerts.values()))
    assert "lineage" not in stored  # the checkpoint stays as it was
    old = {k: v for k, v in alert.to_dict().items() if k != "lineage"}
    assert Alert.from_dict(old).lineage == {}
    with_lineage = {**old, "lineage": {"v1": {"arm": "canary", "deployed_at": 1}}}
    assert Alert.from_dict(with_lineage).lineage == {"v1": {"arm": "canary", "deployed_at": 1}}
    assert DetectorState.from_json_dict(orjson.loads(orjson.dumps(state.to_json_dict()))).open_alerts


def test_model_info_takes_the_lineage_of_a_traffic_step_from_the_history() -> None:
    sink, store, registry = ListSink(), MemoryStore(), CollectorRegistry()
    engine = Engine(
        TOPOLOGY,
        store,
        sink,
        sink,
        ManualClock(T0),
        MonitorMetrics(registry),
        EngineOptions(auto_claim=True),
    )
    events = [
        deployment(model_version="v2", traffic=0.05),
        deployment(ts=T0 + 1, model_version="v2", traffic=0.25, lineage={}),  # a rollout step, no lineage
        deployment(ts=T0 + 2, model_version="v1", arm="control", traffic=0.0),  # arm taken down
    ]
    for offset, event in enumerate(events):
        engine.ingest("deployment", "recs.deployments", 0, offset, b"home-ranker", orjson.dumps(event))
    engine.flush()
    engine.publish_model_info()
    samples = [s for m in registry.collect() if m.name == "stream_monitor_model_info" for s in m.samples]
    assert [(s.labels["arm"], s.labels["version"], s.labels["code_commit"]) for s in samples] == [
        ("canary", "v2", "4f2c1e9")
    ]
    history = engine.release_history("home-ranker")
    assert history is not None
    assert history.to_json_dict()["live"]["canary"]["lineage"]["code_commit"] == "4f2c1e9"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
LINEAGES = (
    st.dictionaries(
        st.sampled_from(
            [
                "training_data",
                "feature_set",
                "code_commit",
                "artifact_digest",
                "validation",
                "offline_validation",
            ]
        )
        | st.text(max_size=12),
        JSON_VALUES,
        max_size=6,
    )
    | JSON_VALUES
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lineages=st.lists(LINEAGES, min_size=1, max_size=6))
def test_any_lineage_is_either_recorded_or_dead_lettered(lineages: list[object]) -> None:
    sink, store = ListSink(), MemoryStore()
    engine = Engine(TOPOLOGY, store, sink, sink, ManualClock(T0), options=EngineOptions(auto_claim=True))
    for offset, lineage in enumerate(lineages):
        event = orjson.dumps(deployment(ts=T0 + offset, model_version=f"v{offset}", lineage=lineage))
        engine.ingest("deployment", "recs.deployments", 0, offset, b"home-ranker", event)
    engine.flush()
    totals = store.totals()
    assert totals["consumed"] == len(lineages) == totals.get("accepted", 0) + totals.get("rejected", 0)
    assert {d.reason for d in sink.dead_letters} <= {"invalid_field"}
    history = build_history("home-ranker", store.history("home-ranker"))
    assert len(history.releases) == totals.get("accepted", 0)
    for release in history.releases:
        lineage = release.record.lineage
        assert "offline_validation" not in lineage and None not in lineage.values()
        assert all(
            isinstance(lineage[k], str) and len(lineage[k]) <= 512 for k in LINEAGE_STRINGS if k in lineage
        )
        assert all(type(v) is float for v in lineage.get("validation", {}).values())
