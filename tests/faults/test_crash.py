"""Scenario 1: SIGKILL the worker at >= 10 seeded random points mid-stream; each event counted once."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import redis

from tests.faults.conftest import (
    aligned_past,
    assert_exact,
    counted,
    events_to_messages,
    kill_worker,
    produce_all,
    simulated,
    start_worker,
    totals,
)
from tests.integration.conftest import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = 1125
KILLS = 12


def _wait_counted(
    client: redis.Redis, prefix: str, target: int, timeout_s: float, worker: WorkerProcess
) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = counted(client, prefix)
        if now >= target:
            return now
        if not worker.alive():
            pytest.fail(f"worker exited while waiting for {target} counted:\n{worker.log_tail()}")
        time.sleep(0.05)
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {target} counted (at {now})\n{worker.log_tail()}"
    )


@pytest.mark.slow  # 12 restarts, each waits out the 6 s group session of the killed worker: ~100 s
@pytest.mark.timeout(420)
def test_sigkill_at_random_points_counts_every_event_exactly_once(
    make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    dep = make_deployment(kafka_bootstrap, redis_url)
    # Large enough that twelve kills cannot reach the end: batch delivery counts 30-50k events/s here, so
    # each kill lands 0.5-32k events past its target (the random sub-batch delay and the commit chunk);
    # with 9 minutes of traffic (190k events) the eleventh kill found everything counted.
    events = simulated(aligned_past(3), duration_s=14 * 60, rate=100, seed=SEED)
    n = len(events)
    produce_all(dep.bootstrap, events_to_messages(events, dep))
    client = redis.Redis.from_url(redis_url)

    worker = start_worker(dep, fault_workers, tmp_path, "crash-0")
    kills: list[tuple[int, int]] = []  # (target progress, counted right after the kill)
    restarts: list[float] = []  # seconds from a restart to the next commit
    for i in range(KILLS):
        base = max(0, counted(client, dep.prefix))
        # A random amount of progress (some tiny: the kill lands right after the first commit of a
        # freshly started worker), then a random sub-batch delay so the kill hits any point of the
        # ingest / commit / ack cycle.
        target = base + rng.randint(1, n // (KILLS * 4))
        started = time.monotonic()
        _wait_counted(client, dep.prefix, base + 1, 120, worker)
        restarts.append(time.monotonic() - started)
        _wait_counted(client, dep.prefix, target, 120, worker)
        time.sleep(rng.uniform(0.0, 0.4))
        kill_worker(worker)
        at_kill = counted(client, dep.prefix)
        kills.append((target, at_kill))
        assert at_kill < n, f"kill {i + 1}: the worker finished before it could be killed ({kills})"
        worker = start_worker(dep, fault_workers, tmp_path, f"crash-{i + 1}")

    _wait_counted(client, dep.prefix, n, 180, worker)
    time.sleep(3)  # anything double-counted would show up in the totals by now
    final = totals(client, dep.prefix)
    assert final["consumed"] == n, final
    assert final.get("rejected", 0) == 0 and final.get("late", 0) == 0, final
    assert_exact(client, dep.prefix, events)
    print(
        f"\nFAULT crash: {len(kills)} kills survived, produced={n} counted={final['consumed']}; "
        f"kill points (counted at kill) {[k for _, k in kills]}; restart-to-first-commit "
        f"{min(restarts):.1f}-{max(restarts):.1f} s"
    )
