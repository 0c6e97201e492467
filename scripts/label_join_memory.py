"""Measure what the label join costs in memory: per pending request (worker and Redis), per matured id,
and per series of a label window. Run: ``.venv/bin/python scripts/label_join_memory.py [redis-url]``.

The requests are the simulator's (one hour at 20 requests/s, seed 1, default topology): series keys as the
worker builds them, three impressions each and clicks/plays/completes as the simulator draws them. With a
Redis URL the stored hashes are written under a throw-away prefix, measured with MEMORY USAGE and deleted.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
import uuid

import orjson

from stream_monitor.core.aggregates import WindowAccumulator
from stream_monitor.core.events import EngagementEvent, ServingEvent, parse_event
from stream_monitor.core.labels import JoinBuffer, request_id_hash
from stream_monitor.sim import TrafficSimulator
from stream_monitor.topology import load_topology

START = 1_764_028_800_000


def main() -> None:
    topology = load_topology()
    rule = topology.labels
    acc = WindowAccumulator(topology)
    events = []
    for kind, _key, doc in TrafficSimulator(1, START, 20.0).events(3600):
        if kind != "deployment":
            events.append(parse_event(orjson.dumps(doc)))
    series = []
    for event in events:
        if isinstance(event, ServingEvent):
            acc.add_serving("x", 0, event)
            series.append(acc.last_series)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    # Maturity far away: every request stays pending, as in the worst case of a long maturity.
    buf = JoinBuffer(rule, topology.window.size_ms)
    i = 0
    for event in events:
        if isinstance(event, ServingEvent):
            if event.items and event.error is None:
                buf.add_serving(request_id_hash(event.request_id), series[i], event.ts, len(event.items))
            i += 1
        elif isinstance(event, EngagementEvent):
            buf.add_engagement(request_id_hash(event.request_id), event.ts, event.action, event.position)
    delta = buf.take("0", [], {})
    del delta
    gc.collect()
    after = tracemalloc.take_snapshot()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    tracemalloc.stop()
    pending, early, _matured = buf.memory_entries()
    print(
        f"worker: {pending} pending requests, {early} early entries: {used / max(pending, 1):.0f} bytes each"
    )
    sample = orjson.dumps(next(iter(next(iter(buf._pending.values())).values())))
    print(f"stored entry (JSON): {len(sample)} bytes, e.g. {sample.decode()}")

    # Matured ids: a numpy array of 64-bit ids per window in the worker, 16 hex characters each in Redis.
    # Everything matures; within the retention, the ids stay remembered.
    mark = START + 3_600_000 + topology.window.size_ms + rule.maturity_ms
    buf.note("serving", mark)
    buf.note("engagement", mark)
    delta = buf.take("0", [], {})
    ids = sum(len(v) for v in buf._matured.values())
    worker_ids = sum(v.nbytes for v in buf._matured.values())
    print(f"matured ids: {ids} ids, {worker_ids / ids:.1f} bytes each in the worker (sorted uint64 arrays)")
    fields = {k: v for w in delta.sums.values() for k, v in w.items()}
    n_series = len({k.split("#")[0] for k in fields if not k.startswith("*")})
    print(
        f"label sums: {len(fields)} fields over {n_series} series ({len(fields) / n_series:.1f} per series)"
    )

    if len(sys.argv) > 1:
        import redis

        client = redis.Redis.from_url(sys.argv[1])
        prefix = f"memprobe-{uuid.uuid4().hex[:8]}"
        buf2 = JoinBuffer(rule, topology.window.size_ms)
        i = 0
        for event in events:
            if isinstance(event, ServingEvent):
                if event.items and event.error is None:
                    buf2.add_serving(request_id_hash(event.request_id), series[i], event.ts, len(event.items))
                i += 1
        entries = buf2.take("0", [], {}).put
        try:
            pipe = client.pipeline(transaction=False)
            for rid, entry in entries.items():
                pipe.hset(f"{prefix}:join:0", rid, entry)
            for window, text in delta.matured.items():
                pipe.hset(f"{prefix}:jm:0", str(window), text)
            one_window = max(delta.sums, key=lambda w: len(delta.sums[w]))
            for name, value in delta.sums[one_window].items():
                pipe.hincrby(f"{prefix}:lab:0", name, value)
            pipe.execute()
            join_bytes = client.memory_usage(f"{prefix}:join:0", samples=0) or 0
            jm_bytes = client.memory_usage(f"{prefix}:jm:0", samples=0) or 0
            lab_bytes = client.memory_usage(f"{prefix}:lab:0", samples=0) or 0
            lab_series = len({k.split("#")[0] for k in delta.sums[one_window] if not k.startswith("*")})
            print(
                f"redis: {join_bytes / len(entries):.0f} bytes per pending request ({len(entries)} entries)"
            )
            print(f"redis: {jm_bytes / ids:.1f} bytes per matured id ({ids} ids)")
            per_series = lab_bytes / lab_series
            print(f"redis: {per_series:.0f} bytes per series in one label window ({lab_series} series)")
        finally:
            client.delete(f"{prefix}:join:0", f"{prefix}:jm:0", f"{prefix}:lab:0")


if __name__ == "__main__":
    main()
