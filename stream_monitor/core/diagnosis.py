"""Diagnosis: from what the monitor saw around an incident to a ranked list of suspects with evidence.

Input is plain data the engine already produces: per closed window the signal values
(:class:`~stream_monitor.core.series.SignalValue`, gathered in a :class:`SignalHistory`), the alerts
(their JSON documents), the deployments of the models (release history, core/lineage.py), dataset
arrivals, and a bounded sample of request ids per slice and window (:class:`ExampleReservoir`).
Output is a :class:`Diagnosis`: the symptom, ranked :class:`Suspect` s (each with the evidence that put it
there, the time it first moved, the alerts behind it, and for a release its lineage and rollback target),
a timeline, an Adtributor-style drill-down of the symptom across segment dimensions and model versions,
the features that moved, and the funnel stage where candidates were lost.

How suspects are ranked (docs/diagnose.md): every alert opening in the time range is grouped by
(signal, feature/source/stage, slice) into a suspect; each suspect gets

* ``timing``: exp(-|onset - T0| / 3 windows), T0 the onset of the first *lasting* suspect (open at least
  half the time since its onset; a blip that opened and resolved long before does not anchor it): the
  first movers of the incident come first;
* ``layer``: the signal's place in the causal chain of a recommender (data and releases -> feature
  freshness/quality, candidate sources, service faults -> feature drift -> score distribution -> ranking
  outcome (popularity, diversity) -> engagement, labels and error budgets): an upstream cause moves its
  downstream consequences, rarely the other way round, so among near-simultaneous movers the upstream one
  is the likelier cause;
* ``persistence``: the share of the windows since its onset that it stayed open (a one-window blip is a
  weaker suspect than a lasting shift);

and score = 0.4 timing + 0.35 layer + 0.25 persistence. A deployment whose version is named by the
suspects' keys, deployed shortly before the first onset, becomes a ``release`` suspect on top of them.

Pure: standard library only (plus this package's core modules).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_monitor.core.fields import ALL
from stream_monitor.core.lineage import DeploymentRecord, ReleaseHistory, build_history
from stream_monitor.core.series import SignalValue
from stream_monitor.core.stats.robust import robust_location_scale

__all__ = [
    "CAUSAL_LAYER",
    "Diagnosis",
    "DrillRow",
    "ExampleReservoir",
    "Marker",
    "SignalHistory",
    "Suspect",
    "adtributor",
    "diagnose",
    "onset_of",
]

SeriesId = tuple[str, str, tuple[str, ...]]

# Place of each signal in the causal chain (0 = most upstream). Signals not listed sit at MAX_LAYER.
CAUSAL_LAYER: Mapping[str, int] = {
    "release": 0,
    "dataset_arrival": 0,
    "freshness": 1,
    "feature_quality": 1,
    "candidate_source": 1,
    "engagement_ratio": 1,
    "volume": 1,
    "latency": 2,
    "error_rate": 2,
    "fallback_rate": 2,
    "empty_slate_rate": 2,
    "feature_drift": 2,
    "score_drift": 3,
    "score_collapse": 3,
    "position_score": 4,
    "popularity": 4,
    "diversity": 4,
    "funnel": 4,
    "release_ctr": 5,
    "label_ctr": 5,
    "labels": 5,
    "error_budget_burn": 6,
}
MAX_LAYER = 6
# Suspect kind by signal (the vocabulary).
_KIND: Mapping[str, str] = {
    "freshness": "feature",
    "feature_quality": "feature",
    "feature_drift": "feature",
    "candidate_source": "source",
    "latency": "infrastructure",
    "error_rate": "infrastructure",
    "fallback_rate": "infrastructure",
    "empty_slate_rate": "infrastructure",
    "volume": "traffic",
    "engagement_ratio": "logging",
    "dataset_arrival": "dataset",
    "score_drift": "model",
    "score_collapse": "model",
    "position_score": "model",
    "popularity": "ranking",
    "diversity": "ranking",
    "release_ctr": "release",
    "label_ctr": "outcome",
    "error_budget_burn": "outcome",
}
# Signals whose metric names a feature, source or stage after the first dot ("p95_age_s.<feature>").
_DETAIL_SIGNALS = frozenset({"freshness", "feature_drift", "feature_quality", "candidate_source", "latency"})
# Which way each signal goes wrong (for onsets of series without alerts); the rest are watched both ways.
_UP = frozenset(
    {"latency", "error_rate", "fallback_rate", "empty_slate_rate", "freshness", "feature_quality"}
)
_DOWN = frozenset({"volume", "candidate_source", "engagement_ratio"})
WEIGHTS = {"timing": 0.4, "layer": 0.35, "persistence": 0.25}
TIMING_WINDOWS = 3.0
# A deployment this many windows before the first onset (or after it, up to 1) can explain it.
RELEASE_LOOKBACK_WINDOWS = 30


@dataclass(frozen=True, slots=True)
class Marker:
    """Something that happened at a point in time: a deployment, a dataset arrival, an onset.

    >>> Marker(60_000, "deployment", "home-ranker v2 on canary").to_json_dict()["kind"]
    'deployment'
    """

    ts: int
    kind: str
    label: str

    def to_json_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "kind": self.kind, "label": self.label}


class SignalHistory:
    """Per-window signal values, kept per series (bounded by ``max_windows``, oldest dropped).

    >>> h = SignalHistory(window_ms=60_000)
    >>> h.add(0, [SignalValue("volume", "count", ("m", "*"), 10.0)])
    >>> h.add(60_000, [SignalValue("volume", "count", ("m", "*"), 2.0)])
    >>> h.series[("volume", "count", ("m", "*"))]
    {0: 10.0, 60000: 2.0}
    """

    def __init__(self, window_ms: int, max_windows: int = 1_440) -> None:
        self.window_ms = window_ms
        self.max_windows = max_windows
        self.windows: list[int] = []
        self.series: dict[SeriesId, dict[int, float]] = {}

    def add(self, start: int, values: Iterable[SignalValue]) -> None:
        """Record one closed window's values (a window seen twice adds to its values)."""
        if start not in self.windows:
            self.windows.append(start)
            self.windows.sort()
        for v in values:
            if math.isfinite(v.value):
                self.series.setdefault((v.signal, v.metric, v.key), {})[start] = v.value
        if len(self.windows) > self.max_windows:
            dropped = set(self.windows[: -self.max_windows])
            del self.windows[: -self.max_windows]
            for points in self.series.values():
                for start_ in dropped & points.keys():
                    del points[start_]


