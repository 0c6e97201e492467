"""Gather what :func:`stream_monitor.core.diagnosis.diagnose` needs, from a recording or from live state.

* :class:`DiagnosisRecorder` observes an in-process :class:`~stream_monitor.engine.Engine` (the one
  ``replay`` and the benchmarks run): every closed window's signal and label values (as a
  :class:`~stream_monitor.core.observers.WindowObserver`), the alerts, the release history from the store, the
  dataset arrivals and a bounded reservoir of request ids per (window, slice) from the serving events.
* :func:`replay_file` runs a JSONL recording through it, with no servers.
* :func:`live_state` reads what the worker keeps in its state store (Redis): the diagnosis log of the
  closed windows (each window's signal values and the alerts it fired or resolved, written with the
  close; core/window_log.py, the newest ``WINDOW_LOG_LIMIT`` windows), the open alerts of the detector
  checkpoint, the release history and the dataset arrivals. A live diagnosis so has the timeline and
  the drill-down of a replay, over the windows the log still holds.
* :func:`live_examples` gives the top live suspects example request ids from the trace store (the
  worker's sampled request traces, docs/traces.md), which ``stream-monitor trace`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert, DetectorState, StateFormatError
from stream_monitor.core.datasets import DatasetArrival
from stream_monitor.core.diagnosis import Diagnosis, ExampleReservoir, Marker, SignalHistory, diagnose
from stream_monitor.core.lineage import DeploymentRecord, LineageError
from stream_monitor.core.observers import LABELS, SIGNALS, ClosedWindow
from stream_monitor.core.topology import Topology
from stream_monitor.core.window_log import WindowEntry, WindowLogError
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sinks.base import DeadLetter, ListSink
from stream_monitor.sinks.health import HealthSink
from stream_monitor.state.base import StateStore
from stream_monitor.state.memory import MemoryStore
from stream_monitor.state.traces import TraceStore, example_ids

__all__ = [
    "DiagnosisRecorder",
    "LiveInputs",
    "LiveStateMissing",
    "live_examples",
    "live_state",
    "replay_file",
]

STEP_LINES = 5_000


class LiveStateMissing(RuntimeError):
    """The state store holds nothing to diagnose (no checkpoint, no history)."""


class _HistoryRecorder:
    """Adds each closed window's signal and label values to the diagnosis history: the series a
    diagnosis ranks (burn rates, dataset checks and anomaly scores are views of those, not causes)."""

    def __init__(self, history: SignalHistory) -> None:
        self.history = history

    def on_closed(self, window: ClosedWindow) -> None:
        self.history.add(window.start, window.values_of(SIGNALS, LABELS))


class _CountingDeadLetters:
    def __init__(self) -> None:
        self.count = 0

    def send(self, record: DeadLetter) -> None:
        self.count += 1

    def flush(self) -> None:
        pass


class DiagnosisRecorder:
    """An in-process engine that records what a diagnosis needs while it runs.

    >>> from stream_monitor.topology import load_topology
    >>> rec = DiagnosisRecorder(load_topology(None), start_ms=0)
    >>> rec.observe({"type": "serving", "ts": 5, "request_id": "r1", "segment": {"region": "eu"},
    ...              "model_version": "v1", "error": "timeout", "items": []})
    >>> rec.examples.examples(0, 60_000, {"region": "eu"})
    ['r1']
    """

    def __init__(
        self,
        topology: Topology,
        start_ms: int = 0,
        partitions: int = 1,
        topics: Topics | None = None,
        health_sink: HealthSink | None = None,
    ):
        self.topology = topology
        self.store = MemoryStore()
        self.sink = ListSink()
        self.dead = _CountingDeadLetters()
        self.clock = EventTimeClock(start_ms)
        self.history = SignalHistory(topology.window.size_ms)
        self.pipeline = InProcessPipeline.build(
            topology,
            alerts=self.sink,
            deadletters=self.dead,
            clock=self.clock,
            topics=topics,
            partitions=partitions,
            worker_id="diagnose",
            store=self.store,
            observers=[_HistoryRecorder(self.history)],
            health_sink=health_sink,
        )
        self.engine = self.pipeline.engine
        self.examples = ExampleReservoir(topology.window.size_ms)
        self.datasets: list[Marker] = []

    def observe(self, event: Mapping[str, Any]) -> None:
        """Note what the diagnosis needs from one event (request ids, dataset arrivals)."""
        kind = event.get("type")
        ts = event.get("ts")
        if not isinstance(ts, int):
            return
        if kind == "serving":
            segment = event.get("segment")
            rid = event.get("request_id")
            if isinstance(rid, str) and isinstance(segment, dict):
                flagged = bool(event.get("error") or event.get("fallback") or not event.get("items"))
                version = event.get("model_version")
                seg = {str(k): str(v) for k, v in segment.items() if k in self.topology.segment_dims}
                self.examples.add(ts, rid, seg, version if isinstance(version, str) else None, flagged)
        elif kind == "dataset":
            label = f"{event.get('name')} {event.get('partition')} ({event.get('rows')} rows)"
            self.datasets.append(Marker(ts, "dataset", label))

    def feed(self, line: bytes, event: dict[str, Any] | None = None) -> None:
        """One JSONL line (``event``: its decoded JSON object, when the caller has it)."""
        # Routed as the worker's topics carry it (inprocess.py): the label join needs serving and
        # engagement on their own co-partitioned topics.
        if event is None:
            event = self.pipeline.feed_line(line)
        else:
            self.pipeline.feed_document(line, event)
        if event is not None:
            self.observe(event)

    def step(self, final: bool = False) -> None:
        self.pipeline.step(final=final)

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.sink.alerts]

    def diagnose(self, **filters: Any) -> Diagnosis:
        """Rank what the recording shows (``filters``: since_ms, until_ms, model, symptom, max_suspects)."""
        return diagnose(
            self.history,
            self.alerts,
            self.topology.key_dims,
            self.topology.segment_dims,
            deployments=self.deployments(),
            datasets=self.datasets,
            examples=self.examples,
            **filters,
        )

    def deployments(self) -> list[DeploymentRecord]:
        out: list[DeploymentRecord] = []
        for model in self.store.deployments():
            for raw in self.store.history(model):
                try:
                    out.append(DeploymentRecord.from_json(raw))
                except LineageError:
                    continue
        return out


def replay_file(path: Path | None, topology: Topology, stream: IO[bytes] | None = None) -> DiagnosisRecorder:
    """Replay a JSONL recording (or ``stream``) through a :class:`DiagnosisRecorder`."""
    recorder = DiagnosisRecorder(topology)
    source: Iterable[bytes]
    with stream if stream is not None else open(path or "", "rb") as source:
        for number, line in enumerate(source, 1):
            line = line.strip()
            if line:
                recorder.feed(line)
            if number % STEP_LINES == 0:
                recorder.step()
    recorder.step(final=True)
    return recorder


@dataclass(slots=True)
class LiveInputs:
    """What a live diagnosis reads from the state store (see :func:`live_state`)."""

    history: SignalHistory
    alerts: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[DeploymentRecord] = field(default_factory=list)
    datasets: list[Marker] = field(default_factory=list)
    windows: int = 0  # window log entries read
    unreadable: int = 0  # window log entries that could not be decoded (skipped)

    def diagnose(self, topology: Topology, **filters: Any) -> Diagnosis:
        """Rank as a replay does (``filters``: since_ms, until_ms, model, symptom, max_suspects)."""
        return diagnose(
            self.history,
            self.alerts,
            topology.key_dims,
            topology.segment_dims,
            deployments=self.deployments,
            datasets=self.datasets,
            **filters,
        )


def live_state(
    store: StateStore,
    window_ms: int,
    models: Iterable[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> LiveInputs:
    """The worker's diagnosis log, open alerts, release history and dataset arrivals, from the store.

    The history holds the logged windows starting in [since_ms, until_ms) (all kept ones by default);
    the alerts are those the logged windows emitted, in window order, plus the checkpoint's open alerts
    that opened before the oldest kept entry. Raises :class:`LiveStateMissing` when the store holds no
    log, no checkpoint and no release history.

    >>> from stream_monitor.core.series import SignalValue
    >>> from stream_monitor.state.memory import MemoryStore
    >>> store = MemoryStore()
    >>> key = ("m", "v1", "control", "home", "*", "eu", "*")
    >>> entry = WindowEntry(0, 60_000, [SignalValue("error_rate", "rate", key, 0.3)]).encode()
    >>> store.close_window(0, 60_000, orjson.dumps(DetectorState().to_json_dict()), entry)
    True
    >>> live = live_state(store, 60_000)
    >>> live.windows, live.history.series[("error_rate", "rate", key)]
    (1, {0: 0.3})
    """
    history = SignalHistory(window_ms)
    out = LiveInputs(history)
    seen: set[tuple[str, str]] = set()
    for raw in store.window_log(since_ms, until_ms):
        try:
            entry = WindowEntry.decode(raw)
        except WindowLogError:
            out.unreadable += 1
            continue
        out.windows += 1
        history.add(entry.start, entry.values)
        for doc in entry.alerts:
            ident = (str(doc.get("id", "")), str(doc.get("status", "")))
            if ident not in seen:  # the closer re-emits after a crash; the log holds each window once
                seen.add(ident)
                out.alerts.append(doc)
    checkpoint = store.load_detector_state()
    if checkpoint is not None:
        try:
            state = DetectorState.from_json_dict(orjson.loads(checkpoint))
        except (orjson.JSONDecodeError, StateFormatError) as exc:
            raise LiveStateMissing(f"the detector checkpoint in the store is unreadable: {exc}") from exc
        for doc in state.open_alerts.values():
            alert = Alert.from_dict(doc).to_dict()
            if (str(alert.get("id", "")), "firing") not in seen:
                out.alerts.append(alert)
    names = list(models) if models is not None else list(store.deployments())
    for model in names:
        for record in store.history(model):
            try:
                out.deployments.append(DeploymentRecord.from_json(record))
            except LineageError:
                continue
    for name, record in sorted(store.datasets().items()):
        try:
            arrival = DatasetArrival.from_json(record)
        except ValueError:
            continue
        out.datasets.append(
            Marker(arrival.ts, "dataset", f"{name} {arrival.partition} ({arrival.rows} rows)")
        )
    if not out.windows and checkpoint is None and not out.deployments:
        raise LiveStateMissing(
            "the state store has no window log, no detector checkpoint and no release history: is the "
            "worker running against this Redis (STREAM_MONITOR_REDIS_URL, STREAM_MONITOR_REDIS_PREFIX)?"
        )
    return out


def live_examples(
    diagnosis: Diagnosis, store: TraceStore, key_dims: tuple[str, ...], top: int = 3, limit: int = 5
) -> int:
    """Fill the ``top`` suspects' examples with the newest traced requests of their slices.

    A suspect whose slice has no trace gets its model and version's (as alerts do). Returns how many
    suspects got examples.

    >>> from stream_monitor.core.diagnosis import Suspect
    >>> from stream_monitor.core.traces import TraceBatch
    >>> from stream_monitor.state.traces import MemoryTraceStore
    >>> store = MemoryTraceStore(now=lambda: 0)
    >>> store.put(TraceBatch([("r1", "m|v1|control|home|eu", 5, b"{}")]))
    >>> d = Diagnosis(None, None, None, 60_000)
    >>> d.suspects = [Suspect("source", "s", "candidate_source", None, {"model": "m", "region": "eu"}, 1, 0)]
    >>> dims = ("model", "model_version", "arm", "surface", "region")
    >>> live_examples(d, store, dims), d.suspects[0].examples
    (1, ['r1'])
    """
    slices = store.slices()
    filled = 0
    for suspect in diagnosis.suspects[:top]:
        suspect.examples = example_ids(store, key_dims, suspect.key, limit=limit, slices=slices)
        filled += bool(suspect.examples)
    return filled
