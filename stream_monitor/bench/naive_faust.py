"""The baseline of the throughput bench: the Faust agent a team writes first.

One agent per input topic processes every event on its own: ``orjson.loads``, per-series river updates
(a :class:`river.stats.Quantile` of the total latency and a :class:`river.stats.Mean` of the error flag
for serving events, a :class:`river.stats.Mean` per action for engagement) and one Redis call per event
(``HINCRBY`` of the event's window and series, with redis-py's blocking client: on loopback it is faster
per call than its asyncio client, so the baseline is not made slower than it has to be). Messages with a
``content-type: application/x-ndjson`` header are split into lines and each line is handled the same way.

Progress is published with one ``INCRBY`` per 1,000 events (and by a 0.5 s timer for the rest) so the
bench can measure the rate; that is 0.1 % of the Redis calls. Run as a module::

    python -m stream_monitor.bench.naive_faust --bootstrap 127.0.0.1:9092 --redis-url redis://... \\
        --app-id naive-1 --prefix naive-1 --serving recs.serving --engagement recs.engagement

This module imports Faust and Redis: it belongs with the runtime, never with ``core``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import faust
import orjson
import redis
from river import stats

from stream_monitor.core.events import is_ndjson

__all__ = ["COUNT_KEY", "NaiveMonitor", "main"]

COUNT_KEY = "naive:count"
WINDOW_MS = 60_000
_REPORT_EVERY = 1_000


class NaiveMonitor:
    """Per-event state and the per-event Redis call (no Faust in here, so it can be tried without a broker).

    >>> class Calls:  # records the Redis calls instead of making them
    ...     def __init__(self): self.made = []
    ...     def hincrby(self, *args): self.made.append(("HINCRBY", *args))
    ...     def incrby(self, *args): self.made.append(("INCRBY", *args))
    >>> calls = Calls()
    >>> monitor = NaiveMonitor(calls, "p")  # type: ignore[arg-type]
    >>> monitor.handle(b'{"type":"engagement","request_id":"r","ts":1764086400123,"action":"click"}')
    >>> monitor.report()
    >>> calls.made
    [('HINCRBY', 'p:win:1764086400000', '*#eng.click', 1), ('INCRBY', 'p:naive:count', 1)]
    """

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.p99: dict[str, stats.Quantile] = {}
        self.errors: dict[str, stats.Mean] = {}
        self.actions: dict[str, stats.Mean] = {}
        self.unreported = 0
        self.bad = 0

    def handle(self, raw: bytes) -> None:
        """Process one event: parse, update river statistics, one Redis call."""
        try:
            doc = orjson.loads(raw)
            ts = int(doc["ts"])
            if doc.get("type") == "serving":
                seg = doc.get("segment") or {}
                series = "|".join(
                    (
                        doc["model"],
                        doc["model_version"],
                        doc["arm"],
                        doc["surface"],
                        seg.get("platform", "unknown"),
                        seg.get("region", "unknown"),
                        seg.get("tenure", "unknown"),
                    )
                )
                quantile = self.p99.get(series)
                if quantile is None:
                    quantile = self.p99[series] = stats.Quantile(0.99)
                    self.errors[series] = stats.Mean()
                quantile.update(float(doc["latency_ms"]["total"]))
                self.errors[series].update(0.0 if doc.get("error") is None else 1.0)
                field = f"{series}#n"
            else:
                action = str(doc["action"])
                for name, mean in self._action_means(action):
                    mean.update(1.0 if name == action else 0.0)
                field = f"*#eng.{action}"
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self.bad += 1
            return
        self.client.hincrby(f"{self.prefix}:win:{ts - ts % WINDOW_MS}", field, 1)
        self.unreported += 1
        if self.unreported >= _REPORT_EVERY:
            self.report()

    def _action_means(self, action: str) -> list[tuple[str, stats.Mean]]:
        if action not in self.actions:
            self.actions[action] = stats.Mean()
        return list(self.actions.items())

    def report(self) -> None:
        """Publish the events handled since the last report (the bench's progress probe)."""
        if self.unreported:
            self.client.incrby(f"{self.prefix}:{COUNT_KEY}", self.unreported)
            self.unreported = 0


def build_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=args.web_port,
        topic_replication_factor=1,
    )
    monitor = NaiveMonitor(redis.Redis.from_url(args.redis_url), args.prefix)

    async def agent(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            message = event.message
            if is_ndjson(message.headers):
                for line in message.value.split(b"\n"):
                    if line.strip():
                        monitor.handle(line)
            else:
                monitor.handle(message.value)

    for name in (args.serving, args.engagement):
        topic = app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        app.agent(topic, name=f"naive.{name}")(agent)

    async def report() -> None:
        monitor.report()

    app.timer(interval=0.5)(report)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--serving", required=True)
    parser.add_argument("--engagement", required=True)
    parser.add_argument("--web-port", type=int, default=6067)
    parser.add_argument("--loglevel", default="warning")
    args = parser.parse_args(argv)
    worker = faust.Worker(build_app(args), loglevel=args.loglevel.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
