"""Start-up checks (runtime/preflight.py): problems as data, one line each, with the right exit code.

The checks run against fake probes here; the real probes meet a real socket (a port nobody listens on, a
port taken by a listening socket) and librdkafka itself (its logs for a broker that is not there).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Sequence

import pytest
from confluent_kafka import Producer
from pydantic import SecretStr, ValidationError

from stream_monitor.config import Settings
from stream_monitor.runtime.kafka import LIBRDKAFKA_LOGGER, client_config
from stream_monitor.runtime.preflight import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    Problem,
    Refused,
    Unreachable,
    bind_probe,
    check_kafka,
    check_port,
    check_redis,
    exit_code,
    kafka_addresses,
    settings_problems,
    tcp_probe,
)

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening() -> Iterator[int]:
    """A port somebody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _never(*_args: object) -> None:
    raise AssertionError("a malformed setting must not reach the probe")


def _fails(exc: Exception):  # type: ignore[no-untyped-def]
    def probe(*_args: object) -> None:
        raise exc

    return probe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k1:9092", [("k1", 9092)]),
        ("k1:9092, k2:9093", [("k1", 9092), ("k2", 9093)]),
        ("[::1]:9092", [("::1", 9092)]),
    ],
)
def test_kafka_addresses_reads_host_port_lists(text: str, expected: list[tuple[str, int]]) -> None:
    assert kafka_addresses(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("k1", "no port"),
        (":9092", "no host"),
        ("k1:http", "port 'http' is not in 1-65535"),
        ("k1:0", "port '0' is not in 1-65535"),
        ("k1:9092,", "empty entry"),
        ("kafka://k1:9092", "no scheme: k1:9092"),
    ],
)
def test_kafka_addresses_names_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        kafka_addresses(text)


def test_check_kafka_names_the_setting_and_picks_the_exit_code() -> None:
    bad = check_kafka("k1", _never)
    assert bad == Problem("STREAM_MONITOR_KAFKA_BOOTSTRAP='k1': 'k1' is not host:port (no port)", EXIT_CONFIG)
    down = check_kafka("k1:9092", _fails(Unreachable("connection refused")))
    assert down is not None and down.exit_code == EXIT_UNAVAILABLE
    assert "Kafka at k1:9092 does not answer (connection refused)" in down.message
    assert "STREAM_MONITOR_KAFKA_BOOTSTRAP" in down.message
    flag = check_kafka("k1:9092", _fails(Unreachable("connection refused")), setting="--bootstrap")
    assert flag is not None and "point --bootstrap at" in flag.message
    denied = check_kafka("k1:9092", _fails(Refused("SASL authentication failed")))
    assert denied is not None and denied.exit_code == EXIT_CONFIG
    assert "STREAM_MONITOR_KAFKA_SECURITY_PROTOCOL" in denied.message
    seen: list[Sequence[tuple[str, int]]] = []
    assert check_kafka("k1:9092,k2:9093", lambda addresses, _t: seen.append(addresses)) is None
    assert seen == [[("k1", 9092), ("k2", 9093)]]


def test_check_redis_masks_the_password_and_picks_the_exit_code() -> None:
    url = "redis://monitor:hunter2@r1:6379/0"

    def redact(u: str) -> str:
        return u.replace("hunter2", "***")

    down = check_redis(url, _fails(Unreachable("connection refused")), redact)
    assert down is not None and down.exit_code == EXIT_UNAVAILABLE
    assert down.message.startswith("Redis at redis://monitor:***@r1:6379/0 does not answer")
    assert "STREAM_MONITOR_REDIS_URL" in down.message and "hunter2" not in down.message
    denied = check_redis(url, _fails(Refused("WRONGPASS invalid username-password pair")), redact)
    assert denied is not None and denied.exit_code == EXIT_CONFIG and "hunter2" not in denied.message
    malformed = check_redis("http://r1", _fails(ValueError("unknown scheme 'http'")), redact)
    assert malformed == Problem("STREAM_MONITOR_REDIS_URL: unknown scheme 'http'", EXIT_CONFIG)
    assert check_redis(url, lambda _u, _t: None, redact) is None


def test_check_port_with_a_real_socket(listening: int) -> None:
    taken = check_port("metrics port", "127.0.0.1", listening, "--metrics-port", bind_probe)
    assert taken is not None and taken.exit_code == EXIT_CONFIG
    assert taken.message == (
        f"the metrics port 127.0.0.1:{listening} is in use (another stream-monitor?); "
        "choose a free one with --metrics-port"
    )
    assert check_port("metrics port", "127.0.0.1", _free_port(), "--metrics-port", bind_probe) is None
    assert check_port("metrics port", "127.0.0.1", 0, "--metrics-port", bind_probe) is None  # off
    out_of_range = check_port("web port", "127.0.0.1", 70_000, "STREAM_MONITOR_WEB_PORT", bind_probe)
    assert out_of_range is not None and out_of_range.exit_code == EXIT_CONFIG
    # An address this host does not have: a configuration problem that names the setting to change.
    foreign = check_port(
        "web port", "192.0.2.1", 6066, "STREAM_MONITOR_WEB_PORT", bind_probe, "STREAM_MONITOR_WEB_HOST"
    )
    assert foreign is not None and foreign.exit_code == EXIT_CONFIG
    assert (
        "cannot listen on 192.0.2.1:6066" in foreign.message and "STREAM_MONITOR_WEB_HOST" in foreign.message
    )


def test_tcp_probe_tells_a_closed_port_from_an_unknown_host(listening: int) -> None:
    with pytest.raises(Unreachable, match="connection refused"):
        tcp_probe([("127.0.0.1", _free_port())], 2.0)
    with pytest.raises(Unreachable, match=r"cannot resolve host 'no-such-host\.invalid'"):
        tcp_probe([("no-such-host.invalid", 9092)], 2.0)
    tcp_probe([("127.0.0.1", _free_port()), ("127.0.0.1", listening)], 2.0)  # the second one answers


@pytest.mark.parametrize(
    ("codes", "expected"),
    [((), 0), ((75,), 75), ((2,), 2), ((75, 2), 2), ((75, 75), 75)],
)
def test_exit_code_puts_configuration_first(codes: tuple[int, ...], expected: int) -> None:
    assert exit_code([Problem(str(c), c) for c in codes]) == expected


def test_settings_problems_name_the_variable_and_hide_urls() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(metrics_port="nine", redis_url=SecretStr("x"), delivery="fast")  # type: ignore[arg-type]
    lines = [p.message for p in settings_problems(info.value)]
    assert any(line.startswith("STREAM_MONITOR_METRICS_PORT='nine': ") for line in lines), lines
    assert any(line.startswith("STREAM_MONITOR_DELIVERY='fast': ") for line in lines), lines
    assert all(p.exit_code == EXIT_CONFIG for p in settings_problems(info.value))


def test_librdkafka_does_not_flood_for_a_broker_that_is_not_there(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{_free_port()}", _env_file=None)  # type: ignore[call-arg]
    producer = Producer(
        client_config(settings) | {"reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50}
    )
    with caplog.at_level(logging.DEBUG, logger=LIBRDKAFKA_LOGGER):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            producer.poll(0.1)
    refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    # Without the filter librdkafka reports every attempt (4 in two seconds here, 20 a second in a worker).
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert "Connection refused" not in capfd.readouterr().err  # through logging, not straight to stderr