class ExampleReservoir:
    """A few request ids per (window, slice) while replaying: bounded memory, flagged requests preferred.

    Slices are ``dim=value`` for each segment dimension and ``model_version``, plus ``*`` (everything).

    >>> r = ExampleReservoir(window_ms=60_000, per_slice=2)
    >>> for i in range(5):
    ...     r.add(1_000 + i, f"r{i}", {"region": "eu"}, "v1", flagged=i == 3)
    >>> r.examples(0, 60_000, {"region": "eu"})
    ['r3', 'r0', 'r1']
    """

    def __init__(self, window_ms: int, per_slice: int = 3, max_windows: int = 1_440) -> None:
        self.window_ms = window_ms
        self.per_slice = per_slice
        self.max_windows = max_windows
        self._ids: dict[int, dict[str, tuple[list[str], list[str]]]] = {}

    def add(
        self, ts: int, request_id: str, segment: Mapping[str, str], version: str | None, flagged: bool
    ) -> None:
        start = ts - ts % self.window_ms
        window = self._ids.get(start)
        if window is None:
            window = self._ids[start] = {}
            if len(self._ids) > self.max_windows:
                del self._ids[min(self._ids)]
        slices = [ALL, *(f"{d}={v}" for d, v in segment.items())]
        if version is not None:
            slices.append(f"model_version={version}")
        for name in slices:
            flagged_ids, plain = window.setdefault(name, ([], []))
            target = flagged_ids if flagged else plain
            if len(target) < self.per_slice:
                target.append(request_id)

    def examples(self, start: int, end: int, key: Mapping[str, str], limit: int = 5) -> list[str]:
        """Request ids of windows in [start, end) in the slice ``key`` names (flagged ones first)."""
        names = [f"{d}={v}" for d, v in key.items() if v != ALL] or [ALL]
        flagged: list[str] = []
        plain: list[str] = []
        for window_start in sorted(w for w in self._ids if start <= w < end):
            window = self._ids[window_start]
            for name in names[:1]:  # the narrowest named slice is the first named dimension
                got = window.get(name)
                if got is not None:
                    flagged.extend(got[0])
                    plain.extend(got[1])
        return [*flagged, *plain][:limit]


@dataclass(slots=True)
class Suspect:
    """One candidate cause, with why it is suspected.

    >>> s = Suspect("feature", "freshness watch_minutes_7d region=eu", "freshness", "watch_minutes_7d",
    ...             {"region": "eu"}, 0.9, 60_000)
    >>> s.to_json_dict()["slice"]
    'region=eu'
    """

    kind: str
    name: str
    signal: str
    detail: str | None
    key: dict[str, str]
    score: float
    onset_ms: int | None
    evidence: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    components: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    rollback_target: str | None = None
    examples: list[str] = field(default_factory=list)

    @property
    def slice(self) -> str:
        named = [f"{d}={v}" for d, v in self.key.items() if v != ALL and d not in ("model", "surface")]
        return ",".join(named) or "*"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "signal": self.signal,
            "detail": self.detail,
            "key": self.key,
            "slice": self.slice,
            "score": round(self.score, 4),
            "components": {k: round(v, 4) for k, v in self.components.items()},
            "onset_ms": self.onset_ms,
            "evidence": self.evidence,
            "alerts": self.alerts,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "rollback_target": self.rollback_target,
            "examples": self.examples,
        }


@dataclass(frozen=True, slots=True)
class DrillRow:
    """One element of one dimension in the drill-down: its share of the change and how surprising it is.

    >>> DrillRow("region", "eu", 1.0, 5.0, 0.9, 0.2, True).to_json_dict()["explanatory_power"]
    0.9
    """

    dimension: str
    value: str
    expected: float
    actual: float
    explanatory_power: float
    surprise: float
    chosen: bool

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "value": self.value,
            "expected": self.expected,
            "actual": self.actual,
            "explanatory_power": round(self.explanatory_power, 4),
            "surprise": round(self.surprise, 5),
            "chosen": self.chosen,
        }


