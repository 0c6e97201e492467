#!/usr/bin/env python3
"""Context-capture overhead: the engine with and without traces, on a real Redis, in the same run.

Simulated traffic (100 requests/s with engagement, like scripts/bench_steady_ingest.py) is cut into
batches of ``--batch`` messages, the worker's batch size. Every batch goes through two engines, each with
its own RedisStore prefix: one without a trace store, one with the topology's ``traces`` rule and a
RedisTraceStore (``--rate``: the sample rate). Per batch and engine it times ingest + commit (the
worker's hot path; windows close every simulated minute outside the timing), alternating which engine
goes first so machine noise hits both alike. Prints events/s of each, their ratio, the Redis round trips
per batch, and the memory the trace keys take in Redis.

``--ingest-only`` instead times ``Engine.ingest`` alone (CPU seconds, memory stores, no Redis) over 10
simulated minutes, with and without capture, in 3 alternating repeats: the capture's cost on the hot path.

Needs Redis: STREAM_MONITOR_REDIS_URL (e.g. ``. .services/env`` after ``make services-up``).
Usage: .venv/bin/python scripts/bench_traces.py [--minutes 30] [--rate 0.01] [--ingest-only]
(docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
import zlib
from dataclasses import replace

import orjson

from stream_monitor.core.clock import ManualClock
from stream_monitor.core.traces import TraceBatch
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sim.traffic import SimConfig
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.state.redis_store import RedisStore
from stream_monitor.state.redis_traces import RedisTraceStore
from stream_monitor.state.traces import MemoryTraceStore
from stream_monitor.topology import load_topology

TOPICS = {"serving": "recs.serving", "engagement": "recs.engagement", "deployment": "recs.deployments"}
PARTITIONS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=0.01, help="trace sample rate (default 0.01)")
    parser.add_argument("--batch", type=int, default=2000, help="messages per commit (default 2000)")
    parser.add_argument("--ingest-only", action="store_true", help="time Engine.ingest alone (no Redis)")
    args = parser.parse_args()
    if args.ingest_only:
        ingest_only(args.rate)
        return
    url = os.environ.get("STREAM_MONITOR_REDIS_URL")
    if not url:
        raise SystemExit("STREAM_MONITOR_REDIS_URL is not set (. .services/env after make services-up)")
    topology = load_topology()
    traced_topology = replace(topology, traces=replace(topology.traces, sample_rate=args.rate))
    start = 1_764_086_400_000
    clock = ManualClock(start)
    tag = uuid.uuid4().hex[:8]
    stores = {
        "off": RedisStore.from_url(url, prefix=f"bench-tr-off-{tag}"),
        "on": RedisStore.from_url(url, prefix=f"bench-tr-on-{tag}"),
    }
    traces = RedisTraceStore.beside(stores["on"], traced_topology.traces)
    put_s = [0.0]
    store_put = traces.put

    def timed_put(batch: TraceBatch) -> None:
        began = time.perf_counter()
        store_put(batch)
        put_s[0] += time.perf_counter() - began

    traces.put = timed_put  # type: ignore[method-assign]
    engines = {
        name: Engine(
            traced_topology if name == "on" else topology,
            store,
            ListSink(),
            ListSink(),
            clock,
            options=EngineOptions(worker_id=f"b-{name}", auto_claim=True),
            traces=traces if name == "on" else None,
        )
        for name, store in stores.items()
    }
    sim = TrafficSimulator(7, start, 100, [], SimConfig(slate_size=10))
    offsets: dict[tuple[str, int], int] = {}
    spent = {"off": 0.0, "on": 0.0}
    trips = {"off": 0, "on": 0}
    events = batches = 0
    per_batch: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for minute in range(args.minutes):
            until = start + (minute + 1) * 60_000
            messages = []
            for kind, key, event in sim.events_until(until):
                topic = TOPICS.get(kind, "recs.datasets")
                partition = zlib.crc32(key) % PARTITIONS if key else 0
                offset = offsets.get((topic, partition), 0)
                offsets[(topic, partition)] = offset + 1
                messages.append((kind, topic, partition, offset, key, orjson.dumps(event)))
            clock.advance(until - clock.now_ms())
            for i in range(0, len(messages), args.batch):
                chunk = messages[i : i + args.batch]
                order = ("off", "on") if batches % 2 == 0 else ("on", "off")
                for name in order:
                    engine = engines[name]
                    before = stores[name].round_trips + (traces.round_trips if name == "on" else 0)
                    began = time.perf_counter()
                    for kind, topic, partition, offset, key, value in chunk:
                        engine.ingest(kind, topic, partition, offset, key, value)
                    engine.flush()
                    took = time.perf_counter() - began
                    after = stores[name].round_trips + (traces.round_trips if name == "on" else 0)
                    if minute < 2:
                        put_s[0] = 0.0
                    else:  # past the first claims and warm-up
                        spent[name] += took
                        trips[name] += after - before
                        per_batch[name].append(took)
                if minute >= 2:
                    events += len(chunk)
                    batches += 1
            for engine in engines.values():
                engine.close_ready()
        client = stores["on"].client
        keys = list(client.scan_iter(f"{stores['on'].prefix}:tr*", count=1000))
        memory = sum(int(client.memory_usage(k) or 0) for k in keys)
        n_traces = sum(1 for k in keys if b":tr:" in k)
        capture = engines["on"].trace_capture
        assert capture is not None
        rate_off, rate_on = events / spent["off"], events / spent["on"]
        print(f"{events} events in {batches} batches of up to {args.batch} (after 2 warm-up minutes)")
        for name, rate in (("without traces", rate_off), (f"with traces (rate {args.rate})", rate_on)):
            key = "off" if name.startswith("without") else "on"
            median_ms = statistics.median(per_batch[key]) * 1000
            print(
                f"  {name:<28} {rate:10,.0f} events/s (ingest + commit), median batch {median_ms:.1f} ms, "
                f"{trips[key] / batches:.2f} Redis round trips per batch"
            )
        print(f"  ratio with/without: {rate_on / rate_off:.3f}")
        print(
            f"  trace writes (one script call each): {put_s[0] / batches * 1000:.2f} ms per batch on average"
        )
        print(
            f"  traces: {capture.captured} captured, {capture.sampler.capped} capped, {n_traces} stored, "
            f"{len(keys)} trace keys taking {memory / 1024:.0f} KiB in Redis "
            f"({memory / max(1, n_traces):.0f} B per stored trace with its index share)"
        )
    finally:
        for store in stores.values():
            keys = list(store.client.scan_iter(f"{store.prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                store.client.delete(*keys[i : i + 500])


def ingest_only(rate: float) -> None:
    topology = load_topology()
    topology = replace(topology, traces=replace(topology.traces, sample_rate=rate))
    start = 1_764_086_400_000
    sim = TrafficSimulator(7, start, 100, [], SimConfig(slate_size=10))
    messages = [
        (kind, TOPICS.get(kind, "recs.datasets"), orjson.dumps(event))
        for kind, _, event in sim.events_until(start + 600_000)
    ]
    rates: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(3):
        for name in ("without", "with") if repeat % 2 == 0 else ("with", "without"):
            engine = Engine(
                topology,
                MemoryStore(),
                ListSink(),
                ListSink(),
                ManualClock(start + 600_000),
                options=EngineOptions(auto_claim=True),
                traces=MemoryTraceStore() if name == "with" else None,
            )
            offsets: dict[str, int] = {}
            began = time.process_time()
            for kind, topic, value in messages:
                offset = offsets.get(topic, 0)
                offsets[topic] = offset + 1
                engine.ingest(kind, topic, 0, offset, None, value)
            rates[name].append(len(messages) / (time.process_time() - began))
    print(f"Engine.ingest alone, {len(messages)} events, events per CPU-second in 3 alternating repeats:")
    for name, values in rates.items():
        print(f"  {name} capture (rate {rate}): " + ", ".join(f"{v:,.0f}" for v in values))


if __name__ == "__main__":
    main()
