"""The one place a Redis URL becomes a client: one server, a Sentinel-watched primary, or a Redis Cluster.

Three URL forms (``docs/redis-ha.md``), credentials percent-encoded and kept secret (never logged;
:func:`redact_url` is what an error message shows):

``redis://[user:pass@]host:port/<db>`` (``rediss://`` for TLS)
    one server, as ``redis.Redis.from_url`` reads it (query options included).
``redis+sentinel://[user:pass@]host1:port1,host2:port2/<service>/<db>`` (``rediss+sentinel://``)
    the current primary of ``<service>`` as the sentinels name it (``Sentinel.master_for``): after a
    failover the next connection goes to the promoted replica. The user and password are the data
    nodes'; the sentinels' own password is a separate argument (a setting).
``redis+cluster://[user:pass@]host1:port1[,host2:port2]/`` (``rediss+cluster://``)
    a ``RedisCluster`` seeded by those nodes; db 0 only (a cluster has no other).

In a cluster every key one Lua script touches must live in one hash slot, so a store there puts its
prefix in a hash tag (:func:`key_prefix`). May import redis, pydantic and ``state.base`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import unquote

import redis
from pydantic import SecretStr
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel

from stream_monitor.state.base import StoreUnavailable

__all__ = [
    "TRANSIENT",
    "RedisClient",
    "RedisTarget",
    "connect",
    "is_cluster",
    "key_prefix",
    "parse_redis_url",
    "redact_url",
    "register_script",
]

RedisClient: TypeAlias = "redis.Redis[bytes] | RedisCluster[bytes]"

# What a store turns into StoreUnavailable (the worker retries those): the server is gone or not yet
# reachable, a failover is under way (a demoted primary answers READONLY; a cluster whose slot lost its
# primary answers CLUSTERDOWN / TRYAGAIN until a replica takes over), or no node answers at all.
TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)

Mode = Literal["single", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis URL points: the mode, the nodes to ask, the service and db, the credentials.

    >>> t = parse_redis_url("redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2")
    >>> t.mode, t.nodes, t.service, t.db, t.username, t.tls
    ('sentinel', (('10.0.0.1', 26379), ('10.0.0.2', 26379)), 'mymaster', 2, 'app', False)
    >>> t.password
    SecretStr('**********')
    """

    mode: Mode
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False


