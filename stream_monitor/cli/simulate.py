"""``stream-monitor simulate``: produce seeded synthetic recommender traffic, with optional incidents.

Events come from :class:`stream_monitor.sim.TrafficSimulator` and go either to Kafka (serving and engagement
keyed by ``request_id``, deployments keyed by ``model``; topics from :class:`stream_monitor.config.Settings`)
or, with ``--out``, to a JSONL file (no servers needed). ``--speed`` maps event time to wall time: 1.0 is
real time, 60 is an hour per minute, 0 is as fast as possible. The ground truth of every ``--incident`` is
printed to stderr before the first event, and a one-line summary after the last.

Examples::

    stream-monitor simulate --rate 200 --incident latency_regression:region=eu,magnitude=4,onset=600
    stream-monitor simulate --speed 0 --duration 3600 --out /tmp/hour.jsonl --incident traffic_drop
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from stream_monitor.cli._common import hour_of_day

if TYPE_CHECKING:
    from stream_monitor.sim import Incident, TopicKind

__all__ = ["add_parser", "run"]

# Wall-clock length of one paced production step: small enough that events leave close to their event time,
# large enough that the per-step overhead (a sim pull plus a sleep) is negligible.
_STEP_WALL_S = 0.1
# Event-time length of one step when unpaced (--speed 0): bounds how far the count check can overshoot.
_UNPACED_STEP_MS = 10_000
_FLUSH_TIMEOUT_S = 15.0
_CONNECT_TIMEOUT_S = 10.0


def incident_kinds_help() -> str:
    """Every incident kind ``--incident`` accepts, read from the incident library so the two agree.

    >>> text = incident_kinds_help()
    >>> text.startswith("kinds: latency_regression, "), "kinds (with --canary): canary_ctr_drop" in text
    (True, True)
    """
    from stream_monitor.sim.incidents import (
        CANARY_INCIDENT_KINDS,
        DATA_INCIDENT_KINDS,
        INCIDENT_KINDS,
        SHADOW_INCIDENT_KINDS,
    )

    groups = (
        ("kinds", INCIDENT_KINDS),
        ("data-path kinds", DATA_INCIDENT_KINDS),
        ("canary kinds (with --canary)", CANARY_INCIDENT_KINDS),
        ("shadow kinds (with --shadow)", SHADOW_INCIDENT_KINDS),
    )
    return "; ".join(f"{label}: {', '.join(kinds)}" for label, kinds in groups)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``simulate`` on the CLI's sub-parsers (``func=run``)."""
    p = subparsers.add_parser(
        "simulate",
        help="produce seeded synthetic serving/engagement/deployment traffic, optionally with incidents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=200.0, help="mean serving requests per second (default 200)")
    p.add_argument(
        "--duration", type=float, default=None, help="event-time seconds to simulate (default: until Ctrl-C)"
    )
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument(
        "--incident",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject an incident, repeatable: kind[:key=value,...], e.g. "
        "latency_regression:region=eu,stage=ranking,magnitude=4,onset=900 "
        f"({incident_kinds_help()}; onset/duration in seconds after start; no slice given: region=eu, or "
        "arm=control for a release, which takes version=V)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="event-time seconds per wall second (default 1 = real time; 0 = as fast as possible)",
    )
    p.add_argument("--count", type=int, default=None, help="stop after this many serving events")
    p.add_argument(
        "--start-ms", type=int, default=None, help="event time of the start, epoch ms (default: now)"
    )
    p.add_argument(
        "--start-hour",
        type=hour_of_day,
        default=None,
        help="read the start as this UTC hour of the day for the daily traffic curve (default: its real "
        "hour); with it a seed gives the same events whenever the run starts",
    )
    p.add_argument(
        "--canary",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="traffic share of a canary arm (default 0: none)",
    )
    p.add_argument(
        "--shadow",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of the control's requests a shadow version also scores (default 0: no shadow)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write JSONL to this file instead of producing to Kafka"
    )
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: settings kafka_bootstrap)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="pack up to N events of one partition into each Kafka message as newline-delimited JSON "
        "(header content-type: application/x-ndjson); default 1: one event per message",
    )
    p.set_defaults(func=run)
    return p


class _Sink(Protocol):
    def send(self, kind: TopicKind, key: bytes | None, value: bytes) -> None: ...

    def wait(self, seconds: float) -> None: ...

    def close(self) -> int:
        """Finish and return how many events were not delivered."""
        ...


