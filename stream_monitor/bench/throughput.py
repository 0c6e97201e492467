"""Throughput benchmark: the real worker against a real Kafka broker and Redis, with its limits beside it.

For each message format (``message``: one event per Kafka message; ``ndjson``: batches of events of one
partition per message, header ``content-type: application/x-ndjson``) the bench, on fresh topics and a
fresh Redis prefix:

1. produces a backlog of about ``events`` simulated serving and engagement events
   (:class:`~stream_monitor.sim.TrafficSimulator`, slates of ``slate_size`` items: a serving event is then
   ~880 bytes, an engagement event ~140 bytes; no deployment events);
2. **ceiling**: reads the backlog with a raw confluent-kafka ``Consumer.consume`` loop and ``orjson.loads``
   of every event, in this process (what this machine can do at all in Python);
3. **worker**: starts ``stream-monitor worker`` (the real Faust worker, a subprocess, default topology
   unless ``topology`` is given) and measures its rate over 10-90 % of the backlog from the counters it
   commits to Redis; Redis commands and calls per 1,000 events from ``INFO commandstats`` (the bench's
   own probes subtracted), the worker's peak RSS (``VmHWM``) and the Redis memory of the window hashes
   per tracked series (``MEMORY USAGE``);
4. **latency**: with the same worker still running, produces live traffic paced at ``latency_speed``
   event-time seconds per wall second, with incidents from :mod:`stream_monitor.sim.incidents` injected
   in ``latency_rounds`` rounds (three incidents of independent effect per round on different slices,
   starting one window apart at seeded offsets inside their window, two windows long). For every
   incident the first firing alert that names its ground truth (signal and slice) is taken from
   ``recs.alerts`` as it arrives, and timed:

   * ``close_to_alert_s`` (measured): from the produce time of the first event past the alerted window's
     close point (window end + allowed lateness; before it the window may not close by design) to the
     alert's arrival on the alerts topic. This is the monitor's own delay.
   * ``onset_to_alert_s`` (real time): from the incident's first event, as if traffic ran in real time:
     ``(window end + allowed lateness - onset) + close_to_alert_s``. The event-time part is fixed by the
     topology (the window and its allowed lateness), only ``close_to_alert_s`` depends on the worker.
   * ``onset_to_alert_wall_s`` (measured): the same at the bench's pace (event time runs
     ``latency_speed`` times faster than the wall clock).

5. **stream delivery** (``stream_reference``): a second worker with ``delivery = "stream"`` (Faust's
   per-message streams and agents: runtime/delivery.py says why the default hands over whole fetches)
   on the same backlog, under its own consumer group and Redis prefix, for the ratio of the two paths in
   one run;
6. **naive**: a Faust agent that handles each event on its own, with per-event river updates and one Redis
   call per event (:mod:`stream_monitor.bench.naive_faust`), on the same topics (backlog and live part).

Then, for every count in ``series_counts``, a **memory** run: serving events spread evenly over that many
distinct series (segment values ``p<i>``/``r<j>``/``t<k>``, at most 64 per dimension), all in one window,
through a fresh worker; the peak RSS and the Redis memory once the window has been closed and evaluated.
The default topology keeps at most 10,000 series per worker (``max_series``); larger counts run on a copy
of the topology with ``max_series`` raised to the count (reported as ``topology_override``).

Every wait is bounded (``phase_timeout_s``); worker processes are stopped by PID; topics and Redis keys of
the run are deleted at the end. This module drives processes and services: it imports Kafka and Redis
clients and belongs with the runtime, never with ``core``.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
import yaml

from stream_monitor.core.fields import ALL, series_of
from stream_monitor.core.topology import Topology
from stream_monitor.runtime.kafka import murmur2_partition
from stream_monitor.sim import Incident, TrafficSimulator
from stream_monitor.sim.traffic import SimConfig
from stream_monitor.topology import DEFAULT_TOPOLOGY, load_topology

__all__ = [
    "FORMATS",
    "BenchError",
    "ThroughputBenchConfig",
    "format_report",
    "percentile",
    "quick_config",
    "run_throughput_bench",
]

REPORT_VERSION = 1
FORMATS = ("message", "ndjson")
NDJSON_HEADERS: list[tuple[str, str | bytes | None]] = [("content-type", b"application/x-ndjson")]
HOUR_MS = 3_600_000
# Three incidents of independent effect per round (status, stage latency, feature age), on different
# slices, so they can run at the same time without one hiding another.
LATENCY_INCIDENTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("error_spike", {"platform": "android"}),
    ("latency_regression", {"region": "eu"}),
    ("stale_feature", {"tenure": "new"}),
)
# In a round the incidents start one window apart (so each alert closes its own window and the latencies
# are separate samples) and last 2 windows each; the round ends with a window of recovery.
INCIDENT_WINDOWS = 2
ROUND_WINDOWS = len(LATENCY_INCIDENTS) + INCIDENT_WINDOWS
# Commands the worker sends itself (the Lua scripts run HGET/HSET/HINCRBY/ZADD/EXPIRE/GET/SET inside
# Redis; those are counted in `commands`, not in `calls`). GET is sent both ways and is left out of calls.
CLIENT_COMMANDS = frozenset({"evalsha", "eval", "hgetall", "zrange", "ping", "scan", "script|load"})
# Fields of a series that are bins of a distribution sketch, by kind: latency and feature-age log buckets,
# and the profile histograms (feature value bins, capped categorical values, hashed item buckets, score
# bins). The rest are counters (requests, errors, funnel stages, sources, null/invalid/default features,
# slate counters): the state "beyond the sketches".
SKETCH_KINDS = {
    "#lat.": "latency",
    "#age.": "feature_age",
    "#fv.": "profile",
    "#fc.": "profile",
    "#it.": "profile",
    "#sc.": "profile",
}
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ThroughputBenchConfig:
    """What one throughput bench run does (see the module docstring).

    >>> c = quick_config()
    >>> c.events, c.formats, c.series_counts
    (20000, ('message', 'ndjson'), (10, 1000))
    """

    events: int = 1_000_000
    rate_per_s: float = 200.0
    slate_size: int = 5
    ndjson_batch: int = 100
    formats: tuple[str, ...] = FORMATS
    naive: bool = True
    # The naive agent is slow: its rate is taken over at most this many events (the backlog's first).
    naive_events: int = 200_000
    stream_reference: bool = True
    ceiling: bool = True
    latency_rounds: int = 2
    latency_speed: float = 6.0
    series_counts: tuple[int, ...] = (10, 1_000, 100_000)
    events_per_series: int = 5
    partitions: int = 4
    seed: int = 7
    phase_timeout_s: float = 900.0
    topology: str | None = None
    log_dir: str | None = None

    def __post_init__(self) -> None:
        if self.events < 1_000:
            raise ValueError(f"events must be >= 1000, got {self.events}")
        if not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")
        for fmt in self.formats:
            if fmt not in FORMATS:
                raise ValueError(f"formats: {fmt!r} is not one of {FORMATS}")
        if self.ndjson_batch < 2:
            raise ValueError(f"ndjson_batch must be >= 2, got {self.ndjson_batch}")
        if self.latency_rounds < 0 or self.latency_speed <= 0:
            raise ValueError("latency_rounds must be >= 0 and latency_speed > 0")
        if any(n < 1 for n in self.series_counts):
            raise ValueError(f"series_counts must be >= 1, got {self.series_counts}")
        if self.events_per_series < 1 or self.partitions < 1 or self.phase_timeout_s <= 0:
            raise ValueError("events_per_series, partitions and phase_timeout_s must be positive")


def quick_config(**overrides: Any) -> ThroughputBenchConfig:
    """A smoke run: 20k events per format, one latency round, 10 and 1,000 series (a few minutes)."""
    options: dict[str, Any] = {
        "events": 20_000,
        "rate_per_s": 25.0,
        "latency_rounds": 1,
        "latency_speed": 15.0,
        "naive_events": 20_000,
        "series_counts": (10, 1_000),
        "events_per_series": 3,
        "phase_timeout_s": 240.0,
        "stream_reference": False,
    }
    options.update(overrides)
    return ThroughputBenchConfig(**options)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation between order statistics; None when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([5.0], 0.99), percentile([], 0.5)
    (2.5, 5.0, None)
    """
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- services, topics, processes ---------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """Names of one part of the bench: its topics, Redis prefix and consumer groups."""

    bootstrap: str
    redis_url: str
    partitions: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Settings for its workers on top of the bench's own (``NAME=value``; e.g. a batch size to try).
    worker_settings: dict[str, str] = field(default_factory=dict)

    @property
    def topics(self) -> dict[str, str]:
        return {
            name: f"bench-{self.tag}.{name}"
            for name in ("serving", "engagement", "deployments", "alerts", "health", "deadletter")
        }

    @property
    def prefix(self) -> str:
        return f"bench-{self.tag}"

    def worker_env(
        self, topology: str | None, metrics_port: int, web_port: int, delivery: str = "batch"
    ) -> dict[str, str]:
        """A worker's environment; a ``stream`` delivery worker gets its own group and prefix."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_MONITOR_")}
        own = "" if delivery == "batch" else f":{delivery}"
        env.update(
            {
                "STREAM_MONITOR_KAFKA_BOOTSTRAP": self.bootstrap,
                "STREAM_MONITOR_REDIS_URL": self.redis_url,
                "STREAM_MONITOR_REDIS_PREFIX": self.prefix + own,
                "STREAM_MONITOR_APP_ID": f"bench-{self.tag}{own.replace(':', '-')}",
                "STREAM_MONITOR_DELIVERY": delivery,
                "STREAM_MONITOR_METRICS_PORT": str(metrics_port),
                "STREAM_MONITOR_WEB_PORT": str(web_port),
                "STREAM_MONITOR_TOPIC_PARTITIONS": str(self.partitions),
                "STREAM_MONITOR_IDLE_PARTITION_TIMEOUT_S": "5",
                "STREAM_MONITOR_CONFIG": "/nonexistent",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if topology:
            env["STREAM_MONITOR_TOPOLOGY"] = topology
        for name, topic in self.topics.items():
            env[f"STREAM_MONITOR_TOPICS__{name.upper()}"] = topic
        env.update(self.worker_settings)
        return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process:
    """A subprocess with its output in a log file, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Faust keeps an "<app id>-data" directory in the working directory: keep it with the logs.
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_path.parent
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status_kb(self, name: str) -> int | None:
        """A ``/proc/PID/status`` memory field (``VmHWM``, ``VmRSS``) in KiB; None where there is no /proc."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(f"{name}:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class BenchError(RuntimeError):
    """A phase of the bench did not complete (a process died or a bounded wait ran out)."""


def _wait(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    proc: _Process | None = None,
    every: float = 0.2,
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise BenchError(f"process exited while waiting for {what}:\n{proc.log_tail()}")
        time.sleep(every)
    tail = f"\n{proc.log_tail()}" if proc is not None else ""
    raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def _create_topics(run: _Run) -> None:
    from stream_monitor.config import Settings
    from stream_monitor.runtime.kafka import ensure_topics

    ensure_topics(Settings(kafka_bootstrap=run.bootstrap), list(run.topics.values()), run.partitions)


def _cleanup(run: _Run, client: redis.Redis[bytes]) -> None:
    keys = list(client.scan_iter(f"{run.prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    # Topics of a finished bench: if the broker refuses, they are only left behind.
    with contextlib.suppress(Exception):
        _admin(run.bootstrap).delete_topics(list(run.topics.values()))


# -- events and messages -----------------------------------------------------------------------------

# (topic kind, partition, key, value, headers)
Message = tuple[str, int, bytes | None, bytes, list[tuple[str, str | bytes | None]] | None]


class _Encoder:
    """Turns simulated events into Kafka messages of one format (keyed partitioning as Kafka's own)."""

    def __init__(self, fmt: str, partitions: int, batch: int) -> None:
        self.fmt = fmt
        self.partitions = partitions
        self.batch = batch
        self._pending: dict[tuple[str, int], list[bytes]] = {}

    def add(self, kind: str, key: bytes | None, value: bytes) -> Iterator[Message]:
        partition = murmur2_partition(key or b"", self.partitions)
        if self.fmt == "message":
            yield (kind, partition, key, value, None)
            return
        lines = self._pending.setdefault((kind, partition), [])
        lines.append(value)
        if len(lines) >= self.batch:
            yield from self._emit(kind, partition)

    def _emit(self, kind: str, partition: int) -> Iterator[Message]:
        lines = self._pending.pop((kind, partition), [])
        if lines:
            yield (kind, partition, None, b"\n".join(lines), NDJSON_HEADERS)

    def flush(self) -> Iterator[Message]:
        for kind, partition in list(self._pending):
            yield from self._emit(kind, partition)


class _Producer:
    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        from confluent_kafka import Producer

        self.topics = topics
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "queue.buffering.max.kbytes": 262144,
            }
        )
        self.sent = 0

    def send(self, message: Message) -> None:
        kind, partition, key, value, headers = message
        topic = self.topics[kind]
        while True:
            try:
                if headers:
                    self.producer.produce(topic, value, key, partition=partition, headers=headers)
                else:
                    self.producer.produce(topic, value, key, partition=partition)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent += 1
        if self.sent % 2000 == 0:
            self.producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            raise BenchError(f"{left} messages were not delivered within {timeout_s:.0f} s")


