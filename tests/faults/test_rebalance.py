"""Scenario 2: scale 1 -> 2 -> 1 workers in one consumer group mid-stream (4 partitions per topic).

No event lost or double-counted, and detection ran once per window: one lease holder at a time, each
alert (id, status) on the alerts topic once.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import redis

from tests.faults.conftest import (
    PacedProducer,
    aligned_past,
    assert_exact,
    counted,
    events_to_messages,
    metric_value,
    simulated,
    start_worker,
    totals,
)
from tests.integration.conftest import WorkerProcess, consume_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SEED = 2202
RATE = 3000  # messages/s produced: the stream lasts ~40 s of wall time


class LeaseWatch(threading.Thread):
    """Samples ``<prefix>:lease:closer`` every 0.1 s (bounded by ``max_s``) and records holder changes."""

    def __init__(self, client: redis.Redis, prefix: str, max_s: float = 240.0) -> None:
        super().__init__(name="lease-watch", daemon=True)
        self.client, self.key, self.max_s = client, f"{prefix}:lease:closer", max_s
        self.changes: list[tuple[float, str | None]] = []
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        last: object = object()
        while not self._halt.is_set() and time.monotonic() - began < self.max_s:
            raw = self.client.get(self.key)
            holder = raw.decode() if raw else None
            self.samples += 1
            if holder != last:
                self.changes.append((time.monotonic(), holder))
                last = holder
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _how_they_differ(values: list[bytes]) -> str:
    if len(set(values)) == 1:
        return f"{len(values)} byte-identical copies"
    docs = [orjson.loads(v) for v in values]
    fields = sorted({f for d in docs[1:] for f, x in d.items() if docs[0].get(f) != x})
    return f"{len(values)} copies differing in {fields}"


def _pid_of(holder: str | None) -> int | None:
    return int(holder.rsplit("-", 1)[1]) if holder else None


@pytest.mark.timeout(300)
def test_scale_one_two_one_counts_exactly_once_and_detects_once(
    make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    dep = make_deployment(kafka_bootstrap, redis_url, partitions=4)
    start = aligned_past(2)
    events = simulated(
        start,
        duration_s=10 * 60,
        rate=40,
        seed=SEED,
        incidents=["error_spike:platform=android,magnitude=0.3,onset=240,duration=180"],
    )
    n = len(events)
    client = redis.Redis.from_url(redis_url)
    lease = LeaseWatch(redis.Redis.from_url(redis_url), dep.prefix)
    producer = PacedProducer(dep.bootstrap, events_to_messages(events, dep), RATE)
    producer.start()
    lease.start()
    try:
        a = start_worker(dep, fault_workers, tmp_path, "rebalance-a")
        wait_for(lambda: counted(redis.Redis.from_url(redis_url), dep.prefix) > 0, 90, "A's first commit", a)
        time.sleep(4)
        b = start_worker(dep, fault_workers, tmp_path, "rebalance-b")
        at_scale_up = counted(client, dep.prefix)
        # B is in: it has committed deltas of its own partitions (and A is still alive).
        wait_for(
            lambda: (metric_value(b, "stream_monitor_state_commits_total", result="applied") or 0) > 0,
            90,
            "B to commit its first delta",
            b,
        )
        assert a.alive(), a.log_tail()
        both_since = time.monotonic()
        time.sleep(5)
        a_closed = metric_value(a, "stream_monitor_windows_closed_total") or 0.0
        a_pid = a.proc.pid  # type: ignore[union-attr]
        at_scale_down = counted(client, dep.prefix)
        stop_began = time.monotonic()
        a.stop()  # SIGTERM: graceful leave, B takes all partitions
        stopped_at = time.monotonic()
        assert a.proc is not None and a.proc.returncode == 0, f"A exited with {a.proc.returncode}"
        produced_total = n
        wait_for(
            lambda: counted(client, dep.prefix) >= produced_total, 180, "every event counted after 2 -> 1", b
        )
        producer.finish()
        time.sleep(3)  # anything double-counted would show up by now
    finally:
        producer.stop()
        lease.stop()

    final = totals(client, dep.prefix)
    assert final["consumed"] == n, (final, n)
    assert final.get("late", 0) == 0 and final.get("rejected", 0) == 0, final
    assert_exact(client, dep.prefix, events)

    # Alerts: the injected error spike fired (and resolved) once; no (id, status) was sent twice.
    def error_alert_resolved() -> list[tuple[bytes, bytes]] | None:
        found = consume_all(dep.bootstrap, dep.topics["alerts"], 10)
        docs = [orjson.loads(v) for _k, v in found]
        done = any(d["signal"] == "error_rate" and d["status"] == "resolved" for d in docs)
        return found if done else None

    raw_alerts = wait_for(error_alert_resolved, 60, "the error_rate alert to fire and resolve", b)
    by_id: defaultdict[tuple[str, str], list[bytes]] = defaultdict(list)
    for _k, v in raw_alerts:
        doc = orjson.loads(v)
        by_id[(doc["id"], doc["status"])].append(v)
    dupes = {k: vs for k, vs in by_id.items() if len(vs) > 1}
    described = {k: _how_they_differ(vs) for k, vs in dupes.items()}
    error_alerts = [orjson.loads(v) for _k, v in raw_alerts if orjson.loads(v)["signal"] == "error_rate"]
    firing = [d for d in error_alerts if d["status"] == "firing"]
    assert not dupes, f"alerts sent more than once: {described}"
    assert len(firing) == 1 and firing[0]["key"]["platform"] == "android", firing

    # One closer at a time: the lease only moved from A to B after A stopped, never back and forth.
    holders = [(t, _pid_of(h)) for t, h in lease.changes if h is not None]
    b_pid = b.proc.pid  # type: ignore[union-attr]
    order = [pid for _t, pid in holders]
    moves = [(t - stop_began, pid) for t, pid in holders]
    assert set(order) <= {a_pid, b_pid}, order
    compressed = [pid for i, pid in enumerate(order) if i == 0 or order[i - 1] != pid]
    assert compressed in ([a_pid, b_pid], [a_pid], [b_pid]), f"lease holders over time: {moves}"
    handover = "none"
    if compressed == [a_pid, b_pid]:
        b_took = next(t for t, pid in holders if pid == b_pid)
        assert b_took >= stop_began, f"B took the lease while A was alive: {moves}"
        handover = f"{b_took - stopped_at:.1f} s after A exited"
    # Windows closed, between the two workers, no more than once each (A's count is read just before its
    # stop; it may close one or two more while shutting down).
    b_closed = metric_value(b, "stream_monitor_windows_closed_total") or 0.0
    closed_before = int(client.get(f"{dep.prefix}:closed_before") or 0)
    windows_closed = (closed_before - start) // 60_000
    assert a_closed + b_closed <= windows_closed, (a_closed, b_closed, windows_closed)
    print(
        f"\nFAULT rebalance: produced={n} counted={final['consumed']}; scale-up at {at_scale_up} counted, "
        f"2 workers for {stop_began - both_since:.0f} s, scale-down at {at_scale_down}; "
        f"A stop took {stopped_at - stop_began:.1f} s; lease holders {compressed} ({lease.samples} samples), "
        f"handover {handover}; "
        f"windows closed A={a_closed:.0f} B={b_closed:.0f} of {windows_closed}; alerts {len(raw_alerts)}, "
        f"duplicates {described or 'none'}"
    )
