"""Scenario 5: the (private) Kafka broker is stopped mid-stream and started again on the same data dir.

The worker must reconnect, catch up and count every event exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.faults.conftest import (
    PacedProducer,
    aligned_past,
    assert_exact,
    counted,
    end_offsets,
    events_to_messages,
    simulated,
    start_worker,
    totals,
)
from tests.integration.conftest import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

DOWN_S = 8.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broker_restart_mid_stream_worker_reconnects_and_counts_exactly_once(
    private_kafka, make_deployment, fault_workers: list[WorkerProcess], redis_url: str, tmp_path: Path
) -> None:
    broker = private_kafka()
    dep = make_deployment(broker.bootstrap, redis_url)
    events = simulated(aligned_past(2), duration_s=8 * 60, rate=30, seed=5505)
    n = len(events)
    producer = PacedProducer(dep.bootstrap, events_to_messages(events, dep), rate=2000)
    client = redis.Redis.from_url(redis_url)

    worker = start_worker(dep, fault_workers, tmp_path, "broker")
    producer.start()
    try:
        wait_for(lambda: counted(client, dep.prefix) > 15_000, 90, "15k events counted", worker)
        before = counted(client, dep.prefix)
        stop_began = time.monotonic()
        rc = broker.stop()  # SIGTERM: controlled shutdown of the only broker
        stopped_in = time.monotonic() - stop_began
        stalled = counted(client, dep.prefix)
        deadline = time.monotonic() + DOWN_S
        while time.monotonic() < deadline:
            assert worker.alive(), f"worker died while the broker was down:\n{worker.log_tail()}"
            time.sleep(0.5)
        during = counted(client, dep.prefix) - stalled
        broker.start()
        up_at = time.monotonic()
        wait_for(lambda: counted(client, dep.prefix) > stalled + during, 120, "counting to resume", worker)
        resumed_in = time.monotonic() - up_at
        producer.finish()
        wait_for(lambda: counted(client, dep.prefix) >= n, 150, "every event counted", worker)
        time.sleep(3)
    finally:
        producer.stop()
    final = totals(client, dep.prefix)
    in_kafka = sum(
        end_offsets(
            dep.bootstrap, [dep.topics[t] for t in ("serving", "engagement", "deployments")], dep.partitions
        ).values()
    )
    print(
        f"\nFAULT broker-restart: broker stopped (rc {rc}, {stopped_in:.1f} s) after {before} counted, down "
        f"{DOWN_S:.0f} s (+{during} counted meanwhile); counting resumed {resumed_in:.1f} s after restart; "
        f"produced={n} in Kafka={in_kafka} counted={final['consumed']}"
    )
    assert worker.alive(), worker.log_tail()
    assert in_kafka == n, "the producer duplicated or lost messages"
    assert final["consumed"] == n, final
    assert final.get("late", 0) == 0 and final.get("rejected", 0) == 0, final
    assert_exact(client, dep.prefix, events)
