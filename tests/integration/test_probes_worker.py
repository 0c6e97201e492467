"""A real worker's Kubernetes probes (docs/kubernetes.md): ready once it holds its partition claims, and
listening only where ``web_host`` and ``metrics_addr`` say (127.0.0.1 by default).

A store outage (not ready, still live) is in tests/faults/test_probes.py: it needs a Redis of its own."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Deployment, WorkerProcess, http_json, wait_for

pytestmark = pytest.mark.integration


def _refused(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) != 0


def test_a_worker_becomes_ready_once_it_holds_its_claims(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    base = f"http://127.0.0.1:{worker.web_port}"
    ready = wait_for(lambda: _ready(f"{base}/readyz"), 90, "/readyz to answer 200", worker)
    assert ready == (200, {"status": "ok", "store": "ok", "claims": "held"})
    assert http_json(f"{base}/livez") == (200, {"status": "ok"})
    # web_host and metrics_addr default to 127.0.0.1: nothing listens on another loopback address.
    assert _refused("127.0.0.2", worker.web_port)
    assert _refused("127.0.0.2", worker.metrics_port)


def _ready(url: str) -> tuple[int, dict[str, Any]] | None:
    answer = http_json(url)
    return answer if answer is not None and answer[0] == 200 else None