class _JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close(), which run() always calls

    def send(self, kind: TopicKind, key: bytes | None, value: bytes) -> None:
        self._fh.write(value)
        self._fh.write(b"\n")

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> int:
        self._fh.close()
        return 0

    def __str__(self) -> str:
        return f"file {self.path}"


class _KafkaSink:
    def __init__(self, bootstrap: str | None, batch: int = 1) -> None:
        # Imported here so `simulate --out` and the rest of the CLI work without touching librdkafka.
        from confluent_kafka import KafkaException, Producer

        from stream_monitor.config import Settings
        from stream_monitor.runtime.kafka import client_config, ensure_topics, murmur2_partition

        settings = Settings()
        if bootstrap:
            settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        self.bootstrap = settings.kafka_bootstrap
        topics = settings.topics
        self._topics: dict[str, str] = {
            "serving": topics.serving,
            "engagement": topics.engagement,
            "deployment": topics.deployments,
            "dataset": topics.datasets,
        }
        # Brokers often run with topic auto-creation off; without the topics every send would time out.
        ensure_topics(
            settings, list(self._topics.values()), settings.topic_partitions, timeout_s=_CONNECT_TIMEOUT_S
        )
        conf: dict[str, Any] = client_config(settings) | {
            "client.id": "stream-monitor-simulate",
            "linger.ms": 20,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
        try:
            self._producer = Producer(conf)
        except KafkaException:
            # librdkafka built without lz4 rejects the codec at configuration time; plain is still correct.
            conf["compression.type"] = "none"
            self._producer = Producer(conf)
        self.failed = 0
        self.first_error: str | None = None
        self._since_poll = 0
        # Batched messages: events grouped by the partition a keyed produce would have chosen, so the
        # topics stay co-partitioned by request_id.
        self.batch = batch
        self._partition_of = murmur2_partition
        self._partitions = {
            topic: len(meta.partitions)
            for topic, meta in self._producer.list_topics(timeout=_CONNECT_TIMEOUT_S).topics.items()
        }
        self._pending: dict[tuple[str, int], list[bytes]] = {}

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)

    def send(self, kind: TopicKind, key: bytes | None, value: bytes) -> None:
        topic = self._topics[kind]
        if self.batch > 1 and key is not None and kind != "deployment":
            partition = self._partition_of(key, self._partitions.get(topic, 1))
            lines = self._pending.setdefault((topic, partition), [])
            lines.append(value)
            if len(lines) >= self.batch:
                self._send_batch(topic, partition)
            return
        self._produce(topic, value, key)

    def _send_batch(self, topic: str, partition: int) -> None:
        lines = self._pending.pop((topic, partition), [])
        if lines:
            self._produce(
                topic, b"\n".join(lines), None, partition, [("content-type", b"application/x-ndjson")]
            )

    def _flush_batches(self) -> None:
        for topic, partition in list(self._pending):
            self._send_batch(topic, partition)

    def _produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        extra: dict[str, Any] = {} if partition is None else {"partition": partition, "headers": headers}
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery, **extra)
                break
            except BufferError:
                # Local queue full: serve delivery reports until librdkafka has room again.
                self._producer.poll(0.05)
        self._since_poll += 1
        if self._since_poll >= 1000:
            # Delivery callbacks only run inside poll(); without it failures surface only at flush.
            self._producer.poll(0)
            self._since_poll = 0

    def wait(self, seconds: float) -> None:
        self._flush_batches()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._producer.poll(min(left, 0.1))

    def close(self) -> int:
        self._flush_batches()
        undelivered = int(self._producer.flush(_FLUSH_TIMEOUT_S))
        return self.failed + undelivered

    def __str__(self) -> str:
        return f"kafka {self.bootstrap}"


def _kafka_problems(bootstrap: str | None) -> list[Any]:
    """The broker's start-up problems (a few seconds at most): one line, not a stream of reconnect logs."""
    from stream_monitor.config import Settings
    from stream_monitor.runtime.preflight import kafka_problems

    settings = Settings()
    if bootstrap:
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
    return kafka_problems(settings, setting="--bootstrap" if bootstrap else None)


