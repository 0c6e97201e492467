"""Diagnosis benchmark on the real path: Kafka, a ``stream-monitor worker`` subprocess and Redis.

For every incident kind and seed, the in-process benchmark's run (:mod:`stream_monitor.bench.diagnose`:
the same traffic, onset, target slice and magnitude; the simulator reads each start as 12:00 so a seed
gives the same events whenever it runs) is produced to fresh topics on the broker; a worker (its own
consumer group and Redis prefix, loopback only) consumes it and closes every window of the run, writing
each window's diagnosis log entry with the close; then the live diagnosis reads the log, the
checkpoint and the release history back from Redis (:func:`stream_monitor.diagnosing.live_state`) and
the rank of the first suspect that names the injected cause is noted, as the in-process benchmark
judges it. The same traffic also goes through the in-process benchmark in this process while the worker
runs, so each run reports both ranks (and a miss can be compared with the replay of the same events).

Every wait is bounded (``timeout_s`` per run); the worker is stopped by its PID and the run's topics and
keys are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_monitor.bench.diagnose import (
    DiagnoseBenchConfig,
    environment,
    rank_of_truth,
    run_one,
    simulator,
    summary,
)
from stream_monitor.bench.throughput import BenchError, _admin, _free_port, _Process, _wait
from stream_monitor.diagnosing import live_state
from stream_monitor.topology import load_topology

__all__ = ["LiveDiagnoseBenchConfig", "format_live_report", "run_live_diagnose_bench", "run_live_one"]

_TOPICS = ("serving", "engagement", "deployments", "datasets", "alerts", "health", "deadletter")
_KIND_TOPIC = {
    "serving": "serving",
    "engagement": "engagement",
    "deployment": "deployments",
    "dataset": "datasets",
}


@dataclass(frozen=True, slots=True)
class LiveDiagnoseBenchConfig:
    """The in-process benchmark's runs, and where and how to run them live.

    >>> c = LiveDiagnoseBenchConfig(DiagnoseBenchConfig(seeds=2, kinds=("error_spike",)), "127.0.0.1:1", "redis://x")
    >>> c.bench.diurnal_start_hour, c.delivery
    (12.0, 'batch')
    """

    bench: DiagnoseBenchConfig
    bootstrap: str
    redis_url: str
    partitions: int = 4
    # "batch" hands each fetch to the engine at once (the throughput bench's worker); "stream" is
    # Faust's per-message path (the worker's default, about 4x slower). The engine and the close are
    # the same code either way.
    delivery: str = "batch"
    timeout_s: float = 600.0
    compare: bool = True  # also run the same traffic in-process (the in-process rank of each run)
    log_dir: str | None = None
    keep: bool = False  # leave the run's topics and Redis keys behind (to inspect them)
    first_seed: int = 0

    def __post_init__(self) -> None:
        if self.bench.diurnal_start_hour is None:
            object.__setattr__(
                self, "bench", _replace_hour(self.bench, 12.0)
            )  # reproducible traffic whatever the hour the bench runs at
        if self.delivery not in ("batch", "stream"):
            raise ValueError(f"delivery must be 'batch' or 'stream', not {self.delivery!r}")
        if self.timeout_s <= 0 or self.partitions < 1:
            raise ValueError("timeout_s must be > 0 and partitions >= 1")


def _replace_hour(config: DiagnoseBenchConfig, hour: float) -> DiagnoseBenchConfig:
    from dataclasses import replace

    return replace(config, diurnal_start_hour=hour)


@dataclass(slots=True)
class _LiveRun:
    bootstrap: str
    redis_url: str
    partitions: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def topics(self) -> dict[str, str]:
        return {name: f"bench-diag-{self.tag}.{name}" for name in _TOPICS}

    @property
    def prefix(self) -> str:
        return f"bench-diag-{self.tag}"

    def env(self, topology: str | None, delivery: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_MONITOR_")}
        env.update(
            {
                "STREAM_MONITOR_KAFKA_BOOTSTRAP": self.bootstrap,
                "STREAM_MONITOR_REDIS_URL": self.redis_url,
                "STREAM_MONITOR_REDIS_PREFIX": self.prefix,
                "STREAM_MONITOR_APP_ID": self.prefix,
                "STREAM_MONITOR_DELIVERY": delivery,
                "STREAM_MONITOR_METRICS_ADDR": "127.0.0.1",
                "STREAM_MONITOR_METRICS_PORT": str(_free_port()),
                "STREAM_MONITOR_WEB_HOST": "127.0.0.1",
                "STREAM_MONITOR_WEB_PORT": str(_free_port()),
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
        return env


def _produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes]], timeout_s: float) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "acks": "all",
            "partitioner": "murmur2_random",  # Kafka's own keyed partitioning, as the services produce
            "compression.type": "lz4",
        }
    )
    deadline = time.monotonic() + timeout_s
    for topic, key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    raise BenchError(f"producing timed out after {timeout_s:.0f} s") from None
                producer.poll(0.2)
        producer.poll(0)
    left = producer.flush(max(1.0, deadline - time.monotonic()))
    if left:
        raise BenchError(f"{left} messages were not delivered to the broker")


def run_live_one(
    config: LiveDiagnoseBenchConfig, kind: str, seed: int, log_dir: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """One incident on the real path: its truth, the live rank, the in-process rank, sizes and times."""
    import redis

    from stream_monitor.config import Settings
    from stream_monitor.runtime.kafka import ensure_topics
    from stream_monitor.state.redis_store import RedisStore

    began = time.monotonic()
    bench = config.bench
    topology = load_topology(bench.topology)
    sim, incident = simulator(bench, kind, seed)
    end_ms = sim.start_ms + bench.run_s * 1000
    run = _LiveRun(config.bootstrap, config.redis_url, config.partitions)
    topics = run.topics
    messages = [
        (topics[_KIND_TOPIC[k]], key, orjson.dumps(event)) for k, key, event in sim.events_until(end_ms)
    ]
    ensure_topics(Settings(kafka_bootstrap=config.bootstrap), list(topics.values()), config.partitions)
    client: redis.Redis[bytes] = redis.Redis.from_url(config.redis_url, socket_timeout=10)
    store = RedisStore(client, prefix=run.prefix)
    argv = [sys.executable, "-m", "stream_monitor.cli.main", "worker", "--loglevel", "warning"]
    worker = _Process(argv, run.env(bench.topology, config.delivery), log_dir / f"worker-{kind}-{seed}.log")
    out: dict[str, Any] = {"kind": kind, "seed": seed, "messages": len(messages), "rank": None}
    out["prefix"] = run.prefix
    truth = incident.ground_truth
    out["truth"] = {"signal": truth.signal, "key": truth.key, "detail": truth.detail}
    try:
        _produce(config.bootstrap, messages, config.timeout_s)
        produced = time.monotonic()
        out["produce_s"] = round(produced - began, 1)
        if config.compare:
            # In this process while the worker consumes: the same events through the in-process engine.
            replayed = run_one(bench, topology, kind, seed)
            out["inprocess_rank"] = replayed["rank"]
            out["inprocess_top"] = [t["name"] for t in replayed["top"][:3]]
        deadline = began + config.timeout_s

        def consumed() -> bool:
            return store.totals().get("consumed", 0) >= len(messages)

        def closed() -> bool:
            mark = store.closed_before()
            return mark is not None and mark >= end_ms

        _wait(consumed, max(1.0, deadline - time.monotonic()), "the worker to count every message", worker)
        out["consume_s"] = round(time.monotonic() - produced, 1)
        _wait(closed, max(1.0, deadline - time.monotonic()), "every window of the run to close", worker, 0.5)
        worker.stop()
        live = live_state(store, topology.window.size_ms)
        result = live.diagnose(topology)
        out["rank"] = rank_of_truth(result.suspects, truth, topology.segment_dims)
        out["top"] = [{"name": s.name, "score": round(s.score, 3)} for s in result.suspects[:5]]
        out["windows"] = live.windows
        out["timeline"] = len(result.timeline)
        out["drilldown"] = len(result.drilldown)
        entries = store.window_log()
        out["log_entry_bytes"] = round(sum(len(e) for e in entries) / max(1, len(entries)))
        usage = client.memory_usage(f"{run.prefix}:winlog", samples=0)  # exact, not sampled
        out["log_redis_bytes_per_window"] = round(int(usage or 0) / max(1, len(entries)))
    except BenchError as exc:
        out["error"] = str(exc).splitlines()[0]
        say(f"  {kind} seed={seed}: {out['error']}")
    finally:
        worker.stop()
        if not config.keep:
            keys = list(client.scan_iter(f"{run.prefix}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            with contextlib.suppress(Exception):  # a topic the broker will not delete is only left behind
                _admin(config.bootstrap).delete_topics(list(topics.values()))
        client.close()
    out["seconds"] = round(time.monotonic() - began, 1)
    return out


def run_live_diagnose_bench(
    config: LiveDiagnoseBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every kind x seed on the real path, one run at a time; hit rates (rank 1, top 3) per kind."""
    say = progress or (lambda _m: None)
    bench = config.bench
    began = time.monotonic()
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if config.log_dir:
            log_dir = Path(config.log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-diagnose-live-")))
        for seed in range(config.first_seed, config.first_seed + bench.seeds):
            for kind in bench.kinds:
                runs.append(run_live_one(config, kind, seed, log_dir, say))
                r = runs[-1]
                say(
                    f"  {kind} seed={seed}: live rank {r['rank']}, in-process rank "
                    f"{r.get('inprocess_rank', '-')} ({r['seconds']:.0f} s)"
                )
    per_kind = [_both(kind, [r for r in runs if r["kind"] == kind]) for kind in bench.kinds]
    sizes = [r["log_entry_bytes"] for r in runs if "log_entry_bytes" in r]
    redis_sizes = [r["log_redis_bytes_per_window"] for r in runs if "log_redis_bytes_per_window" in r]
    return {
        "suite": "diagnose-live",
        "config": {
            "seeds": list(range(config.first_seed, config.first_seed + bench.seeds)),
            "kinds": list(bench.kinds),
            "rate_per_s": bench.rate_per_s,
            "run_s": bench.run_s,
            "onset_s": bench.onset_s,
            "incident_s": bench.incident_s,
            "magnitude": bench.magnitude,
            "diurnal_start_hour": bench.diurnal_start_hour,
            "partitions": config.partitions,
            "delivery": config.delivery,
        },
        "environment": environment(),
        "kinds": per_kind,
        "overall": _both("all", runs),
        "log_entry_bytes": round(sum(sizes) / len(sizes)) if sizes else None,
        "log_redis_bytes_per_window": round(sum(redis_sizes) / len(redis_sizes)) if redis_sizes else None,
        "runs": runs,
        "runtime_s": round(time.monotonic() - began, 1),
    }


def _both(kind: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = summary(kind, runs)
    row["errors"] = [r["seed"] for r in runs if "error" in r]
    compared = [{"seed": r["seed"], "rank": r["inprocess_rank"]} for r in runs if "inprocess_rank" in r]
    if compared:
        inproc = summary(kind, compared)
        row["inprocess_rank1"], row["inprocess_top3"] = inproc["rank1"], inproc["top3"]
        row["inprocess_ranks"] = inproc["ranks"]
    return row


def format_live_report(report: Mapping[str, Any]) -> str:
    """Hit rates of the live path beside the in-process path on the same traffic."""
    lines = [
        f"{'kind':<26}{'runs':>5}{'live@1':>8}{'live@3':>8}{'inproc@1':>10}  live ranks | in-process ranks"
    ]
    for row in [*report["kinds"], report["overall"]]:
        inproc = row.get("inprocess_rank1")
        lines.append(
            f"{row['kind']:<26}{row['runs']:>5}{row['rank1']:>8.0%}{row['top3']:>8.0%}"
            f"{'-' if inproc is None else f'{inproc:.0%}':>10}  "
            + " ".join(str(r) for r in row["ranks"][:20])
            + " | "
            + " ".join(str(r) for r in row.get("inprocess_ranks", [])[:20])
        )
    lines.append(
        f"window log: {report['log_entry_bytes']} bytes per entry, "
        f"{report['log_redis_bytes_per_window']} bytes of Redis memory per window"
    )
    lines.append(f"runtime {report['runtime_s']:.0f} s")
    return "\n".join(lines)
