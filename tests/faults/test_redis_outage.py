"""Scenarios 3 and 4: Redis goes away mid-stream.

* outage: a private Redis (AOF on) is stopped for 30 s and started again with its data; the worker must
  stay up, report ``stream_monitor_state_store_up 0`` meanwhile, keep its memory bounded, recover and
  count every event exactly once;
* restarted empty: a private Redis without persistence comes back empty; the worker exits with 75 on its
  next commit and, restarted, counts every event from Kafka's committed offsets on;
* restored from an older snapshot: Redis comes back with the RDB it saved minutes earlier (behind
  Kafka's committed offsets, as after a failover to a lagging replica); the worker exits with 75 on its
  next commit and, restarted, re-reads from the store's offsets: every event counted exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.faults.conftest import (
    PacedProducer,
    aligned_past,
    assert_exact,
    committed_offsets,
    counted,
    events_to_messages,
    kill_worker,
    metric_samples,
    metric_value,
    produce_all,
    rss_kb,
    simulated,
    start_worker,
    totals,
)
from tests.integration.conftest import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_S = 30.0


def _deployment(ts: int, version: str, traffic: float) -> dict[str, object]:
    return {
        "type": "deployment",
        "ts": ts,
        "model": "home-ranker",
        "model_version": version,
        "arm": "canary",
        "traffic": traffic,
        "baseline_version": "2026.11.20-3",
        "actor": "faults-test",
        "reason": "outage",
    }


def _lag(worker: WorkerProcess) -> float | None:
    """Total of stream_monitor_consumer_lag_messages over the worker's partitions."""
    try:
        samples = metric_samples(worker.metrics())
    except OSError:
        return None
    return sum(v for name, _labels, v in samples if name == "stream_monitor_consumer_lag_messages")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_redis_outage_30s_worker_survives_and_counts_exactly_once(
    private_redis, make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, tmp_path: Path
) -> None:
    server = private_redis(appendonly=True)
    dep = make_deployment(kafka_bootstrap, server.url)
    events = simulated(aligned_past(2), duration_s=10 * 60, rate=30, seed=3303)
    n = len(events)
    producer = PacedProducer(dep.bootstrap, events_to_messages(events, dep), rate=1500)
    client = redis.Redis.from_url(server.url, socket_timeout=5)

    worker = start_worker(dep, fault_workers, tmp_path, "outage")
    assert worker.proc is not None
    pid = worker.proc.pid
    producer.start()
    try:
        wait_for(lambda: counted(client, dep.prefix) > 10_000, 90, "10k events counted", worker)
        baseline = []
        for _ in range(4):
            baseline.append(rss_kb(pid) or 0)
            time.sleep(0.25)
        before = counted(client, dep.prefix)
        lag_before = _lag(worker)
        producer.mark("outage")
        client.close()
        server.stop()  # SIGTERM: Redis writes its AOF and exits
        down_at = time.monotonic()
        up_samples: list[float | None] = []
        rss: list[int] = []
        while time.monotonic() - down_at < OUTAGE_S:  # bounded: 30 s, ~60 samples
            assert worker.alive(), f"worker died during the Redis outage:\n{worker.log_tail()}"
            rss.append(rss_kb(pid) or 0)
            up_samples.append(metric_value(worker, "stream_monitor_state_store_up"))
            time.sleep(0.5)
        sent_during = producer.sent - producer.marks["outage"]
        lag_end = _lag(worker)
        server.start()
        restarted_at = time.monotonic()
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        assert counted(client, dep.prefix) >= before, "Redis lost data across its restart (AOF)"
        wait_for(
            lambda: metric_value(worker, "stream_monitor_state_store_up") == 1.0,
            60,
            "state_store_up back to 1",
            worker,
        )
        recovered_in = time.monotonic() - restarted_at
        producer.finish()
        wait_for(lambda: counted(client, dep.prefix) >= n, 120, "every event counted", worker)
        time.sleep(3)
    finally:
        producer.stop()

    final = totals(client, dep.prefix)
    base_rss = max(baseline)
    print(
        f"\nFAULT redis-outage: {OUTAGE_S:.0f} s outage after {before} counted; produced={n} "
        f"({sent_during} during the outage) counted={final.get('consumed')}; store_up during the outage "
        f"{sorted({s for s in up_samples if s is not None})}, 1 again {recovered_in:.1f} s after restart; "
        f"VmRSS baseline {base_rss // 1024} MiB, outage max {max(rss) // 1024} MiB "
        f"(+{(max(rss) - base_rss) // 1024} MiB); consumer_lag_messages total {lag_before} before, "
        f"{lag_end} at the end of the outage"
    )
    assert worker.alive(), worker.log_tail()
    assert 0.0 in up_samples, f"state_store_up never showed 0 during the outage: {up_samples}"
    assert max(rss) - base_rss < 200 * 1024, (base_rss, max(rss))
    assert final["consumed"] == n, final
    assert final.get("late", 0) == 0 and final.get("rejected", 0) == 0, final
    assert_exact(client, dep.prefix, events)