def _sim(
    config: ThroughputBenchConfig, start_ms: int, incidents: Sequence[Incident] = ()
) -> TrafficSimulator:
    return TrafficSimulator(
        config.seed, start_ms, config.rate_per_s, incidents, SimConfig(slate_size=config.slate_size)
    )


# -- Redis measurements ------------------------------------------------------------------------------


class _RedisProbe:
    """Command statistics and memory of the bench's Redis, net of the probe's own commands."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self.client = client
        self.own: Counter[str] = Counter()

    def totals(self, prefix: str) -> dict[str, int]:
        self.own["hgetall"] += 1
        return {k.decode(): int(v) for k, v in self.client.hgetall(f"{prefix}:totals").items()}

    def snapshot(self) -> dict[str, Any]:
        self.own["info"] += 2
        stats = self.client.info("commandstats")
        total = int(self.client.info("stats")["total_commands_processed"])
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        return {"total": total, "calls": calls, "own": Counter(self.own)}

    @staticmethod
    def delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
        """(commands, client calls, per command) between two snapshots, the probe's own removed."""
        own = after["own"] - before["own"]
        per = {
            name: n - before["calls"].get(name, 0) - own.get(name, 0)
            for name, n in after["calls"].items()
            if n - before["calls"].get(name, 0) - own.get(name, 0) > 0
        }
        per.pop("info", None)
        commands = after["total"] - before["total"] - sum(own.values())
        calls = sum(n for name, n in per.items() if name in CLIENT_COMMANDS)
        return commands, calls, per

    def used_memory(self) -> int:
        self.own["info"] += 1
        return int(self.client.info("memory")["used_memory"])

    def window_state(self, prefix: str) -> dict[str, Any]:
        """MEMORY USAGE of every window hash, its fields, and the (window, series) pairs they hold."""
        total_bytes = fields = sketch_fields = pairs = 0
        hashes = 0
        by_kind = dict.fromkeys(sorted(set(SKETCH_KINDS.values())), 0)
        series: set[str] = set()
        for key in self.client.scan_iter(f"{prefix}:win:*", count=1000):
            self.own["scan"] += 1
            usage = self.client.memory_usage(key, samples=0)
            names = self.client.hkeys(key)
            self.own["memory|usage"] += 1
            self.own["hkeys"] += 1
            hashes += 1
            total_bytes += int(usage or 0)
            fields += len(names)
            window_series = set()
            for raw in names:
                name = raw.decode()
                kind = next((k for marker, k in SKETCH_KINDS.items() if marker in name), None)
                if kind is not None:
                    sketch_fields += 1
                    by_kind[kind] += 1
                window_series.add(series_of(name))
            window_series.discard(ALL)  # the global engagement counters are not a tracked series
            pairs += len(window_series)
            series |= window_series
        per_field = total_bytes / fields if fields else 0.0
        return {
            "window_hashes": hashes,
            "bytes": total_bytes,
            "fields": fields,
            "sketch_fields": sketch_fields,
            "sketch_fields_by_kind": by_kind,
            "series": len(series),
            "window_series": pairs,
            "bytes_per_field": round(per_field, 1),
            "bytes_per_series": round(total_bytes / pairs, 1) if pairs else None,
            "non_sketch_bytes_per_series": round(per_field * (fields - sketch_fields) / pairs, 1)
            if pairs
            else None,
        }