@dataclass(slots=True)
class Diagnosis:
    """The result: symptom, ranked suspects, timeline, drill-down, features, funnel, plotted series.

    >>> d = Diagnosis(symptom="error_rate.ratio", since_ms=0, until_ms=60_000, window_ms=60_000)
    >>> d.to_json_dict()["suspects"], d.top is None
    ([], True)
    """

    symptom: str | None
    since_ms: int | None
    until_ms: int | None
    window_ms: int
    suspects: list[Suspect] = field(default_factory=list)
    timeline: list[Marker] = field(default_factory=list)
    drilldown: list[DrillRow] = field(default_factory=list)
    dimensions: list[dict[str, Any]] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    funnel: dict[str, Any] = field(default_factory=dict)
    plots: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def top(self) -> Suspect | None:
        return self.suspects[0] if self.suspects else None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "symptom": self.symptom,
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "window_ms": self.window_ms,
            "suspects": [s.to_json_dict() for s in self.suspects],
            "timeline": [m.to_json_dict() for m in self.timeline],
            "drilldown": {"dimensions": self.dimensions, "rows": [r.to_json_dict() for r in self.drilldown]},
            "features": self.features,
            "funnel": self.funnel,
            "plots": self.plots,
            "notes": self.notes,
        }


# -- onsets -----------------------------------------------------------------------------------------------


def onset_of(
    points: Mapping[int, float],
    side: str = "both",
    k: float = 5.0,
    min_history: int = 5,
    trailing: int = 20,
    min_rel: float = 0.1,
) -> int | None:
    """The first window whose value and the next one leave the trailing robust band (median +- k MADs).

    The band is the median and 1.4826 x MAD of up to ``trailing`` preceding values (the spread floored at
    5 % of the median, so a nearly constant series does not flag noise), and the shift must also be at
    least ``min_rel`` of the median. Two windows in a row must deviate (the last window may be alone).

    >>> onset_of({i * 60: 10.0 + (i % 3) for i in range(10)} | {600: 30.0, 660: 31.0})
    600
    >>> onset_of({i * 60: 10.0 + (i % 3) for i in range(12)}) is None
    True
    """
    times = sorted(points)
    flags: list[bool] = []
    for i, t in enumerate(times):
        past = [points[s] for s in times[max(0, i - trailing) : i]]
        if len(past) < min_history:
            flags.append(False)
            continue
        # Robust spread that also follows quantised series (an error count of 0-2 per window): its
        # resolution is a floor, so a single step is never a shift on its own (core/detectors.py).
        med, spread = robust_location_scale(past)
        scale = max(spread, 0.05 * abs(med), 1e-9)
        dev = points[t] - med
        if side == "up":
            dev = max(dev, 0.0)
        elif side == "down":
            dev = max(-dev, 0.0)
        flags.append(abs(dev) > k * scale and abs(dev) >= min_rel * max(abs(med), 1e-9))
    for i, flagged in enumerate(flags):
        if flagged and (i + 1 == len(flags) or flags[i + 1]):
            return times[i]
    return None


def _side(signal: str) -> str:
    return "up" if signal in _UP else "down" if signal in _DOWN else "both"


# -- Adtributor -----------------------------------------------------------------------------------------


def _js(p: float, q: float) -> float:
    """Jensen-Shannon divergence term of one element (Adtributor's surprise)."""
    out = 0.0
    if p > 0:
        out += 0.5 * p * math.log(2 * p / (p + q))
    if q > 0:
        out += 0.5 * q * math.log(2 * q / (p + q))
    return out


def adtributor(
    elements: Mapping[str, Mapping[str, tuple[float, float]]],
    t_ep: float = 0.1,
    t_eep: float = 0.67,
) -> tuple[list[DrillRow], list[dict[str, Any]]]:
    """Adtributor (Bhagwan et al., NSDI 2014) over dimensions of (expected, actual) additive values.

    Per dimension, elements are taken in decreasing surprise (Jensen-Shannon divergence between the
    expected and actual shares) while each explains at least ``t_ep`` of the total change, until they
    explain ``t_eep`` of it together; dimensions are ranked by the summed surprise of their chosen ones.

    >>> rows, dims = adtributor({"region": {"eu": (10, 40), "us": (10, 11)},
    ...                          "platform": {"ios": (10, 25), "web": (10, 26)}})
    >>> dims[0]["dimension"], [r.value for r in rows if r.chosen and r.dimension == "region"]
    ('region', ['eu'])
    """
    rows: list[DrillRow] = []
    dims: list[dict[str, Any]] = []
    for dim, values in elements.items():
        f_tot = sum(f for f, _ in values.values())
        a_tot = sum(a for _, a in values.values())
        change = a_tot - f_tot
        if f_tot <= 0 or a_tot <= 0 or not values:
            continue
        scored = []
        for value, (f, a) in values.items():
            ep = (a - f) / change if change else 0.0
            scored.append((value, f, a, ep, _js(f / f_tot, a / a_tot)))
        scored.sort(key=lambda r: -r[4])
        chosen: set[str] = set()
        explained = 0.0
        for value, _f, _a, ep, _s in scored:
            if ep >= t_ep:
                chosen.add(value)
                explained += ep
                if explained >= t_eep:
                    break
        surprise = sum(s for v, _f, _a, _ep, s in scored if v in chosen) if explained >= t_eep else 0.0
        dims.append(
            {
                "dimension": dim,
                "surprise": round(surprise, 5),
                "explained": round(explained, 4),
                "elements": sorted(chosen),
            }
        )
        rows.extend(DrillRow(dim, v, f, a, ep, s, v in chosen) for v, f, a, ep, s in scored)
    dims.sort(key=lambda d: -float(d["surprise"]))
    return rows, dims


