"""``stream-monitor bench throughput --quick`` end to end on the real broker and Redis (a smoke run).

No timing is asserted: the machine is shared. The report must be complete and its numbers sane (every
rate, count and size positive, every injected incident alerted on the alerts topic). The detection
bench's real-path smoke run is test_worker.py's ``test_incident_alert_reaches_kafka_and_metrics`` (a
simulated latency incident through the real worker; the alert must name the signal and the slice).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis

from tests.integration.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a few minutes: CI runs it in the slow tier


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and value > 0


def test_quick_throughput_bench_reports_sane_numbers(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "throughput.json"
    client = redis.Redis.from_url(redis_url)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_monitor.cli.main",
            "bench",
            "throughput",
            "--quick",
            "--json",
            str(out),
        ],
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAM_MONITOR_")},
            "STREAM_MONITOR_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "STREAM_MONITOR_REDIS_URL": redis_url,
            "STREAM_MONITOR_CONFIG": "/nonexistent",
        },
        capture_output=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    table = done.stdout.decode()
    assert "ceiling ev/s" in table and "close->alert" in table and "B/series" in table, table
    report = orjson.loads(out.read_bytes())

    assert set(report["formats"]) == {"message", "ndjson"}
    for fmt, part in report["formats"].items():
        backlog = part["backlog"]
        assert backlog["events"] >= 10_000, (fmt, backlog)
        assert backlog["serving"] > 0 and backlog["engagement"] > 0
        # Slates of 5 items: a serving event of several hundred bytes, an engagement one of ~140.
        assert 500 < backlog["serving_bytes_mean"] < 1_500 and 80 < backlog["engagement_bytes_mean"] < 250
        if fmt == "ndjson":
            assert backlog["messages"] * 20 < backlog["events"]
        else:
            assert backlog["messages"] == backlog["events"]
        assert part["ceiling"]["events"] == backlog["events"]
        worker, naive = part["worker"], part["naive"]
        for value in (
            part["ceiling"]["events_per_s"],
            worker["events_per_s"],
            naive["events_per_s"],
            worker["redis_commands_per_1000_events"],
            worker["redis_calls_per_1000_events"],
            worker["peak_rss_mb"],
            naive["peak_rss_mb"],
            part["ratios"]["worker_over_ceiling"],
            part["ratios"]["worker_over_naive"],
        ):
            assert _positive(value), (fmt, part)
        # The worker commits once per batch: far fewer Redis calls than events (the naive agent: one each).
        assert worker["redis_calls_per_1000_events"] < 100, worker
        assert naive["redis_commands_per_1000_events"] >= 1_000, naive
        assert worker["redis_calls"].get("evalsha", 0) >= 1
        state = worker["state"]
        assert state["window_hashes"] >= 1 and state["series"] >= 1 and state["fields"] >= state["series"]
        assert _positive(state["bytes_per_series"]) and _positive(state["non_sketch_bytes_per_series"])
        assert state["non_sketch_bytes_per_series"] < state["bytes_per_series"]

        latency = part["latency"]
        assert latency["events"] > 0 and len(latency["incidents"]) == 3
        assert latency["detected"] == 3, latency["incidents"]
        for row in latency["incidents"]:
            assert 0 <= row["windows_after_onset"] <= 2, row
            assert _positive(row["close_to_alert_s"]) and _positive(row["onset_to_alert_s"]), row
            # The real-time figure includes the window's rest and its allowed lateness (event time).
            assert row["onset_to_alert_s"] >= latency["allowed_lateness_s"], row
        assert _positive(latency["close_to_alert_s"]["p99"]) and _positive(latency["onset_to_alert_s"]["p50"])

    memory = {row["series"]: row for row in report["memory"]}
    assert set(memory) == {10, 1_000}
    for count, row in memory.items():
        assert row["tracked_series"] == count, row
        assert row["state"]["series"] == count
        assert _positive(row["worker_peak_rss_mb"]) and _positive(row["state"]["bytes_per_series"])
    assert memory[1_000]["state"]["bytes"] > memory[10]["state"]["bytes"]

    # The bench cleans up after itself: no key of any of its parts is left in Redis.
    prefixes = [part["redis_prefix"] for part in report["formats"].values()]
    prefixes += [row["redis_prefix"] for row in report["memory"]]
    assert len(set(prefixes)) == len(prefixes) == 4
    assert not [key for prefix in prefixes for key in client.scan_iter(f"{prefix}:*", count=1000)]
    client.close()
