"""``stream-monitor demo``: the embedded default, no Kafka or Redis.

Simulated traffic (with incidents) runs through the same engine as the worker, in accelerated event
time, with the in-memory store. Alerts print as they fire; ``/metrics`` is served meanwhile.

Simulated time starts six hours before the wall clock (the first output line says so): it runs
``--speed`` times faster than the wall clock but never past it (traffic from the future is what a
monitor dead-letters), so the head start is what lets it run fast, for 12 minutes at the default 30x.
That is why the alerts' windows are labelled hours before the time on your clock.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

import orjson
from prometheus_client import CollectorRegistry

from stream_monitor.cli._common import (
    add_topology_arg,
    hour_of_day,
    load_settings_and_topology,
    report_problems,
    start_metrics_server,
)
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.runtime.preflight import env_name, port_problem
from stream_monitor.sim import SimConfig, TrafficSimulator, parse_incident
from stream_monitor.sinks.base import JsonLinesSink, ListSink, TerminalAlertSink
from stream_monitor.sinks.metrics import MonitorMetrics

# Hours simulated time starts before the wall clock.
LEAD_HOURS = 6
DEFAULT_INCIDENTS = (
    "latency_regression:region=eu,stage=ranking,magnitude=4,onset=600,duration=600",
    "error_spike:platform=android,magnitude=0.15,onset=1500,duration=420",
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulated traffic through the monitor in this process (no servers needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=None, help="wall seconds to run (default: until Ctrl-C)")
    p.add_argument(
        "--speed", type=float, default=30.0, help="event-time seconds per wall second (default 30)"
    )
    p.add_argument("--rate", type=float, default=60.0, help="simulated requests per event-time second")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--start-hour",
        type=hour_of_day,
        default=12.0,
        help="UTC hour of day the simulated traffic starts at (its daily curve); a seed and start hour give "
        "the same alerts whenever the demo runs (default 12)",
    )
    p.add_argument(
        "--incident",
        action="append",
        help="incident spec, repeatable (default: a latency regression in region=eu at 10 min, then an "
        "error spike on android at 25 min)",
    )
    p.add_argument("--no-incidents", action="store_true", help="clean traffic only")
    p.add_argument("--json", action="store_true", help="print alerts as JSON lines instead of text")
    p.add_argument("--metrics-port", type=int, default=None, help="0 to disable the /metrics endpoint")
    add_topology_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings, topology = load_settings_and_topology(args)
    # Start a few hours back so accelerated event time stays behind the wall clock for a long demo.
    start_ms = (time.time_ns() // 1_000_000) - LEAD_HOURS * 3_600_000
    start_ms -= start_ms % topology.window.size_ms
    specs = [] if args.no_incidents else list(args.incident or DEFAULT_INCIDENTS)
    incidents = [parse_incident(spec, start_ms) for spec in specs]
    sim = TrafficSimulator(
        seed=args.seed,
        start_ms=start_ms,
        rate_per_s=args.rate,
        incidents=incidents,
        config=SimConfig(diurnal_start_hour=args.start_hour),
    )

    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, topology.segment_dims)
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    try:
        server = start_metrics_server(registry, settings.metrics_addr, port) if port else None
    except OSError as exc:
        change = f"--metrics-port (or {env_name('metrics_port')}; 0: no endpoint)"
        where = env_name("metrics_addr")
        problem = port_problem("metrics port", settings.metrics_addr, port, change, exc, where)
        return report_problems("demo", [problem])
    sink = JsonLinesSink(sys.stdout.buffer) if args.json else TerminalAlertSink()
    dead = ListSink()
    clock = EventTimeClock(start_ms)
    pipeline = InProcessPipeline.build(
        topology,
        alerts=sink,
        deadletters=dead,
        clock=clock,
        topics=settings.topics,
        partitions=settings.topic_partitions,
        worker_id="demo",
        metrics=metrics,
    )
    engine = pipeline.engine

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    began_at = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%H:%M UTC")
    say(
        f"stream-monitor demo: simulated time starts at {began_at}, {LEAD_HOURS} h before your clock, "
        f"so that it can run {args.speed:g}x faster without overtaking it: windows are labelled from then"
    )
    say(
        f"  {args.rate:g} req/s simulated, windows of {topology.window.size_ms // 1000} s"
        + (f", metrics on http://{settings.metrics_addr}:{port}/metrics" if port else "")
    )
    for inc in incidents:
        wall = (inc.onset_ms - start_ms) / 1000 / args.speed
        say(f"  injected: {inc.describe()}  (about {wall:.0f} s of wall time from now)")
    say("alerts appear below as windows close; Ctrl-C to stop\n")

    tick_s = 0.25
    began = time.monotonic()
    event_ms = start_ms
    try:
        while args.duration is None or time.monotonic() - began < args.duration:
            tick_began = time.monotonic()
            event_ms = min(event_ms + round(args.speed * tick_s * 1000), time.time_ns() // 1_000_000)
            for kind, key, event in sim.events_until(event_ms):
                pipeline.feed(kind, key, orjson.dumps(event))
            clock.observe(event_ms)
            pipeline.step()
            time.sleep(max(0.0, tick_s - (time.monotonic() - tick_began)))
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
    totals = engine.store.totals()
    say(
        f"\nprocessed {totals.get('consumed', 0)} events ({totals.get('rejected', 0)} rejected) in "
        f"{time.monotonic() - began:.0f} s; {engine.windows_closed} windows closed"
    )
    return 0