# -- diagnosis ------------------------------------------------------------------------------------------


def _detail(signal: str, metric: str) -> str | None:
    if signal in _DETAIL_SIGNALS and "." in metric:
        return metric.split(".", 1)[1]
    return None


def _underlying(doc: Mapping[str, Any]) -> tuple[str, str]:
    """An anomaly-layer alert is about a watched series "<signal>.<metric>": treat it as that signal."""
    signal, metric = str(doc["signal"]), str(doc["metric"])
    if signal == "anomaly" and "." in metric:
        signal, _, metric = metric.partition(".")
    return signal, metric


def _segment_key(
    key: Mapping[str, str], key_dims: Sequence[str], segment_dims: Sequence[str]
) -> dict[str, str]:
    return {
        d: key.get(d, ALL) for d in key_dims if d in segment_dims or d in ("model", "model_version", "arm")
    }


def diagnose(
    history: SignalHistory,
    alerts: Sequence[Mapping[str, Any]],
    key_dims: Sequence[str],
    segment_dims: Sequence[str],
    deployments: Sequence[DeploymentRecord] = (),
    datasets: Sequence[Marker] = (),
    examples: ExampleReservoir | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    model: str | None = None,
    symptom: str | None = None,
    max_suspects: int = 10,
) -> Diagnosis:
    """Rank the suspects of what happened between ``since_ms`` and ``until_ms`` (see the module docstring).

    ``alerts`` are alert documents (:meth:`Alert.to_dict`); only ``firing`` ones open a suspect, a
    ``resolved`` one closes it. ``symptom`` (``signal`` or ``signal.metric``) picks the series drilled
    down; by default the top suspect's.
    """
    size = history.window_ms
    lo = since_ms if since_ms is not None else -(2**62)
    hi = until_ms if until_ms is not None else 2**62
    last = max(history.windows) + size if history.windows else None
    diagnosis = Diagnosis(symptom, since_ms, until_ms, size)

    # 1. Alerts -> suspects grouped by (signal, detail, slice).
    groups: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], Suspect] = {}
    spans: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], list[tuple[int, int | None]]] = {}
    resolved: dict[str, int] = {}
    for doc in alerts:
        if doc.get("status") == "resolved":
            series_id = f"{doc['signal']}|{doc['metric']}|{doc.get('series', '')}"
            resolved.setdefault(series_id, int(doc["window"]["start"]))
    for doc in sorted(alerts, key=lambda d: int(d["window"]["start"])):
        if doc.get("status") != "firing":
            continue
        key = {str(k): str(v) for k, v in dict(doc["key"]).items()}
        if model is not None and key.get("model", model) not in (model, ALL):
            continue
        start = int(doc["window"]["start"])
        if not lo <= start < hi:
            continue
        signal, metric = _underlying(doc)
        detail = _detail(signal, metric)
        if signal == "release_ctr" and key.get("model_version", ALL) != ALL:
            detail = key["model_version"]
        skey = _segment_key(key, key_dims, segment_dims)
        if signal not in ("release_ctr",):
            # Version and arm matter to a release; for other signals the slice is the segment.
            skey = {d: v for d, v in skey.items() if d in segment_dims or d == "model"}
        ident = (signal, detail, tuple(sorted(skey.items())))
        suspect = groups.get(ident)
        if suspect is None:
            slice_ = ",".join(f"{d}={v}" for d, v in skey.items() if v != ALL and d != "model") or "*"
            name = " ".join(x for x in (signal, detail, slice_) if x)
            suspect = groups[ident] = Suspect(
                _KIND.get(signal, "signal"), name, signal, detail, skey, 0.0, start
            )
        suspect.alerts.append(str(doc.get("id", "")))
        if metric not in suspect.metrics:
            suspect.metrics.append(metric)
        if len(suspect.evidence) < 3:
            suspect.evidence.append(str(doc.get("message", "")))
        series_id = f"{doc['signal']}|{doc['metric']}|{doc.get('series', '')}"
        end = resolved.get(series_id)
        spans.setdefault(ident, []).append((start, end if end is not None and end > start else None))
        if doc.get("lineage"):
            suspect.lineage.update(dict(doc["lineage"]))

    # 2. Releases: every change of version on an arm in (or shortly before) the range.
    histories: dict[str, ReleaseHistory] = {}
    by_model: dict[str, list[DeploymentRecord]] = {}
    for record in deployments:
        by_model.setdefault(record.model, []).append(record)
    for name, records in by_model.items():
        histories[name] = build_history(name, [r.to_json() for r in records])

    horizon_end = min(hi, last) if last is not None else hi
    persistence: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], float] = {}
    for ident, suspect in groups.items():
        onset = suspect.onset_ms if suspect.onset_ms is not None else 0
        open_ms = sum((end if end is not None else horizon_end) - start for start, end in spans[ident])
        persistence[ident] = max(0.0, min(1.0, open_ms / max(size, horizon_end - onset)))
    # The incident starts with the first suspect that lasted (half the time since its onset or more): a
    # blip that opened and resolved long before is not the first mover of this incident.
    lasting = [s.onset_ms for i, s in groups.items() if s.onset_ms is not None and persistence[i] >= 0.5]
    onsets = lasting or [s.onset_ms for s in groups.values() if s.onset_ms is not None]
    first = min(onsets) if onsets else None
    for ident, suspect in groups.items():
        onset = suspect.onset_ms if suspect.onset_ms is not None else 0
        gap = abs(onset - (first if first is not None else onset))
        timing = math.exp(-gap / (TIMING_WINDOWS * size))
        layer = 1.0 - CAUSAL_LAYER.get(suspect.signal, MAX_LAYER) / MAX_LAYER
        suspect.components = {"timing": timing, "layer": layer, "persistence": persistence[ident]}
        suspect.score = sum(WEIGHTS[k] * v for k, v in suspect.components.items())
        relative = ""
        if first is not None and onset != first:
            relative = f", {abs(onset - first) // size} windows {'after' if onset > first else 'before'} "
            relative += "the first lasting mover"
        suspect.evidence.insert(
            0,
            f"first alert for the window at {_clock(onset)}{relative}; "
            f"open {persistence[ident]:.0%} of the time since",
        )

    quiet = _moved_suspects(history, set(groups), key_dims, segment_dims, lo, hi, first, horizon_end)
    # Quiet movers count as consequences a release may explain (a CTR that moved without an alert yet).
    release_suspects = _release_suspects(histories, [*groups.values(), *quiet], first, size, lo, hi, history)
    # Equal scores (a drop seen alike in every slice of a dimension) rank by onset, then by name: the
    # order must not depend on the order alerts or series were met in (set order differs run to run).
    suspects = sorted(
        [*groups.values(), *release_suspects, *quiet],
        key=lambda s: (-round(s.score, 9), s.onset_ms or 0, s.name),
    )

    # 3. Examples of the top suspects' slices around their onsets.
    if examples is not None:
        for suspect in suspects[:max_suspects]:
            if suspect.onset_ms is not None:
                key = {d: v for d, v in suspect.key.items() if d not in ("model", "arm")}
                suspect.examples = examples.examples(suspect.onset_ms, suspect.onset_ms + 3 * size, key)
    diagnosis.suspects = suspects[:max_suspects]

    # 4. Timeline: deployments, dataset arrivals, suspect onsets, moved series.
    for name, hist in histories.items():
        for release in hist.releases:
            r = release.record
            if lo - RELEASE_LOOKBACK_WINDOWS * size <= r.ts < hi:
                before = f" (replacing {release.previous})" if release.previous else ""
                diagnosis.timeline.append(
                    Marker(r.ts, "deployment", f"{name} {r.version} on {r.arm}{before}")
                )
    diagnosis.timeline.extend(m for m in datasets if lo <= m.ts < hi)
    for rank, suspect in enumerate(diagnosis.suspects, 1):
        if suspect.onset_ms is not None and suspect.signal != "release":
            # A series that left its band with no alert is a suspect too, but not an alert.
            if suspect.alerts:
                marker = Marker(suspect.onset_ms, "alert", f"#{rank} {suspect.name}")
            else:
                marker = Marker(
                    suspect.onset_ms, "suspect", f"#{rank} {suspect.name} (moved without an alert)"
                )
            diagnosis.timeline.append(marker)
    moved = _moved(history, lo, hi)
    for moved_ts, series in moved[:12]:
        diagnosis.timeline.append(Marker(moved_ts, "moved", _series_label(series, key_dims)))
    diagnosis.timeline.sort(key=lambda m: (m.ts, m.kind))

    # 5. Symptom drill-down, features, funnel, plots.
    sym_signal, sym_metric = _symptom(symptom, diagnosis.suspects, history)
    diagnosis.symptom = f"{sym_signal}.{sym_metric}" if sym_signal and sym_metric else symptom
    symptom_onset = diagnosis.top.onset_ms if diagnosis.top else (moved[0][0] if moved else None)
    if sym_signal and sym_metric and symptom_onset is not None:
        elements = _drill_elements(history, sym_signal, sym_metric, symptom_onset, hi, key_dims, segment_dims)
        diagnosis.drilldown, diagnosis.dimensions = adtributor(elements)
    diagnosis.features = _features(history, lo, hi, symptom_onset, key_dims)
    diagnosis.funnel = _funnel(history, symptom_onset, hi, size)
    diagnosis.plots = _plots(history, diagnosis.suspects, sym_signal, sym_metric, key_dims)
    if not alerts:
        diagnosis.notes.append("no alerts in the range: suspects come only from releases")
    return diagnosis


