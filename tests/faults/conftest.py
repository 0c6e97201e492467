"""Fault-injection fixtures: private Redis servers and Kafka brokers, a paced producer, exactness checks.

The `faults` tier runs the real worker (``stream-monitor worker`` subprocesses, see
tests/integration/conftest.py) against real servers on 127.0.0.1 and breaks things: SIGKILLs the worker,
rebalances the consumer group, stops Redis or the broker. Scenarios that stop a server get a PRIVATE one
(started here on free loopback ports and stopped by PID in teardown); the others use the shared broker
and Redis from ``STREAM_MONITOR_KAFKA_BOOTSTRAP`` / ``STREAM_MONITOR_REDIS_URL``.

Every wait here is bounded in time, every loop in count.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import REPO, Deployment, WorkerProcess, free_port, sim_config

WINDOW_MS = 60_000
KAFKA_LIBS = (
    Path(os.environ.get("STREAM_MONITOR_CACHE", str(Path.home() / ".cache" / "stream-monitor")))
    / "kafka-4.1.1"
    / "libs"
)

# Fast failure detection for the tier (the broker's group.min.session.timeout.ms is 6 s).
FAULT_ENV = {
    "STREAM_MONITOR_BROKER_SESSION_TIMEOUT_S": "6",
    "STREAM_MONITOR_IDLE_PARTITION_TIMEOUT_S": "5",
}


# ------------------------------------------------------------------------------------------ timing


@pytest.fixture(autouse=True)
def _wall_time(request: pytest.FixtureRequest) -> Iterator[None]:
    began = time.monotonic()
    yield
    print(f"\nWALL {request.node.name}: {time.monotonic() - began:.1f} s")


def aligned_past(hours: float) -> int:
    start = int(time.time() * 1000) - int(hours * 3_600_000)
    return start - start % WINDOW_MS


def simulated(
    start_ms: int, duration_s: float, rate: float, seed: int, incidents: list[str] | None = None
) -> list[tuple[str, bytes | None, dict[str, Any]]]:
    from stream_monitor.sim import TrafficSimulator, parse_incident

    sim = TrafficSimulator(
        seed=seed,
        start_ms=start_ms,
        rate_per_s=rate,
        incidents=[parse_incident(spec, start_ms) for spec in incidents or []],
        config=sim_config(),
    )
    return list(sim.events(duration_s))


# ------------------------------------------------------------------------------------------ processes


def _stop_pid(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait_s: float = 30.0) -> int | None:
    """Signal one process we started (by its PID), wait, escalate to SIGKILL; returns its exit status."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=15)


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PrivateRedis:
    """A redis-server of our own on a free loopback port; ``stop``/``start`` keep the port (and the AOF)."""

    def __init__(
        self, workdir: Path, appendonly: bool, extra_args: tuple[str, ...] = (), config: Path | None = None
    ) -> None:
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra_args = extra_args  # e.g. --replicaof, --cluster-enabled, --sentinel
        self.config = config  # a config file (first argument; Sentinel needs one it can rewrite)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.starts = 0

    def start(self, timeout_s: float = 20.0) -> PrivateRedis:
        self.starts += 1
        log = open(self.dir / f"redis-{self.starts}.log", "wb")  # noqa: SIM115 - owned by the process
        args = ["redis-server", *([str(self.config)] if self.config else [])]
        args += ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--dir", str(self.dir), "--daemonize", "no", "--protected-mode", "yes"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir}")
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
                if client.ping():
                    client.close()
                    return self
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout_s} s")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = _stop_pid(self.proc, signal.SIGTERM, 20)
        self.proc = None
        return rc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class PrivateKafka:
    """A single-node KRaft broker of our own (the recipe of scripts/services.sh, on free loopback ports)."""

    def __init__(self, workdir: Path) -> None:
        if not (KAFKA_LIBS / "kafka_2.13-4.1.1.jar").is_file():
            pytest.skip(f"no cached Kafka jars in {KAFKA_LIBS} (run scripts/services.sh up once)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.data = self.dir / "data"
        self.props = self.dir / "server.properties"
        self.log4j = self.dir / "log4j2.properties"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.java = "java"
        if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
            self.java = str(Path(os.environ["JAVA_HOME"], "bin", "java"))
        self.props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "inter.broker.listener.name=PLAINTEXT",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data}",
                    "num.partitions=4",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        self.log4j.write_text(
            "\n".join(
                [
                    "status = warn",
                    "name = stream-monitor-faults-kafka",
                    "appender.broker.type = File",
                    "appender.broker.name = BROKER",
                    f"appender.broker.fileName = {self.dir / 'broker.log'}",
                    "appender.broker.append = true",
                    "appender.broker.layout.type = PatternLayout",
                    "appender.broker.layout.pattern = [%d] %p %m (%c)%n",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.broker.ref = BROKER",
                    "",
                ]
            )
        )
        cluster_id = uuid.uuid4().bytes
        import base64

        cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
        subprocess.run(
            [
                self.java,
                f"-Dlog4j2.configurationFile={self.log4j}",
                "-cp",
                f"{KAFKA_LIBS}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cid,
                "-c",
                str(self.props),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self, timeout_s: float = 90.0) -> PrivateKafka:
        self.starts += 1
        out = open(self.dir / f"kafka-{self.starts}.out", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                self.java,
                "-Xmx384m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.log4j}",
                "-cp",
                f"{KAFKA_LIBS}/*",
                "kafka.Kafka",
                str(self.props),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka exited with {self.proc.returncode}; see {self.dir}")
            try:
                md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
                if md.brokers:
                    return self
            except Exception:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"kafka on {self.bootstrap} not ready within {timeout_s} s; see {self.dir}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = _stop_pid(self.proc, signal.SIGTERM, 45)
        self.proc = None
        return rc


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """Factory: ``private_redis(appendonly=True)`` -> a started PrivateRedis, stopped in teardown."""
    made: list[PrivateRedis] = []

    def make(appendonly: bool = True) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(made)}", appendonly)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[Callable[[], PrivateKafka]]:
    made: list[PrivateKafka] = []

    def make() -> PrivateKafka:
        broker = PrivateKafka(tmp_path / f"kafka-{len(made)}")
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.stop()


# ------------------------------------------------------------------------------------------ deployments


@pytest.fixture
def make_deployment() -> Iterator[Callable[..., Deployment]]:
    """Factory for a Deployment (own topics, group and Redis prefix) on any broker/Redis; cleaned up after."""
    made: list[Deployment] = []

    def make(bootstrap: str, redis_url: str, partitions: int = 4, **extra_env: str) -> Deployment:
        from stream_monitor.config import Settings
        from stream_monitor.runtime.kafka import ensure_topics

        dep = Deployment(bootstrap, redis_url, partitions=partitions, extra_env={**FAULT_ENV, **extra_env})
        ensure_topics(Settings(kafka_bootstrap=bootstrap), list(dep.topics.values()), partitions)
        made.append(dep)
        return dep

    yield make
    for dep in made:
        try:
            from stream_monitor.state.base import StoreUnavailable
            from stream_monitor.state.redis_connect import connect

            client = connect(dep.redis_url, socket_timeout_s=3)  # any URL form (docs/redis-ha.md)
            keys = list(client.scan_iter(f"{dep.prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        except (redis.RedisError, StoreUnavailable):
            pass  # a private Redis that is gone already
        try:
            from confluent_kafka.admin import AdminClient

            # Faust's own assignor topic too: the shared broker outlives the tier.
            names = [*dep.topics.values(), f"{dep.prefix}-__assignor-__leader"]
            admin = AdminClient({"bootstrap.servers": dep.bootstrap, "log_level": 0})
            for future in admin.delete_topics(names, operation_timeout=10).values():
                with contextlib.suppress(Exception):  # not there (no worker ran), or no broker
                    future.result(timeout=15)
        except Exception:
            pass


@pytest.fixture
def fault_workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[WorkerProcess]]:
    """Started workers go here; all are stopped by PID, their logs copied to test-artifacts/."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        try:
            worker.stop()
        finally:
            log = getattr(worker, "_log", None)
            if log is not None and not log.closed:
                log.close()
    artefacts = REPO / "test-artifacts"
    artefacts.mkdir(exist_ok=True)
    for worker in started:
        if worker.log_path.exists():
            (artefacts / f"{request.node.name}-{worker.log_path.name}").write_bytes(
                worker.log_path.read_bytes()
            )


def start_worker(dep: Deployment, workers: list[WorkerProcess], log_dir: Path, name: str) -> WorkerProcess:
    worker = WorkerProcess(dep, log_dir, name)
    workers.append(worker)
    return worker.start()


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL one worker by PID (WorkerProcess.kill, tolerant of a worker that already exited)."""
    assert worker.proc is not None
    if worker.proc.poll() is None:
        worker.kill()
    elif not worker._log.closed:
        worker._log.close()


# ------------------------------------------------------------------------------------------ producing


@dataclass
class Produced:
    """Where each produced message landed: index -> (topic, partition, offset); failures counted."""

    where: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def callback(self, index: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(str(err))
            else:
                self.where[index] = (msg.topic(), msg.partition(), msg.offset())

        return on_delivery


def make_producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            # Retries across a broker restart must not duplicate: the test counts what was produced.
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            "message.timeout.ms": 120_000,
            "log_level": 0,
        }
    )


Message = tuple[str, bytes | None, bytes]


def produce_all(
    bootstrap: str, messages: list[Message], partition_of: dict[int, int] | None = None
) -> Produced:
    """Produce synchronously; every message delivered (asserted), with its coordinates."""
    producer = make_producer(bootstrap)
    out = Produced()
    for i, (topic, key, value) in enumerate(messages):
        extra = {} if not partition_of or i not in partition_of else {"partition": partition_of[i]}
        for _ in range(10_000):
            try:
                producer.produce(topic, value=value, key=key, on_delivery=out.callback(i), **extra)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(120) == 0
    assert out.failed == 0, out.errors
    return out


class PacedProducer(threading.Thread):
    """Produces ``messages`` in order at about ``rate`` messages/s in a background thread (bounded).

    ``mark(name)`` records how many messages were handed to the producer at that moment, so a test can
    say which messages came before / after a fault.
    """

    def __init__(self, bootstrap: str, messages: list[Message], rate: float, max_s: float = 240.0) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.bootstrap = bootstrap
        self.messages = messages
        self.rate = rate
        self.max_s = max_s
        self.sent = 0
        self.produced = Produced()
        self.flushed_ok: bool | None = None
        self._halt = threading.Event()
        self.marks: dict[str, int] = {}
        self.error: BaseException | None = None

    def mark(self, name: str) -> int:
        self.marks[name] = self.sent
        return self.sent

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            producer = make_producer(self.bootstrap)
            began = time.monotonic()
            for i, (topic, key, value) in enumerate(self.messages):
                if self._halt.is_set() or time.monotonic() - began > self.max_s:
                    break
                if i % 100 == 0:
                    ahead = i / self.rate - (time.monotonic() - began)
                    if ahead > 0:
                        self._halt.wait(min(ahead, 1.0))
                for _ in range(100_000):
                    try:
                        producer.produce(topic, value=value, key=key, on_delivery=self.produced.callback(i))
                        break
                    except BufferError:
                        producer.poll(0.05)
                self.sent = i + 1
                producer.poll(0)
            self.flushed_ok = producer.flush(150) == 0
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self, timeout_s: float = 200.0) -> Produced:
        self.join(timeout_s)
        assert not self.is_alive(), "producer thread did not finish"
        assert self.error is None, repr(self.error)
        assert self.flushed_ok, f"producer flush left messages undelivered: {self.produced.errors}"
        assert self.produced.failed == 0, self.produced.errors
        return self.produced


