"""Detection benchmark: recall, delay, localisation and false alerts on simulated traffic.

Every run goes through the production path in this process: :class:`~stream_monitor.sim.TrafficSimulator`
-> :class:`~stream_monitor.inprocess.InProcessPipeline` -> :class:`~stream_monitor.engine.Engine` with a
:class:`~stream_monitor.state.memory.MemoryStore`, the default topology, and a list sink for the alerts.

* Incident runs: one incident of every kind in :data:`~stream_monitor.sim.INCIDENT_KINDS`, at several
  magnitudes (the kind's default and smaller ones, :data:`MAGNITUDES`), on a rotating slice
  (:data:`TARGETS`), for ``seeds`` seeds each; ``run_s`` of traffic with the onset ``onset_s`` in
  (shifted by a seed-dependent 0-59 s so it does not always fall on a window boundary) and lasting
  ``incident_s``. Different seeds also start at different hours, so incidents meet different phases of
  the simulator's daily traffic curve.
* Clean runs: ``clean_days`` simulated days without incidents, in one-day runs with their own seeds.

A detection is a firing alert of the ground truth's signal that names its slice (``key[dim] == value``
for the target dimensions, ``"*"`` for the other segment dimensions) for a window that starts at or after
the onset's window and before the incident ends. Delay is counted in event time from the true onset to
the alert's emission (``delay_s``, so it includes the allowed lateness the window waits for), and in
windows (``delay_windows``: 1 when the alert is for the window holding the onset). An error-budget burn
alert during the incident is counted apart (``budget_alerts``: burn alerts name whole series by design).
Every other firing alert is a false alert (a wrong key, a wrong signal, or an alert outside the incident).

Systems scored on the same traffic, in the same run:

* ``monitor``: the monitor's alerts (static thresholds, localisation, de-duplication).
* ``static_all``: the same per-window signals and thresholds without localisation: every breaching
  series (every roll-up level) alerts, de-duplicated by the same AlertBook.
* ``detectors``: :func:`~stream_monitor.core.detectors.default_detector` on every per-window signal
  series (side "down" for volume, "up" otherwise), an alert opening when the score reaches the default
  threshold; no localisation either.
* ``hst`` and ``adwin``: river applied naively per serving event to its raw values (total latency, the
  error, fallback and empty-slate flags, the gap since the previous request, the age of the streamed
  feature, the share of trending candidates): a HalfSpaceTrees pipeline behind a 0.9999 quantile
  filter, and one ADWIN per raw value. A flag opens an alert unless one was flagged in the last window;
  they cannot name a slice, so any alert during the incident counts.

:func:`run_synthetic` adds river's synthetic generators with known change points and anomalies for the
series detectors alone.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from stream_monitor.core.alerts import Alert, AlertBook, DetectorState
from stream_monitor.core.anomaly import ANOMALY_SIGNAL
from stream_monitor.core.detectors import (
    DEFAULT_THRESHOLD,
    RiverDrift,
    RobustBaseline,
    SeriesDetector,
    default_detector,
)
from stream_monitor.core.fields import ALL
from stream_monitor.core.observers import SIGNALS, ClosedWindow
from stream_monitor.core.series import Breach, SignalValue
from stream_monitor.core.signals import WindowEvaluator
from stream_monitor.core.topology import Topology
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import INCIDENT_KINDS, GroundTruth, Incident, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.topology import load_topology

__all__ = [
    "GOALS",
    "MAGNITUDES",
    "SYSTEMS",
    "TARGETS",
    "DetectionBenchConfig",
    "Fired",
    "format_report",
    "quick_config",
    "run_detection_bench",
    "run_synthetic",
]

REPORT_VERSION = 1
# Monday 2025-11-24 00:00 UTC: runs start at whole hours after it, clean days at midnight.
BASE_MS = 1_763_942_400_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

# Per kind: smaller magnitudes first, the kind's default last. A kind missing here (a new one) is run at
# its default magnitude only.
MAGNITUDES: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "latency_regression": (1.5, 2.5, 4.0),
        "traffic_drop": (0.3, 0.6, 1.0),
        "error_spike": (0.03, 0.08, 0.2),
        "fallback_spike": (0.08, 0.15, 0.3),
        "empty_slates": (0.03, 0.08, 0.2),
        "stale_feature": (3_600.0, 10_800.0, 21_600.0),
        "source_outage": (0.3, 0.6, 1.0),
        "engagement_logging_break": (0.3, 0.6, 0.9),
        "feature_drift": (1.3, 1.8, 3.0),
        "null_spike": (0.05, 0.1, 0.3),
        "score_collapse": (0.1, 0.3, 1.0),
        "popularity_collapse": (0.2, 0.5, 1.0),
        "diversity_collapse": (0.05, 0.2, 0.5),
    }
)
# Slices hit by incidents, by seed (seed % len): 28 %, 36 % and 22 % of the traffic.
TARGETS: tuple[Mapping[str, str], ...] = (
    MappingProxyType({"region": "eu"}),
    MappingProxyType({"platform": "android"}),
    MappingProxyType({"tenure": "new"}),
)
SYSTEMS: Mapping[str, str] = MappingProxyType(
    {
        "monitor": "the monitor: static thresholds, localisation, one alert per series",
        "static_all": "same signals and thresholds, every breaching roll-up alerts (no localisation)",
        "detectors": "default detector stack on every per-window series (no localisation)",
        "hst": "river HalfSpaceTrees per serving event, 0.9999 quantile filter (no slice)",
        "adwin": "river ADWIN per serving event on each raw value (no slice)",
    }
)
# Signals judged on late labels (core/labels.py): detected up to the label maturity after the incident.
LABEL_SIGNALS = frozenset({"release_ctr", "label_ctr"})
# Systems that name a slice; the others are scored on any alert during the incident.
SLICED = ("monitor", "static_all", "detectors")
GOALS: Mapping[str, float] = MappingProxyType(
    {"recall": 0.95, "median_delay_windows": 2.0, "false_alerts_per_day": 1.0}
)


def _default_magnitudes() -> dict[str, tuple[float, ...]]:
    return {k: MAGNITUDES.get(k, (spec.default_magnitude,)) for k, spec in INCIDENT_KINDS.items()}


@dataclass(frozen=True, slots=True)
class DetectionBenchConfig:
    """What the benchmark runs; the defaults are the full run.

    >>> DetectionBenchConfig(seeds=2, kinds=("error_spike", "traffic_drop")).incident_runs
    12
    """

    seeds: int = 5
    kinds: tuple[str, ...] = tuple(INCIDENT_KINDS)
    magnitudes: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: _default_magnitudes())
    rate_per_s: float = 30.0
    run_s: int = 3600
    onset_s: int = 1200
    incident_s: int = 1200
    clean_days: float = 5.0
    # Clean traffic runs in pieces of at most this long (one piece per job, each with its own seed).
    clean_chunk_s: int = 86_400
    # Event time between closes of the in-process pipeline (the worker closes about every second).
    step_s: int = 5
    naive: bool = True
    synthetic: bool = True
    synthetic_seeds: int = 5
    hst_q: float = 0.9999
    jobs: int = 1
    topology: str | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.jobs < 1 or self.step_s < 1:
            raise ValueError("seeds, jobs and step_s must be >= 1")
        if not 0 < self.onset_s < self.onset_s + self.incident_s <= self.run_s:
            raise ValueError("need 0 < onset_s and onset_s + incident_s <= run_s")
        for kind in self.kinds:
            if kind not in INCIDENT_KINDS:
                raise ValueError(f"unknown incident kind {kind!r}; expected one of {sorted(INCIDENT_KINDS)}")
            if not self.magnitudes.get(kind):
                raise ValueError(f"no magnitudes for {kind}")
            for magnitude in self.magnitudes[kind]:
                INCIDENT_KINDS[kind].check_magnitude(magnitude)

    @property
    def incident_runs(self) -> int:
        return self.seeds * sum(len(self.magnitudes[k]) for k in self.kinds)


def quick_config(**overrides: Any) -> DetectionBenchConfig:
    """A smoke run (well under a minute on two cores): two kinds at their default magnitude, one seed,
    two hours of clean traffic, a small synthetic section."""
    base: dict[str, Any] = {
        "seeds": 1,
        "kinds": ("latency_regression", "error_spike"),
        "magnitudes": {k: (INCIDENT_KINDS[k].default_magnitude,) for k in INCIDENT_KINDS},
        "clean_days": 2 / 24,
        "clean_chunk_s": 7200,
        "synthetic_seeds": 1,
    }
    base.update(overrides)
    return DetectionBenchConfig(**base)


@dataclass(frozen=True, slots=True)
class Fired:
    """One alert opening of any system, reduced to what scoring needs.

    >>> f = Fired("monitor", "error_rate", "ratio", {"region": "eu"}, 0, 60_000, 90_000)
    >>> f.window_end - f.window_start, f.emitted_ms
    (60000, 90000)
    """

    system: str
    signal: str
    metric: str
    key: Mapping[str, str]
    window_start: int
    window_end: int
    emitted_ms: int


# -- one traffic run ----------------------------------------------------------------------------------


class _WindowObserver:
    name = ""

    def __init__(self) -> None:
        self.fired: list[Fired] = []

    def on_closed(self, window: ClosedWindow) -> None:
        """Each system sees the monitor's own signal values and its breaches before localisation."""
        raw = list(window.raw_breaches)
        self.on_window(window.start, window.end, window.values_of(SIGNALS), raw, window.now_ms)

    def on_window(
        self, start: int, end: int, values: list[SignalValue], raw: list[Breach], now_ms: int
    ) -> None:
        raise NotImplementedError


