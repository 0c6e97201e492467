#!/usr/bin/env python3
"""Where a worker's time goes: py-spy on a real ``stream-monitor worker`` counting a backlog.

Produces a backlog of simulated events (the throughput bench's traffic: slates of 5, 200 requests/s of
event time) to fresh topics on the Kafka broker of the settings, starts a worker subprocess on them (the
full default topology, Redis of the settings, fresh prefix), waits until it is counting, then records it
with py-spy for ``--seconds`` and prints the events/s it counted meanwhile and the functions that held
the GIL most (inclusive and self). Everything it starts is stopped by PID; the topics and Redis keys are
deleted at the end.

Usage (services up: ``scripts/services.sh up && . .services/env``; docs/benchmarks.md "Where the time goes"):
    .venv/bin/python scripts/profile_worker.py                       # one event per message, 12 s
    .venv/bin/python scripts/profile_worker.py --format ndjson --events 1500000
    .venv/bin/python scripts/profile_worker.py --seconds 0           # the rate only, no py-spy
    .venv/bin/python scripts/profile_worker.py --env STREAM_MONITOR_BATCH_MAX=10000   # a setting to try

py-spy (a dev extra) samples at 200 Hz with ``--gil``: only the thread holding the GIL counts, so the
shares are of the worker's CPU time in Python; ``--raw OUT`` keeps py-spy's raw stacks.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis

from stream_monitor.bench import throughput as bench


def top_functions(raw: Path, limit: int) -> str:
    """py-spy's raw stacks as the ``limit`` functions with the largest inclusive and self shares."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0

    def name(frame: str) -> str:
        function, _, where = frame.partition(" (")
        return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else function

    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [name(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "py-spy recorded no samples"
    lines = [f"{total} samples holding the GIL", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in inclusive.most_common(limit)]
    lines += ["self:"]
    lines += [f"  {100 * n / total:5.1f} %  {f}" for f, n in own.most_common(limit)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_200_000, help="backlog events (bounded)")
    parser.add_argument("--format", choices=("message", "ndjson"), default="message")
    parser.add_argument("--seconds", type=int, default=12, help="py-spy recording time (0: rate only)")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the worker (repeatable)")
    args = parser.parse_args()
    if not 1_000 <= args.events <= 10_000_000 or not 0 <= args.seconds <= 120:
        parser.error("--events must be 1,000-10,000,000 and --seconds 0-120")
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if args.seconds and py_spy is None:
        parser.error("py-spy is not installed (it is a dev extra: make venv)")
    extra = dict(item.partition("=")[::2] for item in args.env)

    config = bench.ThroughputBenchConfig(events=args.events)
    run = bench._Run(
        os.environ["STREAM_MONITOR_KAFKA_BOOTSTRAP"],
        os.environ["STREAM_MONITOR_REDIS_URL"],
        config.partitions,
        worker_settings=extra,
    )
    bench._create_topics(run)
    client: redis.Redis[bytes] = redis.Redis.from_url(run.redis_url)
    probe = bench._RedisProbe(client)
    backlog_ms = math.ceil(args.events / (config.rate_per_s * 4.0) * 1000)
    start = int(time.time() * 1000) - backlog_ms - 3_600_000
    start -= start % 60_000
    producer = bench._Producer(run.bootstrap, run.topics)
    encoder = bench._Encoder(args.format, run.partitions, config.ndjson_batch)
    events = 0
    for kind, key, event in bench._sim(config, start).events_until(start + backlog_ms):
        if kind == "deployment":
            continue
        events += 1
        for message in encoder.add(kind, key, orjson.dumps(event)):
            producer.send(message)
    for message in encoder.flush():
        producer.send(message)
    producer.flush()
    print(f"produced {events} events ({args.format})", flush=True)

    logs = Path(tempfile.mkdtemp(prefix="profile-worker-"))
    worker = bench._start_worker(run, None, logs, "worker")
    raw = args.raw or logs / "py-spy.txt"
    try:
        deadline = time.monotonic() + 120
        while probe.totals(run.prefix).get("consumed", 0) < events * 0.05:
            if time.monotonic() > deadline or not worker.alive():
                raise SystemExit(f"the worker did not start counting:\n{worker.log_tail()}")
            time.sleep(0.1)
        before, began = probe.totals(run.prefix).get("consumed", 0), time.monotonic()
        if args.seconds:
            assert py_spy is not None
            subprocess.run(
                [py_spy, "record", "--rate", "200", "--duration", str(args.seconds), "--format", "raw",
                 "--output", str(raw), "--pid", str(worker.pid), "--nonblocking", "--gil"],
                check=True, capture_output=True, timeout=args.seconds + 60,
            )  # fmt: skip
        else:
            time.sleep(15)
        after, ended = probe.totals(run.prefix).get("consumed", 0), time.monotonic()
        rate = (after - before) / (ended - began)
        print(f"counted {after - before} events in {ended - began:.1f} s: {rate:,.0f} events/s")
        if after >= events:
            print("(the backlog ran out during the recording: use more --events for a steady rate)")
        if args.seconds:
            print(top_functions(raw, args.top))
    finally:
        worker.stop()
        bench._cleanup(run, client)
        if args.raw is None:
            shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
