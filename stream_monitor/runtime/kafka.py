"""confluent-kafka adapters: client config from settings, topic creation, alert and dead-letter producers.

Outputs go through one thread-safe confluent-kafka producer rather than Faust, because the window closer
runs on a worker thread and must know an alert is on the broker before it marks the window closed.

Every client built from :func:`client_config` logs through the Python logger ``librdkafka`` instead of
straight to stderr: librdkafka repeats "Connect to ... failed: Connection refused" several times a second
per client while a broker is away (over a thousand lines in half a minute for one worker), so that logger
lets one line of each shape through per client and minute (:class:`RepeatFilter`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from stream_monitor.config import Settings
from stream_monitor.core.alerts import Alert
from stream_monitor.core.gate import health_key
from stream_monitor.sinks.base import DeadLetter

__all__ = [
    "LIBRDKAFKA_LOGGER",
    "KafkaAlertSink",
    "KafkaDeadLetterSink",
    "KafkaHealthSink",
    "RepeatFilter",
    "client_config",
    "ensure_topics",
    "make_producer",
]

log = logging.getLogger(__name__)
# A dead letter carries the original bytes base64-encoded; keep the record under Kafka's default 1 MB.
MAX_DEADLETTER_VALUE = 600_000
LIBRDKAFKA_LOGGER = "librdkafka"
# Digits differ between repeats of one message ("after 0ms", "after 1ms", "#producer-3").
_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets a log line through once per ``interval_s`` per shape; the next one says how many were held back.

    The shape is the logger's arguments with every run of digits blanked, so repeats that differ only in
    a count or a timing are one shape.

    >>> f = RepeatFilter(interval_s=60)
    >>> def rec(t, msg):
    ...     r = logging.LogRecord("librdkafka", logging.ERROR, "", 0, "%s", (msg,), None)
    ...     r.created = t
    ...     return r
    >>> [f.filter(rec(t, f"connect failed after {t}ms")) for t in (0, 1, 2)]
    [True, False, False]
    >>> r = rec(61, "connect failed after 0ms"); f.filter(r), r.getMessage()
    (True, 'connect failed after 0ms (2 like it in the last 60 s not shown)')
    >>> f.filter(rec(62, "broker is down"))
    True
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        shape = _DIGITS.sub("#", f"{record.levelno} {record.msg} {record.args}")
        last = self._last.get(shape)
        if last is not None and record.created - last < self.interval_s:
            self._held[shape] = self._held.get(shape, 0) + 1
            return False
        if len(self._last) >= 1_000:  # shapes are few; this only bounds a pathological variety
            self._last.clear()
        self._last[shape] = record.created
        held = self._held.pop(shape, 0)
        if held:
            record.msg = f"{record.msg} ({held} like it in the last {self.interval_s:g} s not shown)"
        return True


# One filter for every client of the process: the shape includes the client's name.
logging.getLogger(LIBRDKAFKA_LOGGER).addFilter(RepeatFilter())


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings for the broker connection, security included (secrets are not logged).

    The clients log through the ``librdkafka`` Python logger (see the module docstring); their lines
    arrive when the client is polled.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol,
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username or ""
        if settings.kafka_sasl_password is not None:
            conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    for option, path in (
        ("ssl.ca.location", settings.kafka_ssl_cafile),
        ("ssl.certificate.location", settings.kafka_ssl_certfile),
        ("ssl.key.location", settings.kafka_ssl_keyfile),
    ):
        if path is not None:
            conf[option] = str(path)
    if settings.kafka_ssl_key_password is not None:
        conf["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return conf


def make_producer(settings: Settings, **extra: Any) -> Producer:
    conf = client_config(settings) | {
        "linger.ms": 5,
        "acks": "all",
        "enable.idempotence": True,
        "message.max.bytes": 1_000_000,
    }
    conf.update(extra)
    return Producer(conf)


def ensure_topics(
    settings: Settings,
    names: Sequence[str],
    partitions: int,
    compacted: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> None:
    """Create missing topics (existing ones are left as they are)."""
    admin = AdminClient(client_config(settings))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [n for n in names if n not in existing]
    if not missing:
        return
    new = [
        NewTopic(
            n,
            num_partitions=partitions,
            replication_factor=-1,
            config={"cleanup.policy": "compact"} if n in compacted else {},
        )
        for n in missing
    ]
    for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        log.info("created topic %s", name)


class _Delivery:
    """Counts delivery failures so flush() can tell the caller the output is not durable."""

    def __init__(self) -> None:
        self.failed = 0
        self.last_error: str | None = None

    def __call__(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = str(err)


class _KafkaOutput:
    def __init__(self, producer: Producer, topic: str, flush_timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._delivery = _Delivery()
        self._unflushed = 0

    def _produce(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, on_delivery=self._delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
        self._unflushed += 1
        self.producer.poll(0)

    def flush(self) -> None:
        if not self._unflushed:
            return
        remaining = self.producer.flush(self.flush_timeout_s)
        if remaining or self._delivery.failed:
            failed, self._delivery.failed = self._delivery.failed, 0
            raise KafkaException(
                f"{remaining} messages to {self.topic} still queued, {failed} failed: "
                f"{self._delivery.last_error}"
            )
        self._unflushed = 0


class KafkaAlertSink(_KafkaOutput):
    """Publishes alerts (keyed by their de-duplication key) and waits until the broker has them."""

    def emit(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self._produce(alert.dedupe_key.encode(), orjson.dumps(alert.to_dict()))
        self.flush()


class KafkaDeadLetterSink(_KafkaOutput):
    """Publishes dead letters; :meth:`flush` runs before the offsets they cover are committed."""

    def send(self, record: DeadLetter) -> None:
        doc: Mapping[str, Any] = record.to_dict()
        if len(record.value) > MAX_DEADLETTER_VALUE:
            truncated = DeadLetter(
                record.reason,
                record.detail + f" (value truncated from {len(record.value)} bytes)",
                record.topic,
                record.partition,
                record.offset,
                record.timestamp_ms,
                record.key,
                record.value[:MAX_DEADLETTER_VALUE],
                record.worker,
                record.dead_lettered_at,
            )
            doc = truncated.to_dict()
        self._produce(record.key, orjson.dumps(doc))


class KafkaHealthSink(_KafkaOutput):
    """Publishes verdict documents to the compacted health topic, keyed ``model/deployment``.

    Like alerts, they are on the broker before :meth:`emit` returns (the window is marked closed after).
    """

    def emit(self, docs: Sequence[Mapping[str, Any]]) -> None:
        for doc in docs:
            self._produce(health_key(doc).encode(), orjson.dumps(doc))
        self.flush()


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (Java) partitioner picks for ``key``.

    Producers that batch events themselves must place each event where a keyed produce would have put
    it, so serving and engagement events of one request stay co-partitioned.

    >>> [murmur2_partition(k, 4) for k in (b"a", b"7f3c9a", b"")]
    [0, 3, 1]
    """
    length = len(key)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = key[i] | key[i + 1] << 8 | key[i + 2] << 16 | key[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= key[whole + 2] << 16
    if tail >= 2:
        h ^= key[whole + 1] << 8
    if tail >= 1:
        h ^= key[whole]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions
