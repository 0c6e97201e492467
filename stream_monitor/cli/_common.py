"""Helpers shared by CLI commands: settings, topology, logging, metrics endpoint, start-up problems."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from stream_monitor.config import Settings
from stream_monitor.core.topology import Topology
from stream_monitor.runtime.preflight import Problem, exit_code
from stream_monitor.topology import load_topology

__all__ = [
    "CLIENT_LOGGERS",
    "add_topology_arg",
    "format_table",
    "load_settings_and_topology",
    "open_store",
    "quiet_client_logs",
    "report_problems",
    "setup_logging",
    "start_metrics_server",
]


def add_topology_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topology", help="topology YAML (default: STREAM_MONITOR_TOPOLOGY or topologies/default.yaml)"
    )


def load_settings_and_topology(args: argparse.Namespace) -> tuple[Settings, Topology]:
    """Settings from the environment, and the topology named by ``--topology`` or the settings.

    An explicit ``--topology`` must exist; the configured default falls back to the packaged copy so the
    commands also work outside a checkout.
    """
    settings = Settings()
    explicit = getattr(args, "topology", None)
    if explicit:
        return settings, load_topology(explicit)
    configured = Path(settings.topology)
    return settings, load_topology(configured if configured.is_file() else None)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# Loggers of the client libraries: their INFO lines (group joins, reconnects, every fetch session) bury
# the monitor's own; --verbose brings them back.
CLIENT_LOGGERS = ("librdkafka", "aiokafka", "faust", "mode", "redis")


def quiet_client_logs(verbose: bool = False) -> None:
    """Client libraries log at WARNING and above unless ``verbose`` (then at DEBUG)."""
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def report_problems(command: str, problems: Iterable[Problem]) -> int:
    """Print each start-up problem as one line on stderr; returns the exit code (0: none).

    >>> from stream_monitor.runtime.preflight import Problem
    >>> report_problems("demo", [])
    0
    """
    problems = list(problems)
    for problem in problems:
        print(f"{command}: {problem}", file=sys.stderr)
    return exit_code(problems)


def start_metrics_server(registry: CollectorRegistry, addr: str, port: int) -> Any:
    """Serve ``/metrics`` for ``registry`` on ``addr:port`` (returns the server so it can be shut down)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server


def open_store(settings: Settings, **options: Any) -> Any:
    """The Redis state store the settings name: one server, a Sentinel-watched primary or a cluster
    (``state/redis_connect.py``). ``options`` go to RedisStore (e.g. ``window_log_limit``). Imported
    here: only the commands that need it load redis."""
    from stream_monitor.state.redis_store import RedisStore

    sentinel_password = settings.redis_sentinel_password
    return RedisStore.from_url(
        settings.redis_url.get_secret_value(),
        prefix=settings.redis_prefix,
        ssl_ca_certs=str(settings.redis_ssl_ca_certs) if settings.redis_ssl_ca_certs else None,
        sentinel_password=sentinel_password.get_secret_value() if sentinel_password else None,
        **options,
    )


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart (the first row is the header).

    >>> format_table([("A", "BB"), ("ccc", "d")])
    ['A    BB', 'ccc  d']
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def hour_of_day(text: str) -> float:
    """argparse type: an hour of the day in [0, 24) (``--start-hour``)."""
    try:
        hour = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= hour < 24.0:
        raise argparse.ArgumentTypeError(f"an hour of the day is in [0, 24), got {hour:g}")
    return hour
