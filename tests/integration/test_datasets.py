"""Dataset arrival against a real Kafka broker and a real Redis server: the worker reads ``recs.datasets``,
stores the newest partition with the batch's commit, and raises ``dataset_arrival`` when it is late."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from stream_monitor.sim import Incident, TrafficSimulator
from tests.integration.conftest import (
    Deployment,
    WorkerProcess,
    consume_all,
    events_to_messages,
    produce,
    sim_config,
    totals,
    wait_for,
)

pytestmark = pytest.mark.integration

MINUTE = 60_000
HOUR = 60 * MINUTE
DATASET = "user_features_hourly"  # topologies/default.yaml: every 1h, grace 30m, min_rows 1000


def test_a_late_dataset_raises_dataset_arrival(
    deployment: Deployment, workers: list[WorkerProcess], redis_client: redis.Redis, tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    start = now - 3 * HOUR - now % MINUTE
    # The partition landing at start is the last one in time: every later one is 4 h late (after the run).
    late = Incident("dataset_late", onset_ms=start + HOUR, magnitude=4 * 3600)
    sim = TrafficSimulator(
        seed=2,
        start_ms=start,
        rate_per_s=2,
        incidents=[late],
        config=sim_config(engagement=False, datasets=((DATASET, 3600.0, 5000),)),
    )
    events = list(sim.events(150 * 60))
    datasets = [e for kind, _, e in events if kind == "dataset"]
    assert [e["ts"] for e in datasets] == [start]
    produce(deployment.bootstrap, events_to_messages(events, deployment))

    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    wait_for(
        lambda: totals(redis_client, deployment.prefix).get("consumed", 0) >= len(events),
        180,
        "every event to be counted",
        worker,
    )
    stored = redis_client.hgetall(f"{deployment.prefix}:datasets")
    assert {k.decode(): orjson.loads(v) for k, v in stored.items()} == {
        DATASET: {
            "name": DATASET,
            "partition": datasets[0]["partition"],
            "ts": start,
            "rows": datasets[0]["rows"],
        }
    }

    def late_alerts() -> list[dict[str, Any]]:
        found = [orjson.loads(v) for _k, v in consume_all(deployment.bootstrap, deployment.topics["alerts"])]
        return [a for a in found if a["signal"] == "dataset_arrival" and a["status"] == "firing"]

    (alert,) = wait_for(late_alerts, 120, "a dataset_arrival alert on the alerts topic", worker)
    assert alert["metric"] == f"late.{DATASET}" and alert["threshold"] == 5400.0 and alert["unit"] == "s"
    # Late from the first window whose end is more than 1 h 30 min after the partition landed.
    assert start + 91 * MINUTE <= alert["window"]["end"] <= start + 150 * MINUTE
    assert alert["observed"] == (alert["window"]["end"] - start) / 1000
    assert set(alert["key"].values()) == {"*"}

    samples = [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(worker.metrics())
        for sample in family.samples
        if sample.name == "stream_monitor_signal_value" and sample.labels["signal"] == "dataset_arrival"
    ]
    metrics = {labels["metric"]: value for labels, value in samples}
    assert metrics[f"late.{DATASET}"] > 5400 and metrics[f"rows.{DATASET}"] == datasets[0]["rows"]
    # Only the configured datasets that have arrived are exported, on the all-'*' series.
    assert {labels["model"] for labels, _ in samples} == {"*"} and len(samples) == 2
    open_alerts = [
        sample.value
        for family in text_string_to_metric_families(worker.metrics())
        for sample in family.samples
        if sample.name == "stream_monitor_open_alerts" and sample.labels["signal"] == "dataset_arrival"
    ]
    assert sum(open_alerts) == 1
