"""Scenario: Redis fails over under Sentinel to a replica that had not received the last commits.

A primary, one replica and one Sentinel (quorum 1, down-after 1 s; tests/faults/conftest.py
``PrivateSentinel``); the real worker reaches the primary through ``redis+sentinel://``. While the worker
commits, the replica's replication is paused (``CLIENT PAUSE ... WRITE`` on the replica holds back the
commands its primary streams to it), so its copy lags what the worker was told is counted. Then the
primary is SIGKILLed, the replica resumed (its held-back commands die with the link) and promoted by the
Sentinel: the store the worker reconnects to went back in time. The worker must notice (the store is
behind what it saw it count), exit 75 and, restarted, re-read from the store's offsets: every window exact,
no event lost or counted twice. docs/redis-ha.md.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.faults.conftest import (
    PacedProducer,
    PrivateSentinel,
    aligned_past,
    assert_exact,
    counted,
    events_to_messages,
    simulated,
    start_worker,
    totals,
)
from tests.integration.conftest import Deployment, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RESTARTS = 3  # exits 75 the test restarts the worker after (one is expected)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=5)


def _link(client: redis.Redis) -> str:
    return str(client.info("replication").get("master_link_status"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failover_to_a_lagging_replica_loses_and_doubles_nothing(
    private_sentinel: Callable[..., PrivateSentinel],
    make_deployment: Callable[..., Deployment],
    fault_workers: list[WorkerProcess],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    ha = private_sentinel(down_after_ms=1000)
    dep = make_deployment(kafka_bootstrap, ha.url)
    events = simulated(aligned_past(2), duration_s=10 * 60, rate=30, seed=5505)
    n = len(events)
    producer = PacedProducer(dep.bootstrap, events_to_messages(events, dep), rate=1500)
    primary, replica = _client(ha.primary.port), _client(ha.replica.port)

    worker = start_worker(dep, fault_workers, tmp_path, "failover-first")
    producer.start()
    try:
        wait_for(lambda: counted(primary, dep.prefix) > 5_000, 90, "5k events counted", worker)
        # From here the replica holds back what its primary streams to it (reads still answer).
        replica.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
        paused_at = counted(primary, dep.prefix)
        wait_for(
            lambda: counted(primary, dep.prefix) > paused_at + 5_000,
            60,
            "5k more events counted while the replica lags",
            worker,
        )
        before_kill = counted(primary, dep.prefix)
        os.kill(ha.primary.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # The replica notices the dead link first (its held-back commands go with it), then resumes.
        wait_for(lambda: _link(replica) == "down", 15, "the replica to lose its primary")
        replica.execute_command("CLIENT", "UNPAUSE")
        on_replica = counted(replica, dep.prefix)
        primary.close()
        wait_for(lambda: ha.primary_port() == ha.replica.port, 60, "the Sentinel to promote the replica")
        promoted_in = time.monotonic() - killed_at
        # The scenario's premise: the promoted copy lacks commits the worker saw applied.
        assert on_replica < before_kill, f"the replica did not lag ({on_replica} of {before_kill})"

        producer.finish()
        workers, exits = [worker], []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and counted(replica, dep.prefix) < n:  # bounded: 180 s
            current = workers[-1]
            if not current.alive():
                assert current.proc is not None
                exits.append(current.proc.returncode)
                assert current.proc.returncode == 75, f"worker exited {exits}:\n{current.log_tail()}"
                assert len(exits) <= RESTARTS, f"worker exited 75 {len(exits)} times:\n{current.log_tail()}"
                workers.append(start_worker(dep, fault_workers, tmp_path, f"failover-{len(workers) + 1}"))
            time.sleep(0.5)
        time.sleep(3)  # a commit past the last event would show up as a double count
    finally:
        producer.stop()

    final = totals(replica, dep.prefix)
    print(
        f"\nFAULT redis-failover: replica paused after {paused_at} counted, primary killed after "
        f"{before_kill}; the promoted replica held {on_replica} (behind by {before_kill - on_replica}); "
        f"promoted {promoted_in:.1f} s after the kill; worker exits {exits or 'none'}; produced={n} "
        f"counted={final.get('consumed')}"
    )
    assert final.get("consumed") == n, (
        f"{n - final.get('consumed', 0)} events lost (negative: counted twice) across the failover; "
        f"worker exits {exits}\n{workers[-1].log_tail()}"
    )
    assert final.get("late", 0) == 0 and final.get("rejected", 0) == 0, final
    assert_exact(replica, dep.prefix, events)
