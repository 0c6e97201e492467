"""``stream-monitor replay FILE``: recorded events (JSONL) through the monitor, alerts out as JSONL.

When the recording holds a canary deployment and its traffic, the canary verdicts
(``stream-monitor.health/v1`` documents, docs/canary.md) are written to the same output, one per line
beside the alerts (they carry ``"schema": "stream-monitor.health/v1"``).

No servers: the same engine as the worker runs in this process with the in-memory store, and each line
is routed as the worker's topics carry it (stream_monitor/inprocess.py): serving and engagement events to
the late-label join's partitions by ``request_id``, deployments to the registry. Event time comes from
the file, so a recording from last month replays exactly as it happened. Lines that are not valid events
are reported as dead letters (on stderr, or to ``--deadletter FILE``) and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO

import orjson

from stream_monitor.cli._common import add_topology_arg, load_settings_and_topology
from stream_monitor.inprocess import InProcessPipeline
from stream_monitor.sinks.base import DeadLetter, JsonLinesSink
from stream_monitor.sinks.health import JsonLinesHealthSink

# Close windows every this many input lines, so detection sees windows in order as the worker would.
STEP_LINES = 5_000


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "replay",
        help="run recorded JSONL events through the monitor offline; alerts as JSONL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="JSONL file of events ('-' for standard input)")
    p.add_argument("--out", type=Path, help="write alerts here instead of standard output")
    p.add_argument("--deadletter", type=Path, help="write dead-letter records here (JSONL)")
    add_topology_arg(p)
    p.set_defaults(func=run)


class _DeadLetterFile:
    def __init__(self, stream: IO[bytes] | None) -> None:
        self.stream = stream
        self.count = 0
        self.reasons: dict[str, int] = {}

    def send(self, record: DeadLetter) -> None:
        self.count += 1
        self.reasons[record.reason] = self.reasons.get(record.reason, 0) + 1
        if self.stream is not None:
            self.stream.write(orjson.dumps(record.to_dict()) + b"\n")

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    settings, topology = load_settings_and_topology(args)
    source = sys.stdin.buffer if str(args.file) == "-" else None
    if source is None and not args.file.is_file():
        print(f"replay: {args.file}: no such file", file=sys.stderr)
        return 2
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115 - closed below
    dead_file = open(args.deadletter, "wb") if args.deadletter else None  # noqa: SIM115
    dead = _DeadLetterFile(dead_file)
    health = JsonLinesHealthSink(out)
    pipeline = InProcessPipeline.build(
        topology,
        alerts=JsonLinesSink(out),
        deadletters=dead,
        topics=settings.topics,
        worker_id="replay",
        health_sink=health,
    )
    engine = pipeline.engine
    alerts = 0
    try:
        with source or open(args.file, "rb") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line:
                    pipeline.feed_line(line)
                if number % STEP_LINES == 0:
                    alerts += len(pipeline.step())
        alerts += len(pipeline.step(final=True))
    finally:
        if args.out:
            out.close()
        if dead_file is not None:
            dead_file.close()
    totals = engine.store.totals()
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(dead.reasons.items())) or "none"
    print(
        f"replay: {totals.get('consumed', 0)} events, {totals.get('rejected', 0)} dead-lettered ({reasons}), "
        f"{alerts} alert messages, {health.count} canary/shadow verdicts",
        file=sys.stderr,
    )
    return 0
