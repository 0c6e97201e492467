"""Live `diagnose`: the engine writes its state to a real Redis, the CLI reads it back from there.

* Simulated traffic with a source outage (ongoing) and a release goes through the production engine on a
  RedisStore (in this process), then ``stream-monitor diagnose`` without ``--from`` reads the window log,
  the detector checkpoint's open alerts and the release history from Redis.
* End to end: an error spike in one region goes through Kafka and a ``stream-monitor worker``
  subprocess; the worker writes one window log entry per closed window; the live diagnosis ranks the
  injected cause first, with a timeline and a drill-down.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import redis

from stream_monitor.cli.main import main
from stream_monitor.config import Topics
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.topology import load_topology
from tests.integration.conftest import (
    Deployment,
    WorkerProcess,
    events_to_messages,
    produce,
    sim_config,
    wait_for,
)

pytestmark = pytest.mark.integration

MINUTE = 60_000


def test_live_diagnose_reads_open_alerts_and_releases_from_redis(
    redis_store: object,
    redis_url: str,
    unique_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    start = 1_763_942_400_000
    topology = load_topology(None)
    incident = Incident("source_outage", start + 900_000, None, target={"region": "eu"})
    sim = TrafficSimulator(seed=1, start_ms=start, rate_per_s=15.0, incidents=[incident], config=sim_config())
    sink = ListSink()
    clock = EventTimeClock(start)
    engine = Engine(
        topology,
        redis_store,  # type: ignore[arg-type]
        sink,
        sink,
        clock,
        options=EngineOptions(worker_id="live-test", auto_claim=True),
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=2)
    until = start
    while until < start + 1_500_000:
        until += 10_000
        for kind, key, event in sim.events_until(until):
            pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(until)
        pipeline.step()
    assert any(a.signal == "candidate_source" and a.status == "firing" for a in sink.alerts)

    monkeypatch.setenv("STREAM_MONITOR_REDIS_URL", redis_url)
    monkeypatch.setenv("STREAM_MONITOR_REDIS_PREFIX", unique_prefix)
    html = tmp_path / "live.html"
    assert main(["diagnose", "--model", "home-ranker", "--json", "--html", str(html)]) == 0
    doc = json.loads(capsys.readouterr().out)
    top = doc["suspects"][0]
    assert (top["signal"], top["detail"], top["slice"]) == ("candidate_source", "trending", "region=eu"), top
    assert any("live mode" in note for note in doc["notes"])
    assert html.read_text().startswith("<!DOCTYPE html>")

    # An empty prefix: nothing stored there, a precise error instead of an empty report.
    monkeypatch.setenv("STREAM_MONITOR_REDIS_PREFIX", unique_prefix + "-empty")
    assert main(["diagnose"]) == 2
    assert "no detector checkpoint and no release history" in capsys.readouterr().err


@pytest.mark.slow
def test_live_diagnose_of_a_real_worker_ranks_the_injected_cause_first_with_a_timeline(
    deployment: Deployment,
    workers: list[WorkerProcess],
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Kafka -> ``stream-monitor worker`` -> Redis, then ``diagnose`` without ``--from`` reads it back."""
    start = 1_763_942_400_000
    minutes = 20
    incident = Incident(
        "error_spike", start + 10 * MINUTE, 10 * MINUTE, magnitude=0.15, target={"region": "eu"}
    )
    sim = TrafficSimulator(seed=3, start_ms=start, rate_per_s=20.0, incidents=[incident], config=sim_config())
    events = list(sim.events(minutes * 60))
    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    produce(deployment.bootstrap, events_to_messages(events, deployment))
    wait_for(
        lambda: int(redis_client.get(f"{deployment.prefix}:closed_before") or 0) >= start + minutes * MINUTE,
        300,
        "every window of the run to close",
        worker,
    )
    worker.stop()
    # Each closed window has exactly one log entry (written with its close).
    starts = [int(s) for _, s in redis_client.zrange(f"{deployment.prefix}:winlog", 0, -1, withscores=True)]
    assert starts == list(range(start, start + minutes * MINUTE, MINUTE)), starts

    monkeypatch.setenv("STREAM_MONITOR_REDIS_URL", deployment.redis_url)
    monkeypatch.setenv("STREAM_MONITOR_REDIS_PREFIX", deployment.prefix)
    assert main(["diagnose", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    top = doc["suspects"][0]
    assert (top["signal"], top["slice"]) == ("error_rate", "region=eu"), doc["suspects"][:3]
    # "moved" markers come from the logged values: there are none without the per-window history.
    assert {"alert", "moved"} <= {m["kind"] for m in doc["timeline"]}, doc["timeline"]
    assert doc["drilldown"]["rows"], doc["drilldown"]
    assert any(f"live mode: {minutes} closed windows" in note for note in doc["notes"]), doc["notes"]


@pytest.mark.slow
def test_bench_diagnose_live_reports_the_rank_from_a_real_worker(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_MONITOR_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("STREAM_MONITOR_REDIS_URL", redis_url)
    out = tmp_path / "live.json"
    argv = ["bench", "diagnose", "--live", "--seeds", "1", "--kinds", "source_outage", "--no-compare"]
    assert main([*argv, "--timeout", "400", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert run["rank"] == 1 and "error" not in run, run
    assert run["windows"] == 40 and run["timeline"] > 0
    assert 1_000 < report["log_entry_bytes"] < 20_000 and report["log_redis_bytes_per_window"] > 0
    # The run's topics and keys are gone.
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(f"{run['prefix']}:*", count=1000))
    client.close()
