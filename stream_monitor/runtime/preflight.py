"""Start-up checks: do the servers the settings name answer, are the ports free; problems come back as data.

A command that needs Kafka, Redis or a port runs these before it starts anything else, so that a first
run against nothing fails within seconds with one line per problem (what was tried, at which address,
and the setting that changes it) instead of a client library's reconnect logs and a traceback.

Each check is a function of the setting's text and a *probe* (the I/O, passed in: tests give fakes).
A probe returns when the server answered and raises :class:`Unreachable` (nothing, or not the right
server, answered: exit 75, EX_TEMPFAIL, "try again later") or :class:`Refused` (it answered but rejected
the credentials or TLS settings: exit 2, a configuration error, like a malformed setting). The real
probes are at the end of the module.

>>> def refused(addresses, timeout_s):
...     raise Unreachable("connection refused")
>>> problem = check_kafka("127.0.0.1:1", refused)
>>> problem.exit_code, problem.message
(75, 'Kafka at 127.0.0.1:1 does not answer (connection refused); start it, or point STREAM_MONITOR_KAFKA_BOOTSTRAP at a running broker')
>>> check_kafka("kafka://k1:9092", refused).message
"STREAM_MONITOR_KAFKA_BOOTSTRAP='kafka://k1:9092': 'kafka://k1:9092' is not host:port (no scheme: k1:9092)"

May import the standard library, ``stream_monitor.config`` and, in the real probes only, confluent-kafka,
redis and the runtime's client helpers.
"""  # noqa: E501 - doctest output is one line

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

    from stream_monitor.config import Settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_UNAVAILABLE",
    "Problem",
    "Refused",
    "Unreachable",
    "bind_probe",
    "check_kafka",
    "check_port",
    "check_redis",
    "env_name",
    "exit_code",
    "kafka_addresses",
    "kafka_problems",
    "port_problem",
    "redis_problems",
    "settings_problems",
    "worker_problems",
]

EXIT_CONFIG = 2  # a setting is malformed, a port is taken, credentials are refused: change the settings
EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: a server does not answer; the same command may work later
# Bounds of the real probes: a first run against nothing fails within a few seconds.
CONNECT_TIMEOUT_S = 3.0
KAFKA_METADATA_TIMEOUT_S = 5.0
_ENV_PREFIX = "STREAM_MONITOR_"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a command cannot start: a line for people and the exit code it calls for."""

    message: str
    exit_code: int

    def __str__(self) -> str:
        return self.message


class Unreachable(Exception):
    """A probe's answer: nothing answered at the address, or not the server expected."""


class Refused(Exception):
    """A probe's answer: the server answered but refused the credentials or the TLS settings."""


KafkaProbe = Callable[[Sequence[tuple[str, int]], float], None]
RedisProbe = Callable[[str, float], None]
BindProbe = Callable[[str, int], None]


def env_name(field: str) -> str:
    """The environment variable of a setting (nested fields joined by ``__``).

    >>> env_name("kafka_bootstrap"), env_name("topics.alerts")
    ('STREAM_MONITOR_KAFKA_BOOTSTRAP', 'STREAM_MONITOR_TOPICS__ALERTS')
    """
    return _ENV_PREFIX + field.replace(".", "__").upper()


def exit_code(problems: Iterable[Problem]) -> int:
    """0 without problems; a configuration problem wins over a server that does not answer (fix it first).

    >>> exit_code([]), exit_code([Problem("a", 75)]), exit_code([Problem("a", 75), Problem("b", 2)])
    (0, 75, 2)
    """
    codes = {p.exit_code for p in problems}
    if not codes:
        return 0
    return EXIT_CONFIG if EXIT_CONFIG in codes else max(codes)