def _fail(msg: str) -> int:
    print(f"simulate: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run the simulation described by ``args``; return the exit code (0 ok, 1 delivery failures, 2 usage)."""
    import orjson

    from stream_monitor.sim import TrafficSimulator, parse_incident
    from stream_monitor.sim.traffic import SimConfig

    if args.rate < 0:
        return _fail(f"--rate must be >= 0, got {args.rate}")
    if args.speed < 0:
        return _fail(f"--speed must be >= 0, got {args.speed}")
    if args.duration is not None and args.duration <= 0:
        return _fail(f"--duration must be > 0, got {args.duration}")
    if args.count is not None and args.count <= 0:
        return _fail(f"--count must be > 0, got {args.count}")
    if args.speed == 0 and args.duration is None and args.count is None:
        # Unpaced and unbounded would fill the disk or the broker as fast as the CPU allows.
        return _fail("--speed 0 needs --duration or --count")
    start_ms = int(time.time() * 1000) if args.start_ms is None else int(args.start_ms)
    incidents: list[Incident] = []
    try:
        incidents = [parse_incident(spec, start_ms) for spec in args.incident]
        sim = TrafficSimulator(
            args.seed,
            start_ms,
            args.rate,
            incidents,
            SimConfig(canary_share=args.canary, shadow_share=args.shadow, diurnal_start_hour=args.start_hour),
        )
    except ValueError as exc:
        return _fail(str(exc))

    for inc in incidents:
        offset_s = (inc.onset_ms - start_ms) / 1000
        print(f"simulate: ground truth: {inc.describe()} (onset +{offset_s:g}s)", file=sys.stderr)
        if args.duration is not None and offset_s >= args.duration:
            # The default onset is 15 min in; a shorter run would silently contain no incident at all.
            print(
                f"simulate: warning: {inc.kind} starts after the run ends (--duration {args.duration:g})",
                file=sys.stderr,
            )

    if args.out is None and (problems := _kafka_problems(args.bootstrap)):
        from stream_monitor.cli._common import report_problems

        return report_problems("simulate", problems)
    try:
        sink: _Sink = _JsonlSink(args.out) if args.out is not None else _KafkaSink(args.bootstrap, args.batch)
    except OSError as exc:
        return _fail(f"cannot open {args.out}: {exc}")
    except Exception as exc:  # KafkaException is imported lazily, and a trace would bury the message
        print(f"simulate: error: cannot set up Kafka: {exc}", file=sys.stderr)
        return 1
    dumps: Callable[[Any], bytes] = orjson.dumps
    end_ms = None if args.duration is None else start_ms + round(args.duration * 1000)
    step_ms = max(1, round(_STEP_WALL_S * 1000 * args.speed)) if args.speed > 0 else _UNPACED_STEP_MS
    counts: dict[str, int] = {"serving": 0, "engagement": 0, "deployment": 0, "dataset": 0}
    wall0 = time.monotonic()
    t = start_ms
    done = False
    try:
        while not done and (end_ms is None or t < end_ms):
            t = t + step_ms if end_ms is None else min(t + step_ms, end_ms)
            for kind, key, event in sim.events_until(t):
                sink.send(kind, key, dumps(event))
                counts[kind] += 1
                if kind == "serving" and args.count is not None and counts["serving"] >= args.count:
                    done = True
                    break
            if args.speed > 0 and not done:
                # Pace against the start rather than per step so that slow steps do not accumulate drift.
                delay = wall0 + (t - start_ms) / 1000 / args.speed - time.monotonic()
                if delay > 0:
                    sink.wait(delay)
    except KeyboardInterrupt:
        print("simulate: interrupted, flushing", file=sys.stderr)
    finally:
        failed = sink.close()
    elapsed = max(time.monotonic() - wall0, 1e-9)
    total = sum(counts.values())
    summary = " ".join(f"{k}={v}" for k, v in counts.items())
    print(
        f"simulate: {summary} total={total} event_time={(sim.now_ms - start_ms) / 1000:.1f}s "
        f"wall={elapsed:.1f}s ({total / elapsed:.0f} events/s) -> {sink}"
        + (f" FAILED={failed}" if failed else ""),
        file=sys.stderr,
    )
    if failed and isinstance(sink, _KafkaSink) and sink.first_error:
        print(f"simulate: first delivery error: {sink.first_error}", file=sys.stderr)
    return 1 if failed else 0
