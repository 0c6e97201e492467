"""Shadow verdicts end to end on the real broker and Redis, read as a rollout controller reads them.

The simulator's deployment events announce a shadow version that scores half of the control's requests
(a second serving event per request id, arm ``shadow``); both flow through the real worker, which pairs
them per serving partition (co-partitioned by request id). For a shadow whose slates diverge from the
control's from its deployment on, a consumer of ``recs.health`` sees a verdict of kind ``shadow`` with
decision ROLLBACK keyed ``<model>/<deployment>``; the worker's HTTP gate answers 412 for
``?kind=shadow``, and ``stream-monitor canary MODEL --kind shadow`` exits 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_monitor.sim import Incident, SimConfig, TrafficSimulator
from tests.integration.conftest import (
    REPO,
    Deployment,
    WorkerProcess,
    consume_all,
    events_to_messages,
    produce,
    sim_config,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MINUTE = 60_000
MODEL = "home-ranker"


def _shadow_rollback(deployment: Deployment) -> list[dict[str, Any]] | None:
    docs = [
        (key.decode(), orjson.loads(value))
        for key, value in consume_all(deployment.bootstrap, deployment.topics["health"])
    ]
    shadow = [doc for key, doc in docs if doc["kind"] == "shadow" and key == f"{MODEL}/{doc['deployment']}"]
    return shadow if any(doc["decision"] == "ROLLBACK" for doc in shadow) else None


def _gate(worker: WorkerProcess, kind: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{worker.web_port}/gate/{MODEL}?kind={kind}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_divergent_shadow_gets_rollback_on_the_health_topic(
    deployment: Deployment, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    now = int(time.time() * 1000)
    start = now - 7 * MINUTE
    start -= start % MINUTE
    sim = TrafficSimulator(
        seed=41,
        start_ms=start,
        rate_per_s=40,
        incidents=[Incident("shadow_divergence", onset_ms=start)],
        config=sim_config(shadow_share=0.5),
    )
    events = list(sim.events(6 * 60))
    assert sum(1 for kind, _, e in events if kind == "deployment" and e["arm"] == "shadow") == 1
    produce(deployment.bootstrap, events_to_messages(events, deployment))
    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    shadow = wait_for(lambda: _shadow_rollback(deployment), 300, "a shadow ROLLBACK on recs.health", worker)
    rollback = next(doc for doc in shadow if doc["decision"] == "ROLLBACK")
    assert rollback["candidate"]["arm"] == "shadow" and rollback["baseline"]["arm"] == "control"
    assert rollback["candidate"]["version"] == SimConfig().shadow_version
    assert rollback["candidate"]["lineage"]["code_commit"]
    assert "overlap" in rollback["reason"]
    _status, body = wait_for(
        lambda: (answer := _gate(worker, "shadow"))[0] == 412 and answer, 60, "the gate to answer 412", worker
    )
    assert body["decision"] == "ROLLBACK"
    assert _gate(worker, "canary")[0] == 404  # no canary verdict: the shadow's does not leak into it
    cli = subprocess.run(
        [sys.executable, "-m", "stream_monitor.cli.main", "canary", MODEL, "--kind", "shadow"],
        cwd=REPO,
        env=deployment.env(0, 0),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1, cli.stderr
    print(
        f"\nSHADOW ROLLBACK after {(rollback['window']['end'] - start) // MINUTE} min: {rollback['reason']}"
    )
