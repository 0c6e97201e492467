#!/usr/bin/env python3
"""Steady-state ingest microbench: one event per message through Engine.ingest, after 75 minutes of traffic.

Short runs hide costs that grow with retained state (the label join remembers matured request ids for
``labels.retention``, 1 h by default). This feeds 90 simulated minutes at 100 requests/s (with engagement)
through the engine on the memory store, closing windows every minute, and prints events per CPU-second of
``Engine.ingest`` over the last 15 minutes. ``--previous-dup-check`` puts back the label join's duplicate
check of before 2026-11-26 (one binary search per retained window for every serving event) for comparison.

Usage: .venv/bin/python scripts/bench_steady_ingest.py [--previous-dup-check]   (docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from stream_monitor.core import labels
from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sim.traffic import SimConfig
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

TOPICS = {"serving": "recs.serving", "engagement": "recs.engagement", "deployment": "recs.deployments"}


def _previous_dup_check(self: Any, rid: int, window: int) -> bool:
    return any(labels._contains(ids, rid) for ids in self._matured.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previous-dup-check", action="store_true")
    parser.add_argument("--minutes", type=int, default=90)
    args = parser.parse_args()
    if args.previous_dup_check:
        labels.JoinBuffer._was_matured = _previous_dup_check  # type: ignore[method-assign]
    start = 1_764_086_400_000
    sim = TrafficSimulator(7, start, 100, [], SimConfig(slate_size=5))
    sink = ListSink()
    clock = ManualClock(start)
    engine = Engine(
        load_topology(),
        MemoryStore(),
        sink,
        sink,
        clock,
        options=EngineOptions(worker_id="b", auto_claim=True),
    )
    offsets: dict[str, int] = {}
    measured_s, measured_n = 0.0, 0
    for minute in range(args.minutes):
        until = start + (minute + 1) * 60_000
        batch = [(kind, orjson.dumps(event)) for kind, _, event in sim.events_until(until)]
        clock.advance(until - clock.now_ms())
        began = time.process_time()
        for kind, value in batch:
            topic = TOPICS.get(kind, "recs.datasets")
            offset = offsets.get(topic, 0)
            offsets[topic] = offset + 1
            engine.ingest(kind, topic, 0, offset, None, value)
        spent = time.process_time() - began
        engine.flush()
        engine.close_ready()
        if minute >= args.minutes - 15:
            measured_s += spent
            measured_n += len(batch)
    label = "previous duplicate check" if args.previous_dup_check else "current"
    print(
        f"{label}: {measured_n / measured_s:,.0f} events per CPU-second of ingest over the last 15 minutes "
        f"({measured_n} events)"
    )


if __name__ == "__main__":
    main()
