"""Continuing faults: one fault that goes on must give one alert, and no alert may resolve during it.

:func:`continuing_fault` injects an incident kind open-ended from minute 10 (default magnitude and slice)
into simulated traffic and runs the in-process engine (the harness every offline tool runs) over it; the
result counts the alerts opened after the onset, those re-opened for the same (signal, metric, series)
("trains") and those resolved while the fault went on. ``scripts/bench_continuing_faults.py`` prints it
for every kind; ``tests/unit/test_continuing_faults.py`` holds it to zero. Event time only: nothing is
timed.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import INCIDENT_KINDS, Incident, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.topology import load_topology

__all__ = ["ContinuingFault", "continuing_fault", "window_kinds"]

START = 1_764_028_800_000
MINUTE = 60_000
ONSET_MINUTE = 10
STEP_MS = 10_000


@dataclass(frozen=True)
class ContinuingFault:
    """What the monitor said about one fault that never ends."""

    kind: str
    signal: str
    opened: int
    trains: int
    # (signal|metric|series) of every alert resolved while the fault went on.
    resolved: tuple[str, ...]


def window_kinds() -> list[str]:
    """The kinds a window signal must catch (canary, shadow and dataset kinds need their own setup)."""
    return [
        name
        for name, kind in INCIDENT_KINDS.items()
        if not (kind.canary or kind.shadow or name.startswith("dataset"))
    ]


def continuing_fault(kind: str, rate: float = 20.0, minutes: int = 40, seed: int = 1) -> ContinuingFault:
    """Run ``kind`` open-ended from minute 10 for ``minutes`` of event time at ``rate`` requests/s."""
    incident = Incident(kind, onset_ms=START + ONSET_MINUTE * MINUTE)
    sim = TrafficSimulator(seed=seed, start_ms=START, rate_per_s=rate, incidents=[incident])
    sink, clock = ListSink(), EventTimeClock(START)
    pipeline = InProcessPipeline.build(
        load_topology(None), alerts=sink, deadletters=sink, clock=clock, partitions=4
    )
    for _ in pipeline.drive(sim, START, START + minutes * MINUTE, STEP_MS):
        pass
    opened: collections.Counter[str] = collections.Counter()
    resolved: list[str] = []
    for alert in sink.alerts:
        if alert.window["start"] < incident.onset_ms:
            continue
        name = f"{alert.signal}|{alert.metric}|{alert.series}"
        if alert.status == "firing":
            opened[name] += 1
        else:
            resolved.append(name)
    trains = sum(n - 1 for n in opened.values())
    return ContinuingFault(kind, incident.ground_truth.signal, sum(opened.values()), trains, tuple(resolved))
