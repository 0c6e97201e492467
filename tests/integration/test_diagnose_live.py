"""Live `diagnose`: the engine writes its state to a real Redis, the CLI reads it back from there.

Simulated traffic with a source outage (ongoing) and a release goes through the production engine on a
RedisStore (in this process; Kafka adds nothing to what is stored), then ``stream-monitor diagnose``
without ``--from`` reads the detector checkpoint's open alerts and the release history from Redis.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from stream_monitor.cli.main import main
from stream_monitor.config import Topics
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.topology import load_topology
from tests.integration.conftest import sim_config

pytestmark = pytest.mark.integration


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
