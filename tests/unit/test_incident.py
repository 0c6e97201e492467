"""Incident timeline (core/incident.py, cli/incident.py): grouping, inhibition, ordering and the
post-mortem skeleton on hand-built documents, the CLI's input checks, and a simulated release incident
replayed with ``--from``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from stream_monitor.cli.incident import parse_time
from stream_monitor.cli.main import COMMANDS, main
from stream_monitor.core.datasets import DatasetArrival
from stream_monitor.core.incident import BAD_RELEASE_MATCHER, INHIBIT_RULES, AlertSpan, build_incident
from stream_monitor.core.lineage import DeploymentRecord
from stream_monitor.core.topology import DatasetRule
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sim.incidents import parse_incident

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
M = 60_000
T0 = 1_764_115_200_000  # 2025-11-26T00:00Z
DIMS = ("model", "model_version", "arm", "surface", "platform", "region", "tenure")
SECTIONS = (
    "## Summary",
    "## Impact",
    "## Timeline",
    "## Detection",
    "## Root cause",
    "## Mitigation",
    "## Action items",
    "## Links",
)


def _alert(
    ident: str,
    signal: str,
    metric: str,
    start: int,
    key: dict[str, str],
    status: str = "firing",
    severity: str = "warning",
    **extra: Any,
) -> dict[str, Any]:
    full = {d: key.get(d, "*") for d in DIMS}
    return {
        "id": ident,
        "status": status,
        "severity": severity,
        "signal": signal,
        "metric": metric,
        "key": full,
        "series": "|".join(full.values()),
        "window": {"start": start, "end": start + M, "size_ms": M},
        "observed": 1.0,
        "expected": 0.5,
        "threshold": 0.8,
        "unit": "ratio",
        "message": f"{signal} {metric}",
        "emitted_at": start + M + 2_000,
        "runbook": f"docs/runbooks/{signal}.md",
        "action": f"look at {signal}",
        "lineage": {},
        **extra,
    }


def _verdict(end: int, decision: str, version: str = "v2", deployed: int = T0) -> dict[str, Any]:
    return {
        "schema": "stream-monitor.health/v1",
        "model": "home-ranker",
        "deployment": f"{version}@{deployed}",
        "kind": "canary",
        "candidate": {"version": version, "arm": "canary", "lineage": {}},
        "baseline": {"version": "v1", "arm": "control", "lineage": {}},
        "window": {"start": deployed, "end": end},
        "emitted_at": end + 1_000,
        "decision": decision,
        "verdict": {"HOLD": "INCONCLUSIVE", "ROLLBACK": "FAIL", "PROMOTE": "PASS"}[decision],
        "reason": f"{decision.lower()} because latency.total",
        "score": 50.0,
        "metrics": [],
        "suspects": [],
        "valid_until": end + 10 * M,
    }


# -- grouping and inhibition ----------------------------------------------------------------------------


def test_a_stale_feature_explains_its_drift_and_the_scores_but_not_another_feature() -> None:
    eu = {"model": "home-ranker", "surface": "home", "region": "eu"}
    fresh = _alert("a-fresh", "freshness", "p95_age_s.watch_minutes_7d", T0 + 10 * M, eu)
    drift = _alert("a-drift", "feature_drift", "psi.watch_minutes_7d", T0 + 11 * M, eu)
    other = _alert("a-other", "feature_drift", "psi.days_since_signup", T0 + 11 * M, eu)
    scores = _alert("a-scores", "score_drift", "psi", T0 + 12 * M, {**eu, "region": "*"})
    elsewhere = _alert("a-search", "feature_drift", "psi.watch_minutes_7d", T0 + 11 * M, {"model": "search"})
    inc = build_incident([scores, other, drift, fresh, elsewhere], since_ms=T0, until_ms=T0 + 60 * M)

    by_id = {a.id: a for a in inc.alerts}
    assert by_id["a-drift"].inhibited_by == ["a-fresh (a stale feature explains its drift)"]
    assert by_id["a-scores"].inhibited_by == ["a-fresh (stale inputs shift the model's scores)"]
    assert by_id["a-other"].inhibited_by == []  # another feature: not explained
    assert by_id["a-search"].inhibited_by == []  # another model
    assert sorted(by_id["a-fresh"].inhibits) == ["a-drift", "a-scores"]
    groups = {g.model: g for g in inc.groups}
    assert len(inc.groups) == 2
    home = groups["home-ranker"]
    assert [a.id for a in home.alerts] == ["a-fresh", "a-other", "a-drift", "a-scores"]  # explained last
    assert [a.id for a in home.causes] == ["a-fresh"] and home.top.id == "a-fresh"
    assert inc.root_cause is not None and inc.root_cause.startswith("freshness")


def test_a_group_of_explained_symptoms_joins_the_group_of_its_cause() -> None:
    # The stale feature is keyed on every version (*), the drift it explains names v2: Alertmanager would
    # notify two groups; the incident shows one, because the v2 group holds nothing unexplained.
    fresh = _alert("a-fresh", "freshness", "p95_age_s.f", T0, {"model": "m"})
    drift_v2 = _alert("a-drift-v2", "feature_drift", "psi.f", T0 + M, {"model": "m", "model_version": "v2"})
    inc = build_incident([fresh, drift_v2], since_ms=T0, until_ms=T0 + 30 * M)
    assert [[a.id for a in g.alerts] for g in inc.groups] == [["a-fresh", "a-drift-v2"]]
    # With an unexplained alert beside it (score drift of v2 is not keyed like the stale feature) the v2
    # group stands on its own.
    scores_v2 = _alert("a-scores-v2", "score_drift", "psi", T0 + M, {"model": "m", "model_version": "v2"})
    inc = build_incident([fresh, drift_v2, scores_v2], since_ms=T0, until_ms=T0 + 30 * M)
    assert [[a.id for a in g.alerts] for g in inc.groups] == [["a-fresh"], ["a-scores-v2", "a-drift-v2"]]


def test_traffic_loss_explains_the_distributions_of_its_slice_only() -> None:
    eu = {"model": "m", "surface": "home", "region": "eu"}
    loss = _alert("a-vol", "volume", "count", T0, eu, severity="critical", observed=0.0, expected=500.0)
    src = _alert("a-src", "candidate_source", "share.trending", T0 + M, eu)
    us_src = _alert("a-src-us", "candidate_source", "share.trending", T0 + M, {**eu, "region": "us"})
    spike = _alert("a-vol-up", "volume", "count", T0, {**eu, "region": "us"}, observed=900.0, expected=500.0)
    inc = build_incident([loss, src, us_src, spike], since_ms=T0, until_ms=T0 + 30 * M)
    by_id = {a.id: a for a in inc.alerts}
    assert by_id["a-src"].inhibited_by and not by_id["a-src-us"].inhibited_by
    assert by_id["a-vol"].sev == "SEV2"  # a segment (region=eu) gone silent: not the whole model


def test_alerts_that_do_not_overlap_are_separate_groups_and_resolution_is_paired() -> None:
    key = {"model": "m", "model_version": "v1"}
    early = _alert("a-1", "error_rate", "ratio", T0, key)
    early_resolved = _alert("a-1", "error_rate", "ratio", T0 + 3 * M, key, status="resolved")
    late = _alert("a-2", "latency", "p99_ms.total", T0 + 40 * M, key)
    duplicate = dict(late)  # at-least-once delivery: the same message twice
    inc = build_incident(
        [late, early_resolved, early, duplicate, {"status": "firing"}, "junk"],  # type: ignore[list-item]
        since_ms=T0,
        until_ms=T0 + 60 * M,
    )
    assert [(g.id, [a.id for a in g.alerts], g.end) for g in inc.groups] == [
        ("G1", ["a-1"], T0 + 3 * M),
        ("G2", ["a-2"], None),
    ]
    assert inc.end_ms is None  # G2 still open
    assert any("2 alert documents" in n for n in inc.notes)
    # Outside the range: nothing.
    assert build_incident([early, early_resolved], since_ms=T0 + 10 * M, until_ms=T0 + 20 * M).groups == []


def test_a_deployment_then_a_rollback_verdict_orders_the_timeline_and_names_the_rollback_target() -> None:
    deployments = [
        DeploymentRecord(T0 - 120 * M, "home-ranker", "v1", "control", 1.0),
        DeploymentRecord(T0 - 120 * M, "home-ranker", "v1", "canary", 0.05),
        DeploymentRecord(T0, "home-ranker", "v2", "canary", 0.05, reason="weekly retrain"),
        DeploymentRecord(T0 + 20 * M, "home-ranker", "v1", "canary", 0.05, reason="rolled back"),
    ]
    canary = {"model": "home-ranker", "model_version": "v2", "arm": "canary", "surface": "home"}
    lineage = {"v2": {"arm": "canary", "deployed_at": T0}}
    latency = _alert(
        "a-lat", "latency", "p99_ms.total", T0 + 8 * M, canary, severity="critical", lineage=lineage
    )
    verdicts = [
        _verdict(T0 + e * M, d) for e, d in ((5, "HOLD"), (8, "HOLD"), (12, "ROLLBACK"), (14, "ROLLBACK"))
    ]
    inc = build_incident(
        [latency], verdicts, deployments, since_ms=T0 - 5 * M, until_ms=T0 + 30 * M, model="home-ranker"
    )
    kinds = [(m.ts - T0) // M for m in inc.timeline], [m.kind for m in inc.timeline]
    assert kinds == ([0, 5, 8, 12, 20], ["deployment", "verdict", "alert", "verdict", "rollback"])
    labels = [m.label for m in inc.timeline]
    assert "v2 on canary at 5% (replacing v1): weekly retrain" in labels[0]
    assert "HOLD -> ROLLBACK" in labels[3] and "HOLD ->" not in labels[1]
    assert "canary back to v1 (from v2)" in labels[4]
    # The verdict explains the alert of its version while it says ROLLBACK (from minute 12 on).
    assert inc.alerts[0].inhibited_by == [
        "verdict:home-ranker/v2@1764115200000 (the verdict already says what to do)"
    ]
    assert inc.rollback_targets == {"home-ranker canary": "v1"}
    assert inc.root_cause == "release: home-ranker v2 on canary (canary verdict ROLLBACK)"
    # Onset: the deployment just before the first alert; detected when the alert was emitted.
    assert inc.onset_ms == T0 and inc.detected_ms == T0 + 9 * M + 2_000
    assert inc.detection_delay_ms == 9 * M + 2_000
    assert inc.worst_sev == "SEV2"
    md = inc.to_markdown()
    assert "Roll back home-ranker canary to **v1**" in md
    assert "detection delay 9 min 2 s" in md


def test_a_late_dataset_is_marked_on_the_timeline_and_gets_an_action_item() -> None:
    rule = DatasetRule("user_features_hourly", every_ms=60 * M, grace_ms=30 * M, min_rows=1000)
    arrivals = [
        DatasetArrival("user_features_hourly", f"p{i}", T0 + ts * M, rows)
        for i, (ts, rows) in enumerate(((0, 5000), (60, 5000), (210, 5000), (270, 10)))
    ]
    inc = build_incident([], datasets=arrivals, since_ms=T0, until_ms=T0 + 300 * M, dataset_rules=[rule])
    assert [(m.kind, (m.ts - T0) // M) for m in inc.timeline] == [
        ("dataset", 0),
        ("dataset", 60),
        ("dataset-late", 210),  # 150 min after the previous one: 90 min later than due
        ("dataset-late", 270),  # on time but short
    ]
    assert "1 h 30 min later than due" in inc.timeline[2].label
    assert "short (1000 rows expected)" in inc.timeline[3].label
    assert inc.late_datasets == ["user_features_hourly"]
    assert "- [ ] make dataset user_features_hourly land on time" in inc.to_markdown()


def test_the_markdown_has_every_section_and_leaves_inhibited_symptoms_out_of_the_metrics() -> None:
    eu = {"model": "m", "surface": "home", "region": "eu"}
    fresh = _alert("a-fresh", "freshness", "p95_age_s.f", T0, eu)
    drift = _alert("a-drift", "feature_drift", "psi.f", T0 + M, eu)
    md = build_incident([fresh, drift], since_ms=T0, until_ms=T0 + 10 * M).to_markdown()
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "`freshness.p95_age_s.f` region=eu" in md and "`feature_drift.psi.f`" not in md
    assert "**Hypothesis (to be confirmed):** freshness" in md
    assert "1 alert(s) would page or ticket; 1 were symptoms explained by a cause" in md
    table = [line for line in md.splitlines() if re.match(r"\| 2025-", line)]
    assert len(table) == 1 and "(+1 related, 1 inhibited)" in table[0]
    assert "- Runbook: [docs/runbooks/freshness.md](docs/runbooks/freshness.md)" in md
    empty = build_incident([], since_ms=T0, until_ms=T0 + M).to_markdown()
    assert all(s in empty for s in SECTIONS) and "No alert and no verdict in the range." in empty


def test_every_alertmanager_inhibit_rule_on_worker_signals_has_its_mirror() -> None:
    config = yaml.safe_load((REPO / "deploy/alertmanager/alertmanager.yml").read_text(encoding="utf-8"))
    sources = {m for rule in config["inhibit_rules"] for m in rule["source_matchers"]}
    # monitor_blind comes from Prometheus' view of the worker itself: the worker cannot alert on it.
    assert sources - {'cause="monitor_blind"'} == {r.alertmanager for r in INHIBIT_RULES} | {
        BAD_RELEASE_MATCHER
    }
    for cause in ("stale_feature", "traffic_loss"):
        matcher = f'cause="{cause}"'
        theirs = sorted(
            tuple(r["equal"]) for r in config["inhibit_rules"] if r["source_matchers"] == [matcher]
        )
        ours = sorted(r.equal for r in INHIBIT_RULES if r.alertmanager == matcher)
        assert theirs == ours, cause
    for rule in config["inhibit_rules"]:
        if rule["source_matchers"] == ['cause="traffic_loss"']:
            (target,) = rule["target_matchers"]
            signals = re.fullmatch(r'signal=~"(.+)"', target).group(1).split("|")  # type: ignore[union-attr]
            mirror = next(r for r in INHIBIT_RULES if r.alertmanager == 'cause="traffic_loss"')
            span = AlertSpan.from_doc(_alert("x", "volume", "count", 0, {}))
            for signal in signals:
                span.signal = signal
                assert mirror.target(span), signal
            span.signal = "latency"
            assert not mirror.target(span)


# -- CLI ---------------------------------------------------------------------------------------------------


def test_parse_time_accepts_iso_relative_and_epoch() -> None:
    now = T0
    assert parse_time("30m", now) == T0 - 30 * M
    assert parse_time("1.5h", now) == T0 - 90 * M
    assert parse_time("2025-11-26T01:00:00+01:00", now) == T0
    assert parse_time("2025-11-26T00:00", now) == T0  # no zone: UTC
    for bad in ("-2h", "2 hours", "2025-13-01", ""):
        with pytest.raises(ValueError, match="is not epoch ms, an ISO-8601 time"):
            parse_time(bad, now)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "tomorrow"], "'tomorrow' is not epoch ms"),
        (["--since", "1h", "--until", "2h"], "--since (1h) must be before --until (2h)"),
        (["--alerts", "/nonexistent/alerts.jsonl"], "/nonexistent/alerts.jsonl: no such file"),
        (["--from", "x.jsonl", "--alerts", "y.jsonl"], "does not mix with --alerts"),
        (["--max-messages", "0"], "--max-messages must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_a_precise_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "incident" in COMMANDS
    assert main(["incident", *argv]) == 2
    assert message in capsys.readouterr().err


def test_alerts_and_verdicts_files_give_json_and_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    canary = {"model": "home-ranker", "model_version": "v2", "arm": "canary", "surface": "home"}
    lines = [
        _alert("a-lat", "latency", "p99_ms.total", T0 + 8 * M, canary, severity="critical"),
        _verdict(T0 + 5 * M, "HOLD"),
        _verdict(T0 + 12 * M, "ROLLBACK"),
        {"type": "deployment", "ts": T0, "model": "home-ranker", "model_version": "v2", "arm": "canary"},
        {"type": "dataset", "name": "d", "partition": "p", "ts": T0 + M, "rows": 10},
    ]
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in lines) + b"not json\n\n")
    md = tmp_path / "pm.md"
    argv = ["incident", "--alerts", str(alerts), "--since", str(T0 - M), "--until", str(T0 + 30 * M)]
    assert main([*argv, "--json", "--markdown", str(md)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["kind"] for m in doc["timeline"]] == ["deployment", "dataset", "verdict", "alert", "verdict"]
    assert doc["groups"][0]["alerts"][0]["inhibited_by"][0].startswith("verdict:home-ranker/v2@")
    assert doc["verdicts"][0]["decisions"] == ["HOLD", "ROLLBACK"]
    assert any("1 input lines" in n for n in doc["notes"])
    assert all(s in md.read_text() for s in SECTIONS)
    assert main(argv) == 0
    assert "caused by verdict:home-ranker/v2@" in capsys.readouterr().out


@pytest.mark.slow
def test_from_a_recorded_release_incident_puts_the_deployment_before_the_first_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = T0
    incident = parse_incident("ctr_drop_after_release:onset=1800", start)
    sim = TrafficSimulator(seed=7, start_ms=start, rate_per_s=30, incidents=[incident])
    recording = tmp_path / "r.jsonl"
    with open(recording, "wb") as out:
        for _kind, _key, event in sim.events(3600):
            out.write(orjson.dumps(event) + b"\n")
    md = tmp_path / "pm.md"
    assert main(["incident", "--from", str(recording), "--json", "--markdown", str(md)]) == 0
    doc = json.loads(capsys.readouterr().out)
    release = next(m for m in doc["timeline"] if m["kind"] == "deployment" and incident.version in m["label"])
    first_alert = min(m["ts"] for m in doc["timeline"] if m["kind"] == "alert")
    assert release["ts"] == incident.onset_ms < first_alert
    assert doc["onset_ms"] == incident.onset_ms and doc["detection_delay_ms"] > 0
    assert any(
        a["signal"] == "release_ctr" and a["key"]["model_version"] == incident.version
        for g in doc["groups"]
        for a in g["alerts"]
    )
    assert "release" in doc["root_cause"] and incident.version in doc["root_cause"]
    assert list(doc["rollback_targets"].values()) == ["2026.11.20-3"]
    text = md.read_text()
    assert all(s in text for s in SECTIONS)
    assert "Roll back home-ranker control to **2026.11.20-3**" in text


def test_at_the_same_time_the_cause_reads_first() -> None:
    key = {"model": "m", "model_version": "v2", "arm": "canary"}
    deployment = DeploymentRecord(T0, "m", "v2", "canary", 0.1)
    resolved = _alert("a-0", "error_rate", "ratio", T0, key, status="resolved")
    earlier = _alert("a-0", "error_rate", "ratio", T0 - 10 * M, key)
    alert = _alert("a-1", "latency", "p99_ms.total", T0, {**key, "model_version": "*"})
    inc = build_incident([alert, earlier, resolved], [_verdict(T0, "HOLD")], [deployment], since_ms=T0 - M)
    assert [m.kind for m in inc.timeline if m.ts == T0] == ["deployment", "alert", "verdict", "resolved"]


def test_from_a_recorded_bad_canary_shows_the_verdict_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_monitor.sim import Incident, SimConfig

    # As tests/integration/test_canary_worker.py: a topology that decides a canary within minutes.
    topology = yaml.safe_load((REPO / "topologies" / "default.yaml").read_text(encoding="utf-8"))
    topology.setdefault("labels", {})["maturity"] = "2m"
    topology["canary"].update({"margin": 0.3, "min_impressions": 2000})
    topology_path = tmp_path / "topology.yaml"
    topology_path.write_text(yaml.safe_dump(topology), encoding="utf-8")
    sim = TrafficSimulator(
        seed=31,
        start_ms=T0,
        rate_per_s=60,
        incidents=[Incident("canary_latency", onset_ms=T0 + 3 * M)],
        config=SimConfig(canary_share=0.5),
    )
    recording = tmp_path / "canary.jsonl"
    with open(recording, "wb") as out:
        for _kind, _key, event in sim.events(12 * 60):
            out.write(orjson.dumps(event) + b"\n")
    argv = ["incident", "--from", str(recording), "--topology", str(topology_path), "--json"]
    assert main([*argv, "--since", "2025-11-26T00:00Z", "--until", "2025-11-26T00:12Z"]) == 0
    doc = json.loads(capsys.readouterr().out)
    verdicts = [m for m in doc["timeline"] if m["kind"] == "verdict"]
    assert "HOLD" in verdicts[0]["label"] and "HOLD -> ROLLBACK" in verdicts[-1]["label"], verdicts
    deployed = next(m for m in doc["timeline"] if m["kind"] == "deployment" and "on canary" in m["label"])
    assert deployed["ts"] < verdicts[0]["ts"]
    assert doc["verdicts"][0]["decision"] == "ROLLBACK" and doc["sev"] == "SEV2"