def _fired(system: str, alert: Alert) -> Fired:
    signal, metric = alert.signal, alert.metric
    if signal == ANOMALY_SIGNAL:
        # The anomaly layer's alerts are about a watched series ("<signal>.<metric>"): scored as that signal.
        signal, _, metric = metric.partition(".")
    return Fired(
        system,
        signal,
        metric,
        dict(alert.key),
        alert.window["start"],
        alert.window["end"],
        alert.emitted_at,
    )


class _StaticAll(_WindowObserver):
    """Baseline (a): every raw breach alerts, with the monitor's de-duplication and hysteresis."""

    name = "static_all"

    def __init__(self, topology: Topology) -> None:
        super().__init__()
        self.book = AlertBook(topology.key_dims, topology.name, WindowEvaluator(topology).clear_ratios())
        self.state = DetectorState()

    def on_window(
        self, start: int, end: int, values: list[SignalValue], raw: list[Breach], now_ms: int
    ) -> None:
        evaluated = {(v.signal, v.metric, v.key): v.value for v in values}
        for alert in self.book.update(self.state, raw, (start, end), now_ms, evaluated):
            if alert.status == "firing":
                self.fired.append(_fired(self.name, alert))


# Which way each signal goes wrong; signals not listed (funnel pass rates, new ones) are watched both ways.
_UP = frozenset({"latency", "error_rate", "fallback_rate", "empty_slate_rate", "freshness"})
_DOWN = frozenset({"volume", "candidate_source", "engagement_ratio"})


