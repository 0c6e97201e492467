"""Scenario 7: event time against the watermark and the wall clock.

* an event for a window that has closed (later than the allowed lateness) is dead-lettered as
  ``late_event`` and not merged into the closed window;
* an event behind the watermark but within the allowed lateness is counted in its window;
* an event more than 5 minutes in the future is dead-lettered as ``future_event``; one 4 minutes ahead
  is counted.

Events are written to chosen partitions with chosen timestamps, so the watermark is known exactly.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.faults.conftest import (
    WINDOW_MS,
    aligned_past,
    assert_exact,
    counted,
    expected_windows,
    produce_all,
    start_worker,
    stored_windows,
    totals,
    window_diff,
)
from tests.integration.conftest import Deployment, WorkerProcess, consume_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

LATENESS_MS = 30_000  # topologies/default.yaml: allowed_lateness 30s
PARTITIONS = 4

Event = tuple[str, bytes | None, dict[str, Any]]


def serving(ts: int, rid: str) -> Event:
    return (
        "serving",
        rid.encode(),
        {
            "type": "serving",
            "request_id": rid,
            "ts": ts,
            "model": "home-ranker",
            "model_version": "v1",
            "arm": "control",
            "surface": "home",
            "segment": {"platform": "ios", "region": "us", "tenure": "new"},
            "latency_ms": {"total": 40.0 + ts % 7},
        },
    )


def engagement(ts: int, rid: str) -> Event:
    return (
        "engagement",
        rid.encode(),
        {"type": "engagement", "request_id": rid, "ts": ts, "action": "click"},
    )


def produce_to(dep: Deployment, placed: list[tuple[int, Event]]) -> list[bytes]:
    """Produce events to explicit partitions; returns the message values in order."""
    topic = {"serving": dep.topics["serving"], "engagement": dep.topics["engagement"]}
    messages = [(topic[kind], key, orjson.dumps(doc)) for _p, (kind, key, doc) in placed]
    produce_all(dep.bootstrap, messages, {i: p for i, (p, _e) in enumerate(placed)})
    return [value for _t, _k, value in messages]


def phase_a(t0: int) -> list[tuple[int, Event]]:
    """Windows W0..W4 with data on every partition, then every partition at t0 + 6m30s: the watermark is
    exactly that, so W0..W5 close (closed_before = t0 + 6m) and W6 stays open for about a minute."""
    placed: list[tuple[int, Event]] = []
    for p in range(PARTITIONS):
        for k in range(5):
            for j in range(3):
                placed.append((p, serving(t0 + k * WINDOW_MS + 1_000 * (3 * p + j + 1), f"a-{p}-{k}-{j}")))
            placed.append((p, engagement(t0 + k * WINDOW_MS + 20_000 + p, f"a-{p}-{k}-e")))
        placed.append((p, serving(t0 + 6 * WINDOW_MS + LATENESS_MS, f"adv-{p}")))
        placed.append((p, engagement(t0 + 6 * WINDOW_MS + LATENESS_MS, f"adv-{p}-e")))
    return placed


def dead_letters(dep: Deployment) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _k, v in consume_all(dep.bootstrap, dep.topics["deadletter"], 8)]


def _closed_before(client: redis.Redis, dep: Deployment) -> int | None:
    raw = client.get(f"{dep.prefix}:closed_before")
    return int(raw) if raw else None


@pytest.mark.timeout(240)
def test_late_within_lateness_and_future_events(
    make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    dep = make_deployment(kafka_bootstrap, redis_url, partitions=PARTITIONS)
    client = redis.Redis.from_url(redis_url)
    t0 = aligned_past(1)
    w = lambda k: t0 + k * WINDOW_MS  # noqa: E731 - window k's start
    a = phase_a(t0)
    produce_to(dep, a)
    worker = start_worker(dep, fault_workers, tmp_path, "clock")
    wait_for(lambda: _closed_before(client, dep) == w(6), 60, "W0..W5 to close (closed_before = W6)", worker)
    assert counted(client, dep.prefix) == len(a)
    closed_at = time.monotonic()

    # Phase B, while W6 is open and the watermark is W6 + 30 s.
    late = [
        (0, serving(w(1) + 7, "late-w1")),
        (1, engagement(w(6) - 1, "late-w5-e")),
        (2, serving(w(6) - 1, "late-w5")),
    ]
    within = [
        (0, serving(w(6), "within-0")),
        (3, serving(w(6) + 1, "within-3")),
        (2, engagement(w(6) + 10_000, "within-e")),
    ]
    late_values = produce_to(dep, late)
    produce_to(dep, within)
    wait_for(lambda: counted(client, dep.prefix) >= len(a) + 6, 30, "phase B counted", worker)
    assert _closed_before(client, dep) == w(6), "W6 closed too early: the test's premise broke"
    phase_b_s = time.monotonic() - closed_at
    t = totals(client, dep.prefix)
    assert t.get("rejected.late_event") == len(late), t
    assert t.get("late", 0) == 0, t  # dead-lettered by the worker, not only counted by the commit script
    counted_events = [e for _p, e in a + within]
    assert not window_diff(expected_windows(counted_events), stored_windows(client, dep.prefix))

    # Phase C: the wall clock's future.
    now = int(time.time() * 1000)
    future = [(1, serving(now + 10 * 60_000, "future-10m")), (2, engagement(now + 6 * 60_000, "future-6m-e"))]
    near = [(3, serving(now + 4 * 60_000, "near-4m"))]
    future_values = produce_to(dep, future)
    produce_to(dep, near)
    wait_for(lambda: counted(client, dep.prefix) >= len(a) + 6 + 3, 30, "phase C counted", worker)
    t = totals(client, dep.prefix)
    assert t.get("rejected.future_event") == len(future), t

    dead = wait_for(
        lambda: (d := dead_letters(dep)) and len(d) >= len(late) + len(future) and d,
        30,
        "the dead letters",
        worker,
    )
    reasons = Counter(d["reason"] for d in dead)
    by_reason = {r: {base64.b64decode(d["value_b64"]) for d in dead if d["reason"] == r} for r in reasons}
    print(
        f"\nFAULT clock: {len(a)} events, W0..W5 closed; {len(late)} late -> {reasons.get('late_event', 0)} "
        f"late_event dead letters; {len(within)} within lateness counted ({phase_b_s:.1f} s after close); "
        f"{len(future)} future (+6/+10 min) -> {reasons.get('future_event', 0)} future_event; +4 min counted"
    )
    assert reasons == Counter({"late_event": len(late), "future_event": len(future)}), reasons
    assert by_reason["late_event"] == set(late_values)
    assert by_reason["future_event"] == set(future_values)
    assert_exact(client, dep.prefix, counted_events + [e for _p, e in near])
    assert totals(client, dep.prefix)["consumed"] == len(a) + len(late) + len(within) + len(future) + len(
        near
    )


@pytest.mark.timeout(240)
def test_late_events_right_after_a_restart_are_dead_lettered(
    make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    dep = make_deployment(kafka_bootstrap, redis_url, partitions=PARTITIONS)
    client = redis.Redis.from_url(redis_url)
    t0 = aligned_past(1)
    a = phase_a(t0)
    produce_to(dep, a)
    first = start_worker(dep, fault_workers, tmp_path, "clock-first")
    wait_for(lambda: _closed_before(client, dep) == t0 + 6 * WINDOW_MS, 60, "W0..W5 to close", first)
    first.stop()  # SIGTERM: a clean stop (deploy, scale-in); the windows stay closed in Redis
    late = [(p, serving(t0 + WINDOW_MS + p, f"late-{p}")) for p in range(PARTITIONS)]
    late_values = produce_to(dep, late)
    second = start_worker(dep, fault_workers, tmp_path, "clock-second")
    wait_for(lambda: counted(client, dep.prefix) >= len(a) + len(late), 60, "the late events counted", second)
    t = totals(client, dep.prefix)
    dead = [d for d in dead_letters(dep) if d["reason"] == "late_event"]
    print(
        f"\nFAULT clock-restart: {len(late)} late events after a restart -> {len(dead)} late_event dead "
        f"letters; totals rejected.late_event={t.get('rejected.late_event', 0)} late={t.get('late', 0)}"
    )
    assert {base64.b64decode(d["value_b64"]) for d in dead} == set(late_values), t