def events_to_messages(
    events: list[tuple[str, bytes | None, dict[str, Any]]], dep: Deployment
) -> list[Message]:
    topic = {
        "serving": dep.topics["serving"],
        "engagement": dep.topics["engagement"],
        "deployment": dep.topics["deployments"],
    }
    return [(topic[kind], key, orjson.dumps(event)) for kind, key, event in events]


# ------------------------------------------------------------------------------------------ checking


def totals(client: redis.Redis, prefix: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}:totals").items()}


def counted(client: redis.Redis, prefix: str) -> int:
    try:
        return int(client.hget(f"{prefix}:totals", "consumed") or 0)
    except redis.RedisError:
        return -1


def stored_windows(client: redis.Redis, prefix: str) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for key in client.scan_iter(f"{prefix}:win:*", count=1000):
        start = int(key.decode().rsplit(":", 1)[1])
        out[start] = {k.decode(): float(v) for k, v in client.hgetall(key).items()}
    return out


def expected_windows(events: list[tuple[str, bytes | None, dict[str, Any]]]) -> dict[int, dict[str, float]]:
    """Window sums computed directly from the events, with the engine's own aggregation (one accumulator,
    no Kafka, no Redis): the exact field-by-field content each window hash must have."""
    from stream_monitor.core.aggregates import WindowAccumulator
    from stream_monitor.core.events import EngagementEvent, ServingEvent, parse_event
    from stream_monitor.topology import load_topology

    acc = WindowAccumulator(load_topology(REPO / "topologies" / "default.yaml"))
    for i, (_kind, _key, doc) in enumerate(events):
        event = parse_event(orjson.dumps(doc))
        if isinstance(event, ServingEvent):
            acc.add_serving("all", i, event)
        elif isinstance(event, EngagementEvent):
            acc.add_engagement("all", i, event)
    parts = acc.take()
    return {start: dict(sums) for start, sums in parts["all"].windows.items()} if parts else {}


