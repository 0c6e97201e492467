"""``stream-monitor replay FILE``: recorded events (JSONL) through the monitor, alerts out as JSONL.

When the recording holds a canary deployment and its traffic, the canary verdicts
(``stream-monitor.health/v1`` documents, docs/canary.md) are written to the same output, one per line
beside the alerts (they carry ``"schema": "stream-monitor.health/v1"``).

No servers: the same engine as the worker runs in this process with the in-memory store. Event time
comes from the file, so a recording from last month replays exactly as it happened. Lines that are not
valid events are reported as dead letters (on stderr, or to ``--deadletter FILE``) and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO

import orjson

from stream_monitor.cli._common import add_topology_arg, load_settings_and_topology
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sinks.base import DeadLetter, JsonLinesSink
from stream_monitor.sinks.health import JsonLinesHealthSink
from stream_monitor.state.memory import MemoryStore

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
    clock = EventTimeClock()
    health = JsonLinesHealthSink(out)
    engine = Engine(
        topology,
        MemoryStore(),
        JsonLinesSink(out),
        dead,
        clock,
        options=EngineOptions(
            worker_id="replay",
            auto_claim=True,
            max_future_ms=10**12,
            serving_topic=settings.topics.serving,
            engagement_topic=settings.topics.engagement,
        ),
        health_sink=health,
    )
    pipeline = InProcessPipeline(engine, settings.topics, partitions=1)
    alerts = 0
    try:
        with source or open(args.file, "rb") as lines:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line:
                    continue
                _observe_time(clock, line)
                pipeline.feed(None, None, line)
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


def _observe_time(clock: EventTimeClock, line: bytes) -> None:
    # The replay clock follows the recording's event time (for idle partitions and emitted_at); the
    # engine validates the event itself, so a bad line here is simply skipped.
    try:
        ts = orjson.loads(line).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if isinstance(ts, int) and not isinstance(ts, bool):
        clock.observe(ts)
