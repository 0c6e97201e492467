"""Deployment safety on the real broker and Redis: release history, the gate over HTTP, the health topic.

* deployment events through the worker build the model's release history in Redis (a bad lineage is
  dead-lettered), and ``stream-monitor lineage`` prints it;
* the worker creates the health topic compacted, and its HTTP gate answers from the verdicts in Redis
  (``/gate`` by status for Flagger, ``/health`` by JSON for Argo Rollouts); ``stream-monitor canary``
  exits with the decision;
* a verdict produced by the Kafka health sink lands on the compacted topic under ``model/deployment``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream_monitor.core.gate import SCHEMA, health_key
from stream_monitor.core.lineage import build_history
from tests.integration.conftest import REPO, Deployment, WorkerProcess, consume_all, produce, wait_for

pytestmark = pytest.mark.integration

MODEL = "home-ranker"


def _deployment(ts: int, version: str, arm: str, traffic: float, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "type": "deployment",
            "ts": ts,
            "model": MODEL,
            "model_version": version,
            "arm": arm,
            "traffic": traffic,
            "lineage": {
                "training_data": f"warehouse.interactions@{version}",
                "feature_set": "home-features:v12",
                "code_commit": f"c0ffee{version[-1]}",
                "artifact_digest": "sha256:" + version[-1] * 64,
                "validation": {"ndcg@10": 0.41},
            },
            "actor": "ci",
            "reason": f"rollout of {version}",
            **extra,
        }
    )


def _verdict(now_ms: int, decision: str, verdict: str, version: str = "v2") -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": MODEL,
        "deployment": f"{version}@1764086400000",
        "kind": "canary",
        "candidate": {"version": version, "arm": "canary", "lineage": {"code_commit": "c0ffee2"}},
        "baseline": {"version": "v1", "arm": "control", "lineage": {"code_commit": "c0ffee1"}},
        "window": {"start": now_ms - 300_000, "end": now_ms},
        "emitted_at": now_ms,
        "metrics": [],
        "score": 95.0 if decision == "PROMOTE" else 20.0,
        "verdict": verdict,
        "decision": decision,
        "reason": f"test verdict {decision}",
        "suspects": [],
        "valid_until": now_ms + 600_000,
    }


def _get(url: str, post: bytes | None = None) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, data=post, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _cli(dep: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = dep.env(metrics_port=0, web_port=0)
    return subprocess.run(
        [sys.executable, "-m", "stream_monitor.cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: entry.value for name, entry in configs.items()}


def _delete_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": bootstrap}).delete_topics([topic])


def test_history_lineage_cli_and_the_http_gate(
    deployment: Deployment, workers: list[WorkerProcess], redis_client: redis.Redis, tmp_path: Path
) -> None:
    # A health topic the test fixture has not created: the worker must create it, compacted.
    health_topic = f"it-{deployment.tag}.health-own"
    deployment.extra_env["STREAM_MONITOR_TOPICS__HEALTH"] = health_topic
    now = int(time.time() * 1000)
    topic = deployment.topics["deployments"]
    bad = orjson.dumps(
        {
            "type": "deployment",
            "ts": now,
            "model": MODEL,
            "model_version": "v-bad",
            "arm": "canary",
            "lineage": {"artifact_digest": 12},
        }
    )
    produce(
        deployment.bootstrap,
        [
            (topic, MODEL.encode(), _deployment(now - 3_000, "v1", "control", 1.0)),
            (topic, MODEL.encode(), _deployment(now - 2_000, "v2", "canary", 0.05, baseline_version="v1")),
            (topic, MODEL.encode(), bad),
            (topic, MODEL.encode(), _deployment(now - 1_000, "v2", "control", 1.0, actor="alice")),
        ],
    )
    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    key = f"{deployment.prefix}:history:{MODEL}"
    wait_for(lambda: redis_client.llen(key) >= 3, 120, "three records in the release history", worker)
    time.sleep(2)  # nothing more may arrive: the bad event is not in the history
    history = build_history(MODEL, redis_client.lrange(key, 0, -1))
    assert [(r.record.version, r.record.arm, r.previous) for r in history.releases] == [
        ("v1", "control", None),
        ("v2", "canary", None),
        ("v2", "control", "v1"),
    ]
    assert history.releases[0].record.lineage["code_commit"] == "c0ffee1"
    dead = wait_for(
        lambda: consume_all(deployment.bootstrap, deployment.topics["deadletter"]),
        60,
        "the dead letter",
        worker,
    )
    (record,) = [orjson.loads(v) for _k, v in dead]
    assert record["reason"] == "invalid_field" and record["detail"].startswith("lineage.artifact_digest: 12")

    # stream-monitor lineage, from the same Redis.
    text = _cli(deployment, "lineage", MODEL)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"{MODEL}: 3 releases (oldest first)"
    assert "control v2 (100%), rollback target v1" in lines[1]
    assert "c0ffee2" in lines[-1] and "alice" in lines[-1]
    as_json = _cli(deployment, "lineage", MODEL, "--json")
    assert json.loads(as_json.stdout)["rollback_targets"]["control"] == "v1"
    assert _cli(deployment, "lineage", "unknown-model").returncode == 1

    # The worker created its health topic compacted.
    try:
        assert _topic_config(deployment.bootstrap, health_topic)["cleanup.policy"] == "compact"

        # The HTTP gate, answering from the verdicts in Redis.
        from stream_monitor.sinks.health import StoreHealthSink
        from stream_monitor.state.redis_store import RedisStore

        base = f"http://127.0.0.1:{worker.web_port}"
        status, body = wait_for(
            lambda: _try_get(f"{base}/gate/{MODEL}"), 60, "the gate endpoint to answer", worker
        )
        assert (status, body["decision"]) == (404, "HOLD")
        store = RedisStore.from_url(deployment.redis_url, prefix=deployment.prefix)
        sink = StoreHealthSink(store)
        sink.emit([_verdict(int(time.time() * 1000), "HOLD", "MARGINAL")])
        status, body = _get(f"{base}/gate/{MODEL}")
        assert (status, body["decision"], body["candidate_version"]) == (409, "HOLD", "v2")
        assert _cli(deployment, "canary", MODEL).returncode == 3
        sink.emit([_verdict(int(time.time() * 1000) + 1, "PROMOTE", "PASS")])
        status, body = _get(f"{base}/gate/{MODEL}?version=v2&kind=canary")
        assert (status, body["decision"], body["promote"]) == (200, "PROMOTE", True)
        # Flagger posts its webhook payload; the answer is the same.
        flagger = orjson.dumps({"name": "home-ranker", "namespace": "recs", "phase": "Progressing"})
        status, body = _get(f"{base}/gate/{MODEL}?kind=canary", post=flagger)
        assert (status, body["decision"]) == (200, "PROMOTE")
        status, body = _get(f"{base}/health/{MODEL}?version=v2")  # Argo's web provider: always 200
        assert (status, body["decision"], body["document"]["verdict"]) == (200, "PROMOTE", "PASS")
        status, body = _get(f"{base}/gate/{MODEL}?version=v3")  # another rollout: no verdict yet
        assert (status, body["decision"]) == (404, "HOLD")
        canary = _cli(deployment, "canary", MODEL)
        assert canary.returncode == 0, canary.stderr
        assert canary.stdout.splitlines()[1].startswith("decision PROMOTE  verdict PASS  score 95/100")
        sink.emit([_verdict(int(time.time() * 1000) + 2, "ROLLBACK", "FAIL", version="v3")])
        status, body = _get(f"{base}/gate/{MODEL}?version=v3")
        assert (status, body["decision"], body["rollback"]) == (412, "ROLLBACK", True)
        status, body = _get(f"{base}/health/{MODEL}?version=v3")
        assert (status, body["value"]) == (200, -1)
        assert _cli(deployment, "canary", MODEL, "--version", "v3").returncode == 1
        store.client.close()
    finally:
        _delete_topic(deployment.bootstrap, health_topic)


def _try_get(url: str) -> tuple[int, dict[str, Any]] | None:
    try:
        return _get(url)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def test_kafka_health_sink_publishes_to_the_compacted_topic_by_model_and_deployment(
    kafka_bootstrap: str,
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from stream_monitor.config import Settings
    from stream_monitor.runtime.kafka import KafkaHealthSink, ensure_topics, make_producer

    topic = f"it-{uuid.uuid4().hex[:8]}.health"
    settings = Settings(kafka_bootstrap=kafka_bootstrap)
    ensure_topics(settings, [topic], 1, compacted=[topic])
    try:
        assert _topic_config(kafka_bootstrap, topic)["cleanup.policy"] == "compact"
        sink = KafkaHealthSink(make_producer(settings), topic)
        now = int(time.time() * 1000)
        first = _verdict(now, "HOLD", "INCONCLUSIVE")
        second = _verdict(now + 1, "PROMOTE", "PASS")
        other = _verdict(now + 2, "ROLLBACK", "FAIL", version="v3")
        sink.emit([first, second])
        sink.emit([other])
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(topic, 0, 0)])
        got: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                got.append((msg.key(), orjson.loads(msg.value())))
        consumer.close()
        assert [k for k, _v in got] == [health_key(d).encode() for d in (first, second, other)]
        assert got[0][0] == got[1][0] == f"{MODEL}/{first['deployment']}".encode()
        assert [v for _k, v in got] == [first, second, other]
    finally:
        _delete_topic(kafka_bootstrap, topic)
