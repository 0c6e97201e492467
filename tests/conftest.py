"""Shared fixtures: real services from the environment (see scripts/services.sh), fresh state per test."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

# A wall-clock deadline (Unix seconds) after which the remaining tests are skipped, each saying why:
# .ci/run sets it for the slow tier so that CI ends within its time limit however slow the machine is
# (a CI run past its limit lands nothing). Unset, nothing is skipped.
DEADLINE_VAR = "SM_TEST_DEADLINE"


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = os.environ.get(DEADLINE_VAR)
    if deadline and time.time() > float(deadline):
        pytest.skip(f"{DEADLINE_VAR} passed: not started, to end within the time limit of this run")


def _require(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        message = f"{var} is not set: run the suite with `make test` (it starts Kafka and Redis)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _require("STREAM_MONITOR_REDIS_URL")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _require("STREAM_MONITOR_KAFKA_BOOTSTRAP")


@pytest.fixture
def unique_prefix() -> str:
    return f"smtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_store(redis_url: str, unique_prefix: str) -> Iterator[object]:
    from stream_monitor.state.redis_store import RedisStore

    store = RedisStore.from_url(redis_url, prefix=unique_prefix)
    yield store
    keys = list(store.client.scan_iter(f"{unique_prefix}:*", count=500))
    if keys:
        store.client.delete(*keys)
    store.client.close()