def side_of(signal: str) -> str:
    """The side a detector watches for ``signal``.

    >>> side_of("latency"), side_of("volume"), side_of("funnel")
    ('up', 'down', 'both')
    """
    return "up" if signal in _UP else "down" if signal in _DOWN else "both"


class _DetectorStack(_WindowObserver):
    """The default detector stack on every per-window series; an alert opens at the threshold and closes
    once the score is below half of it."""

    name = "detectors"

    def __init__(
        self,
        key_dims: tuple[str, ...],
        factory: Callable[[str], SeriesDetector] = default_detector,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__()
        self.key_dims = key_dims
        self.factory = factory
        self.threshold = threshold
        self.detectors: dict[tuple[str, str, tuple[str, ...]], SeriesDetector] = {}
        self.open: set[tuple[str, str, tuple[str, ...]]] = set()

    def on_window(
        self, start: int, end: int, values: list[SignalValue], raw: list[Breach], now_ms: int
    ) -> None:
        for value in values:
            ident = (value.signal, value.metric, value.key)
            detector = self.detectors.get(ident)
            if detector is None:
                detector = self.detectors[ident] = self.factory(side_of(value.signal))
            score = detector.update(value.value)
            if score >= self.threshold:
                if ident not in self.open:
                    self.open.add(ident)
                    key = dict(zip(self.key_dims, value.key, strict=True))
                    self.fired.append(Fired(self.name, value.signal, value.metric, key, start, end, now_ms))
            elif score < self.threshold / 2:
                self.open.discard(ident)


class _EventAlerts:
    """Per-event flags of one raw stream as alert openings: a flag opens an alert unless the stream was
    flagged less than ``quiet_ms`` before (then the open alert simply continues)."""

    def __init__(self, system: str, signal: str, window_ms: int) -> None:
        self.system = system
        self.signal = signal
        self.window_ms = window_ms
        self.last_flag: int | None = None
        self.fired: list[Fired] = []

    def flag(self, ts: int) -> None:
        if self.last_flag is None or ts - self.last_flag > self.window_ms:
            start = ts - ts % self.window_ms
            self.fired.append(Fired(self.system, self.signal, "event", {}, start, start + self.window_ms, ts))
        self.last_flag = ts


# The raw values of a serving event that the naive baselines see, named by the signal they stand for
# (volume: ms since the previous request; freshness: age of watch_minutes_7d; candidate_source: the share
# of trending candidates). Engagement carries no segment or serving values, so it is not among them.
_RAW = (
    "latency",
    "error_rate",
    "fallback_rate",
    "empty_slate_rate",
    "volume",
    "freshness",
    "candidate_source",
)


class _NaiveEventBaselines:
    """Baseline (b): river's detectors on the raw values of every serving event."""

    def __init__(self, seed: int, window_ms: int, q: float) -> None:
        from river import anomaly, preprocessing, stats

        untyped: Any = (anomaly, preprocessing, stats)  # river is untyped
        self._anomaly, self._preprocessing, self._stats = untyped
        self.scaler = self._preprocessing.MinMaxScaler()
        self.hst = self._anomaly.HalfSpaceTrees(seed=seed)
        self.quantile = self._stats.Quantile(q=q)
        self.hst_alerts = _EventAlerts("hst", "any", window_ms)
        self.adwins = {name: _river_adwin() for name in _RAW}
        self.adwin_alerts = {name: _EventAlerts("adwin", name, window_ms) for name in _RAW}
        self.previous_ts: int | None = None

    def observe(self, event: Mapping[str, Any]) -> None:
        ts = int(event["ts"])
        gap = float(ts - self.previous_ts) if self.previous_ts is not None else 0.0
        self.previous_ts = ts
        error = event["error"] is not None
        sources = event.get("sources") or {}
        retrieved = sum(sources.values())
        feature_ts = (event.get("feature_ts") or {}).get("watch_minutes_7d", ts)
        x = {
            "latency": float(event["latency_ms"]["total"]),
            "error_rate": float(error),
            "fallback_rate": float(bool(event["fallback"])),
            "empty_slate_rate": float(not error and not event["items"]),
            "volume": gap,
            "freshness": float(ts - feature_ts),
            "candidate_source": sources.get("trending", 0) / retrieved if retrieved else 0.0,
        }
        # As river's Pipeline(MinMaxScaler(), QuantileFilter(HalfSpaceTrees(), q)) does, scoring once:
        # a flagged event is not learnt (protect_anomaly_detector), every score updates the quantile.
        scaled = self.scaler.transform_one(x)
        score = self.hst.score_one(scaled)
        # As QuantileFilter.classify: a quantile of None or 0 means no threshold yet. (Taking 0 as one
        # would flag every event of the first window, and, protected, the trees would never learn.)
        threshold = self.quantile.get() or math.inf
        flagged = score >= threshold
        if flagged:
            self.hst_alerts.flag(ts)
        else:
            self.hst.learn_one(scaled)
        self.scaler.learn_one(x)
        self.quantile.update(score)
        for name, value in x.items():
            adwin = self.adwins[name]
            adwin.update(value)
            if adwin.drift_detected:
                self.adwin_alerts[name].flag(ts)

    @property
    def fired(self) -> dict[str, list[Fired]]:
        adwin = sorted((f for a in self.adwin_alerts.values() for f in a.fired), key=lambda f: f.emitted_ms)
        return {"hst": self.hst_alerts.fired, "adwin": adwin}


def _river_adwin() -> Any:
    from river import drift

    make: Callable[[], Any] = drift.ADWIN
    return make()


def _run_traffic(
    config: DetectionBenchConfig,
    topology: Topology,
    seed: int,
    start_ms: int,
    duration_s: int,
    incidents: Sequence[Incident],
) -> tuple[dict[str, list[Fired]], int]:
    """One simulated run through the in-process pipeline; every system's alert openings, windows closed."""
    sim = TrafficSimulator(seed=seed, start_ms=start_ms, rate_per_s=config.rate_per_s, incidents=incidents)
    sink = ListSink()
    clock = EventTimeClock(start_ms)
    observers: list[_WindowObserver] = [_StaticAll(topology), _DetectorStack(topology.key_dims)]
    pipeline = InProcessPipeline.build(
        topology,
        alerts=sink,
        deadletters=sink,
        clock=clock,
        partitions=4,
        worker_id="bench",
        observers=observers,
    )
    engine = pipeline.engine
    naive = _NaiveEventBaselines(seed, topology.window.size_ms, config.hst_q) if config.naive else None
    end_ms = start_ms + duration_s * 1000
    step_ms = config.step_s * 1000
    until = start_ms
    while until < end_ms:
        until = min(until + step_ms, end_ms)
        for kind, key, event in sim.events_until(until):
            pipeline.feed(kind, key, orjson.dumps(event))
            if naive is not None and kind == "serving":
                naive.observe(event)
        clock.observe(until)
        pipeline.step()
    pipeline.step(final=True)
    fired = {"monitor": [_fired("monitor", a) for a in sink.alerts if a.status == "firing"]}
    fired.update({o.name: o.fired for o in observers})
    if naive is not None:
        fired.update(naive.fired)
    return fired, engine.windows_closed


# -- jobs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _IncidentJob:
    kind: str
    magnitude: float
    seed: int


@dataclass(frozen=True, slots=True)
class _CleanJob:
    seed: int
    start_ms: int
    duration_s: int


def _incident_for(config: DetectionBenchConfig, job: _IncidentJob, start_ms: int) -> Incident:
    # A seed-dependent offset within the minute, so onsets do not always sit on a window boundary.
    onset_ms = start_ms + config.onset_s * 1000 + (job.seed * 23 % 60) * 1000
    return Incident(
        job.kind,
        onset_ms=onset_ms,
        duration_ms=config.incident_s * 1000,
        magnitude=job.magnitude,
        # Kinds the monitor can only see fleet-wide (engagement) hit everyone: their truth is global anyway.
        target={} if INCIDENT_KINDS[job.kind].global_key else dict(TARGETS[job.seed % len(TARGETS)]),
    )


def _run_incident(config: DetectionBenchConfig, topology: Topology, job: _IncidentJob) -> dict[str, Any]:
    start_ms = BASE_MS + (job.seed * 7 % 24) * HOUR_MS
    incident = _incident_for(config, job, start_ms)
    fired, _ = _run_traffic(config, topology, job.seed, start_ms, config.run_s, [incident])
    truth = incident.ground_truth
    outcome = {system: _score_incident(system, alerts, truth, topology) for system, alerts in fired.items()}
    return {"kind": job.kind, "magnitude": job.magnitude, "seed": job.seed, "systems": outcome}


def _run_clean(config: DetectionBenchConfig, topology: Topology, job: _CleanJob) -> dict[str, Any]:
    fired, windows = _run_traffic(config, topology, job.seed, job.start_ms, job.duration_s, [])
    systems: dict[str, Any] = {}
    for system, alerts in fired.items():
        by_signal: dict[str, int] = {}
        for alert in alerts:
            by_signal[alert.signal] = by_signal.get(alert.signal, 0) + 1
        systems[system] = {"alerts": len(alerts), "by_signal": by_signal}
    examples = [
        {
            "signal": f.signal,
            "metric": f.metric,
            "key": _slice(f.key, topology),
            "window_start": f.window_start,
        }
        for f in fired["monitor"][:10]
    ]
    return {
        "seed": job.seed,
        "sim_s": job.duration_s,
        "windows": windows,
        "systems": systems,
        "examples": examples,
    }


def _run_job(
    config: DetectionBenchConfig, topology: Topology, job: _IncidentJob | _CleanJob
) -> dict[str, Any]:
    if isinstance(job, _IncidentJob):
        return _run_incident(config, topology, job)
    return _run_clean(config, topology, job)


# -- scoring --------------------------------------------------------------------------------------------


def _slice(key: Mapping[str, str], topology: Topology) -> str:
    named = [f"{d}={key[d]}" for d in topology.segment_dims if key.get(d, ALL) != ALL]
    return ",".join(named) or "*"


def _names_truth(fired: Fired, truth: GroundTruth, topology: Topology) -> bool:
    if fired.signal != truth.signal:
        return False
    # Per-feature and per-source signals must name the broken one ("p95_age_s.<feature>", "share.<source>");
    # a release's detail is the new model version, named by the alert's key.
    named = (fired.metric.split(".", 1)[-1], fired.key.get("model_version"))
    if truth.detail is not None and truth.detail not in named:
        return False
    for dim in topology.segment_dims:
        if fired.key.get(dim) != truth.key.get(dim, ALL):
            return False
    return all(
        fired.key.get(dim) == value for dim, value in truth.key.items() if dim not in topology.segment_dims
    )


def _score_incident(
    system: str, alerts: Sequence[Fired], truth: GroundTruth, topology: Topology
) -> dict[str, Any]:
    """Detected, delay, first key right and false alerts of one system in one incident run."""
    size = topology.window.size_ms
    onset_window = truth.onset_ms - truth.onset_ms % size
    end = truth.end_ms if truth.end_ms is not None else math.inf
    if truth.signal in LABEL_SIGNALS:
        # Judged on late labels: a window's labels are final only after the maturity time, so its alert
        # can come after the incident itself ended.
        end += topology.labels.maturity_ms + 2 * size
    sliced = system in SLICED

    def during(f: Fired) -> bool:
        if sliced:
            return onset_window <= f.window_start < end
        return truth.onset_ms <= f.emitted_ms < end

    hits = [f for f in alerts if during(f) and (not sliced or _names_truth(f, truth, topology))]
    # Error-budget burn alerts are deliberately not localised (they say a whole series' users are hurt):
    # one during the incident is its consequence, not a false alert; anywhere else it is.
    budget = [f for f in alerts if f.signal == "error_budget_burn" and during(f) and f not in hits]
    first = min(hits, key=lambda f: (f.emitted_ms, f.window_start), default=None)
    result: dict[str, Any] = {
        "detected": first is not None,
        "delay_s": None,
        "delay_windows": None,
        "first_key_right": None,
        "false_alerts": len(alerts) - len(hits) - len(budget),
        "budget_alerts": len(budget),
    }
    if first is not None:
        result["delay_s"] = (first.emitted_ms - truth.onset_ms) / 1000
        result["delay_windows"] = (first.window_end - onset_window) // size
    if sliced:
        of_signal = [f for f in alerts if during(f) and f.signal == truth.signal]
        if of_signal:
            earliest = min(f.window_start for f in of_signal)
            result["first_key_right"] = any(
                _names_truth(f, truth, topology) for f in of_signal if f.window_start == earliest
            )
    return result


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values).

    >>> _percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.9), _percentile([], 0.5)
    (9, None)
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _summarise_incidents(
    config: DetectionBenchConfig, results: Sequence[Mapping[str, Any]], systems: Sequence[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in config.kinds:
        spec = INCIDENT_KINDS[kind]
        for magnitude in config.magnitudes[kind]:
            runs = [r for r in results if r["kind"] == kind and r["magnitude"] == magnitude]
            row: dict[str, Any] = {
                "kind": kind,
                "signal": spec.signal,
                "magnitude": magnitude,
                "default_magnitude": magnitude == spec.default_magnitude,
                "runs": len(runs),
                "systems": {},
            }
            for system in systems:
                outcomes = [r["systems"][system] for r in runs if system in r["systems"]]
                if not outcomes:
                    continue
                detected = [o for o in outcomes if o["detected"]]
                delays_s = [o["delay_s"] for o in detected]
                delays_w = [o["delay_windows"] for o in detected]
                judged = [o["first_key_right"] for o in outcomes if o["first_key_right"] is not None]
                row["systems"][system] = {
                    "recall": len(detected) / len(outcomes),
                    "detected": len(detected),
                    "delay_windows": {
                        "median": statistics.median(delays_w) if delays_w else None,
                        "p90": _percentile(delays_w, 0.9),
                    },
                    "delay_s": {
                        "median": statistics.median(delays_s) if delays_s else None,
                        "p90": _percentile(delays_s, 0.9),
                    },
                    "first_key_right": sum(judged) / len(judged) if judged else None,
                    "false_alerts_per_run": sum(o["false_alerts"] for o in outcomes) / len(outcomes),
                }
            rows.append(row)
    return rows


def _summarise_clean(results: Sequence[Mapping[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    sim_s = sum(r["sim_s"] for r in results)
    days = sim_s / 86_400
    out: dict[str, Any] = {"days": days, "runs": len(results), "systems": {}}
    for system in systems:
        present = [r["systems"][system] for r in results if system in r["systems"]]
        if not present:
            continue
        alerts = sum(p["alerts"] for p in present)
        by_signal: dict[str, int] = {}
        for p in present:
            for signal, n in p["by_signal"].items():
                by_signal[signal] = by_signal.get(signal, 0) + n
        out["systems"][system] = {
            "false_alerts": alerts,
            "per_day": alerts / days if days else None,
            "by_signal": dict(sorted(by_signal.items())),
        }
    out["monitor_examples"] = [e for r in results for e in r["examples"]][:20]
    return out


def _goals(incidents: Sequence[Mapping[str, Any]], clean: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the monitor meets the goals at each kind's default magnitude, and on clean traffic."""
    per_kind: dict[str, Any] = {}
    for row in incidents:
        if not row["default_magnitude"] or "monitor" not in row["systems"]:
            continue
        stats = row["systems"]["monitor"]
        median = stats["delay_windows"]["median"]
        per_kind[row["kind"]] = {
            "recall": stats["recall"] >= GOALS["recall"],
            "median_delay_windows": median is not None and median <= GOALS["median_delay_windows"],
        }
    monitor = clean.get("systems", {}).get("monitor")
    false_ok = (
        None
        if monitor is None or monitor["per_day"] is None
        else (monitor["per_day"] <= GOALS["false_alerts_per_day"])
    )
    met = false_ok is not False and all(all(v.values()) for v in per_kind.values())
    return {"goals": dict(GOALS), "default_magnitude": per_kind, "false_alerts_per_day": false_ok, "met": met}


# -- the whole benchmark -------------------------------------------------------------------------------


def _jobs(config: DetectionBenchConfig) -> list[_IncidentJob | _CleanJob]:
    jobs: list[_IncidentJob | _CleanJob] = []
    total_s = round(config.clean_days * 86_400)
    piece = 0
    while total_s > 0:
        duration = min(config.clean_chunk_s, total_s)
        # Clean pieces start at midnight of successive days and use seeds of their own.
        jobs.append(_CleanJob(seed=10_000 + piece, start_ms=BASE_MS + piece * DAY_MS, duration_s=duration))
        total_s -= duration
        piece += 1
    for seed in range(config.seeds):
        for kind in config.kinds:
            jobs.extend(_IncidentJob(kind, magnitude, seed) for magnitude in config.magnitudes[kind])
    return jobs


def run_detection_bench(
    config: DetectionBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the benchmark and return its report (JSON-safe; see :func:`format_report`)."""
    began = time.perf_counter()
    say = progress or (lambda _message: None)
    jobs = _jobs(config)
    # Loaded once: every run (in any process) judges with the same topology.
    topology = load_topology(config.topology)
    results: list[dict[str, Any]] = []
    say(f"{len(jobs)} runs ({config.incident_runs} with incidents), {config.jobs} process(es)")
    if config.jobs == 1:
        for done, job in enumerate(jobs, 1):
            results.append(_run_job(config, topology, job))
            say(f"  {done}/{len(jobs)} {_describe_job(job)}")
    else:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            # Longest first (the clean days), so the pool does not end waiting on one of them.
            futures = {pool.submit(_run_job, config, topology, job): job for job in jobs}
            for done, future in enumerate(as_completed(futures), 1):
                results.append(future.result())
                say(f"  {done}/{len(jobs)} {_describe_job(futures[future])}")
    systems = [s for s in SYSTEMS if config.naive or s in SLICED]
    incidents = _summarise_incidents(config, [r for r in results if "kind" in r], systems)
    clean = _summarise_clean([r for r in results if "kind" not in r], systems)
    traffic_s = time.perf_counter() - began
    synthetic: dict[str, Any] = {"skipped": "disabled (synthetic=False)"}
    if config.synthetic:
        say("river synthetic streams")
        synthetic = run_synthetic(config.synthetic_seeds)
    config_doc = asdict(config)
    config_doc["magnitudes"] = {k: list(v) for k, v in config.magnitudes.items() if k in config.kinds}
    config_doc["kinds"] = list(config.kinds)
    return {
        "suite": "detection",
        "version": REPORT_VERSION,
        "config": config_doc,
        "environment": {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "systems": dict(SYSTEMS),
        "targets": [dict(t) for t in TARGETS],
        "incidents": incidents,
        "clean": clean,
        "goals": _goals(incidents, clean),
        "synthetic": synthetic,
        "runtime_s": {"traffic": round(traffic_s, 1), "total": round(time.perf_counter() - began, 1)},
    }


def _describe_job(job: _IncidentJob | _CleanJob) -> str:
    if isinstance(job, _IncidentJob):
        return f"{job.kind} magnitude={job.magnitude:g} seed={job.seed}"
    return f"clean seed={job.seed} {job.duration_s / 3600:g} h"


# -- river's synthetic streams ----------------------------------------------------------------------------


def _synthetic_detectors() -> dict[str, Callable[[], SeriesDetector]]:
    return {
        "robust_baseline": RobustBaseline,
        "adwin": lambda: RiverDrift("adwin"),
        "page_hinkley": lambda: RiverDrift(
            "page_hinkley", params={"min_instances": 30, "delta": 0.5, "threshold": 25.0, "alpha": 0.999}
        ),
        "default": default_detector,
    }


def _alert_onsets(scores: Sequence[float], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Indices where an alert opens (score reaches the threshold after being below half of it)."""
    onsets: list[int] = []
    open_ = False
    for i, score in enumerate(scores):
        if score >= threshold:
            if not open_:
                onsets.append(i)
            open_ = True
        elif score < threshold / 2:
            open_ = False
    return onsets


def run_synthetic(seeds: int = 5, batch: int = 100) -> dict[str, Any]:
    """Series detectors on river's synthetic generators with known change points and anomalies.

    * Concept drift: ``ConceptDriftStream`` switches SEA from variant 0 to variant 3 at instance
      20,000 (nearly abrupt, width 200, and gradual, width 2,000) of 30,000; an online Gaussian naive
      Bayes learns the stream, and its error rate per ``batch`` instances is the monitored series
      (300 points, change at point 200). Reported: detection (an alert opening within 50 points of the
      change), its delay in points, and alert openings before the change per 1,000 points.
    * Point anomalies: ``AnomalySine`` (10,000 points, 100 anomalies) scored on its cosine channel,
      with and without ``period=25`` (the wave's period is 8 pi, about 25.1 points): precision and
      recall of the points scored at the default threshold.
    """
    try:
        from river import datasets, naive_bayes
    except ImportError as exc:  # pragma: no cover - river is a dependency
        return {"skipped": f"river datasets unavailable: {exc}"}
    synth: Any = datasets.synth
    nb: Any = naive_bayes
    drift_rows: list[dict[str, Any]] = []
    factories = _synthetic_detectors()
    # river's ConceptDriftStream overflows math.exp for widths under ~115 at position 20,000 (its
    # sigmoid is computed for every instance), so the most abrupt switch here spans 200 instances.
    for width in (200, 2000):
        per_detector: dict[str, dict[str, list[float]]] = {
            n: {"delay": [], "missed": [], "false": []} for n in factories
        }
        change = 20_000 // batch
        for seed in range(seeds):
            stream = synth.ConceptDriftStream(
                stream=synth.SEA(variant=0, seed=seed),
                drift_stream=synth.SEA(variant=3, seed=seed + 100),
                position=20_000,
                width=width,
                seed=seed,
            )
            model = nb.GaussianNB()
            errors: list[float] = []
            wrong = 0
            for i, (x, y) in enumerate(stream.take(30_000), 1):
                wrong += model.predict_one(x) != y
                model.learn_one(x, y)
                if i % batch == 0:
                    errors.append(wrong / batch)
                    wrong = 0
            for name, factory in factories.items():
                detector = factory()
                onsets = _alert_onsets([detector.update(v) for v in errors])
                before = [i for i in onsets if i < change]
                after = [i - change for i in onsets if change <= i < change + 50]
                per_detector[name]["false"].append(len(before) / change * 1000)
                per_detector[name]["missed"].append(0.0 if after else 1.0)
                if after:
                    per_detector[name]["delay"].append(after[0])
        for name, got in per_detector.items():
            drift_rows.append(
                {
                    "stream": f"SEA 0->3, width {width}",
                    "detector": name,
                    "runs": seeds,
                    "recall": 1 - statistics.fmean(got["missed"]),
                    "median_delay_points": statistics.median(got["delay"]) if got["delay"] else None,
                    "false_alerts_per_1000": statistics.fmean(got["false"]),
                }
            )
    anomaly_rows: list[dict[str, Any]] = []
    detectors: dict[str, Callable[[], SeriesDetector]] = {
        "default": default_detector,
        "robust_baseline": RobustBaseline,
        "robust_baseline_period25": lambda: RobustBaseline(period=25),
        # A more sensitive baseline (alerts from 4.24 sigmas alone), to show what seasonality adds.
        "robust_baseline_k4": lambda: RobustBaseline(k=4.0, k_run=None),
        "robust_baseline_k4_period25": lambda: RobustBaseline(k=4.0, k_run=None, period=25),
    }
    for name, factory in detectors.items():
        tp = fp = fn = 0
        for seed in range(seeds):
            detector = factory()
            for x, is_anomaly in synth.AnomalySine(n_samples=10_000, n_anomalies=100, seed=seed):
                flagged = detector.update(x["cosine"]) >= DEFAULT_THRESHOLD
                tp += flagged and is_anomaly
                fp += flagged and not is_anomaly
                fn += is_anomaly and not flagged
        anomaly_rows.append(
            {
                "stream": "AnomalySine cosine",
                "detector": name,
                "runs": seeds,
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
            }
        )
    return {"drift": drift_rows, "anomalies": anomaly_rows}


# -- report ---------------------------------------------------------------------------------------------


def _fmt(value: Any, pattern: str = "{:.0%}") -> str:
    return "-" if value is None else pattern.format(value)


def format_report(report: Mapping[str, Any]) -> str:
    """The report as plain-text tables."""
    lines: list[str] = []
    systems = [s for s in SYSTEMS if any(s in row["systems"] for row in report["incidents"])]
    lines.append(
        "Incidents (recall | median/p90 delay in windows | median delay s | first key right | "
        "false alerts per run)"
    )
    header = f"{'kind':<19}{'magnitude':>10}{'runs':>5}  " + "  ".join(f"{s:<36}" for s in systems)
    lines.append(header)
    for row in report["incidents"]:
        cells = []
        for system in systems:
            st = row["systems"].get(system)
            if st is None:
                cells.append(f"{'':<36}")
                continue
            delay = (
                f"{_fmt(st['delay_windows']['median'], '{:g}')}/{_fmt(st['delay_windows']['p90'], '{:g}')}"
            )
            cell = (
                f"{_fmt(st['recall']):>4} {delay:>5}w {_fmt(st['delay_s']['median'], '{:.0f}'):>4}s "
                f"key {_fmt(st['first_key_right']):>4} fa {st['false_alerts_per_run']:.1f}"
            )
            cells.append(f"{cell:<36}")
        mark = "*" if row["default_magnitude"] else " "
        lines.append(f"{row['kind']:<19}{row['magnitude']:>9g}{mark}{row['runs']:>5}  " + "  ".join(cells))
    lines.append("(* the kind's default magnitude)")
    clean = report["clean"]
    lines.append("")
    lines.append(f"Clean traffic: {clean['days']:g} simulated days ({clean['runs']} runs)")
    for system, st in clean["systems"].items():
        by_signal = ", ".join(f"{k}={v}" for k, v in st["by_signal"].items()) or "none"
        lines.append(
            f"  {system:<11} {st['per_day']:8.1f} false alerts/day  ({st['false_alerts']}: {by_signal})"
        )
    goals = report["goals"]
    lines.append("")
    lines.append(
        f"Goals (monitor, default magnitudes: recall >= {goals['goals']['recall']:.0%}, median delay <= "
        f"{goals['goals']['median_delay_windows']:g} windows; <= {goals['goals']['false_alerts_per_day']:g} "
        f"false alert/day): {'met' if goals['met'] else 'NOT met'}"
    )
    for kind, ok in goals["default_magnitude"].items():
        missed = [name for name, good in ok.items() if not good]
        lines.append(f"  {kind:<19} {'ok' if not missed else 'misses ' + ', '.join(missed)}")
    lines.append(f"  false alerts/day    {'ok' if goals['false_alerts_per_day'] else 'misses'}")
    synthetic = report["synthetic"]
    lines.append("")
    if "skipped" in synthetic:
        lines.append(f"River synthetic streams: skipped ({synthetic['skipped']})")
    else:
        lines.append("River synthetic streams")
        for row in synthetic["drift"]:
            lines.append(
                f"  {row['stream']:<22} {row['detector']:<26} recall {_fmt(row['recall']):>4}  median delay "
                f"{_fmt(row['median_delay_points'], '{:g}'):>3} points  {row['false_alerts_per_1000']:.1f} "
                "false alerts/1000 points"
            )
        for row in synthetic["anomalies"]:
            lines.append(
                f"  {row['stream']:<22} {row['detector']:<26} precision {_fmt(row['precision'])}  "
                f"recall {_fmt(row['recall'])}"
            )
    runtime = report["runtime_s"]
    lines.append("")
    lines.append(f"Runtime: {runtime['total']:.0f} s ({runtime['traffic']:.0f} s of simulated traffic runs)")
    return "\n".join(lines)
