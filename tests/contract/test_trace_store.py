"""One contract for every TraceStore: the memory store and the Redis store must both pass it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from stream_monitor.core.events import EngagementEvent
from stream_monitor.core.traces import TraceBatch, encode_engagement
from stream_monitor.state.traces import MemoryTraceStore, TraceStore, example_ids

S1 = "m|v1|control|home|eu"
S2 = "m|v1|control|home|us"
DIMS = ("model", "model_version", "arm", "surface", "region")
T0 = 1_764_086_400_000


class Clock:
    """Wall time for Redis (its TTLs run on the server's clock), a settable one for the memory store."""

    def __init__(self, real: bool) -> None:
        self.real = real
        self.ms = int(time.time() * 1000)

    def now(self) -> int:
        return int(time.time() * 1000) if self.real else self.ms

    def advance(self, ms: int) -> None:
        if self.real:
            time.sleep(ms / 1000)
        else:
            self.ms += ms


Factory = Callable[..., tuple[TraceStore, Clock]]


REDIS_STORES = [
    pytest.param("redis_store", marks=pytest.mark.integration, id="redis"),
    # 3 masters (tests/contract/conftest.py); the traces get a slot of their own there.
    pytest.param("cluster_store", marks=pytest.mark.integration, id="redis-cluster"),
]


@pytest.fixture(params=["memory", *REDIS_STORES])
def make(request: pytest.FixtureRequest) -> Factory:
    def build(ttl_ms: int = 60_000, per_slice: int = 100, max_engagement: int = 20) -> tuple[Any, Clock]:
        if request.param == "memory":
            clock = Clock(real=False)
            return MemoryTraceStore(ttl_ms, per_slice, max_engagement, now=clock.now), clock
        from stream_monitor.state.redis_traces import RedisTraceStore

        base = request.getfixturevalue(request.param)
        store = RedisTraceStore(base.client, base.app_prefix, ttl_ms, per_slice, max_engagement)
        return store, Clock(real=True)

    return build


def doc(rid: str) -> bytes:
    return f'{{"v":1,"request_id":"{rid}"}}'.encode()


def eng(rid: str, ts: int, action: str = "click") -> tuple[str, int, bytes]:
    return (rid, ts, encode_engagement(EngagementEvent(rid, ts, action)))


def test_put_then_get_with_engagement(make: Factory) -> None:
    store, _clock = make()
    store.put(TraceBatch([("r1", S1, T0, doc("r1"))], [eng("r1", T0 + 5)]))
    store.put(TraceBatch([], [eng("r1", T0 + 2, "impression")]))
    got = store.get("r1")
    assert got is not None
    raw, engagement = got
    assert raw == doc("r1")
    assert [b'"impression"' in e for e in engagement] == [True, False]  # by event time
    assert store.get("nobody") is None and store.ttl_ms("nobody") is None


def test_ttl_is_set_and_traces_expire(make: Factory) -> None:
    store, clock = make(ttl_ms=1000)
    store.put(TraceBatch([("r1", S1, T0, doc("r1"))]))
    left = store.ttl_ms("r1")
    assert left is not None and 0 < left <= 1000
    assert store.slices() == [S1]
    clock.advance(1300)
    assert store.get("r1") is None and store.ttl_ms("r1") is None
    assert store.recent([S1], 5) == []
    assert store.slices() == []


def test_engagement_attaches_only_to_a_stored_trace(make: Factory) -> None:
    store, _clock = make()
    # A sampled request that was capped (no trace): its engagement leaves nothing behind.
    store.put(TraceBatch([], [eng("capped", T0)]))
    store.put(TraceBatch([("capped", S1, T0, doc("capped"))]))
    got = store.get("capped")
    assert got is not None and got[1] == []


def test_engagement_is_capped_and_a_retry_adds_nothing(make: Factory) -> None:
    store, _clock = make(max_engagement=3)
    batch = TraceBatch([("r1", S1, T0, doc("r1"))], [eng("r1", T0 + i) for i in range(5)])
    store.put(batch)
    store.put(batch)  # the same commit retried
    got = store.get("r1")
    assert got is not None and len(got[1]) == 3
    assert [int(e.split(b'"ts":')[1].split(b",")[0]) for e in got[1]] == [T0, T0 + 1, T0 + 2]  # earliest


def test_per_slice_index_is_capped_and_trimmed_traces_are_deleted(make: Factory) -> None:
    store, _clock = make(per_slice=3)
    store.put(TraceBatch([(f"a{i}", S1, T0 + i, doc(f"a{i}")) for i in range(5)]))
    store.put(TraceBatch([("b0", S2, T0, doc("b0"))], [eng("a0", T0), eng("a4", T0)]))
    assert store.recent([S1], 10) == [("a4", T0 + 4), ("a3", T0 + 3), ("a2", T0 + 2)]
    assert store.get("a0") is None and store.get("a1") is None  # deleted, not only unindexed
    store.put(TraceBatch([("a5", S1, T0 + 5, doc("a5"))]))
    assert store.get("a2") is None
    assert sorted(store.slices()) == [S1, S2]


def test_recent_merges_slices_newest_first_and_honours_until(make: Factory) -> None:
    store, _clock = make()
    store.put(
        TraceBatch(
            [
                ("a", S1, T0 + 10, doc("a")),
                ("b", S2, T0 + 20, doc("b")),
                ("c", S1, T0 + 30, doc("c")),
            ]
        )
    )
    assert store.recent([S1, S2], 2) == [("c", T0 + 30), ("b", T0 + 20)]
    assert store.recent([S1, S2], 5, until_ms=T0 + 30) == [("b", T0 + 20), ("a", T0 + 10)]
    assert store.recent([], 5) == [] and store.recent(["no|such|slice"], 5) == []
    assert example_ids(store, DIMS, {"model": "m", "region": "us"}) == ["b"]


@pytest.mark.parametrize("base", REDIS_STORES)
def test_redis_keys_all_carry_a_ttl(base: str, request: pytest.FixtureRequest) -> None:
    from stream_monitor.state.redis_traces import RedisTraceStore

    state = request.getfixturevalue(base)
    store = RedisTraceStore(state.client, state.app_prefix, ttl_ms=3_600_000)
    rounds = store.round_trips
    store.put(TraceBatch([("r1", S1, T0, doc("r1"))], [eng("r1", T0 + 1)]))
    assert store.round_trips == rounds + 1  # one call per batch
    store.pin(["r1"])
    keys = [k.decode() for k in state.client.scan_iter(f"{store.prefix}:*")]
    assert sorted(k.split(":", 1)[1] for k in keys) == ["tr:r1", "tre:r1", f"tri:{S1}", "trp", "trs"]
    for key in keys:
        assert 0 < state.client.pttl(key) <= 3_600_000, key


def test_pinned_traces_survive_trimming_until_their_ttl(make: Factory) -> None:
    store, _clock = make(per_slice=2)
    store.put(TraceBatch([("a0", S1, T0, doc("a0")), ("a1", S1, T0 + 1, doc("a1"))]))
    store.pin(["a0"])  # an alert names it
    store.put(TraceBatch([(f"b{i}", S1, T0 + 10 + i, doc(f"b{i}")) for i in range(3)]))
    assert store.get("a0") is not None and store.get("a1") is None
    assert store.recent([S1], 5) == [("b2", T0 + 12), ("b1", T0 + 11)]  # no longer indexed
    left = store.ttl_ms("a0")
    assert left is not None and left > 0
