"""The window-close seam: what an engine's observers are told, and that telling them changes nothing."""

from __future__ import annotations

import functools

import orjson
import pytest

from stream_monitor.config import Topics
from stream_monitor.core.observers import ANOMALY, FAMILIES, LABELS, SIGNALS, SLO, ClosedWindow
from stream_monitor.core.series import SignalValue
from stream_monitor.core.window_log import WindowEntry
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, SimConfig, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000  # a window boundary
MINUTE = 60_000
RUN_MS = 25 * MINUTE


class Recorder:
    def __init__(self) -> None:
        self.windows: list[ClosedWindow] = []

    def on_closed(self, window: ClosedWindow) -> None:
        self.windows.append(window)


@functools.cache
def _run(observed: bool) -> tuple[Engine, ListSink, Recorder]:
    """Twenty-five minutes of traffic with a latency incident, through the in-process pipeline."""
    incident = Incident("latency_regression", onset_ms=START + 10 * MINUTE, target={"region": "eu"})
    sim = TrafficSimulator(
        seed=5, start_ms=START, rate_per_s=20.0, incidents=(incident,), config=SimConfig(engagement=True)
    )
    sink, recorder, clock = ListSink(), Recorder(), EventTimeClock(START)
    engine = Engine(
        load_topology(),
        MemoryStore(),
        sink,
        sink,
        clock,
        options=EngineOptions(worker_id="t", auto_claim=True),
        observers=[recorder] if observed else [],
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=2)
    t = START
    while t < START + RUN_MS:
        t += 10_000
        for kind, key, event in sim.events_until(t):
            pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(t)
        pipeline.step()
    return engine, sink, recorder


def test_every_closed_window_is_observed_once_in_order_with_its_alerts() -> None:
    engine, sink, recorder = _run(observed=True)
    starts = [w.start for w in recorder.windows]
    assert len(starts) == engine.windows_closed >= 20
    assert starts == sorted(set(starts))
    assert all(w.end - w.start == MINUTE and w.now_ms >= w.end for w in recorder.windows)
    assert [a for w in recorder.windows for a in w.alerts] == sink.alerts
    assert any(a.signal == "latency" for a in sink.alerts)


def _point(v: SignalValue) -> tuple[str, str, tuple[str, ...], float]:
    return (v.signal, v.metric, v.key, round(v.value, 9))


def test_observers_see_what_the_window_log_records() -> None:
    engine, _, recorder = _run(observed=True)
    logged = {e.start: e for e in map(WindowEntry.decode, engine.store.window_log())}
    assert logged
    for window in recorder.windows:
        entry = logged.get(window.start)
        if entry is None:
            continue  # older than the log keeps
        # The log keeps the same values less the signals it does not log (grouped by signal).
        kept = WindowEntry.of(window.start, window.end, window.values_of()).values
        assert sorted(map(_point, kept)) == sorted(map(_point, entry.values))
        assert len(kept) > 0
        assert [a.to_dict()["id"] for a in window.alerts] == [a["id"] for a in entry.alerts]


def test_values_come_grouped_by_the_family_that_computed_them() -> None:
    _, _, recorder = _run(observed=True)
    found = {family for w in recorder.windows for family, values in w.values.items() if values}
    assert {SIGNALS, SLO, LABELS} <= found <= set(FAMILIES)
    for window in recorder.windows:
        assert all(v.signal.startswith("label") for v in window.values_of(LABELS))
        assert all(v.signal == "error_budget_burn" for v in window.values_of(SLO))
        # A raw breach is a judgement of one of the window's own signal values.
        assert {b.identity for b in window.raw_breaches} <= {
            (v.signal, v.metric, v.key) for v in window.values_of(SIGNALS)
        }
    assert any(w.raw_breaches for w in recorder.windows)
    assert ANOMALY in FAMILIES


def test_observing_changes_no_alert() -> None:
    _, observed, _ = _run(observed=True)
    _, plain, _ = _run(observed=False)
    assert [a.to_dict() for a in observed.alerts] == [a.to_dict() for a in plain.alerts]


def test_an_unknown_family_is_refused_by_name() -> None:
    window = ClosedWindow(0, MINUTE, MINUTE, {SIGNALS: (SignalValue("volume", "count", ("m",), 1.0),)})
    with pytest.raises(ValueError, match="unknown value families \\['labelz'\\]"):
        window.values_of("labelz")
