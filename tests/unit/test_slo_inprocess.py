"""SLO burn alerts and dataset arrival end to end in this process: simulator -> InProcessPipeline -> Engine
-> MemoryStore -> alerts, with the default topology and event time for the clock.

* an error burst (and a latency regression) pages on the error budget of the whole series, and the page
  resolves within the short window once the burst is over;
* several simulated hours of clean traffic raise no SLO or dataset alert;
* a late dataset (the simulator's ``dataset_late``) raises ``dataset_arrival`` once its newest partition
  is older than ``every + grace``, and resolves when the late partition lands; a short partition raises
  ``rows``; the SLO history survives a restart of the engine (it lives in the detector checkpoint).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert, DetectorState
from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, SimConfig, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000  # 2025-11-25T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
STEP_MS = 20_000
DATASET = "user_features_hourly"  # topologies/default.yaml: every 1h, grace 30m, min_rows 1000
DATASETS = ((DATASET, 3600.0, 5000),)


@functools.cache
def _topology() -> Topology:
    return load_topology()


class Run:
    def __init__(self, seed: int, rate: float, incidents: tuple[Incident, ...] = (), **config: Any) -> None:
        self.sim = TrafficSimulator(seed, START, rate, incidents, SimConfig(engagement=False, **config))
        self.alerts = ListSink()
        self.store = MemoryStore()
        self.clock = EventTimeClock(START)
        self.engine = self._engine()
        self.pipeline = InProcessPipeline(self.engine, Topics(), partitions=2)

    def _engine(self) -> Engine:
        options = EngineOptions(worker_id="t", auto_claim=True)
        return Engine(_topology(), self.store, self.alerts, ListSink(), self.clock, options=options)

    def drive(self, until_ms: int, extra: dict[int, list[dict[str, Any]]] | None = None) -> None:
        t = self.clock.now_ms()
        while t < until_ms:
            t = min(t + STEP_MS, until_ms)
            for kind, key, event in self.sim.events_until(t):
                self.pipeline.feed(kind, key, orjson.dumps(event))
            for event in (extra or {}).get(t, []):
                self.pipeline.feed("dataset", event["name"].encode(), orjson.dumps(event))
            self.clock.observe(t)
            self.pipeline.step()

    def restart(self) -> None:
        """A new engine on the same store, as after a worker restart."""
        self.engine = self._engine()
        self.pipeline.engine = self.engine

    def of(self, signal: str, status: str | None = None) -> list[Alert]:
        return [a for a in self.alerts.alerts if a.signal == signal and status in (None, a.status)]


def _at(alerts: list[Alert], metric: str, status: str) -> list[int]:
    return [(a.window["end"] - START) // MINUTE for a in alerts if a.metric == metric and a.status == status]


def test_an_error_burst_pages_and_the_page_resolves_after_it() -> None:
    onset, end = START + 30 * MINUTE, START + 50 * MINUTE
    burst = Incident("error_spike", onset_ms=onset, duration_ms=end - onset, magnitude=0.05, target={})
    run = Run(seed=3, rate=20.0, incidents=(burst,))
    run.drive(START + 70 * MINUTE)
    burns = run.of("error_budget_burn")
    # 5 % errors against a 0.1 % budget burn at ~50x; with 30 clean minutes (~2x) before, the 1 h burn
    # passes 14.4 after ~11 minutes of the burst: (30 x 2 + 50k) / (30 + k) > 14.4 for k > 10.4.
    (page,) = [a for a in burns if a.metric == "availability.page" and a.status == "firing"]
    assert page.severity == "critical" and page.threshold == 14.4
    assert 40 <= (page.window["end"] - START) // MINUTE <= 44, page.window
    assert {page.key[d] for d in _topology().segment_dims} == {"*"}
    assert "availability (99.9 % without error) error budget burns" in page.message
    # The 5 min window forgets the burst 4-5 windows after it ends.
    assert 53 <= _at(burns, "availability.page", "resolved")[0] <= 56
    # The ticket (6 h / 30 min x6) fires too, and stays open: the 30 min window still holds the burst.
    assert _at(burns, "availability.ticket", "firing") and not _at(burns, "availability.ticket", "resolved")
    assert not [a for a in burns if a.metric.startswith("latency.")]


def test_a_latency_regression_burns_the_latency_budget() -> None:
    # Ranking x10: about 40 % of requests take over 300 ms, a 1 % budget burning at ~40x.
    slow = Incident("latency_regression", onset_ms=START + 20 * MINUTE, magnitude=10.0, target={})
    run = Run(seed=4, rate=10.0, incidents=(slow,))
    run.drive(START + 45 * MINUTE)
    firing = {a.metric for a in run.of("error_budget_burn", "firing")}
    assert {"latency.page", "latency.ticket"} <= firing
    assert not {m for m in firing if m.startswith("availability.")}


@pytest.mark.slow
def test_hours_of_clean_traffic_raise_no_slo_or_dataset_alert() -> None:
    run = Run(seed=1, rate=8.0, datasets=DATASETS)
    run.drive(START + 4 * HOUR)
    assert run.engine.windows_closed >= 4 * 60 - 2
    assert [
        (a.signal, a.metric, a.window["start"])
        for a in run.alerts.alerts
        if a.signal
        in (
            "error_budget_burn",
            "dataset_arrival",
        )
    ] == []
    state = DetectorState.from_json_dict(orjson.loads(run.store.load_detector_state() or b"{}"))
    # One top-level series, two objectives, 6 h of windows at most.
    assert sorted(k.split("|")[0] for k in state.slo_history) == ["availability", "latency"]
    assert all(len(v) == 2 * (4 * 60 - 1) for v in state.slo_history.values())


def test_a_late_dataset_alerts_and_clears_when_the_partition_lands() -> None:
    # The partition due at 01:00 lands 2 h late; the one due at 02:00 on time (~02:05).
    late = Incident("dataset_late", onset_ms=START + HOUR, duration_ms=HOUR, magnitude=7200)
    run = Run(seed=5, rate=2.0, incidents=(late,), datasets=DATASETS)
    run.drive(START + 150 * MINUTE)
    arrivals = run.of("dataset_arrival")
    # Late once the 00:00 partition (landed at start) is older than 1 h + 30 min grace: window ending 01:31.
    (firing,) = [a for a in arrivals if a.status == "firing"]
    assert (firing.metric, firing.severity, firing.threshold) == (f"late.{DATASET}", "warning", 5400.0)
    assert (firing.window["end"] - START) // MINUTE == 91 and firing.observed == 5460.0
    assert f"dataset {DATASET} is late" in firing.message
    # Resolved by the partition due at 02:00, which lands a few minutes after it.
    (resolved,) = [a for a in arrivals if a.status == "resolved"]
    (truth,) = run.sim.ground_truth
    assert (truth.signal, truth.key, truth.detail) == ("dataset_arrival", {}, DATASET)
    assert 121 <= (resolved.window["end"] - START) // MINUTE <= 140
    stored = orjson.loads(run.store.datasets()[DATASET])
    assert stored["ts"] > START + 2 * HOUR and stored["rows"] >= 4500


def test_a_short_partition_alerts_on_rows_until_a_full_one_lands() -> None:
    run = Run(seed=6, rate=5.0)
    short = {"type": "dataset", "name": DATASET, "partition": "p1", "ts": START + 5 * MINUTE, "rows": 12}
    full = {"type": "dataset", "name": DATASET, "partition": "p2", "ts": START + 15 * MINUTE, "rows": 5000}
    other = {"type": "dataset", "name": "not_configured", "partition": "x", "ts": START, "rows": 0}
    run.drive(START + 30 * MINUTE, {START + 6 * MINUTE: [short, other], START + 16 * MINUTE: [full]})
    got = [(a.metric, a.status, (a.window["end"] - START) // MINUTE) for a in run.of("dataset_arrival")]
    # Resolved after alerts.clear_windows (2) windows with the full partition: the 16th and the 17th.
    assert got == [(f"rows.{DATASET}", "firing", 6), (f"rows.{DATASET}", "resolved", 17)]
    assert set(run.store.datasets()) == {DATASET}  # datasets the topology does not list are not stored


def test_the_slo_history_survives_a_restart() -> None:
    run = Run(seed=7, rate=10.0)
    run.drive(START + 20 * MINUTE)
    before = DetectorState.from_json_dict(orjson.loads(run.store.load_detector_state() or b"{}"))
    run.restart()
    run.drive(START + 25 * MINUTE)
    after = DetectorState.from_json_dict(orjson.loads(run.store.load_detector_state() or b"{}"))
    for name, past in before.slo_history.items():
        # The restarted engine carried on from the checkpoint: the old windows are still there, in front.
        assert after.slo_history[name][: len(past)] == past
        assert len(after.slo_history[name]) == len(past) + 10
