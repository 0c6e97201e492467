"""Every incident of the simulator's library, detected on the real Kafka + Redis path.

One simulated stream carries every incident kind in turn, each on its own slice and in its own stretch of
time (5 minutes on, 5 minutes off), after 15 clean minutes that let the baselines and drift references
warm up. The stream is produced by `stream-monitor simulate --batch` (NDJSON messages, co-partitioned by
request id) and read by one real Faust worker with Redis state; each incident's ground truth must come out
on the alerts topic: its signal, naming its slice (and its feature or source), in a window between its
onset and its end. No alert may fire in the clean warm-up.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from stream_monitor.sim import INCIDENT_KINDS, parse_incident
from tests.integration.conftest import (
    REPO,
    SIM_START_HOUR,
    Deployment,
    WorkerProcess,
    consume_all,
    free_port,
    measure_counting_rate,
    totals,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_MS = 60_000
WARMUP_S = 900
ON_S, OFF_S = 300, 300
SLICES = ("region=eu", "platform=android", "platform=ios", "region=us")
SEGMENT_DIMS = ("platform", "region", "tenure")


def _schedule() -> list[str]:
    # The global-by-nature kind goes last so it cannot hide a sliced one. Release kinds are judged on
    # late labels, 15 minutes after the fact: tests/integration/test_labels_worker.py covers them.
    kinds = sorted(
        (k for k in INCIDENT_KINDS if not INCIDENT_KINDS[k].release),
        key=lambda k: (INCIDENT_KINDS[k].global_key, k),
    )
    specs = []
    for i, kind in enumerate(kinds):
        onset = WARMUP_S + i * (ON_S + OFF_S)
        where = "" if INCIDENT_KINDS[kind].global_key else SLICES[i % len(SLICES)] + ","
        specs.append(f"{kind}:{where}onset={onset},duration={ON_S}")
    return specs


def test_every_incident_kind_is_detected_on_its_slice(
    deployment: Deployment, workers: list[WorkerProcess], redis_client: redis.Redis, tmp_path: Path
) -> None:
    specs = _schedule()
    duration_s = WARMUP_S + len(specs) * (ON_S + OFF_S)
    start = int(time.time() * 1000) - duration_s * 1000 - 3_600_000
    start -= start % WINDOW_MS
    args = [sys.executable, "-m", "stream_monitor.cli.main", "simulate", "--speed", "0"]
    args += ["--duration", str(duration_s), "--rate", "20", "--batch", "100", "--seed", "5"]
    args += ["--start-ms", str(start), "--start-hour", str(SIM_START_HOUR)]
    for spec in specs:
        args += ["--incident", spec]
    done = subprocess.run(
        args,
        cwd=REPO,
        env=deployment.env(free_port(), free_port()),
        capture_output=True,
        timeout=600,
        check=True,
    )
    produced = sum(
        int(part.split("=")[1])
        for line in done.stderr.decode().splitlines()
        for part in line.split()
        if part.startswith(("serving=", "engagement=", "deployment="))
    )
    assert produced > 100_000, done.stderr.decode()[-2000:]

    worker = WorkerProcess(deployment, tmp_path).start()
    workers.append(worker)
    measure_counting_rate(redis_client, deployment.prefix, produced, worker)
    counts = totals(redis_client, deployment.prefix)
    assert counts["consumed"] == counts["accepted"] == produced

    truths = [parse_incident(spec, start).ground_truth for spec in specs]
    last_end = max(t.end_ms or 0 for t in truths)

    def firing() -> list[dict[str, object]]:
        found = [orjson.loads(v) for _k, v in consume_all(deployment.bootstrap, deployment.topics["alerts"])]
        return [a for a in found if a["status"] == "firing"]

    def all_closed() -> list[dict[str, object]] | None:
        # Detection is done once the closer has passed the last incident's end.
        raw = redis_client.get(f"{deployment.prefix}:closed_before")
        return firing() if raw is not None and int(raw) >= last_end else None

    alerts = wait_for(all_closed, 240, "windows closed past the last incident", worker)

    def names_truth(alert: dict[str, object], truth: object) -> bool:
        key = alert["key"]
        assert isinstance(key, dict)
        if alert["signal"] != truth.signal:  # type: ignore[attr-defined]
            return False
        if any(key[dim] != value for dim, value in truth.key.items()):  # type: ignore[attr-defined]
            return False
        if any(key[d] != "*" for d in SEGMENT_DIMS if d not in truth.key):  # type: ignore[attr-defined]
            return False
        detail = truth.detail  # type: ignore[attr-defined]
        return detail is None or str(alert["metric"]).endswith(f".{detail}")

    missed = []
    for spec, truth in zip(specs, truths, strict=True):
        onset_window = truth.onset_ms - truth.onset_ms % WINDOW_MS
        hits = [
            a
            for a in alerts
            if names_truth(a, truth) and onset_window <= a["window"]["start"] < (truth.end_ms or 0)  # type: ignore[index]
        ]
        if not hits:
            missed.append(spec)
    summary = sorted({(a["signal"], a["metric"], a["series"]) for a in alerts})  # type: ignore[misc]
    assert not missed, f"not detected: {missed}; alerts: {summary}"
    warmup_end = start + WARMUP_S * 1000
    early = [a for a in alerts if a["window"]["start"] < warmup_end]  # type: ignore[index]
    assert not early, f"alerts in the clean warm-up: {early}"
