"""``stream-monitor worker``: the Faust worker on Kafka, with its state in Redis.

Before Faust starts, the worker checks its ports, Kafka and Redis (runtime/preflight.py, a few seconds
each) and stops with one line per problem: exit 2 for a configuration problem (a malformed setting, a
port in use, credentials refused), 75 (EX_TEMPFAIL) when Kafka or Redis does not answer. See
docs/troubleshooting.md.
"""

from __future__ import annotations

import argparse
import logging

from prometheus_client import CollectorRegistry

from stream_monitor.cli._common import (
    add_topology_arg,
    load_settings_and_topology,
    open_store,
    quiet_client_logs,
    report_problems,
    start_metrics_server,
)
from stream_monitor.runtime.preflight import EXIT_UNAVAILABLE, Problem, env_name, port_problem

log = logging.getLogger("stream_monitor.worker")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run the Faust worker (Kafka in, alerts out, state in Redis)",
        description=__doc__ + "\nSettings come from STREAM_MONITOR_* variables and config/default.toml "
        "(see README).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_topology_arg(p)
    p.add_argument("--loglevel", default="info", help="Faust/stream-monitor log level (default info)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show the client libraries' logs (librdkafka, aiokafka, Faust, redis) below WARNING",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream_monitor.runtime.preflight import worker_problems

    quiet_client_logs(args.verbose)
    settings, topology = load_settings_and_topology(args)
    problems = worker_problems(settings)
    if problems:
        return report_problems("worker", problems)

    # Faust is imported here so the other commands never pay for it.
    import faust
    from confluent_kafka import KafkaException

    from stream_monitor.runtime.worker import build_worker

    store = open_store(settings, window_log_limit=settings.window_log_limit)
    registry = CollectorRegistry()
    runtime = build_worker(settings, topology, store, registry)
    try:
        runtime.prepare_topics()
    except KafkaException as exc:  # it answered the preflight a moment ago: went away, or denies it
        problem = Problem(
            f"cannot create the topics on Kafka at {settings.kafka_bootstrap}: {exc}", EXIT_UNAVAILABLE
        )
        return report_problems("worker", [problem])
    try:
        server = start_metrics_server(registry, settings.metrics_addr, settings.metrics_port)
    except OSError as exc:  # taken since the preflight
        addr, port = settings.metrics_addr, settings.metrics_port
        change, where = env_name("metrics_port"), env_name("metrics_addr")
        problem = port_problem("metrics port", addr, port, change, exc, where)
        return report_problems("worker", [problem])
    log.info(
        "metrics on http://%s:%d/metrics; topology %s (%d s windows); %s delivery",
        settings.metrics_addr,
        settings.metrics_port,
        topology.name,
        topology.window.size_ms // 1000,
        settings.delivery,
    )
    worker = faust.Worker(runtime.app, loglevel=args.loglevel.upper(), quiet=True, override_logging=True)
    try:
        worker.execute_from_commandline()
    finally:
        server.shutdown()
    return 0