def settings_problems(exc: ValidationError) -> list[Problem]:
    """One problem per invalid setting of a pydantic ``ValidationError`` from ``Settings()``."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        value = error.get("input")
        shown = "" if isinstance(value, dict) or "password" in field or "url" in field else f"={value!r}"
        problems.append(Problem(f"{env_name(field)}{shown}: {error['msg']}", EXIT_CONFIG))
    return problems


def kafka_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """The ``host:port`` pairs of a bootstrap list; ValueError names the entry that is not one.

    >>> kafka_addresses("k1:9092, [::1]:9093")
    [('k1', 9092), ('::1', 9093)]
    >>> kafka_addresses("k1")
    Traceback (most recent call last):
    ...
    ValueError: 'k1' is not host:port (no port)
    """
    addresses = []
    for entry in (part.strip() for part in bootstrap.split(",")):
        if not entry:
            raise ValueError("empty entry (host:port,host:port...)")
        if "://" in entry:
            raise ValueError(f"{entry!r} is not host:port (no scheme: {entry.partition('://')[2]})")
        if entry.startswith("["):  # [IPv6]:port
            host, _, tail = entry[1:].partition("]")
            port_text = tail.removeprefix(":") if tail.startswith(":") else ""
        elif ":" in entry:
            host, _, port_text = entry.rpartition(":")
        else:
            host, port_text = entry, ""
        if not host or not port_text:
            raise ValueError(f"{entry!r} is not host:port (no {'port' if not port_text else 'host'})")
        if not port_text.isdigit() or not 0 < int(port_text) < 65_536:
            raise ValueError(f"{entry!r} is not host:port (port {port_text!r} is not in 1-65535)")
        addresses.append((host, int(port_text)))
    return addresses


def check_kafka(
    bootstrap: str, probe: KafkaProbe, timeout_s: float = CONNECT_TIMEOUT_S, setting: str | None = None
) -> Problem | None:
    """The Kafka problem of ``bootstrap`` (the ``kafka_bootstrap`` setting, or the flag ``setting``
    names), or None if it answers."""
    setting = setting or env_name("kafka_bootstrap")
    try:
        addresses = kafka_addresses(bootstrap)
    except ValueError as exc:
        return Problem(f"{setting}={bootstrap!r}: {exc}", EXIT_CONFIG)
    try:
        probe(addresses, timeout_s)
    except Unreachable as exc:
        return Problem(
            f"Kafka at {bootstrap} does not answer ({exc}); start it, or point {setting} at a running broker",
            EXIT_UNAVAILABLE,
        )
    except Refused as exc:
        return Problem(
            f"Kafka at {bootstrap} refused the connection ({exc}); check "
            f"{env_name('kafka_security_protocol')} and the {_ENV_PREFIX}KAFKA_SASL_*/SSL_* settings",
            EXIT_CONFIG,
        )
    return None


def check_redis(
    url: str, probe: RedisProbe, redact: Callable[[str], str], timeout_s: float = CONNECT_TIMEOUT_S
) -> Problem | None:
    """The Redis problem of ``url`` (the ``redis_url`` setting), or None if it answers.

    ``redact`` masks the URL's password; the probe raises ValueError for a URL it cannot read.

    >>> def down(url, timeout_s):
    ...     raise Unreachable("connection refused")
    >>> print(check_redis("redis://:pw@127.0.0.1:1/0", down, lambda u: u.replace("pw", "***")))
    Redis at redis://:***@127.0.0.1:1/0 does not answer (connection refused); start it, or point STREAM_MONITOR_REDIS_URL at a running server
    """  # noqa: E501 - doctest output is one line
    setting = env_name("redis_url")
    shown = redact(url)
    try:
        probe(url, timeout_s)
    except ValueError as exc:
        return Problem(f"{setting}: {exc}", EXIT_CONFIG)
    except Unreachable as exc:
        return Problem(
            f"Redis at {shown} does not answer ({exc}); start it, or point {setting} at a running server",
            EXIT_UNAVAILABLE,
        )
    except Refused as exc:
        return Problem(
            f"Redis at {shown} refused the connection ({exc}); check the user and password in {setting}"
            f" and {env_name('redis_ssl_ca_certs')}",
            EXIT_CONFIG,
        )
    return None


def port_problem(
    what: str, addr: str, port: int, change: str, exc: OSError, address_setting: str | None = None
) -> Problem:
    """The problem of a port that could not be bound (``change``: the flag or setting that moves it;
    ``address_setting``: the one that sets ``addr``, named when the address itself is the problem).

    >>> err = OSError(errno.EADDRINUSE, "Address already in use")
    >>> print(port_problem("metrics port", "127.0.0.1", 9464, "--metrics-port", err))
    the metrics port 127.0.0.1:9464 is in use (another stream-monitor?); choose a free one with --metrics-port
    """
    if exc.errno == errno.EADDRINUSE:
        return Problem(
            f"the {what} {addr}:{port} is in use (another stream-monitor?); choose a free one with {change}",
            EXIT_CONFIG,
        )
    reason = exc.strerror or str(exc)
    fix = address_setting or change
    return Problem(f"cannot listen on {addr}:{port} for the {what} ({reason}); change {fix}", EXIT_CONFIG)


def check_port(
    what: str, addr: str, port: int, change: str, probe: BindProbe, address_setting: str | None = None
) -> Problem | None:
    """The problem of listening on ``addr:port`` (port 0: none, the endpoint is off or ephemeral)."""
    if port == 0:
        return None
    if not 0 < port < 65_536:
        return Problem(f"the {what} {port} is not in 1-65535; change {change}", EXIT_CONFIG)
    try:
        probe(addr, port)
    except OSError as exc:
        return port_problem(what, addr, port, change, exc, address_setting)
    return None


# --- the real probes and the checks each command runs ----------------------------------------------------


def bind_probe(addr: str, port: int) -> None:
    """Bind ``addr:port`` as a server would (SO_REUSEADDR, so a port in TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))


