"""The label join in the real worker (Faust, Kafka, Redis): exact after a SIGKILL, and it raises the alert.

One simulated stream with a ``ctr_drop_after_release`` is produced up front. The worker is killed with
SIGKILL once a quarter of it is counted and restarted; afterwards every matured label window in Redis must
equal, field by field, what the in-process pipeline computes from the same events (the join's sums depend
only on the events, not on batching, partitioning or restarts), and the alerts topic must carry a
``release_ctr`` alert naming the new version.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream_monitor.config import Topics
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import TrafficSimulator, parse_incident
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology
from tests.integration.conftest import (
    REPO,
    Deployment,
    WorkerProcess,
    consume_all,
    events_to_messages,
    produce,
    sim_config,
    totals,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MINUTE = 60_000


def label_windows(client: redis.Redis, prefix: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for key in client.scan_iter(f"{prefix}:lab:*", count=1000):
        start = int(key.decode().rsplit(":", 1)[1])
        out[start] = {k.decode(): float(v) for k, v in client.hgetall(key).items()}
    return out


def in_process(events: list[tuple[str, bytes | None, dict[str, Any]]], start: int) -> MemoryStore:
    topology = load_topology(REPO / "topologies" / "default.yaml")
    sink, store, clock = ListSink(), MemoryStore(), EventTimeClock(start)
    engine = Engine(
        topology, store, sink, sink, clock, options=EngineOptions(worker_id="ref", auto_claim=True)
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=4)
    for kind, key, event in events:
        pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(event["ts"])
    pipeline.step()
    return store


def test_worker_kill_leaves_joined_labels_exact_and_raises_the_release_alert(
    deployment: Deployment, workers: list[WorkerProcess], redis_client: redis.Redis, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    start = now - 2 * 3_600_000
    start -= start % MINUTE
    incident = parse_incident("ctr_drop_after_release:arm=control,onset=1200", start)
    sim = TrafficSimulator(seed=21, start_ms=start, rate_per_s=25, incidents=[incident], config=sim_config())
    events = list(sim.events(45 * 60))
    produce(deployment.bootstrap, events_to_messages(events, deployment))

    first = WorkerProcess(deployment, tmp_path, "first").start()
    workers.append(first)
    wait_for(
        lambda: totals(redis_client, deployment.prefix).get("consumed", 0) > len(events) // 4,
        180,
        "a quarter of the events to be counted",
        first,
    )
    first.kill()
    counted_at_kill = totals(redis_client, deployment.prefix)["consumed"]
    assert counted_at_kill < len(events), "the worker finished before it could be killed mid-stream"

    second = WorkerProcess(deployment, tmp_path, "second").start()
    workers.append(second)
    wait_for(
        lambda: totals(redis_client, deployment.prefix).get("consumed", 0) >= len(events),
        300,
        "every event to be counted after the restart",
        second,
    )
    time.sleep(3)
    assert totals(redis_client, deployment.prefix)["consumed"] == len(events)

    # Every label window that has matured in every partition (the last events are ~1 minute in) is exact.
    last = max(event["ts"] for _, _, event in events)
    limit = last - last % MINUTE - MINUTE
    reference = in_process(events, start)
    stored = label_windows(redis_client, deployment.prefix)
    want = {
        s: store_fields for s in range(start, limit, MINUTE) if (store_fields := reference.read_labels(s))
    }
    got = {s: fields for s, fields in stored.items() if s < limit}
    assert len(want) >= 25
    assert sum(f.get("*#late", 0) for f in want.values()) > 0  # the run exercises late engagement too
    assert got == want

    def release_alerts() -> list[dict[str, Any]]:
        found = [orjson.loads(v) for _k, v in consume_all(deployment.bootstrap, deployment.topics["alerts"])]
        return [a for a in found if a["signal"] == "release_ctr" and a["status"] == "firing"]

    alerts = wait_for(release_alerts, 180, "a release_ctr alert on the alerts topic", second)
    truth = incident.ground_truth
    named = [a for a in alerts if a["key"]["model_version"] == truth.detail and a["key"]["arm"] == "control"]
    assert named, alerts
    onset_matures = incident.onset_ms + MINUTE + 15 * MINUTE
    # How many matured windows the CTR test needs depends on the traffic of the hour the run starts at (the
    # simulator's diurnal curve, wall-clock start): 7 windows in a run started at 09:33 UTC, 3 before.
    assert onset_matures <= min(a["window"]["start"] for a in named) < onset_matures + 8 * MINUTE
    metrics = second.metrics()
    assert 'stream_monitor_label_join_events_total{outcome="matured"}' in metrics
    print(
        f"\nLABELS: killed at {counted_at_kill}/{len(events)} counted; {len(want)} label windows exact after "
        f"the restart; release_ctr alert at window +{(named[0]['window']['start'] - start) // MINUTE} min"
    )
