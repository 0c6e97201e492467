"""The rollout gate, the health sinks, the canary gauges and the ``lineage`` / ``canary`` commands."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from stream_monitor.cli import canary as canary_cli
from stream_monitor.cli import lineage as lineage_cli
from stream_monitor.cli.main import build_parser
from stream_monitor.core.clock import ManualClock
from stream_monitor.core.gate import (
    SCHEMA,
    VerdictError,
    check_verdict,
    gate_response,
    health_key,
    select_verdict,
)
from stream_monitor.core.lineage import DeploymentRecord
from stream_monitor.sinks.health import (
    CompositeHealthSink,
    JsonLinesHealthSink,
    ListHealthSink,
    MetricsHealthSink,
    StoreHealthSink,
    read_gate,
)
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.memory import MemoryStore

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HEALTH_SCHEMA = json.loads((ROOT / "docs" / "schemas" / "health.schema.json").read_text())
T0 = 1_764_086_400_000


def verdict(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "model": "home-ranker",
        "deployment": f"2026.11.24-1@{T0}",
        "kind": "canary",
        "candidate": {"version": "2026.11.24-1", "arm": "canary", "lineage": {"code_commit": "4f2c1e9"}},
        "baseline": {"version": "2026.11.20-3", "arm": "control", "lineage": {"code_commit": "1a2b3c4"}},
        "window": {"start": T0, "end": T0 + 300_000},
        "emitted_at": T0 + 301_000,
        "metrics": [
            {
                "name": "error_rate",
                "group": "reliability",
                "critical": True,
                "direction": "increase",
                "classification": "HIGH",
                "estimate": 0.031,
                "lower": 0.021,
                "upper": 0.041,
                "unit": "ratio",
                "n_candidate": 4210,
                "n_baseline": 80113,
                "detail": "candidate 3.4 % vs baseline 0.3 %",
            }
        ],
        "score": 31.5,
        "verdict": "FAIL",
        "decision": "ROLLBACK",
        "reason": "critical metric error_rate is HIGH",
        "suspects": [{"kind": "segment", "name": "region=eu", "evidence": "82 % of the excess errors"}],
        "valid_until": T0 + 420_000,
    }
    doc.update(changes)
    return doc


def test_the_sample_verdict_follows_the_schema() -> None:
    Draft202012Validator.check_schema(HEALTH_SCHEMA)
    assert list(Draft202012Validator(HEALTH_SCHEMA).iter_errors(verdict())) == []
    assert check_verdict(verdict()) == verdict()


# -- gate_response: the table in stream_monitor/core/gate.py -----------------------------------------------

FRESH = T0 + 360_000
STALE = T0 + 420_001


@pytest.mark.parametrize(
    ("doc", "now", "status", "decision", "stale"),
    [
        (verdict(verdict="PASS", decision="PROMOTE"), FRESH, 200, "PROMOTE", False),
        (verdict(verdict="MARGINAL", decision="HOLD"), FRESH, 409, "HOLD", False),
        (verdict(verdict="INCONCLUSIVE", decision="HOLD"), FRESH, 409, "HOLD", False),
        (verdict(), FRESH, 412, "ROLLBACK", False),
        (verdict(), T0 + 420_000, 412, "ROLLBACK", False),  # valid_until itself is still valid
        (verdict(verdict="PASS", decision="PROMOTE"), STALE, 409, "HOLD", True),
        (verdict(), STALE, 409, "HOLD", True),
        (verdict(decision="MAYBE"), FRESH, 409, "HOLD", False),
        (verdict(schema="stream-monitor.health/v0"), FRESH, 409, "HOLD", False),
        (None, FRESH, 404, "HOLD", False),
    ],
)
def test_gate_response(doc: dict[str, Any] | None, now: int, status: int, decision: str, stale: bool) -> None:
    got_status, body = gate_response(doc, now)
    assert (got_status, body["decision"], body["stale"]) == (status, decision, stale)
    assert body["promote"] is (decision == "PROMOTE") and body["rollback"] is (decision == "ROLLBACK")
    assert body["value"] == {"PROMOTE": 1, "HOLD": 0, "ROLLBACK": -1}[decision]
    assert body["checked_at"] == now and body["reason"]
    assert (200 <= got_status < 300) is (decision == "PROMOTE")  # Flagger: only a 2xx is "go"
    json.dumps(body)  # the body is plain JSON


def test_a_stale_verdict_says_what_it_was() -> None:
    _status, body = gate_response(verdict(), STALE)
    assert body["verdict"] == "INCONCLUSIVE"
    assert "expired 0 s ago" in body["reason"] and "it was ROLLBACK" in body["reason"]
    assert body["candidate_version"] == "2026.11.24-1" and body["baseline_version"] == "2026.11.20-3"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": ""}, "model: '' is not a non-empty string"),
        ({"kind": "blue"}, "kind: 'blue' is not one of canary, shadow"),
        ({"verdict": "OK"}, "verdict: 'OK' is not one of PASS, MARGINAL, FAIL, INCONCLUSIVE"),
        ({"emitted_at": 1.5}, "emitted_at: 1.5 is not epoch milliseconds"),
        ({"valid_until": None}, "valid_until: None is not epoch milliseconds"),
        ({"score": 101}, "score: 101 is not a number in [0, 100]"),
        ({"score": True}, "score: True"),
        ({"candidate": {"arm": "canary"}}, "candidate.version: missing"),
        ({"metrics": {}}, "metrics: {} is not a list"),
    ],
)
def test_check_verdict_names_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(VerdictError) as caught:
        check_verdict(verdict(**change))
    assert message in str(caught.value)


def test_select_verdict_by_version_deployment_and_kind() -> None:
    old = verdict(deployment="v1@1", candidate={"version": "v1"}, emitted_at=10)
    canary = verdict(deployment="v2@2", candidate={"version": "v2"}, emitted_at=20)
    shadow = verdict(deployment="v3@3", kind="shadow", candidate={"version": "v3"}, emitted_at=30)
    docs = [old, canary, shadow]
    assert select_verdict(docs) == shadow
    assert select_verdict(docs, kind="canary") == canary
    assert select_verdict(docs, version="v1") == old
    assert select_verdict(docs, deployment="v2@2", kind="canary") == canary
    assert select_verdict(docs, version="v2", kind="shadow") is None
    assert select_verdict([]) is None


# -- sinks --------------------------------------------------------------------------------------------------


def test_store_sink_and_read_gate() -> None:
    store = MemoryStore()
    sink = StoreHealthSink(store)
    first = verdict(verdict="MARGINAL", decision="HOLD", emitted_at=T0 + 301_000)
    later = verdict(verdict="PASS", decision="PROMOTE", emitted_at=T0 + 361_000, valid_until=T0 + 481_000)
    other = verdict(deployment="v9@1", candidate={"version": "v9"}, emitted_at=T0 + 100)
    sink.emit([first, other])
    sink.emit([later])
    assert set(store.verdicts("home-ranker")) == {health_key(first), "home-ranker/v9@1"}
    status, body, doc = read_gate(store, "home-ranker", T0 + 400_000)
    assert (status, body["decision"], doc) == (200, "PROMOTE", later)
    status, body, doc = read_gate(store, "home-ranker", T0 + 400_000, version="v9")
    assert (status, body["decision"], doc) == (412, "ROLLBACK", other)
    assert read_gate(store, "home-ranker", T0, version="v10")[0] == 404
    assert read_gate(store, "nobody", T0)[0] == 404


def test_a_corrupt_stored_verdict_is_ignored() -> None:
    store = MemoryStore()
    store.put_verdict("home-ranker", "home-ranker/x", b"{not json", T0)
    assert read_gate(store, "home-ranker", T0)[0] == 404
    store.put_verdict("home-ranker", "home-ranker/y", orjson.dumps({"schema": SCHEMA, "emitted_at": 5}), T0)
    status, body, _doc = read_gate(store, "home-ranker", T0)
    assert status == 409 and body["reason"].startswith("stored verdict unreadable")


def test_json_lines_list_and_composite_sinks() -> None:
    stream, listed = io.BytesIO(), ListHealthSink()
    composite = CompositeHealthSink(JsonLinesHealthSink(stream), listed)
    composite.emit([verdict(), verdict(deployment="v3@5")])
    composite.emit([])
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert (
        [health_key(line) for line in lines] == listed.keys() == [health_key(verdict()), "home-ranker/v3@5"]
    )
    assert lines[0] == verdict()


def test_canary_gauges_follow_the_newest_verdict() -> None:
    registry = CollectorRegistry()
    sink = MetricsHealthSink(MonitorMetrics(registry))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"model": "home-ranker", "kind": "canary", **labels})

    sink.emit([verdict()])
    assert value("stream_monitor_canary_verdict") == -1
    assert value("stream_monitor_canary_decision", decision="ROLLBACK") == 1
    assert value("stream_monitor_canary_decision", decision="PROMOTE") == 0
    assert value("stream_monitor_canary_score") == 31.5
    assert value("stream_monitor_canary_verdict_valid_until_timestamp_seconds") == (T0 + 420_000) / 1000
    sink.emit([verdict(decision="PROMOTE", verdict="PASS", emitted_at=T0 + 400_000, score=97)])
    assert value("stream_monitor_canary_verdict") == 1
    sink.emit([verdict(decision="HOLD", emitted_at=T0)])  # older than what is shown: ignored
    assert value("stream_monitor_canary_verdict") == 1
    assert value("stream_monitor_canary_decision", decision="HOLD") == 0


def test_model_info_drops_versions_that_are_no_longer_live() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    v1 = DeploymentRecord(1, "m", "v1", "control", 1.0, lineage={"code_commit": "0123456789abcdef"})
    v2 = DeploymentRecord(2, "m", "v2", "control", 1.0)
    metrics.set_model_info([v1])
    labels = {"model": "m", "arm": "control", "version": "v1", "code_commit": "0123456789ab"}
    assert registry.get_sample_value("stream_monitor_model_info", {**labels, "artifact_digest": ""}) == 1
    metrics.set_model_info([v2])
    assert registry.get_sample_value("stream_monitor_model_info", {**labels, "artifact_digest": ""}) is None
    samples = [s for m in registry.collect() if m.name == "stream_monitor_model_info" for s in m.samples]
    assert [(s.labels["version"], s.value) for s in samples] == [("v2", 1.0)]


# -- the commands -------------------------------------------------------------------------------------------


def _history_store() -> MemoryStore:
    from stream_monitor.core.aggregates import PartitionDelta

    store = MemoryStore()
    store.claim(["recs.deployments/0"], now_ms=0)
    records = [
        DeploymentRecord(
            T0, "home-ranker", "2026.11.20-3", "control", 0.95, actor="ci", reason="weekly retrain"
        ),
        DeploymentRecord(
            T0 + 60_000,
            "home-ranker",
            "2026.11.24-1",
            "canary",
            0.05,
            baseline_version="2026.11.20-3",
            lineage={
                "training_data": "warehouse.interactions@2026-11-23",
                "code_commit": "4f2c1e9",
                "artifact_digest": "sha256:" + "9b" * 32,
                "validation": {"ndcg@10": 0.41},
            },
            actor="ci",
            reason="canary rollout",
        ),
        DeploymentRecord(
            T0 + 120_000, "home-ranker", "2026.11.24-1", "control", 1.0, actor="alice", reason="go"
        ),
    ]
    delta = PartitionDelta("recs.deployments/0", 0, len(records))
    delta.deployments = [(r.model, r.arm, r.to_json()) for r in records]
    store.commit([delta], {"recs.deployments/0": 1}, now_ms=1)
    return store


def test_lineage_command_prints_the_history() -> None:
    out = io.StringIO()
    assert lineage_cli.show(_history_store(), "home-ranker", out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "home-ranker: 3 releases (oldest first)"
    assert lines[1] == (
        "live: canary 2026.11.24-1 (5%); control 2026.11.24-1 (100%), rollback target 2026.11.20-3"
    )
    header = lines[3].split()
    assert header[:4] == ["WHEN", "(UTC)", "ARM", "VERSION"]
    rows = lines[4:]
    assert len(rows) == 3
    assert re.match(
        r"2025-11-25 16:01\s+canary\s+2026\.11\.24-1\s+5%\s+-\s+ci\s+canary rollout\s+4f2c1e9\s+", rows[1]
    )
    assert "sha256:9b9b9b9b9b9b" in rows[1] and "ndcg@10=0.41" in rows[1]
    assert re.match(r"2025-11-25 16:02\s+control\s+2026\.11\.24-1\s+100%\s+2026\.11\.20-3\s+alice", rows[2])


def test_lineage_command_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert lineage_cli.show(_history_store(), "home-ranker", as_json=True, out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["rollback_targets"] == {"canary": None, "control": "2026.11.20-3"}
    assert [r["previous_version"] for r in doc["releases"]] == [None, None, "2026.11.20-3"]
    assert lineage_cli.show(_history_store(), "nobody", out=io.StringIO()) == 1
    assert "no deployment events for model 'nobody'" in capsys.readouterr().err
    broken = MemoryStore()
    broken._history["m"] = [b"{not json"]
    assert lineage_cli.show(broken, "m", out=io.StringIO()) == 2
    assert "m history entry 1: deployment record: not JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        (verdict(verdict="PASS", decision="PROMOTE"), 0),
        (verdict(), 1),
        (verdict(verdict="MARGINAL", decision="HOLD"), 3),
        (verdict(verdict="PASS", decision="PROMOTE", valid_until=T0 + 1), 3),
        (None, 4),
    ],
)
def test_canary_command_exit_codes(doc: dict[str, Any] | None, code: int) -> None:
    store = MemoryStore()
    if doc is not None:
        StoreHealthSink(store).emit([doc])
    clock = ManualClock(FRESH)
    assert canary_cli.show(store, "home-ranker", clock=clock, out=io.StringIO()) == code


def test_canary_command_prints_the_evidence() -> None:
    store = MemoryStore()
    StoreHealthSink(store).emit([verdict()])
    out = io.StringIO()
    assert canary_cli.show(store, "home-ranker", clock=ManualClock(FRESH), out=out) == 1
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == (
        f"home-ranker canary 2026.11.24-1@{T0}: "
        "candidate 2026.11.24-1 (canary) vs baseline 2026.11.20-3 (control)"
    )
    assert lines[1].startswith("decision ROLLBACK  verdict FAIL  score 31.5/100  window 2025-11-25 16:00:00")
    assert lines[3] == "reason: critical metric error_rate is HIGH"
    table = lines[5:7]
    assert table[0].split()[:4] == ["METRIC", "GROUP", "CRITICAL", "RESULT"]
    assert re.match(
        r"error_rate\s+reliability\s+yes\s+HIGH\s+0\.031\s+\[0\.021, 0\.041\]\s+ratio\s+4210\s+80113\s+"
        r"candidate 3\.4 %",
        table[1],
    )
    assert "  segment region=eu: 82 % of the excess errors" in lines
    assert "candidate lineage: code_commit=4f2c1e9" in lines


def test_canary_command_json() -> None:
    store = MemoryStore()
    StoreHealthSink(store).emit([verdict(verdict="PASS", decision="PROMOTE")])
    out = io.StringIO()
    assert canary_cli.show(store, "home-ranker", as_json=True, clock=ManualClock(FRESH), out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["gate"]["decision"] == "PROMOTE" and doc["document"]["score"] == 31.5


def test_both_commands_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["lineage", "home-ranker", "--json"])
    assert (args.func, args.model, args.json) == (lineage_cli.run, "home-ranker", True)
    args = parser.parse_args(["canary", "home-ranker", "--version", "v2", "--kind", "canary"])
    assert (args.func, args.version, args.kind) == (canary_cli.run, "v2", "canary")


# -- the documentation's verdict example ---------------------------------------------------------------------


def test_the_documented_verdict_follows_the_schema_and_the_gate_reads_it() -> None:
    text = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- schema: health -->\s*```json\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert blocks, "docs/events.md has no <!-- schema: health --> example"
    for block in blocks:
        doc = json.loads(block)
        assert list(Draft202012Validator(HEALTH_SCHEMA).iter_errors(doc)) == []
        check_verdict(copy.deepcopy(doc))
        status, body = gate_response(doc, doc["emitted_at"])
        assert body["decision"] == doc["decision"] and status in (200, 409, 412)