def simple_counts(
    events: list[tuple[str, bytes | None, dict[str, Any]]],
) -> tuple[Counter[int], Counter[int]]:
    """Serving and engagement events per window, straight from the event timestamps."""
    serving: Counter[int] = Counter()
    engagement: Counter[int] = Counter()
    for kind, _, event in events:
        start = event["ts"] - event["ts"] % WINDOW_MS
        if kind == "serving":
            serving[start] += 1
        elif kind == "engagement":
            engagement[start] += 1
    return serving, engagement


def window_diff(
    expected: dict[int, dict[str, float]], stored: dict[int, dict[str, float]], limit: int = 8
) -> list[str]:
    """Human-readable differences between expected and stored window sums (empty when exact)."""
    problems: list[str] = []
    for start in sorted(set(expected) | set(stored)):
        want = {k: v for k, v in expected.get(start, {}).items() if v}
        got = {k: v for k, v in stored.get(start, {}).items() if v}
        if want == got:
            continue
        n_want = sum(v for k, v in want.items() if k.endswith("#n"))
        n_got = sum(v for k, v in got.items() if k.endswith("#n"))
        fields = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        problems.append(
            f"window {start}: serving n expected {n_want:.0f} stored {n_got:.0f}; "
            f"{len(fields)} fields differ, e.g. {fields[:2]} "
            f"({[want.get(f) for f in fields[:2]]} vs {[got.get(f) for f in fields[:2]]})"
        )
        if len(problems) >= limit:
            problems.append("...")
            break
    return problems


