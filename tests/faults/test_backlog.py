"""Scenario 6: a large backlog waits in Kafka before the worker starts (a slow consumer catching up).

Windows must close in event-time order, each exactly once and only when complete (no late events, exact
sums), while the worker's memory stays bounded. Consumer lag should be visible on /metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import redis

from tests.faults.conftest import (
    WINDOW_MS,
    aligned_past,
    assert_exact,
    counted,
    events_to_messages,
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_backlog_closes_windows_in_order_with_exact_sums_and_bounded_memory(
    make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    # Nothing can close until the partitions without events (deployments, datasets) have been idle for
    # the idle timeout after the claim (they hold the watermark at 0 until then, as an idle source does
    # in Flink); after that, each close tick closes what the watermark has passed. A 1 s idle timeout and
    # a 0.2 s close interval (5 s and 1 s in the other fault tests) keep the catch-up well past both
    # however fast the worker is: at 48k events/s the catch-up took 5.6 s, about the 5 s idle timeout,
    # and only 4 distinct closes were seen while behind (CI, 2026-11-26).
    dep = make_deployment(
        kafka_bootstrap,
        redis_url,
        STREAM_MONITOR_IDLE_PARTITION_TIMEOUT_S="1",
        STREAM_MONITOR_CLOSE_INTERVAL_S="0.2",
        STREAM_MONITOR_CATCH_UP_LEAD_S="60",
    )
    start = aligned_past(3)
    # Big enough that the worker needs well over 0.2 s x 5 to catch up with either delivery
    # (docs/operations.md): batch delivery counts this backlog at ~50k events/s on a 2-core VM.
    events = simulated(start, duration_s=16 * 60, rate=80, seed=6606)
    n = len(events)
    produce_all(dep.bootstrap, events_to_messages(events, dep))
    client = redis.Redis.from_url(redis_url)

    worker = start_worker(dep, fault_workers, tmp_path, "backlog")
    pid = worker.proc.pid  # type: ignore[union-attr]
    wait_for(lambda: counted(client, dep.prefix) > 0, 90, "the first commit", worker)
    began = time.monotonic()
    samples: list[tuple[float, int, int | None, int]] = []  # (t, counted, closed_before, rss KiB)
    leads: list[int] = []  # event time of the input partition furthest ahead minus the slowest behind
    for _ in range(2400):  # <= 240 s at 0.1 s
        done = counted(client, dep.prefix)
        raw = client.get(f"{dep.prefix}:closed_before")
        samples.append((time.monotonic() - began, done, int(raw) if raw else None, rss_kb(pid) or 0))
        if lead := event_time_lead(client, dep.prefix, (dep.topics["serving"], dep.topics["engagement"])):
            leads.append(lead)
        if done >= n:
            break
        assert worker.alive(), worker.log_tail()
        time.sleep(0.1)
    caught_up = time.monotonic() - began
    time.sleep(3)
    final = totals(client, dep.prefix)
    closed_before = int(client.get(f"{dep.prefix}:closed_before") or 0)
    closes = [c for _t, _d, c, _r in samples if c is not None]
    windows_closed = metric_value(worker, "stream_monitor_windows_closed_total") or 0.0
    detector = orjson.loads(client.get(f"{dep.prefix}:detector") or b"{}")
    rss = [r for *_x, r in samples]
    last_window = max(e["ts"] for _k, _key, e in events) // WINDOW_MS * WINDOW_MS
    closed_while_behind = len({c for _t, d, c, _r in samples if c is not None and d < n})
    print(
        f"\nFAULT backlog: produced={n} counted={final['consumed']} in {caught_up:.1f} s after the first "
        f"commit ({n / caught_up:.0f} events/s); windows closed {windows_closed:.0f} (closed_before advanced "
        f"through {closed_while_behind} values while behind); VmRSS first {rss[0] // 1024} MiB, max "
        f"{max(rss) // 1024} MiB, last {rss[-1] // 1024} MiB; lead of event time over the slowest "
        f"partition behind: max {max(leads, default=0) / 1000:.0f} s"
    )
    assert final["consumed"] == n, final
    # No window closed before all of its events were counted: nothing late, nothing dead-lettered.
    assert final.get("late", 0) == 0 and final.get("rejected", 0) == 0, final
    assert_exact(client, dep.prefix, events)
    # Closed in event-time order: closed_before only moves forward, one window at a time, none skipped.
    assert closes == sorted(closes), "closed_before went backwards"
    assert closed_while_behind >= 5, "windows did not close progressively during the catch-up"
    assert windows_closed == (closed_before - start) // WINDOW_MS, (windows_closed, closed_before, start)
    assert detector.get("last_closed_end") == closed_before, detector.get("last_closed_end")
    assert closed_before <= last_window, "the window holding the newest events closed while still open"
    # Read in event-time order (catch_up_lead_s, 60 s): no partition runs more than the lead (plus one
    # piece of 64 messages, a few seconds) ahead of the slowest one still behind; 63-64 s measured.
    # Unaligned, engagement ran 11-14 minutes ahead of serving here (a fetch hands out whole compressed
    # producer batches: ~36k engagement events, 10 minutes of them, in one).
    assert leads and max(leads) <= 2 * 60_000, f"partitions ran {max(leads) / 1000:.0f} s apart"
    # Memory: bounded by Faust's stream buffers, not by the backlog (~{n} messages, ~{n // 2000} MB).
    assert max(rss) < 600 * 1024, f"VmRSS peaked at {max(rss) // 1024} MiB"


def event_time_lead(client: redis.Redis, prefix: str, topics: tuple[str, ...]) -> int | None:
    """How far the input partition furthest ahead in event time is ahead of the slowest one with a
    backlog, from the progress the worker commits (None while none is behind)."""
    pipe = client.pipeline(transaction=False)
    for name in ("maxts", "offset", "hw"):
        pipe.hgetall(f"{prefix}:{name}")
    maxts, offsets, highwater = pipe.execute()
    ours = [tp for tp, ts in maxts.items() if tp.decode().rpartition("/")[0] in topics and int(ts) > 0]
    behind = [int(maxts[tp]) for tp in ours if int(offsets.get(tp, 0)) < int(highwater.get(tp, 0))]
    if not behind:
        return None
    return max(int(maxts[tp]) for tp in ours) - min(behind)


@pytest.mark.timeout(180)
def test_consumer_lag_is_exported_per_partition(
    make_deployment, fault_workers: list[WorkerProcess], kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    dep = make_deployment(kafka_bootstrap, redis_url)
    # The gauge is refreshed every lag_interval_s (5 s by default); a short one here, and a backlog the
    # worker needs many intervals to count (batch delivery counts ~50k events/s on this machine).
    interval = 0.5
    dep.extra_env["STREAM_MONITOR_LAG_INTERVAL_S"] = str(interval)
    events = simulated(aligned_past(2), duration_s=20 * 60, rate=60, seed=6707)
    produce_all(dep.bootstrap, events_to_messages(events, dep))
    client = redis.Redis.from_url(redis_url)
    worker = start_worker(dep, fault_workers, tmp_path, "lag")
    wait_for(lambda: counted(client, dep.prefix) > 0, 90, "the first commit", worker)
    with_data = {dep.topics["serving"], dep.topics["engagement"]}

    def lag() -> dict[tuple[str, str], float]:
        return {
            (labels.get("topic", ""), labels.get("partition", "")): value
            for name, labels, value in metric_samples(worker.metrics())
            if name == "stream_monitor_consumer_lag_messages"
        }

    def lag_while_behind() -> tuple[int, dict[tuple[str, str], float]] | None:
        counted_before = counted(client, dep.prefix)
        # After three intervals the gauge read below was computed after counted_before was read, so it
        # can be at most what was left then.
        time.sleep(3 * interval)
        lags = lag()
        return (counted_before, lags) if sum(lags.values()) > 0 else None

    at, behind = wait_for(lag_while_behind, 20, "a non-zero lag while behind", worker)
    wait_for(lambda: counted(client, dep.prefix) >= len(events), 120, "every event counted", worker)
    caught_up = wait_for(
        lambda: (lags := lag()) and all(v == 0 for v in lags.values()) and lags,
        20,
        "lag 0 once caught up",
        worker,
    )
    print(
        f"\nFAULT consumer-lag: while behind ({at}/{len(events)} counted) {len(behind)} series, total lag "
        f"{sum(behind.values()):.0f} messages; caught up: {len(caught_up)} series, all 0"
    )
    # Every input partition that holds data has a lag series, labelled by topic and partition.
    assert {(t, str(p)) for t in with_data for p in range(dep.partitions)} <= set(caught_up), sorted(
        caught_up
    )
    inputs = with_data | {dep.topics["deployments"], dep.topics["datasets"]}
    assert {t for t, _p in caught_up} <= inputs, sorted(caught_up)
    assert sum(behind.values()) <= len(events) - at + 2 * 2000 * len(with_data), "lag larger than the backlog"
