#!/usr/bin/env python3
"""Bytes of anomaly-detector checkpoint per watched series, once every detector's history is full.

Runs 260 simulated minutes (past the 240-value calibration history) of clean traffic through the in-process
engine on the default topology and prints the anomaly layer's checkpoint size (JSON, as stored in Redis)
divided by its number of detectors. Usage: .venv/bin/python scripts/anomaly_state_size.py (docs/signals.md).
"""

from __future__ import annotations

import orjson

from stream_monitor.config import Topics
from stream_monitor.core.alerts import DetectorState
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

START = 1_764_028_800_000
MINUTES = 260


def main() -> None:
    sim = TrafficSimulator(seed=3, start_ms=START, rate_per_s=20)
    sink, store, clock = ListSink(), MemoryStore(), EventTimeClock(START)
    options = EngineOptions(worker_id="size", auto_claim=True)
    engine = Engine(load_topology(), store, sink, sink, clock, options=options)
    pipeline = InProcessPipeline(engine, Topics(), partitions=2)
    for minute in range(MINUTES):
        until = START + (minute + 1) * 60_000
        for kind, key, event in sim.events_until(until):
            pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(until)
        pipeline.step()
    raw = store.load_detector_state()
    assert raw is not None
    state = DetectorState.from_json_dict(orjson.loads(raw))
    detectors = state.anomaly.get("detectors", {})
    size = len(orjson.dumps(state.anomaly))
    print(
        f"{len(detectors)} watched series, anomaly checkpoint {size:,} bytes: "
        f"{size / max(len(detectors), 1):,.0f} bytes per series "
        f"(whole detector checkpoint {len(raw):,} bytes)"
    )


if __name__ == "__main__":
    main()