def assert_exact(
    client: redis.Redis, prefix: str, events: list[tuple[str, bytes | None, dict[str, Any]]]
) -> None:
    """Every window's sums equal those computed from ``events`` (field by field and by simple counts)."""
    stored = stored_windows(client, prefix)
    serving, engagement = simple_counts(events)
    stored_serving = {s: int(sum(v for k, v in f.items() if k.endswith("#n"))) for s, f in stored.items()}
    stored_engagement = {s: int(sum(v for k, v in f.items() if "#eng." in k)) for s, f in stored.items()}
    assert {s: n for s, n in stored_serving.items() if n} == dict(serving)
    assert {s: n for s, n in stored_engagement.items() if n} == dict(engagement)
    problems = window_diff(expected_windows(events), stored)
    assert not problems, "\n".join(problems)


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_value(worker: WorkerProcess, name: str, **labels: str) -> float | None:
    try:
        text = worker.metrics()
    except OSError:
        return None
    for sample, sample_labels, value in metric_samples(text):
        if sample == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


def committed_offsets(
    bootstrap: str, group: str, topics: list[str], partitions: int
) -> dict[tuple[str, int], int]:
    """The consumer group's committed offsets (-1001 / missing: none), read without joining the group."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False, "log_level": 0}
    )
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, timeout=15)}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topics: list[str], partitions: int) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}", "log_level": 0}
    )
    try:
        out = {}
        for t in topics:
            for p in range(partitions):
                _low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                out[(t, p)] = high
        return out
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------ Redis HA
# Sentinel and Cluster deployments of private redis-servers (docs/redis-ha.md): every process on a free
# loopback port in the test's tmp dir, stopped by PID. Used here and by tests/contract/conftest.py.


def _wait_until(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except redis.RedisError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def _info(port: int, section: str) -> dict[str, Any]:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return dict(client.info(section))
    finally:
        client.close()


class PrivateRedisCluster:
    """A Redis Cluster of ``masters`` primaries (no replicas) of our own; the slots spread evenly."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        for i in range(masters):
            node_dir = workdir / f"cluster-{i}"
            bus = free_port()
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"))
            extra += ("--cluster-port", str(bus), "--cluster-node-timeout", "2000")
            self.nodes.append(PrivateRedis(node_dir, appendonly=False, extra_args=extra))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2]) + "/"

    def start(self, timeout_s: float = 60.0) -> PrivateRedisCluster:
        for node in self.nodes:
            node.start()
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
        done = subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout!r} {done.stderr!r}")
        for node in self.nodes:
            _wait_until(lambda n=node: _cluster_ok(n.port), timeout_s, "cluster_state:ok")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_ok(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text
    finally:
        client.close()


class PrivateSentinel:
    """A primary, one replica and one Sentinel (quorum 1) that watches them as service ``service``.

    ``down_after_ms`` is the Sentinel's ``down-after-milliseconds``: how long the primary must be silent
    before a failover starts.
    """

    def __init__(self, workdir: Path, service: str = "sm", down_after_ms: int = 1000) -> None:
        self.service = service
        self.down_after_ms = down_after_ms
        self.primary = PrivateRedis(workdir / "primary", appendonly=False)
        self.replica = PrivateRedis(
            workdir / "replica",
            appendonly=False,
            extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)),
        )
        conf = workdir / "sentinel" / "sentinel.conf"
        self.sentinel = PrivateRedis(
            workdir / "sentinel", appendonly=False, extra_args=("--sentinel",), config=conf
        )
        conf.write_text(
            "\n".join(
                [
                    f"sentinel monitor {service} 127.0.0.1 {self.primary.port} 1",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} 10000",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            )
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}/0"

    def primary_port(self) -> int:
        """The primary's port as the Sentinel names it now."""
        client = redis.Redis(host="127.0.0.1", port=self.sentinel.port, socket_timeout=2)
        try:
            _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            return int(port)
        finally:
            client.close()

    def _sentinel_knows_the_replica(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.sentinel.port, socket_timeout=2)
        try:
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
        finally:
            client.close()
        return any(str(self.replica.port) in str(r) and "s_down" not in str(r) for r in replicas)

    def start(self, timeout_s: float = 60.0) -> PrivateSentinel:
        self.primary.start()
        self.replica.start()
        _wait_until(
            lambda: _info(self.replica.port, "replication").get("master_link_status") == "up",
            timeout_s,
            "the replica in sync",
        )
        # Started after the replica is attached: its first INFO of the primary already lists it.
        self.sentinel.start()
        _wait_until(self._sentinel_knows_the_replica, timeout_s, "the Sentinel to see the replica")
        return self

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signal.SIGCONT)  # a test may have stopped it
            server.stop()


@pytest.fixture
def private_sentinel(tmp_path: Path) -> Iterator[Callable[..., PrivateSentinel]]:
    """Factory: ``private_sentinel(down_after_ms=1000)`` -> a started PrivateSentinel, stopped in teardown."""
    made: list[PrivateSentinel] = []

    def make(down_after_ms: int = 1000) -> PrivateSentinel:
        group = PrivateSentinel(tmp_path / f"sentinel-{len(made)}", down_after_ms=down_after_ms)
        made.append(group)
        return group.start()

    yield make
    for group in made:
        group.stop()
