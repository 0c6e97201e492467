"""The worker's Kubernetes probes, /livez and /readyz (stream_monitor/runtime/gate.py), on Faust's web server.

The real Faust web server is started in-process on a free loopback port, without a broker: the views are
what is under test, and they need only the state store and the worker's claim state. Store outages are
real ones: a Redis client pointed at a port where nothing listens, and one where a listener never answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import faust
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream_monitor.core.clock import ManualClock
from stream_monitor.runtime.gate import add_gate_views, readiness
from stream_monitor.state.base import StateStore
from stream_monitor.state.memory import MemoryStore
from stream_monitor.state.redis_store import RedisStore

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def _probe(store: StateStore, claims_held: Callable[[], bool], paths: list[str]) -> list[tuple[int, Any]]:
    """GET each path from a Faust web server with the worker's views; the server is stopped after."""

    async def run() -> list[tuple[int, Any]]:
        port = _free_port()
        app = faust.App(
            "probe-test", web_enabled=True, web_bind="127.0.0.1", web_host="127.0.0.1", web_port=port
        )
        add_gate_views(app, store, ManualClock(0), claims_held=claims_held)
        app.web.init_server()
        await app.web.start_server()
        try:
            return [await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}") for path in paths]
        finally:
            await app.web.stop_server()

    return asyncio.run(run())


@pytest.fixture
def store_down() -> Iterator[RedisStore]:
    """A Redis store with nothing listening at its address: every call is refused (at once: no retries)."""
    client = redis.Redis(
        host="127.0.0.1",
        port=_free_port(),
        socket_connect_timeout=1,
        socket_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    yield RedisStore(client, prefix="probe-test")
    client.close()


@pytest.fixture
def store_silent() -> Iterator[RedisStore]:
    """A Redis store whose server accepts connections and never answers (a hung Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_connect_timeout=1,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        yield RedisStore(client, prefix="probe-test")
        client.close()


def test_ready_only_once_the_claims_are_held() -> None:
    held = {"now": False}
    before = _probe(MemoryStore(), lambda: held["now"], ["/readyz"])[0]
    held["now"] = True
    after = _probe(MemoryStore(), lambda: held["now"], ["/readyz"])[0]
    assert before[0] == 503
    assert before[1]["store"] == "ok"
    assert before[1]["claims"].startswith("not held")
    assert after == (200, {"status": "ok", "store": "ok", "claims": "held"})


def test_not_ready_while_the_store_is_down_but_still_live(store_down: RedisStore) -> None:
    (ready_status, ready_body), (live_status, live_body) = _probe(
        store_down, lambda: True, ["/readyz", "/livez"]
    )
    assert ready_status == 503
    assert ready_body["store"].startswith("unavailable: Redis is unavailable")
    assert ready_body["claims"] == "held"
    # Liveness does not follow the store: a restart would not bring Redis back, the worker waits it out.
    assert (live_status, live_body) == (200, {"status": "ok"})


def test_a_store_that_hangs_is_reported_within_the_bound(store_silent: RedisStore) -> None:
    ready, parts = asyncio.run(readiness(store_silent, lambda: True, timeout_s=0.2))
    assert not ready
    assert parts["store"] == "unavailable: no answer within 0.2 s"


def test_the_gate_is_served_beside_the_probes() -> None:
    (status, body), (live_status, _live) = _probe(
        MemoryStore(), lambda: True, ["/health/home-ranker", "/livez"]
    )
    assert (status, live_status) == (200, 200)
    assert body["decision"] == "HOLD"  # no verdict in an empty store