def redact_url(url: str) -> str:
    """The URL with its password masked (for messages and logs).

    >>> redact_url("redis+sentinel://app:s3cret@h1:26379,h2:26379/mymaster/0")
    'redis+sentinel://app:***@h1:26379,h2:26379/mymaster/0'
    >>> redact_url("redis://127.0.0.1:6379/0")
    'redis://127.0.0.1:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _password = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}{slash}{path}"


def _nodes(url: str, hosts: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):  # [IPv6]:port
            host, _, tail = item[1:].partition("]")
            port_text = tail.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"Redis URL {redact_url(url)}: empty host in {hosts!r}")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"Redis URL {redact_url(url)}: port {port_text!r} is not a number") from None
        if not 0 < port < 65_536:
            raise ValueError(f"Redis URL {redact_url(url)}: port {port} is out of range")
        out.append((host, port))
    return tuple(out)


def _db(url: str, text: str) -> int:
    try:
        db = int(text) if text else 0
    except ValueError:
        raise ValueError(f"Redis URL {redact_url(url)}: db {text!r} is not a number") from None
    if db < 0:
        raise ValueError(f"Redis URL {redact_url(url)}: db must be >= 0, not {db}")
    return db


def parse_redis_url(url: str) -> RedisTarget:
    """Read a Redis URL (one of the three forms of the module docstring); ValueError names what is wrong.

    >>> parse_redis_url("rediss+cluster://10.0.0.1:7000,10.0.0.2:7000/")
    RedisTarget(mode='cluster', nodes=(('10.0.0.1', 7000), ('10.0.0.2', 7000)), service=None, db=0, username=None, password=None, tls=True)
    >>> parse_redis_url("redis+cluster://10.0.0.1:7000/3")
    Traceback (most recent call last):
    ...
    ValueError: Redis URL redis+cluster://10.0.0.1:7000/3: a cluster has db 0 only, not 3
    >>> parse_redis_url("redis+sentinel://:pw@h:26379/")
    Traceback (most recent call last):
    ...
    ValueError: Redis URL redis+sentinel://:***@h:26379/: name the primary's service: redis+sentinel://host:port[,host:port]/<service>[/<db>]
    """  # noqa: E501 - doctest output is one line
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"Redis URL {redact_url(url)}: unknown scheme {scheme!r} (one of {known})")
    mode, tls = _SCHEMES[scheme.lower()]
    if mode == "single":
        return RedisTarget("single", tls=tls)
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    creds, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = SecretStr(unquote(secret)) if colon and secret else None
    if not hosts:
        raise ValueError(f"Redis URL {redact_url(url)}: no host:port to connect to")
    parts = [p for p in path.split("/") if p]
    if mode == "sentinel":
        if not parts:
            raise ValueError(
                f"Redis URL {redact_url(url)}: name the primary's service: "
                f"{scheme}://host:port[,host:port]/<service>[/<db>]"
            )
        if len(parts) > 2:
            raise ValueError(f"Redis URL {redact_url(url)}: expected /<service>[/<db>], got /{path}")
        db = _db(url, parts[1] if len(parts) == 2 else "")
        nodes = _nodes(url, hosts, 26_379)
        return RedisTarget("sentinel", nodes, unquote(parts[0]), db, username, password, tls)
    db = _db(url, parts[0] if parts else "")
    if len(parts) > 1 or db != 0:
        raise ValueError(f"Redis URL {redact_url(url)}: a cluster has db 0 only, not {path}")
    return RedisTarget("cluster", _nodes(url, hosts, 6_379), None, 0, username, password, tls)


def connect(
    url: str,
    *,
    ssl_ca_certs: str | None = None,
    sentinel_password: str | None = None,
    socket_timeout_s: float = 5.0,
) -> RedisClient:
    """A client for ``url``: ``redis.Redis`` (one server, or the sentinels' current primary) or
    ``RedisCluster``. Nothing is contacted yet except, for a cluster, its seed nodes (the slot map)."""
    target = parse_redis_url(url)
    timeouts: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
    }
    tls: dict[str, Any] = {"ssl": True} if target.tls else {}
    if target.tls and ssl_ca_certs:
        tls["ssl_ca_certs"] = ssl_ca_certs
    if target.mode == "single":
        options = dict(timeouts)
        if ssl_ca_certs:
            options["ssl_ca_certs"] = ssl_ca_certs
        client: redis.Redis[bytes] = redis.Redis.from_url(url, **options)
        return client
    auth: dict[str, Any] = {"username": target.username}
    if target.password is not None:
        auth["password"] = target.password.get_secret_value()
    if target.mode == "sentinel":
        sentinel_kwargs: dict[str, Any] = {**timeouts, **tls}
        if sentinel_password:
            sentinel_kwargs["password"] = sentinel_password
        sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs, **timeouts, **tls)
        assert target.service is not None
        primary: redis.Redis[bytes] = sentinel.master_for(
            target.service, db=target.db, **timeouts, **tls, **auth
        )
        return primary
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            **timeouts,
            **tls,
            **auth,
        )
    except TRANSIENT as exc:  # the constructor reads the slot map from the seed nodes
        raise StoreUnavailable(f"Redis Cluster {redact_url(url)}: no seed node answered: {exc}") from exc


def register_script(client: RedisClient, name: str) -> Script:
    """The packaged Lua script ``name`` (beside this module) registered on ``client`` (EVALSHA, loaded on
    a NOSCRIPT: in a cluster on every primary)."""
    text = resources.files("stream_monitor.state").joinpath(name).read_text(encoding="utf-8")
    # RedisCluster has register_script too; the stubs only know it on Redis.
    return cast("redis.Redis[bytes]", client).register_script(text)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (its keys then need a shared hash tag)."""
    return isinstance(client, RedisCluster)


def key_prefix(prefix: str, cluster: bool, part: str = "") -> str:
    """The prefix a store puts before its key names: as given, or in a cluster a hash tag (so that every
    key a script touches shares one slot). ``part`` names a separate slot of the same app (its traces).
    A prefix that carries its own hash tag already is the operator's choice and kept.

    >>> key_prefix("sm", cluster=False), key_prefix("sm", cluster=True)
    ('sm', '{sm}')
    >>> key_prefix("sm", cluster=True, part="traces"), key_prefix("sm", cluster=False, part="traces")
    ('{sm/traces}', 'sm')
    >>> key_prefix("{tenant-a}sm", cluster=True)
    '{tenant-a}sm'
    """
    if not cluster:
        return prefix
    opened = prefix.find("{")
    if opened >= 0 and prefix.find("}", opened + 2) > opened:
        return prefix
    return "{" + (f"{prefix}/{part}" if part else prefix) + "}"