# Moved-without-alert suspects score at most this much: any alert outranks them.
QUIET_FACTOR = 0.5
_NOT_SUSPECTS = frozenset({"labels", "label_join", "release", "funnel", "anomaly_score"})


def _moved_suspects(
    history: SignalHistory,
    alerted: set[tuple[str, str | None, tuple[tuple[str, str], ...]]],
    key_dims: Sequence[str],
    segment_dims: Sequence[str],
    lo: int,
    hi: int,
    first: int | None,
    horizon_end: int,
) -> list[Suspect]:
    """Series that left their robust band (onset_of) without any alert: weaker incidents than the rules
    catch. Grouped like alert suspects (signal, detail, slice of at most one segment dimension), scored
    like them and then scaled by QUIET_FACTOR, so an alert always ranks above."""
    size = history.window_ms
    dims = list(key_dims)
    seg_idx = [dims.index(d) for d in segment_dims if d in dims]
    found: dict[tuple[str, str | None, tuple[tuple[str, str], ...]], Suspect] = {}
    for (signal, metric, key), points in history.series.items():
        if signal in _NOT_SUSPECTS or sum(1 for i in seg_idx if key[i] != ALL) > 1:
            continue
        side = _side(signal)
        onset = onset_of(points, side)
        if onset is None or not lo <= onset < hi:
            continue
        named = dict(zip(key_dims, key, strict=False))
        skey = {d: named.get(d, ALL) for d in key_dims if d in segment_dims or d == "model"}
        detail = _detail(signal, metric)
        ident = (signal, detail, tuple(sorted(skey.items())))
        if ident in alerted:
            continue
        before = [v for t, v in points.items() if t < onset][-20:]
        after = [v for t, v in points.items() if onset <= t < min(hi, horizon_end)]
        med, spread = robust_location_scale(before)
        scale = max(spread, 0.05 * abs(med), 1e-9)
        held = sum(1 for v in after if abs(v - med) > 3 * scale) / max(1, len(after))
        current = found.get(ident)
        if current is not None and (current.onset_ms or 0) <= onset:
            if metric not in current.metrics:
                current.metrics.append(metric)
            continue
        slice_ = ",".join(f"{d}={v}" for d, v in skey.items() if v != ALL and d != "model") or "*"
        suspect = Suspect(
            _KIND.get(signal, "signal"),
            " ".join(x for x in (signal, detail, slice_) if x),
            signal,
            detail,
            skey,
            0.0,
            onset,
            [
                f"moved without an alert at {_clock(onset)}: {metric} from {med:.4g} (median before) to "
                f"{statistics.fmean(after):.4g} (mean after); outside the band {held:.0%} of the time since"
            ],
            [],
            [metric],
            {"persistence": held},
        )
        found[ident] = suspect
    if not found:
        return []
    lasting = [s.onset_ms or 0 for s in found.values() if s.components["persistence"] >= 0.5]
    anchor = first if first is not None else min(lasting or [s.onset_ms or 0 for s in found.values()])
    for suspect in found.values():
        gap = abs((suspect.onset_ms or 0) - anchor)
        suspect.components = {
            "timing": math.exp(-gap / (TIMING_WINDOWS * size)),
            "layer": 1.0 - CAUSAL_LAYER.get(suspect.signal, MAX_LAYER) / MAX_LAYER,
            "persistence": suspect.components["persistence"],
        }
        suspect.score = QUIET_FACTOR * sum(WEIGHTS[k] * v for k, v in suspect.components.items())
    return list(found.values())