def tcp_probe(addresses: Sequence[tuple[str, int]], timeout_s: float) -> None:
    """Connect to the first address that accepts; Unreachable with the last reason when none does."""
    reason = "no address"
    for host, port in addresses:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            return
        except socket.gaierror:
            reason = f"cannot resolve host {host!r}"
        except ConnectionRefusedError:
            reason = "connection refused"
        except TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except OSError as exc:
            reason = exc.strerror or str(exc)
    raise Unreachable(reason)


def _kafka_probe(conf: dict[str, Any]) -> KafkaProbe:
    """A probe that asks the cluster for its metadata once a TCP connection to a bootstrap server works."""

    def probe(addresses: Sequence[tuple[str, int]], timeout_s: float) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient

        # A closed port fails here at once; librdkafka would retry until its timeout.
        tcp_probe(addresses, timeout_s)
        errors: list[Any] = []
        # The client's own log lines are queued for a poll() that never comes: the problem is ours to
        # report, in one line.
        admin = AdminClient(conf | {"error_cb": errors.append})
        try:
            admin.list_topics(timeout=KAFKA_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            denied = (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED)
            for error in [*errors, exc.args[0]]:
                if error.code() in denied:
                    raise Refused(error.str()) from exc
            protocol = conf.get("security.protocol", "PLAINTEXT")
            raise Unreachable(
                f"connected, but no cluster metadata within {KAFKA_METADATA_TIMEOUT_S:g} s: "
                f"is it a Kafka listener for {protocol}?"
            ) from exc

    return probe


def _redis_probe(ssl_ca_certs: str | None, sentinel_password: str | None) -> RedisProbe:
    """A probe that PINGs the server the URL names, connected as the state store connects."""

    def probe(url: str, timeout_s: float) -> None:
        from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

        from stream_monitor.state.base import StoreUnavailable
        from stream_monitor.state.redis_connect import TRANSIENT, connect

        try:
            options = {"ssl_ca_certs": ssl_ca_certs, "sentinel_password": sentinel_password}
            connect(url, socket_timeout_s=timeout_s, **options).ping()
        except (AuthenticationError, AuthorizationError) as exc:
            raise Refused(str(exc)) from exc
        except ResponseError as exc:  # NOAUTH, WRONGPASS from servers that answer those as errors
            raise Refused(str(exc)) from exc
        except StoreUnavailable as exc:
            raise Unreachable(str(exc)) from exc
        except TRANSIENT as exc:
            raise Unreachable(_redis_reason(exc)) from exc

    return probe


def _redis_reason(exc: BaseException) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "timeout" in text.lower() or "timed out" in text.lower():
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    return text


def kafka_problems(settings: Settings, setting: str | None = None) -> list[Problem]:
    """The Kafka check of ``settings`` with the real probe (a few seconds at most); ``setting`` names
    the flag that gave the bootstrap servers, when one did."""
    from stream_monitor.runtime.kafka import client_config

    conf = client_config(settings)
    problem = check_kafka(settings.kafka_bootstrap, _kafka_probe(conf), setting=setting)
    return [problem] if problem else []


def redis_problems(settings: Settings) -> list[Problem]:
    """The Redis check of ``settings`` with the real probe (a few seconds at most)."""
    from stream_monitor.state.redis_connect import redact_url

    ca = str(settings.redis_ssl_ca_certs) if settings.redis_ssl_ca_certs else None
    sentinel = settings.redis_sentinel_password
    probe = _redis_probe(ca, sentinel.get_secret_value() if sentinel else None)
    problem = check_redis(settings.redis_url.get_secret_value(), probe, redact_url)
    return [problem] if problem else []


def worker_problems(settings: Settings) -> list[Problem]:
    """Everything ``stream-monitor worker`` needs before Faust starts: its ports, Kafka and Redis."""
    s = settings
    ports = [
        ("metrics port", s.metrics_addr, s.metrics_port, env_name("metrics_port"), env_name("metrics_addr")),
        ("web port", s.web_host, s.web_port, env_name("web_port"), env_name("web_host")),
    ]
    problems = [
        problem
        for what, addr, port, change, address_setting in ports
        if (problem := check_port(what, addr, port, change, bind_probe, address_setting))
    ]
    return problems + kafka_problems(settings) + redis_problems(settings)
