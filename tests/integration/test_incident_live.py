"""Live ``stream-monitor incident`` on the real broker and Redis.

* The topic range reader (runtime/topic_range.py) on messages with known timestamps: ``offsets_for_times``
  start, the end of the range and the count bound.
* End to end: a canary whose latency degrades and an error spike in one region flow through the real
  worker; the worker writes alerts to ``recs.alerts``, HOLD then ROLLBACK verdicts to ``recs.health`` and
  the release history to Redis. ``stream-monitor incident --since 30m`` (no file) reads all three back and
  assembles the incident: the deployments before the first alert, the HOLD -> ROLLBACK change, the error
  alerts grouped, the post-mortem skeleton.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from stream_monitor.config import Settings
from stream_monitor.runtime.kafka import ensure_topics
from stream_monitor.runtime.topic_range import TopicRangeError, read_topic_range
from stream_monitor.sim import Incident, TrafficSimulator
from tests.integration.conftest import (
    REPO,
    Deployment,
    WorkerProcess,
    consume_all,
    events_to_messages,
    produce,
    sim_config,
    wait_for,
)

pytestmark = pytest.mark.integration

MINUTE = 60_000
MODEL = "home-ranker"


def test_the_range_reader_starts_at_since_stops_at_until_and_at_the_count_bound(kafka_bootstrap: str) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    topic = f"it-range-{uuid.uuid4().hex[:8]}"
    ensure_topics(Settings(kafka_bootstrap=kafka_bootstrap), [topic], partitions=3)
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        base = 1_764_115_200_000
        for i in range(30):
            producer.produce(topic, key=str(i % 5).encode(), value=str(i).encode(), timestamp=base + i * 1000)
        assert producer.flush(30) == 0
        conf = {"bootstrap.servers": kafka_bootstrap}
        got = read_topic_range(conf, topic, base + 10_000, base + 20_000, timeout_s=20)
        assert sorted(int(v) for v in got.values) == list(range(10, 20)) and got.truncated is None
        capped = read_topic_range(conf, topic, base, base + 60_000, max_messages=7, timeout_s=20)
        assert len(capped.values) == 7 and capped.truncated == "stopped at 7 messages"
        assert read_topic_range(conf, topic, base + 60_000, base + 90_000, timeout_s=20).values == []
        with pytest.raises(TopicRangeError, match="does not exist"):
            read_topic_range(conf, topic + "-missing", base, base + 1, timeout_s=10)
    finally:
        AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics([topic])


def _topology(tmp_path: Path) -> Path:
    # As tests/integration/test_canary_worker.py: labels mature in 2 minutes and a 30 % margin, so the
    # canary is decided within minutes of simulated traffic.
    doc = yaml.safe_load((REPO / "topologies" / "default.yaml").read_text(encoding="utf-8"))
    doc.setdefault("labels", {})["maturity"] = "2m"
    doc["canary"].update({"margin": 0.3, "min_impressions": 2000})
    path = tmp_path / "incident-topology.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _decided(deployment: Deployment) -> bool:
    docs = [orjson.loads(v) for _, v in consume_all(deployment.bootstrap, deployment.topics["health"])]
    return any(d["decision"] == "ROLLBACK" for d in docs)


def _firing(deployment: Deployment, version: str) -> list[dict[str, Any]]:
    docs = [orjson.loads(v) for _, v in consume_all(deployment.bootstrap, deployment.topics["alerts"])]
    return [
        d
        for d in docs
        if d["status"] == "firing" and d["signal"] == "error_rate" and d["key"]["model_version"] == version
    ]


@pytest.mark.slow
def test_live_incident_reads_alerts_verdicts_and_release_history(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    import time

    minutes = 12
    now = int(time.time() * 1000)
    start = now - (minutes + 1) * MINUTE
    start -= start % MINUTE
    incidents = [
        Incident("canary_latency", onset_ms=start + 3 * MINUTE),
        Incident("error_spike", onset_ms=start + 4 * MINUTE, target={"region": "eu"}),
    ]
    sim = TrafficSimulator(
        seed=41, start_ms=start, rate_per_s=60, incidents=incidents, config=sim_config(canary_share=0.5)
    )
    events = list(sim.events(minutes * 60))
    canary_version = next(
        e["model_version"] for k, _, e in events if k == "deployment" and e["arm"] == "canary"
    )
    produce(deployment.bootstrap, events_to_messages(events, deployment))
    deployment.extra_env["STREAM_MONITOR_TOPOLOGY"] = str(_topology(tmp_path))
    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    wait_for(lambda: _decided(deployment), 300, "a ROLLBACK verdict on the health topic", worker)
    wait_for(
        lambda: _firing(deployment, canary_version),
        120,
        "the canary's error_rate alert on the alerts topic",
        worker,
    )

    markdown = tmp_path / "postmortem.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_monitor.cli.main",
            "incident",
            "--since",
            "30m",
            "--model",
            MODEL,
            "--json",
            "--markdown",
            str(markdown),
            "--timeout",
            "20",
        ],
        cwd=REPO,
        env=deployment.env(0, 0),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    kinds = [m["kind"] for m in doc["timeline"]]
    # The release history came from Redis: the canary's deployment is on the timeline, before any alert.
    canary_deploy = next(
        m
        for m in doc["timeline"]
        if m["kind"] == "deployment" and f"{canary_version} on canary" in m["label"]
    )
    assert canary_deploy["ts"] < min(m["ts"] for m in doc["timeline"] if m["kind"] == "alert")
    # The verdicts came from the health topic: HOLD first, then the change to ROLLBACK.
    changes = [m["label"] for m in doc["timeline"] if m["kind"] == "verdict"]
    assert any("HOLD -> ROLLBACK" in label for label in changes), changes
    assert doc["verdicts"][0]["version"] == canary_version and doc["verdicts"][0]["decision"] == "ROLLBACK"
    # The alerts came from the alert topic, grouped by model and version.
    signals = {a["signal"] for g in doc["groups"] for a in g["alerts"]}
    assert "error_rate" in signals, signals
    assert all(g["model"] == MODEL for g in doc["groups"])
    assert "alert" in kinds and doc["detection_delay_ms"] is not None
    text = markdown.read_text()
    for section in ("## Summary", "## Timeline", "## Detection", "## Root cause", "## Mitigation"):
        assert section in text
    print(f"\nINCIDENT live: {len(doc['groups'])} groups, timeline {kinds}")
    # The ROLLBACK verdict explains the canary version's alerts (Alertmanager's bad_release inhibition); the
    # control's alerts of the same error spike stand on their own.
    for group in doc["groups"]:
        explained = [bool(a["inhibited_by"]) for a in group["alerts"]]
        if group["model_version"] == canary_version:
            assert all(explained), group
            assert group["alerts"][0]["inhibited_by"][0].startswith(f"verdict:{MODEL}/{canary_version}@")
        else:
            assert not any(explained), group
    assert {g["model_version"] for g in doc["groups"]} >= {canary_version}
