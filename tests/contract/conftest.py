"""Redis deployments the contract suites also run against: a 3-master Redis Cluster and a Sentinel-watched
primary with a replica (private redis-servers, tests/faults/conftest.py; one of each per module)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faults.conftest import PrivateRedisCluster, PrivateSentinel


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    cluster = PrivateRedisCluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSentinel]:
    group = PrivateSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield group.start()
    finally:
        group.stop()


@pytest.fixture
def cluster_store(redis_cluster: PrivateRedisCluster) -> Iterator[Any]:
    """A RedisStore on the cluster, under a fresh prefix (a hash tag there: ``store.prefix``)."""
    from stream_monitor.state.redis_store import RedisStore

    store = RedisStore.from_url(redis_cluster.url, prefix=f"smtest-{uuid.uuid4().hex[:10]}")
    yield store
    store.client.close()


@pytest.fixture
def sentinel_stores(redis_sentinel: PrivateSentinel) -> Iterator[Callable[[], Any]]:
    """Factory of RedisStores through the Sentinel (its current primary), each under a fresh prefix."""
    from stream_monitor.state.redis_store import RedisStore

    made: list[Any] = []

    def make() -> Any:
        store = RedisStore.from_url(redis_sentinel.url, prefix=f"smtest-{uuid.uuid4().hex[:10]}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.client.close()