@pytest.mark.timeout(180)
def test_deployment_event_during_redis_outage_is_not_lost(
    private_redis, make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, tmp_path: Path
) -> None:
    server = private_redis(appendonly=True)
    dep = make_deployment(kafka_bootstrap, server.url)
    start = aligned_past(1)
    events = simulated(start, duration_s=60, rate=20, seed=3404)
    produce_all(dep.bootstrap, events_to_messages(events, dep))
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    worker = start_worker(dep, fault_workers, tmp_path, "outage-deploy")
    try:
        wait_for(lambda: counted(client, dep.prefix) >= len(events), 90, "the first events counted", worker)
        client.close()
        server.stop()
        during = [
            ("deployment", b"home-ranker", _deployment(start + 30_000 + i, f"2026.11.27-{i}", 0.05 * i))
            for i in range(1, 4)
        ]
        produce_all(dep.bootstrap, events_to_messages(during, dep))
        time.sleep(5)  # the deployments agent reads them while Redis is down
        assert worker.alive(), worker.log_tail()
        server.start()
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        want = len(events) + len(during)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and counted(client, dep.prefix) < want:
            time.sleep(0.5)
        got = counted(client, dep.prefix)
        stored = client.hget(f"{dep.prefix}:deploy:home-ranker", "canary")
        version = orjson.loads(stored)["model_version"] if stored else None
        crashed = "Crashed reason=StoreUnavailable" in worker.log_path.read_text(errors="replace")
        print(
            f"\nFAULT redis-outage-deployment: produced={want} counted={got}; stored canary version "
            f"{version}; deployments agent crashed: {crashed}"
        )
        assert got == want, f"{want - got} messages never counted (agent crashed: {crashed})"
        assert version == "2026.11.27-3", version
    finally:
        # A graceful stop waits for the unacked deployment messages (Faust wait_empty): SIGKILL instead.
        kill_worker(worker)