def _release_suspects(
    histories: Mapping[str, ReleaseHistory],
    suspects: Sequence[Suspect],
    first: int | None,
    size: int,
    lo: int,
    hi: int,
    history: SignalHistory,
) -> list[Suspect]:
    out: list[Suspect] = []
    for name, hist in histories.items():
        served: set[tuple[str, str]] = set()
        for release in hist.releases:
            r = release.record
            returning = (r.arm, r.version) in served
            served.add((r.arm, r.version))
            if release.previous is None or release.previous == r.version or not lo - size * 60 <= r.ts < hi:
                continue  # a first deployment or a traffic step is not a change of behaviour
            named = [s for s in suspects if s.key.get("model_version") == r.version or r.version in s.lineage]
            if first is not None:
                before = (first - r.ts) / size
                timing = math.exp(-max(0.0, before) / RELEASE_LOOKBACK_WINDOWS) if before >= -1 else 0.0
            else:
                timing = 0.5
            carried = 1.0 if named else 0.0
            # Labelled outcomes (CTR) trail serving by the label maturity: an outcome alert opening within
            # the lookback after a release is what that release would look like before its own CTR alert.
            after = [
                x
                for x in suspects
                if CAUSAL_LAYER.get(x.signal, MAX_LAYER) == 5
                and x.key.get("model_version", ALL) in (ALL, r.version)
                and x.onset_ms is not None
                and 0 <= x.onset_ms - r.ts <= RELEASE_LOOKBACK_WINDOWS * size
            ]
            if after and not named:
                carried = max(carried, 0.5)
            outcome = _version_outcome(history, r.version, release.previous)
            if outcome is not None and outcome[1] < outcome[2] * 0.9:
                # The labelled outcome (CTR) of the new version is clearly below the one it replaced.
                carried = max(carried, 0.5)
                named = named or []
            components = {"timing": timing, "layer": 1.0, "persistence": carried}
            score = sum(WEIGHTS[k] * v for k, v in components.items()) * (1.0 if carried else 0.6)
            evidence = [
                f"{name} {r.version} deployed on arm {r.arm} at {_clock(r.ts)}, replacing {release.previous}"
            ]
            if returning:
                # Going back to a version the arm served before is a rollback: the likelier fix, not cause.
                score *= 0.5
                evidence.append(f"{r.version} served this arm before: a rollback")
            if first is not None:
                gap = (first - r.ts) / size
                where = "before" if gap >= 0 else "after"
                evidence.append(f"deployed {abs(gap):.0f} windows {where} the first lasting mover")
            if named:
                evidence.append("alerts name this version: " + ", ".join(s.name for s in named[:3]))
            else:
                evidence.append("no alert names this version")
            if after and not named:
                evidence.append(
                    "labelled-outcome alerts opened within the label lookback after it: "
                    + ", ".join(x.name for x in after[:3])
                )
            if outcome is not None:
                evidence.append(
                    f"labelled {outcome[0]} of {r.version}: {outcome[1]:.4f} against {outcome[2]:.4f} of "
                    f"{release.previous} ({outcome[1] / outcome[2] - 1:+.0%})"
                    if outcome[2]
                    else f"labelled {outcome[0]} of {r.version}: {outcome[1]:.4f}"
                )
            out.append(
                Suspect(
                    "release",
                    f"release {name} {r.version} on {r.arm}",
                    "release",
                    r.version,
                    {"model": name, "model_version": r.version, "arm": r.arm},
                    score,
                    r.ts,
                    evidence,
                    [a for s in named for a in s.alerts][:10],
                    [],
                    components,
                    {r.version: {"arm": r.arm, "deployed_at": r.ts, **hist.lineage_of(r.version)}},
                    None if returning else release.previous,
                )
            )
    return out