# -- the worker and its baselines --------------------------------------------------------------------


def _start_worker(
    run: _Run, topology: str | None, log_dir: Path, name: str, delivery: str = "batch"
) -> _Process:
    env = run.worker_env(topology, _free_port(), _free_port(), delivery)
    argv = [sys.executable, "-m", "stream_monitor.cli.main", "worker", "--loglevel", "warning"]
    return _Process(argv, env, log_dir / f"{name}-{run.tag}.log")


def _start_naive(run: _Run, log_dir: Path) -> _Process:
    argv = [
        sys.executable,
        "-m",
        "stream_monitor.bench.naive_faust",
        "--bootstrap",
        run.bootstrap,
        "--redis-url",
        run.redis_url,
        "--app-id",
        f"bench-naive-{run.tag}",
        "--prefix",
        f"{run.prefix}:naive",
        "--serving",
        run.topics["serving"],
        "--engagement",
        run.topics["engagement"],
        "--web-port",
        str(_free_port()),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_MONITOR_")}
    return _Process(argv, env, log_dir / f"naive-{run.tag}.log")


def _rate(samples: list[tuple[float, int]], expected: int) -> float | None:
    """Events/s between the samples at 10 % and 90 % of ``expected`` (start-up and tail left out)."""
    low = next((s for s in samples if s[1] >= expected * 0.1), None)
    high = next((s for s in samples if s[1] >= expected * 0.9), None)
    if low is None or high is None or high[0] <= low[0]:
        return None
    return (high[1] - low[1]) / (high[0] - low[0])


def _follow(
    count: Callable[[], int], expected: int, timeout_s: float, proc: _Process, what: str
) -> tuple[float | None, float]:
    """Poll ``count()`` until it reaches ``expected``: (events/s, seconds from the first count to the last).

    The rate is taken over 10-90 % of ``expected``; a backlog too small to sample that way (done within
    a poll or two) gets ``expected`` over the time from the process start instead, start-up included.
    """
    begun = time.monotonic()
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), count()))
        if samples[-1][1] >= expected:
            break
        if not proc.alive():
            raise BenchError(f"{what} exited while counting:\n{proc.log_tail()}")
        time.sleep(0.1)
    else:
        raise BenchError(f"timed out: {what} counted {samples[-1][1]} of {expected}\n{proc.log_tail()}")
    first = next((t for t, n in samples if n > 0), samples[-1][0])
    rate = _rate(samples, expected)
    if rate is None and samples[-1][0] > begun:
        rate = samples[-1][1] / (samples[-1][0] - begun)
    return rate, samples[-1][0] - first