@dataclass
class _Stream:
    """A deployment on a private Redis without persistence and the seeded stream produced into it."""

    server: Any
    dep: Any
    events: list[Any]
    messages: list[Any]
    producer: PacedProducer
    inputs: list[str]
    client: redis.Redis

    @classmethod
    def start(cls, private_redis: Any, make_deployment: Any, kafka_bootstrap: str, seed: int) -> _Stream:
        server = private_redis(appendonly=False)
        dep = make_deployment(kafka_bootstrap, server.url)
        events = simulated(aligned_past(2), duration_s=8 * 60, rate=30, seed=seed)
        messages = events_to_messages(events, dep)
        return cls(
            server,
            dep,
            events,
            messages,
            PacedProducer(dep.bootstrap, messages, rate=2000),
            [dep.topics["serving"], dep.topics["engagement"], dep.topics["deployments"]],
            redis.Redis.from_url(server.url, socket_timeout=5),
        )

    def __iter__(self) -> Iterator[Any]:
        fields = (self.server, self.dep, self.events, self.messages, self.producer, self.inputs, self.client)
        return iter(fields)

    def freeze(self) -> tuple[dict[str, int], int]:
        """Pause Redis writes; the stored offsets and the events counted, exactly as they are now."""
        self.client.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
        offsets = {k.decode(): int(v) for k, v in self.client.hgetall(f"{self.dep.prefix}:offset").items()}
        return offsets, counted(self.client, self.dep.prefix)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_redis_restarted_empty_worker_exits_75_and_recounts_from_kafka_offsets(
    private_redis, make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = _Stream.start(private_redis, make_deployment, kafka_bootstrap, seed=4404)
    server, dep, events, messages, producer, inputs, client = run
    first = start_worker(dep, fault_workers, tmp_path, "empty-first")
    producer.start()
    try:
        wait_for(lambda: counted(client, dep.prefix) > 15_000, 90, "15k events counted", first)
        # Freeze writes so that what we read is exactly what Redis had counted when it lost it all.
        old_offsets, old_counted = run.freeze()
        wipe_mark = producer.mark("wipe")
        client.close()
        server.stop()  # no persistence: everything is gone
        server.start()
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        # The worker may write its closer lease before it learns of the loss; no counting state though.
        left = sorted(k.decode() for k in client.scan_iter(f"{dep.prefix}:*", count=1000))
        assert not [k for k in left if k.rsplit(":", 1)[-1] in ("offset", "epoch", "totals", "windows")], left
        assert counted(client, dep.prefix) == 0, left
        wiped_at = time.monotonic()
        assert first.proc is not None
        rc = first.proc.wait(timeout=60)
        exit_after = time.monotonic() - wiped_at
        log = first.log_path.read_text(errors="replace")
        assert rc == 75, f"worker exited with {rc}, expected 75 (EX_TEMPFAIL)\n{first.log_tail()}"
        assert "exiting so a restart can resume" in log, first.log_tail()

        committed = committed_offsets(dep.bootstrap, f"it-{dep.tag}", inputs, dep.partitions)
        committed = {tp: max(0, off) for tp, off in committed.items()}
        ahead = {
            f"{t}/{p}": (off, old_offsets.get(f"{t}/{p}", 0))
            for (t, p), off in committed.items()
            if off > old_offsets.get(f"{t}/{p}", 0)
        }
        assert not ahead, f"Kafka's committed offsets were ahead of what Redis had counted: {ahead}"

        second = start_worker(dep, fault_workers, tmp_path, "empty-second")
        produced = producer.finish()
        # Exactly the messages at or after the committed offsets are counted again.
        recount = [i for i, (t, p, off) in produced.where.items() if off >= committed[(t, p)]]
        want = len(recount)
        wait_for(
            lambda: counted(client, dep.prefix) >= want, 150, "every event from the committed offsets", second
        )
        time.sleep(3)
    finally:
        producer.stop()
    final = totals(client, dep.prefix)
    assert final["consumed"] == want, (final, want)
    after_wipe = list(range(wipe_mark, len(messages)))
    assert all(produced.where[i][2] >= committed[produced.where[i][:2]] for i in after_wipe)
    assert_exact(client, dep.prefix, [events[i] for i in sorted(recount)])
    recounted = sum(max(0, old_offsets.get(f"{t}/{p}", 0) - off) for (t, p), off in committed.items())
    print(
        f"\nFAULT redis-empty: wiped after {old_counted} counted; worker exited {rc}, "
        f"{exit_after:.1f} s later; "
        f"produced={len(messages)} (after the wipe: {len(after_wipe)}); counted again={final['consumed']} "
        f"= {len(after_wipe)} after + {final['consumed'] - len(after_wipe)} before the wipe, of which "
        f"{recounted} had already been counted in the lost Redis (Kafka offsets lag Redis by that much)"
    )


def test_redis_back_at_an_older_snapshot_worker_exits_75_and_recounts_from_the_store_offsets(
    private_redis, make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = _Stream.start(private_redis, make_deployment, kafka_bootstrap, seed=4405)
    server, dep, events, messages, producer, inputs, client = run
    first = start_worker(dep, fault_workers, tmp_path, "snapshot-first")
    producer.start()
    try:
        wait_for(lambda: counted(client, dep.prefix) > 10_000, 90, "10k events counted", first)
        # The snapshot: what Redis had counted at this instant, saved to its RDB file.
        snap_offsets, snap_counted = run.freeze()
        client.save()
        client.execute_command("CLIENT", "UNPAUSE")
        # The worker goes on, and Kafka's committed offsets move past the snapshot.
        wait_for(lambda: counted(client, dep.prefix) > snap_counted + 10_000, 90, "10k more counted", first)

        def committed_ahead() -> dict[str, tuple[int, int]]:
            committed = committed_offsets(dep.bootstrap, f"it-{dep.tag}", inputs, dep.partitions)
            return {
                f"{t}/{p}": (off, snap_offsets.get(f"{t}/{p}", 0))
                for (t, p), off in committed.items()
                if off > snap_offsets.get(f"{t}/{p}", 0)
            }

        wait_for(lambda: len(committed_ahead()) > 0, 30, "Kafka's offsets past the snapshot", first)
        client.close()
        server.stop()
        server.start()  # loads the RDB saved above: Redis went back in time
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        assert counted(client, dep.prefix) == snap_counted
        assert first.proc is not None
        rc = first.proc.wait(timeout=60)
        log = first.log_path.read_text(errors="replace")
        assert rc == 75, f"worker exited with {rc}, expected 75 (EX_TEMPFAIL)\n{first.log_tail()}"
        assert "went back in time" in log, first.log_tail()
        ahead = committed_ahead()
        assert ahead, "Kafka's committed offsets are not ahead of the snapshot: nothing would be lost"

        second = start_worker(dep, fault_workers, tmp_path, "snapshot-second")
        producer.finish()
        wait_for(lambda: counted(client, dep.prefix) >= len(messages), 150, "every event counted", second)
        time.sleep(3)
        rewound = metric_value(second, "stream_monitor_store_rewound_messages_total", topic=inputs[0])
    finally:
        producer.stop()
    final = totals(client, dep.prefix)
    assert final["consumed"] == len(messages), (final, len(messages))
    assert_exact(client, dep.prefix, events)
    second_log = second.log_path.read_text(errors="replace")
    assert "behind Kafka's committed offset" in second_log, second.log_tail()
    gap = sum(off - at for off, at in ahead.values())
    print(
        f"\nFAULT redis-snapshot: snapshot at {snap_counted} counted; worker exited {rc}; Kafka ahead of the "
        f"store on {len(ahead)} partitions by {gap} messages; re-read (serving topic, metric) {rewound}; "
        f"produced={len(messages)}, counted={final['consumed']}: every window exact"
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_redis_stall_longer_than_the_socket_timeout_counts_exactly_once(
    private_redis, make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Redis freezes (SIGSTOP: a long fork/fsync, a VM pause) for longer than the client's 5 s socket
    timeout while commits are in flight, then carries on (SIGCONT) and executes what it had received."""
    server = private_redis(appendonly=True)
    dep = make_deployment(kafka_bootstrap, server.url)
    events = simulated(aligned_past(2), duration_s=6 * 60, rate=30, seed=3505)
    n = len(events)
    producer = PacedProducer(dep.bootstrap, events_to_messages(events, dep), rate=2000)
    client = redis.Redis.from_url(server.url, socket_timeout=20)
    worker = start_worker(dep, fault_workers, tmp_path, "stall")
    producer.start()
    try:
        wait_for(lambda: counted(client, dep.prefix) > 10_000, 90, "10k events counted", worker)
        before = counted(client, dep.prefix)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            time.sleep(8.0)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        producer.finish()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and counted(client, dep.prefix) < n and worker.alive():
            time.sleep(0.5)
        time.sleep(2)
        alive = worker.alive()
    finally:
        producer.stop()
        # A fenced worker never acks the messages it ignores, so a graceful stop would hang: SIGKILL.
        kill_worker(worker)
    final = totals(client, dep.prefix)
    log = worker.log_path.read_text(errors="replace")
    fenced = sorted(
        {
            line.split("partition ", 1)[1].split(" ", 1)[0]
            for line in log.splitlines()
            if "was taken over" in line
        }
    )
    print(
        f"\nFAULT redis-stall: Redis stopped 8 s after {before} counted; produced={n} "
        f"counted={final.get('consumed')}; partitions the worker fenced itself off: {fenced or 'none'}"
    )
    assert alive, worker.log_tail()
    assert final["consumed"] == n, f"{n - final['consumed']} events never counted; fenced {fenced}"
    assert_exact(client, dep.prefix, events)


@pytest.mark.timeout(180)
def test_consumer_lag_grows_while_redis_is_down(
    private_redis, make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, tmp_path: Path
) -> None:
    server = private_redis(appendonly=True)
    dep = make_deployment(kafka_bootstrap, server.url)
    events = simulated(aligned_past(2), duration_s=5 * 60, rate=30, seed=3606)
    producer = PacedProducer(dep.bootstrap, events_to_messages(events, dep), rate=2000)
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    worker = start_worker(dep, fault_workers, tmp_path, "outage-lag")
    producer.start()
    try:
        wait_for(lambda: counted(client, dep.prefix) > 5_000, 90, "5k events counted", worker)
        client.close()
        server.stop()
        producer.mark("outage")
        time.sleep(10)
        waiting = producer.sent - producer.marks["outage"]
        lag = _lag(worker)
        server.start()
    finally:
        producer.stop()
    print(f"\nFAULT redis-outage-lag: {waiting} messages produced during a 10 s outage; lag metric {lag}")
    assert lag is not None and lag >= waiting // 2, f"lag {lag} with >= {waiting} messages waiting"