def _version_outcome(
    history: SignalHistory, version: str, previous: str | None
) -> tuple[str, float, float] | None:
    """Mean labelled CTR of the top-level series of ``version`` and of ``previous`` (None without data)."""
    means: dict[str, list[float]] = {version: [], previous or "": []}
    for (signal, metric, key), points in history.series.items():
        if signal == "labels" and metric == "ctr" and _top_level(key) and len(key) > 1 and key[1] in means:
            means[key[1]].extend(points.values())
    if not means[version]:
        return None
    before = means[previous or ""]
    return "ctr", statistics.fmean(means[version]), statistics.fmean(before) if before else 0.0


def _clock(ms: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _series_label(series: SeriesId, key_dims: Sequence[str]) -> str:
    signal, metric, key = series
    named = [
        f"{d}={v}" for d, v in zip(key_dims, key, strict=False) if v != ALL and d not in ("model", "surface")
    ]
    return f"{signal}.{metric} " + (",".join(named) or "*")


def _top_level(key: tuple[str, ...], n_base: int = 4) -> bool:
    return all(v == ALL for v in key[n_base:])


def _moved(history: SignalHistory, lo: int, hi: int) -> list[tuple[int, SeriesId]]:
    """Top-level series (no segment fixed) that left their band in the range, earliest first."""
    out: list[tuple[int, SeriesId]] = []
    for series, points in history.series.items():
        signal, _metric, key = series
        if not _top_level(key) or signal in ("labels", "label_join", "release"):
            continue
        onset = onset_of(points, _side(signal))
        if onset is not None and lo <= onset < hi:
            out.append((onset, series))
    out.sort(key=lambda x: (x[0], CAUSAL_LAYER.get(x[1][0], MAX_LAYER)))
    return out


def _symptom(
    symptom: str | None, suspects: Sequence[Suspect], history: SignalHistory
) -> tuple[str | None, str | None]:
    top = suspects[0] if suspects else None
    if symptom:
        signal, _, metric = symptom.partition(".")
        if not metric:
            metric = next((m for s, m, _k in history.series if s == signal), "")
        return signal, metric or None
    # A release has no series of its own: drill down the first suspect that has one.
    shown = top if top is None or top.metrics else next((s for s in suspects if s.metrics), None)
    if shown is None:
        return (top.signal, None) if top else (None, None)
    return shown.signal, shown.metrics[0]


def _window_stats(points: Mapping[int, float], onset: int, hi: int) -> tuple[float, float] | None:
    before = [v for t, v in points.items() if onset - 30 * 60_000 <= t < onset]
    # The 15 windows from the onset: a long range must not dilute the change with the recovery after it.
    after = [v for t, v in points.items() if onset <= t < min(hi, onset + 15 * 60_000)]
    if not before or not after:
        return None
    return statistics.median(before), statistics.fmean(after)


def _drill_elements(
    history: SignalHistory,
    signal: str,
    metric: str,
    onset: int,
    hi: int,
    key_dims: Sequence[str],
    segment_dims: Sequence[str],
) -> dict[str, dict[str, tuple[float, float]]]:
    """(expected, actual) additive values per element of each segment dimension and of model_version.

    A rate is made additive by weighting it with its slice's volume (Adtributor's derived measures).
    """
    dims = list(key_dims)
    i_version = dims.index("model_version") if "model_version" in dims else None
    seg_idx = {dims.index(d): d for d in segment_dims if d in dims}
    volume: dict[tuple[str, ...], dict[int, float]] = {
        k: p for (s, m, k), p in history.series.items() if s == "volume" and m == "count"
    }
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for (s, m, key), points in history.series.items():
        if s != signal or m != metric:
            continue
        fixed = [i for i in seg_idx if key[i] != ALL]
        if len(fixed) == 1:
            dim, value = seg_idx[fixed[0]], key[fixed[0]]
        elif not fixed and i_version is not None and key[i_version] != ALL:
            dim, value = "model_version", key[i_version]
        else:
            continue
        stats = _window_stats(points, onset, hi)
        if stats is None:
            continue
        if signal == "volume":
            weight = (1.0, 1.0)
        else:
            vkey = tuple(ALL if i == i_version else v for i, v in enumerate(key))
            w = _window_stats(volume.get(vkey, {}), onset, hi)
            weight = w if w is not None else (1.0, 1.0)
        f, a = out.setdefault(dim, {}).get(value, (0.0, 0.0))
        out[dim][value] = (f + stats[0] * weight[0], a + stats[1] * weight[1])
    return out


def _features(
    history: SignalHistory, lo: int, hi: int, onset: int | None, key_dims: Sequence[str]
) -> list[dict[str, Any]]:
    """Feature series (freshness, quality, drift) that moved, ordered by how close to the onset."""
    rows: list[dict[str, Any]] = []
    for series, points in history.series.items():
        signal, metric, _key = series
        if signal not in ("freshness", "feature_quality", "feature_drift"):
            continue
        moved = onset_of(points, _side(signal))
        if moved is None or not lo <= moved < hi:
            continue
        feature = metric.split(".", 1)[1] if "." in metric else metric
        gap = None if onset is None else (moved - onset) // history.window_ms
        rows.append(
            {
                "feature": feature,
                "signal": signal,
                "metric": metric,
                "series": _series_label(series, key_dims),
                "moved_at": moved,
                "windows_from_onset": gap,
            }
        )
    rows.sort(key=lambda r: abs(r["windows_from_onset"]) if r["windows_from_onset"] is not None else 1e9)
    # One row per (feature, signal): the series that moved closest to the onset.
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:
        if (row["feature"], row["signal"]) not in seen:
            seen.add((row["feature"], row["signal"]))
            unique.append(row)
    return unique[:20]


_STAGES = ("filtered_per_retrieved", "ranked_per_retrieved", "returned_per_retrieved")


def _funnel(history: SignalHistory, onset: int | None, hi: int, size: int) -> dict[str, Any]:
    """Pass rate of each funnel stage before and after the onset (top-level series, mean over versions)."""
    if onset is None:
        return {}
    # Per window, the mean over the top-level series (versions, arms): a release changes the version in
    # the key at the onset, and the funnel must still compare before with after.
    merged: dict[str, dict[int, list[float]]] = {}
    for (signal, metric, key), points in history.series.items():
        if signal != "funnel" or metric not in _STAGES or not _top_level(key):
            continue
        for t, v in points.items():
            merged.setdefault(metric, {}).setdefault(t, []).append(v)
    per_stage: dict[str, list[tuple[float, float]]] = {}
    for metric, by_window in merged.items():
        stats = _window_stats({t: statistics.fmean(v) for t, v in by_window.items()}, onset, hi)
        if stats is not None:
            per_stage.setdefault(metric, []).append(stats)
    if not per_stage:
        return {}
    cumulative = {
        m: (statistics.fmean(f for f, _ in v), statistics.fmean(a for _, a in v))
        for m, v in per_stage.items()
    }
    stages: list[dict[str, Any]] = []
    previous = (1.0, 1.0)
    worst: tuple[float, str] | None = None
    for metric in _STAGES:
        if metric not in cumulative:
            continue
        f, a = cumulative[metric]
        pass_f = f / previous[0] if previous[0] else 0.0
        pass_a = a / previous[1] if previous[1] else 0.0
        change = (pass_a - pass_f) / pass_f if pass_f else 0.0
        stage = metric.split("_per_")[0]
        stages.append({"stage": stage, "pass_before": pass_f, "pass_after": pass_a, "change": change})
        if worst is None or change < worst[0]:
            worst = (change, stage)
        previous = (f, a)
    lost = worst[1] if worst is not None and worst[0] < -0.05 else None
    return {"stages": stages, "lost_at": lost}


def _plots(
    history: SignalHistory,
    suspects: Sequence[Suspect],
    signal: str | None,
    metric: str | None,
    key_dims: Sequence[str],
) -> list[dict[str, Any]]:
    """The series to plot: each top suspect's first metric on its slice (as exactly as it was alerted)."""
    chosen: list[SeriesId] = []
    for suspect in suspects[:5]:
        if not suspect.metrics:
            continue
        best: SeriesId | None = None
        for series in history.series:
            s, m, key = series
            if s != suspect.signal or m != suspect.metrics[0]:
                continue
            named = dict(zip(key_dims, key, strict=False))
            matches = all(named.get(d) == v for d, v in suspect.key.items())
            if matches and (best is None or len(history.series[series]) > len(history.series[best])):
                best = series
        if best is not None and best not in chosen:
            chosen.append(best)
    # A release: the labelled CTR of its version and of the version it replaced (top-level series).
    for suspect in suspects[:3]:
        if suspect.signal != "release":
            continue
        versions = {suspect.detail, suspect.rollback_target}
        for series in history.series:
            s, m, key = series
            labelled = s == "labels" and m == "ctr" and _top_level(key) and len(key) > 1
            if labelled and key[1] in versions and series not in chosen:
                chosen.append(series)
    return [
        {
            "label": _series_label(series, key_dims),
            "points": sorted(history.series[series].items()),
        }
        for series in chosen[:6]
    ]
