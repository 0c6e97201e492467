#!/usr/bin/env python3
"""In-process ingest microbench: NDJSON messages of 100 events through Engine.ingest on a MemoryStore.

Prints events per CPU-second of the ingest path alone (no Kafka, no Redis, no Faust), best of 3 runs.
Usage: .venv/bin/python scripts/bench_ingest.py (see docs/benchmarks.md, "Where the time goes").
"""

import time

import orjson

from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sim.traffic import SimConfig
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

start = 1_764_086_400_000
sim = TrafficSimulator(7, start, 200, [], SimConfig(slate_size=5))
ev = [(k, orjson.dumps(e)) for k, _, e in sim.events(600) if k != "deployment"]
msgs = {"serving": [], "engagement": []}
for kind in msgs:
    lines = [v for k, v in ev if k == kind]
    msgs[kind] = [b"\n".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]
n = len(ev)
best = []
for _rep in range(3):
    sink = ListSink()
    eng = Engine(
        load_topology(),
        MemoryStore(),
        sink,
        sink,
        ManualClock(start + 3_600_000),
        options=EngineOptions(auto_claim=True),
    )
    t0 = time.process_time()
    off = 0
    for kind in ("serving", "engagement"):
        for m in msgs[kind]:
            eng.ingest(kind, f"recs.{kind}", 0, off, None, m, None, ndjson=True)
            off += 1
    best.append(n / (time.process_time() - t0))
print(f"{n} events, ingest {max(best):,.0f} events/s per CPU-second (best of 3)")
