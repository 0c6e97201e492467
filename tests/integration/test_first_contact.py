"""First contact: a command started against a server that is not there, or a port that is taken, stops
within seconds with one line per problem that names the setting, and the exit code of
docs/troubleshooting.md (75: a server does not answer; 2: a setting to change).

Each case runs the real command in a subprocess, started from an empty directory (no config/default.toml)
with its own ports, app id and key prefix. The servers that are "not there" are free ports nobody listens
on; the Redis case needs a real Kafka (the one from scripts/services.sh), so that Kafka's check passes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

# The acceptance bound of a first run against nothing (each check is bounded by a few seconds).
BOUND_S = 15
MAX_LINES = 5


def _nobody() -> str:
    return f"127.0.0.1:{free_port()}"


def _run(args: list[str], cwd: Path, **settings: str) -> tuple[int, list[str]]:
    """Run ``stream-monitor ARGS`` with these settings; its exit code and its stderr lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_MONITOR_")}
    tag = uuid.uuid4().hex[:8]
    env |= {
        "STREAM_MONITOR_APP_ID": f"first-contact-{tag}",
        "STREAM_MONITOR_REDIS_PREFIX": f"first-contact-{tag}",
        "STREAM_MONITOR_METRICS_PORT": str(free_port()),
        "STREAM_MONITOR_WEB_PORT": str(free_port()),
    }
    env |= {f"STREAM_MONITOR_{name.upper()}": value for name, value in settings.items()}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "stream_monitor.cli.main", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"stream-monitor {' '.join(args)} still running after {BOUND_S} s: {exc.stderr!r}")
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) <= MAX_LINES, done.stderr
    return done.returncode, lines


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_worker_without_kafka_names_the_bootstrap_setting(tmp_path: Path) -> None:
    kafka = _nobody()
    redis_url = os.environ.get("STREAM_MONITOR_REDIS_URL", f"redis://{_nobody()}/0")
    code, lines = _run(["worker"], tmp_path, kafka_bootstrap=kafka, redis_url=redis_url)
    assert code == 75, lines
    assert any(
        line.startswith(f"worker: Kafka at {kafka} does not answer (connection refused)")
        and "STREAM_MONITOR_KAFKA_BOOTSTRAP" in line
        for line in lines
    ), lines


def test_worker_without_redis_names_the_url_setting_with_the_password_masked(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    redis_at = _nobody()
    code, lines = _run(
        ["worker"],
        tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=f"redis://monitor:s3cret@{redis_at}/0",
    )
    assert code == 75, lines
    assert lines == [
        f"worker: Redis at redis://monitor:***@{redis_at}/0 does not answer (connection refused); "
        "start it, or point STREAM_MONITOR_REDIS_URL at a running server"
    ]


def test_worker_with_a_taken_metrics_port_names_the_port_setting(tmp_path: Path, taken_port: int) -> None:
    kafka = os.environ.get("STREAM_MONITOR_KAFKA_BOOTSTRAP", _nobody())
    redis_url = os.environ.get("STREAM_MONITOR_REDIS_URL", f"redis://{_nobody()}/0")
    code, lines = _run(
        ["worker"], tmp_path, kafka_bootstrap=kafka, redis_url=redis_url, metrics_port=str(taken_port)
    )
    assert code == 2, lines  # a setting to change, whatever else is down
    assert (
        f"worker: the metrics port 127.0.0.1:{taken_port} is in use (another stream-monitor?); "
        "choose a free one with STREAM_MONITOR_METRICS_PORT"
    ) in lines


def test_worker_with_a_taken_web_port_names_the_web_port_setting(tmp_path: Path, taken_port: int) -> None:
    code, lines = _run(
        ["worker"],
        tmp_path,
        kafka_bootstrap=_nobody(),
        redis_url=f"redis://{_nobody()}/0",
        web_port=str(taken_port),
    )
    assert code == 2, lines
    assert any(f"web port 127.0.0.1:{taken_port} is in use" in line for line in lines), lines
    assert any("STREAM_MONITOR_WEB_PORT" in line for line in lines), lines


def test_worker_with_a_malformed_setting_says_which(tmp_path: Path) -> None:
    code, lines = _run(["worker"], tmp_path, kafka_bootstrap="kafka://broker:9092")
    assert code == 2, lines
    assert lines[0].startswith("worker: STREAM_MONITOR_KAFKA_BOOTSTRAP='kafka://broker:9092': "), lines


@pytest.mark.parametrize(
    ("args", "server"),
    [
        (["incident", "--since", "2h"], "kafka"),
        (["simulate", "--duration", "10"], "kafka"),
        (["lineage", "home-ranker"], "redis"),
        (["canary", "home-ranker"], "redis"),
        (["trace", "r1"], "redis"),
        (["diagnose"], "redis"),
    ],
)
def test_commands_that_need_a_server_say_so_in_one_line(tmp_path: Path, args: list[str], server: str) -> None:
    code, lines = _run(args, tmp_path, kafka_bootstrap=_nobody(), redis_url=f"redis://{_nobody()}/0")
    assert code == 75, lines
    setting = {"kafka": "STREAM_MONITOR_KAFKA_BOOTSTRAP", "redis": "STREAM_MONITOR_REDIS_URL"}[server]
    assert len(lines) == 1 and lines[0].startswith(f"{args[0]}: ") and setting in lines[0], lines
