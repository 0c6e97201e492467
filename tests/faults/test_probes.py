"""Kubernetes probes through a Redis outage (docs/kubernetes.md): a worker whose store goes away is not
ready (so the Service stops sending it gate calls) but stays live (a restart would not bring Redis back),
and is ready again once Redis returns. The Redis is the test's own, stopped and restarted by PID."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import PrivateRedis, start_worker
from tests.integration.conftest import Deployment, WorkerProcess, http_json, wait_for

pytestmark = pytest.mark.faults


def _status(url: str, wanted: int) -> tuple[int, dict[str, Any]] | None:
    answer = http_json(url)
    return answer if answer is not None and answer[0] == wanted else None


def test_a_worker_is_unready_but_live_while_its_store_is_down(
    kafka_bootstrap: str,
    private_redis: Callable[..., PrivateRedis],
    make_deployment: Callable[..., Deployment],
    fault_workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    store = private_redis(appendonly=True)  # the AOF brings the claims back with the restart
    worker = start_worker(make_deployment(kafka_bootstrap, store.url), fault_workers, tmp_path, "worker")
    base = f"http://127.0.0.1:{worker.web_port}"
    wait_for(lambda: _status(f"{base}/readyz", 200), 90, "the worker to be ready", worker)

    store.stop()
    _status_code, body = wait_for(lambda: _status(f"{base}/readyz", 503), 30, "/readyz to say 503", worker)
    assert body["status"] == "not ready" and body["store"].startswith("unavailable")
    assert http_json(f"{base}/livez") == (200, {"status": "ok"})
    assert worker.alive()

    store.start()
    _status_code, body = wait_for(lambda: _status(f"{base}/readyz", 200), 60, "ready again", worker)
    assert body == {"status": "ok", "store": "ok", "claims": "held"}