def _ceiling(run: _Run, fmt: str, expected: int, timeout_s: float) -> dict[str, Any]:
    """Raw confluent-kafka consume + orjson.loads of every event: the most Python can do here."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": run.bootstrap,
            "group.id": f"bench-ceiling-{run.tag}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([run.topics["serving"], run.topics["engagement"]])
    loads = orjson.loads
    events = messages = 0
    started: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while events < expected and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            if batch and started is None:
                started = time.perf_counter()
            for msg in batch:
                if msg.error():
                    continue
                messages += 1
                value = msg.value() or b""
                if fmt == "ndjson":
                    for line in value.split(b"\n"):
                        loads(line)
                        events += 1
                else:
                    loads(value)
                    events += 1
        elapsed = time.perf_counter() - started if started is not None else math.nan
    finally:
        consumer.close()
    if events < expected:
        raise BenchError(f"ceiling: read {events} of {expected} events in {timeout_s:.0f} s")
    return {
        "events": events,
        "messages": messages,
        "seconds": round(elapsed, 3),
        "events_per_s": events / elapsed,
    }


# -- latency -------------------------------------------------------------------------------------------


class _AlertWatcher(threading.Thread):
    """Reads the alerts topic from the start and stamps each alert with its arrival time."""

    def __init__(self, bootstrap: str, topic: str, tag: str) -> None:
        super().__init__(daemon=True, name="alert-watcher")
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-alerts-{tag}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.subscribe([topic])
        self.alerts: list[tuple[float, dict[str, Any]]] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            arrived = time.time()
            try:
                doc = orjson.loads(msg.value() or b"")
            except orjson.JSONDecodeError:
                continue
            with self._lock:
                self.alerts.append((arrived, doc))
        self.consumer.close()

    def snapshot(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return list(self.alerts)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _latency_incidents(config: ThroughputBenchConfig, start_ms: int, window_ms: int) -> list[Incident]:
    """``latency_rounds`` rounds of LATENCY_INCIDENTS, onsets at seeded offsets inside a window."""
    import random

    rng = random.Random(config.seed)
    out = []
    for r in range(config.latency_rounds):
        round_start = start_ms + (1 + r * ROUND_WINDOWS) * window_ms
        for i, (kind, target) in enumerate(LATENCY_INCIDENTS):
            onset = round_start + i * window_ms + rng.randrange(0, window_ms, 1000)
            out.append(Incident(kind, onset, INCIDENT_WINDOWS * window_ms, target=target))
    return out


def _names(alert: dict[str, Any], incident: Incident, topology: Topology) -> bool:
    truth = incident.ground_truth
    if alert.get("signal") != truth.signal or alert.get("status") != "firing":
        return False
    if truth.detail is not None and str(alert.get("metric", "")).split(".", 1)[-1] != truth.detail:
        return False
    key = alert.get("key") or {}
    return all(key.get(dim) == truth.key.get(dim, ALL) for dim in topology.segment_dims)


def _live_phase(
    config: ThroughputBenchConfig,
    run: _Run,
    fmt: str,
    sim: TrafficSimulator,
    start_ms: int,
    incidents: list[Incident],
    topology: Topology,
    worker: _Process,
    progress: Progress,
) -> dict[str, Any]:
    window = topology.window
    size, lateness = window.size_ms, window.allowed_lateness_ms
    end_ms = start_ms + (1 + config.latency_rounds * ROUND_WINDOWS + 1) * size
    watcher = _AlertWatcher(run.bootstrap, run.topics["alerts"], run.tag)
    watcher.start()
    producer = _Producer(run.bootstrap, run.topics)
    encoder = _Encoder(fmt, run.partitions, config.ndjson_batch)
    # Wall time at which the first event past each window's close point (end + lateness) was produced.
    close_points = {s + size + lateness: s for s in range(window.start_of(start_ms), end_ms + size, size)}
    close_produced: dict[int, float] = {}
    onset_produced: dict[int, float] = {}
    pending_points = sorted(close_points)
    pending_onsets = sorted({inc.onset_ms for inc in incidents})
    step_wall = 0.05
    step_ms = max(1, round(step_wall * 1000 * config.latency_speed))
    wall0 = time.monotonic()
    t = start_ms
    produced = 0
    while t < end_ms:
        if not worker.alive():
            raise BenchError(f"worker exited during the live phase:\n{worker.log_tail()}")
        t = min(t + step_ms, end_ms)
        newest = None
        for kind, key, event in sim.events_until(t):
            if kind == "deployment":
                continue
            for message in encoder.add(kind, key, orjson.dumps(event)):
                producer.send(message)
            produced += 1
            newest = event["ts"]
        for message in encoder.flush():
            producer.send(message)
        producer.producer.poll(0)
        now = time.time()
        while newest is not None and pending_points and newest >= pending_points[0]:
            close_produced[close_points[pending_points.pop(0)]] = now
        while newest is not None and pending_onsets and newest >= pending_onsets[0]:
            onset_produced[pending_onsets.pop(0)] = now
        delay = wall0 + (t - start_ms) / 1000 / config.latency_speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush()
    wall = time.monotonic() - wall0
    # The last incident window closes once the watermark passes it; give the worker a bounded while.
    last_alerted = max((inc.onset_ms for inc in incidents), default=start_ms)

    def all_seen() -> bool:
        alerts = watcher.snapshot()
        return all(any(_names(doc, inc, topology) for _, doc in alerts) for inc in incidents)

    try:
        _wait(all_seen, min(60.0, config.phase_timeout_s), "an alert for every incident", worker, every=0.5)
    except BenchError as exc:
        progress(f"{fmt}: not every incident alerted ({str(exc).splitlines()[0]})")
    watcher.stop()
    alerts = watcher.snapshot()
    rows = []
    for inc in incidents:
        hits = sorted(
            (
                a
                for a in alerts
                if _names(a[1], inc, topology) and a[1]["window"]["start"] >= window.start_of(inc.onset_ms)
            ),
            key=lambda a: a[0],
        )
        row: dict[str, Any] = {
            "kind": inc.kind,
            "target": dict(inc.target),
            "onset_ms": inc.onset_ms,
            "onset_in_window_s": (inc.onset_ms - window.start_of(inc.onset_ms)) / 1000,
            "detected": bool(hits),
        }
        if hits:
            arrived, doc = hits[0]
            w_start = int(doc["window"]["start"])
            closed_at = close_produced.get(w_start)
            row.update(
                {
                    "alert_window_start": w_start,
                    "windows_after_onset": (w_start - window.start_of(inc.onset_ms)) // size,
                    "close_to_alert_s": None if closed_at is None else round(arrived - closed_at, 3),
                    "onset_to_alert_wall_s": round(arrived - onset_produced[inc.onset_ms], 3)
                    if inc.onset_ms in onset_produced
                    else None,
                }
            )
            if row["close_to_alert_s"] is not None:
                row["onset_to_alert_s"] = round(
                    (w_start + size + lateness - inc.onset_ms) / 1000 + row["close_to_alert_s"], 3
                )
        rows.append(row)
    matched = {id(a[1]) for a in alerts for inc in incidents if _names(a[1], inc, topology)}
    firing = [a for _, a in alerts if a.get("status") == "firing"]
    close = [r["close_to_alert_s"] for r in rows if r.get("close_to_alert_s") is not None]
    onset = [r["onset_to_alert_s"] for r in rows if r.get("onset_to_alert_s") is not None]
    del last_alerted
    return {
        "speed": config.latency_speed,
        "events": produced,
        "wall_s": round(wall, 1),
        "events_per_s_offered": round(produced / wall, 1) if wall > 0 else None,
        "incidents": rows,
        "detected": sum(r["detected"] for r in rows),
        "other_firing_alerts": sum(1 for a in firing if id(a) not in matched),
        "close_to_alert_s": {"p50": _round(percentile(close, 0.5)), "p99": _round(percentile(close, 0.99))},
        "onset_to_alert_s": {"p50": _round(percentile(onset, 0.5)), "p99": _round(percentile(onset, 0.99))},
        "window_s": size / 1000,
        "allowed_lateness_s": lateness / 1000,
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- one format ------------------------------------------------------------------------------------------


def _run_format(
    config: ThroughputBenchConfig,
    fmt: str,
    services: tuple[str, str],
    topology: Topology,
    log_dir: Path,
    progress: Progress,
) -> dict[str, Any]:
    run = _Run(services[0], services[1], config.partitions)
    client: redis.Redis[bytes] = redis.Redis.from_url(run.redis_url)
    probe = _RedisProbe(client)
    size = topology.window.size_ms
    # About 4 events (1 serving + 3 engagement) per simulated request.
    backlog_ms = max(size, math.ceil(config.events / (config.rate_per_s * 4.0) * 1000))
    live_ms = (2 + config.latency_rounds * ROUND_WINDOWS + 1) * size if config.latency_rounds else 0
    now = int(time.time() * 1000)
    start_ms = now - backlog_ms - live_ms - HOUR_MS
    start_ms -= start_ms % size
    backlog_end = start_ms + backlog_ms
    backlog_end -= backlog_end % size  # the live part starts on a window boundary
    incidents = _latency_incidents(config, backlog_end, size) if config.latency_rounds else []
    sim = _sim(config, start_ms, incidents)
    result: dict[str, Any] = {
        "format": fmt,
        "ndjson_batch": config.ndjson_batch if fmt == "ndjson" else 1,
        "redis_prefix": run.prefix,
    }
    worker: _Process | None = None
    naive: _Process | None = None
    try:
        _create_topics(run)
        progress(f"{fmt}: producing the backlog")
        producer = _Producer(run.bootstrap, run.topics)
        encoder = _Encoder(fmt, run.partitions, config.ndjson_batch)
        sizes: dict[str, list[int]] = {"serving": [0, 0], "engagement": [0, 0]}
        started = time.perf_counter()
        events = 0
        for kind, key, event in sim.events_until(backlog_end):
            if kind == "deployment":
                continue
            value = orjson.dumps(event)
            sizes[kind][0] += 1
            sizes[kind][1] += len(value)
            events += 1
            for message in encoder.add(kind, key, value):
                producer.send(message)
        for message in encoder.flush():
            producer.send(message)
        producer.flush()
        result["backlog"] = {
            "events": events,
            "messages": producer.sent,
            "serving": sizes["serving"][0],
            "engagement": sizes["engagement"][0],
            "serving_bytes_mean": round(sizes["serving"][1] / max(1, sizes["serving"][0])),
            "engagement_bytes_mean": round(sizes["engagement"][1] / max(1, sizes["engagement"][0])),
            "event_bytes_mean": round((sizes["serving"][1] + sizes["engagement"][1]) / max(1, events)),
            "produce_s": round(time.perf_counter() - started, 1),
        }
        progress(f"{fmt}: {events} events in {producer.sent} messages")

        if config.ceiling:
            progress(f"{fmt}: ceiling (confluent-kafka consume + orjson.loads)")
            result["ceiling"] = _ceiling(run, fmt, events, config.phase_timeout_s)
            progress(f"{fmt}: ceiling {result['ceiling']['events_per_s']:.0f} events/s")

        progress(f"{fmt}: worker on the backlog")
        before = probe.snapshot()
        worker = _start_worker(run, config.topology, log_dir, f"worker-{fmt}")
        rate, elapsed = _follow(
            lambda: probe.totals(run.prefix).get("consumed", 0),
            events,
            config.phase_timeout_s,
            worker,
            "worker",
        )
        after = probe.snapshot()
        commands, calls, per = _RedisProbe.delta(before, after)
        result["worker"] = {
            "events_per_s": rate,
            "seconds": round(elapsed, 1),
            "redis_commands_per_1000_events": round(commands / events * 1000, 2),
            "redis_calls_per_1000_events": round(calls / events * 1000, 3),
            "redis_calls": {k: v for k, v in sorted(per.items()) if k in CLIENT_COMMANDS},
            "peak_rss_mb": _mb(worker.status_kb("VmHWM")),
            "state": probe.window_state(run.prefix),
        }
        progress(f"{fmt}: worker {rate or math.nan:.0f} events/s")
        if config.latency_rounds:
            progress(f"{fmt}: live traffic with {len(incidents)} incidents at {config.latency_speed:g}x")
            result["latency"] = _live_phase(
                config, run, fmt, sim, backlog_end, incidents, topology, worker, progress
            )
            result["worker"]["peak_rss_mb_after_live"] = _mb(worker.status_kb("VmHWM"))
        worker.stop()
        worker = None

        if config.stream_reference:
            progress(f"{fmt}: worker with stream delivery (Faust's per-message path) on the backlog")
            worker = _start_worker(run, config.topology, log_dir, f"worker-stream-{fmt}", "stream")
            rate, elapsed = _follow(
                lambda: probe.totals(f"{run.prefix}:stream").get("consumed", 0),
                events,
                config.phase_timeout_s,
                worker,
                "stream-delivery worker",
            )
            result["stream_delivery"] = {
                "events_per_s": rate,
                "seconds": round(elapsed, 1),
                "peak_rss_mb": _mb(worker.status_kb("VmHWM")),
            }
            progress(f"{fmt}: stream delivery {rate or math.nan:.0f} events/s")
            worker.stop()
            worker = None

        if config.naive:
            total = min(config.naive_events, probe.totals(run.prefix).get("consumed", 0))
            progress(f"{fmt}: naive Faust agent on the first {total} of the same events")
            before = probe.snapshot()
            naive = _start_naive(run, log_dir)
            count_key = f"{run.prefix}:naive:naive:count"

            def naive_count() -> int:
                probe.own["get"] += 1
                value = client.get(count_key)
                return int(value) if value else 0

            rate, elapsed = _follow(naive_count, total, config.phase_timeout_s, naive, "naive agent")
            after = probe.snapshot()
            commands, calls, per = _RedisProbe.delta(before, after)
            result["naive"] = {
                "events": total,
                "events_per_s": rate,
                "seconds": round(elapsed, 1),
                "redis_commands_per_1000_events": round(commands / total * 1000, 2),
                "peak_rss_mb": _mb(naive.status_kb("VmHWM")),
            }
            progress(f"{fmt}: naive {rate or math.nan:.0f} events/s")
            naive.stop()
            naive = None
        w = result["worker"]["events_per_s"]
        result["ratios"] = {
            "worker_over_ceiling": _ratio(w, result.get("ceiling", {}).get("events_per_s")),
            "worker_over_naive": _ratio(w, result.get("naive", {}).get("events_per_s")),
            "worker_over_stream_delivery": _ratio(w, result.get("stream_delivery", {}).get("events_per_s")),
        }
        return result
    finally:
        for proc in (worker, naive):
            if proc is not None:
                proc.stop()
        _cleanup(run, client)
        client.close()


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


# -- memory growth -----------------------------------------------------------------------------------


def _series_segment(i: int) -> dict[str, str]:
    """Segment of series ``i``: distinct for every ``i``, never more than 64 values per dimension."""
    return {"platform": f"p{i % 64}", "region": f"r{(i // 64) % 64}", "tenure": f"t{i // 4096}"}


def _override_topology(base: str | None, max_series: int, directory: Path) -> str:
    source = Path(base) if base else DEFAULT_TOPOLOGY
    doc = yaml.safe_load(source.read_text())
    doc["max_series"] = max_series
    path = directory / f"max-series-{max_series}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _run_series(
    config: ThroughputBenchConfig,
    count: int,
    services: tuple[str, str],
    topology: Topology,
    log_dir: Path,
    progress: Progress,
) -> dict[str, Any]:
    run = _Run(services[0], services[1], config.partitions)
    client: redis.Redis[bytes] = redis.Redis.from_url(run.redis_url)
    probe = _RedisProbe(client)
    size = topology.window.size_ms
    override = None
    topo_path = config.topology
    if count > topology.max_series:
        override = {"max_series": count}
        topo_path = _override_topology(config.topology, count, log_dir)
    start = int(time.time() * 1000) - 2 * HOUR_MS
    start -= start % size
    pool = [e for kind, _k, e in _sim(config, start).events(120) if kind == "serving"][:2000]
    total = count * config.events_per_series
    worker: _Process | None = None
    try:
        _create_topics(run)
        memory_before = probe.used_memory()
        worker = _start_worker(run, topo_path, log_dir, f"series-{count}")
        _wait(
            lambda: client.hlen(f"{run.prefix}:epoch") >= 3 * run.partitions,
            config.phase_timeout_s,
            "the worker to claim its partitions",
            worker,
        )
        probe.own["hlen"] += 1  # the last poll; earlier ones are small next to the commit traffic
        time.sleep(1.0)
        rss_idle = _mb(worker.status_kb("VmRSS"))
        producer = _Producer(run.bootstrap, run.topics)
        encoder = _Encoder("ndjson", run.partitions, config.ndjson_batch)
        for j in range(total):
            event = dict(pool[j % len(pool)])
            event["segment"] = _series_segment(j % count)
            event["request_id"] = f"{j:012x}"
            event["ts"] = start + (j * (size - 10_000)) // total
            key = event["request_id"].encode()
            for message in encoder.add("serving", key, orjson.dumps(event)):
                producer.send(message)
        for message in encoder.flush():
            producer.send(message)
        producer.flush()
        progress(f"series {count}: {total} serving events produced")
        _follow(
            lambda: probe.totals(run.prefix).get("consumed", 0),
            total,
            config.phase_timeout_s,
            worker,
            "worker",
        )
        # Idle partitions let the watermark move on: wait for the window to be closed and evaluated.
        _wait(
            lambda: int(client.get(f"{run.prefix}:closed_before") or 0) > start,
            config.phase_timeout_s,
            "the window to close",
            worker,
            every=0.5,
        )
        time.sleep(1.0)
        state = probe.window_state(run.prefix)
        row = {
            "series": count,
            "events": total,
            "redis_prefix": run.prefix,
            "topology_override": override,
            "tracked_series": state["series"],
            "worker_rss_idle_mb": rss_idle,
            "worker_peak_rss_mb": _mb(worker.status_kb("VmHWM")),
            "redis_used_memory_delta_mb": round((probe.used_memory() - memory_before) / 2**20, 2),
            "state": state,
        }
        progress(
            f"series {count}: peak RSS {row['worker_peak_rss_mb']} MB, {state['bytes_per_series']} B/series"
        )
        return row
    finally:
        if worker is not None:
            worker.stop()
        _cleanup(run, client)
        client.close()


# -- the run ----------------------------------------------------------------------------------------------


def _environment() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load],
    }


def run_throughput_bench(
    config: ThroughputBenchConfig,
    bootstrap: str,
    redis_url: str,
    progress: Progress = lambda _m: None,
) -> dict[str, Any]:
    """Run every part of the bench against the given broker and Redis; returns the report (JSON-ready)."""
    # The worker is always given the topology file explicitly, so it judges what this process expects.
    config = replace(config, topology=config.topology or str(DEFAULT_TOPOLOGY))
    topology = load_topology(config.topology)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "config": asdict(config),
        "topology": topology.name,
        "environment": {"start": _environment()},
        "formats": {},
        "memory": [],
    }
    with tempfile.TemporaryDirectory(prefix="sm-bench-") as tmp:
        log_dir = Path(config.log_dir) if config.log_dir else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        for fmt in config.formats:
            report["formats"][fmt] = _run_format(
                config, fmt, (bootstrap, redis_url), topology, log_dir, progress
            )
        for count in config.series_counts:
            try:
                row = _run_series(config, count, (bootstrap, redis_url), topology, log_dir, progress)
            except (BenchError, redis.RedisError) as exc:
                # A count this machine or Redis cannot take is a result too: say what failed.
                progress(f"series {count}: failed: {str(exc).splitlines()[0]}")
                row = {"series": count, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            report["memory"].append(row)

    report["environment"]["end"] = _environment()
    return report


# -- the table -------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables (one per part)."""
    lines = []
    env = report["environment"]["start"]
    lines.append(
        f"throughput bench, topology {report['topology']}, {env['date']}, {env['cpus']} CPUs, "
        f"load average at start {env['load_average']}"
    )
    lines.append("")
    header = (
        f"{'format':<8} {'events':>9} {'B/event':>7} {'ceiling ev/s':>12} {'worker ev/s':>11} "
        f"{'stream ev/s':>11} {'naive ev/s':>10} {'w/ceil':>6} {'w/stream':>8} {'w/naive':>7} "
        f"{'redis cmd/1k':>12} {'calls/1k':>8} "
        f"{'peak RSS MB':>11} {'B/series':>8}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for fmt, r in report["formats"].items():
        w, ratios = r["worker"], r["ratios"]
        lines.append(
            f"{fmt:<8} {_fmt(r['backlog']['events']):>9} {_fmt(r['backlog']['event_bytes_mean']):>7} "
            f"{_fmt(r.get('ceiling', {}).get('events_per_s')):>12} {_fmt(w['events_per_s']):>11} "
            f"{_fmt(r.get('stream_delivery', {}).get('events_per_s')):>11} "
            f"{_fmt(r.get('naive', {}).get('events_per_s')):>10} "
            f"{_fmt(ratios['worker_over_ceiling'], 2):>6} "
            f"{_fmt(ratios.get('worker_over_stream_delivery'), 2):>8} "
            f"{_fmt(ratios['worker_over_naive'], 2):>7} "
            f"{_fmt(w['redis_commands_per_1000_events'], 1):>12} "
            f"{_fmt(w['redis_calls_per_1000_events'], 2):>8} "
            f"{_fmt(w.get('peak_rss_mb_after_live', w['peak_rss_mb']), 1):>11} "
            f"{_fmt(w['state']['bytes_per_series'], 0):>8}"
        )
    latency = [(fmt, r["latency"]) for fmt, r in report["formats"].items() if "latency" in r]
    if latency:
        lines.append("")
        lines.append(
            f"{'format':<8} {'incidents':>9} {'detected':>8} {'close->alert p50/p99 s':>23} "
            f"{'onset->alert p50/p99 s (real time)':>35} {'other alerts':>12}"
        )
        for fmt, lat in latency:
            c, o = lat["close_to_alert_s"], lat["onset_to_alert_s"]
            lines.append(
                f"{fmt:<8} {len(lat['incidents']):>9} {lat['detected']:>8} "
                f"{_fmt(c['p50'], 2) + ' / ' + _fmt(c['p99'], 2):>23} "
                f"{_fmt(o['p50'], 1) + ' / ' + _fmt(o['p99'], 1):>35} {lat['other_firing_alerts']:>12}"
            )
    if report["memory"]:
        lines.append("")
        lines.append(
            f"{'series':>8} {'tracked':>8} {'events':>9} {'worker RSS idle/peak MB':>24} "
            f"{'Redis +MB':>9} {'B/series':>8} {'non-sketch B/series':>19} {'override':>18}"
        )
        for m in report["memory"]:
            if "error" in m:
                lines.append(f"{_fmt(m['series']):>8} failed: {m['error']}")
                continue
            s = m["state"]
            lines.append(
                f"{_fmt(m['series']):>8} {_fmt(m['tracked_series']):>8} {_fmt(m['events']):>9} "
                f"{_fmt(m['worker_rss_idle_mb'], 1) + ' / ' + _fmt(m['worker_peak_rss_mb'], 1):>24} "
                f"{_fmt(m['redis_used_memory_delta_mb'], 1):>9} {_fmt(s['bytes_per_series'], 0):>8} "
                f"{_fmt(s['non_sketch_bytes_per_series'], 0):>19} {m['topology_override'] or '-'!s:>18}"
            )
    return "\n".join(lines)
