"""``stream-monitor worker``: the Faust worker on Kafka, with its state in Redis."""

from __future__ import annotations

import argparse
import logging

from prometheus_client import CollectorRegistry

from stream_monitor.cli._common import add_topology_arg, load_settings_and_topology, start_metrics_server

log = logging.getLogger("stream_monitor.worker")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run the Faust worker (Kafka in, alerts out, state in Redis)",
        description="Run the Faust worker. Settings come from STREAM_MONITOR_* variables and "
        "config/default.toml (see README).",
    )
    add_topology_arg(p)
    p.add_argument("--loglevel", default="info", help="Faust/stream-monitor log level (default info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Faust is imported here so the other commands never pay for it.
    import faust

    from stream_monitor.runtime.worker import build_worker
    from stream_monitor.state.redis_store import RedisStore

    settings, topology = load_settings_and_topology(args)
    store = RedisStore.from_url(
        settings.redis_url.get_secret_value(),
        prefix=settings.redis_prefix,
        ssl_ca_certs=str(settings.redis_ssl_ca_certs) if settings.redis_ssl_ca_certs else None,
        window_log_limit=settings.window_log_limit,
    )
    registry = CollectorRegistry()
    runtime = build_worker(settings, topology, store, registry)
    runtime.prepare_topics()
    server = start_metrics_server(registry, settings.metrics_addr, settings.metrics_port)
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
