#!/usr/bin/env python3
"""In-process ingest microbench: simulated traffic through ``Engine.ingest_batch`` on a MemoryStore.

Prints events per CPU-second of the ingest path alone (no Kafka, no Redis, no Faust), best of 3 runs.
Messages come in the simulator's order, the way the worker gets them: runs of up to ``--run`` messages of
one topic per call (a fetch's records of one partition), serving and engagement interleaved; every
``--commit-every`` messages the engine commits and closes the windows the event time has passed (counted
in the CPU time, as in the worker). The defaults are the throughput bench's traffic (200 requests/s, slates
of 5); ``--seconds 5400`` fills the label join's retention (steady state; scripts/bench_steady_ingest.py).

Usage (see docs/benchmarks.md, "Where the time goes"):
    .venv/bin/python scripts/bench_ingest.py                     # NDJSON messages of 100 events
    .venv/bin/python scripts/bench_ingest.py --format message    # one event per message
    .venv/bin/python scripts/bench_ingest.py --format message --profile   # cProfile, top 25
"""

import argparse
import cProfile
import pstats
import time

import orjson

from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import NDJSON_HEADERS, Engine, EngineOptions, Record
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sim.traffic import SimConfig
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--format", choices=("message", "ndjson"), default="ndjson")
parser.add_argument("--seconds", type=int, default=1_200, help="simulated seconds")
parser.add_argument("--rate", type=float, default=200.0, help="simulated requests/s (the throughput bench's)")
parser.add_argument("--commit-every", type=int, default=2_000, help="messages between commits")
parser.add_argument("--run", type=int, default=500, help="messages per ingest_batch call")
parser.add_argument("--profile", action="store_true", help="one run under cProfile instead")
args = parser.parse_args()

start = 1_764_086_400_000
sim = TrafficSimulator(7, start, args.rate, [], SimConfig(slate_size=5, diurnal_start_hour=12.0))
events = [
    (kind, orjson.dumps(event), int(event["ts"]))
    for kind, _, event in sim.events(args.seconds)
    if kind != "deployment"
]

# Runs of one topic, in the simulator's order; NDJSON packs 100 events of a topic per message. Each run
# carries the newest event time seen so far (the clock of the commit that may follow it).
runs: list[tuple[str, list[Record], int]] = []
newest = start
offsets = {"serving": 0, "engagement": 0}
pending: dict[str, list[bytes]] = {"serving": [], "engagement": []}


def emit(kind: str, values: list[bytes], headers: tuple[tuple[str, bytes], ...]) -> None:
    records = []
    for value in values:
        records.append(Record(offsets[kind], None, value, None, headers))
        offsets[kind] += 1
    if runs and runs[-1][0] == kind and len(runs[-1][1]) + len(records) <= args.run:
        runs[-1][1].extend(records)
        runs[-1] = (kind, runs[-1][1], newest)
    else:
        runs.append((kind, records, newest))


for kind, value, ts in events:
    newest = max(newest, ts)
    if args.format == "message":
        emit(kind, [value], ())
        continue
    pending[kind].append(value)
    if len(pending[kind]) == 100:
        emit(kind, [b"\n".join(pending[kind])], NDJSON_HEADERS)
        pending[kind] = []
for topic_kind, values in pending.items():
    if values:
        emit(topic_kind, [b"\n".join(values)], NDJSON_HEADERS)


def run_once() -> float:
    sink = ListSink()
    clock = ManualClock(start)
    engine = Engine(
        load_topology(),
        MemoryStore(),
        sink,
        sink,
        clock,
        options=EngineOptions(auto_claim=True),
    )
    began = time.process_time()
    since_commit = 0
    for kind, records, ts in runs:
        engine.ingest_batch(kind, f"recs.{kind}", 0, records)
        since_commit += len(records)
        if since_commit >= args.commit_every:
            since_commit = 0
            clock.advance(max(0, ts - clock.now_ms()))
            engine.flush()
            engine.close_ready()
    engine.flush()
    return time.process_time() - began


n = len(events)
if args.profile:
    profiler = cProfile.Profile()
    profiler.runcall(run_once)
    stats = pstats.Stats(profiler).sort_stats("tottime")
    stats.print_stats(25)
    stats.print_callers("method .get. of .dict")
else:
    best = min(run_once() for _ in range(3))
    print(f"{n} events ({args.format}), ingest + commits {n / best:,.0f} events/s per CPU-second (best of 3)")
