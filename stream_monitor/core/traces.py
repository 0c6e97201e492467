"""Context capture: a bounded, sampled record of recent requests per slice (docs/traces.md).

A *trace* is the compact story of one served request: its slice (model, version, arm, surface, segment),
the candidates each source gave, the features with their ages, the returned slate with scores, the
fallback/empty/error flags, the latency per stage, and (attached when it arrives) the engagement that
followed. Alerts carry the ids of a few recent traces of their slice, and ``stream-monitor trace`` prints
them, so an on-call engineer goes from "CTR dropped for region=eu" to concrete requests in one step.

Which requests are traced:

* :meth:`TraceSampler.sampled` is a pure function of the request id (:func:`trace_hash`, a CRC-32 mixed
  by a multiplicative hash: a tenth of the cost of the label join's blake2b, and it runs on every
  serving and engagement event): every worker, a restart and the engagement side agree on it without any
  lookup, and a lower rate samples a subset of a higher one.
* :meth:`TraceSampler.admit` caps the sampled requests per slice and per event-time window (and in all
  per window), so a hot slice cannot crowd out the others and the write rate is bounded. The cap is per
  worker and first-come within a window.

This module is pure (standard library, orjson and this package's core): the stores live in
``stream_monitor.state.traces``. Encoded traces are versioned JSON (never pickle); :func:`decode_trace`
checks the shape, so a bad value in the store is skipped, never executed or fatal.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stream_monitor.core.events import EngagementEvent, ServingEvent
from stream_monitor.core.fields import ALL, OTHER, split_series
from stream_monitor.core.topology import TraceRule

__all__ = [
    "TRACE_VERSION",
    "TraceBatch",
    "TraceCapture",
    "TraceFormatError",
    "TraceRecord",
    "TraceRule",
    "TraceSampler",
    "decode_engagement",
    "decode_trace",
    "encode_engagement",
    "encode_trace",
    "fallback_pattern",
    "matching_slices",
    "slice_key",
    "trace_hash",
]

TRACE_VERSION: Final = 1
# Longest string kept in a trace (ids, feature values, error text): longer ones are cut.
MAX_STRING: Final = 128
# Sources, funnel stages and latency stages kept (each a small map in a valid event; bounded anyway).
MAX_MAP_ENTRIES: Final = 32


def trace_hash(request_id: str) -> int:
    """A 32-bit hash of a request id, the same in every process (unlike ``hash()``), well spread.

    >>> trace_hash("r1") == trace_hash("r1"), 0 <= trace_hash("r1") < 2**32
    (True, True)
    """
    # CRC-32 alone is linear: ids that differ in a few characters differ in fixed bit patterns. The
    # multiplication by the 32-bit golden ratio moves every input bit into the high bits compared below.
    return (zlib.crc32(request_id.encode()) * 0x9E3779B1) & 0xFFFFFFFF


class TraceFormatError(ValueError):
    """Stored trace bytes that are not a trace of a version this code can read."""


class TraceSampler:
    """Which requests are traced: a deterministic hash sample, capped per slice and per window.

    >>> s = TraceSampler(TraceRule(sample_rate=1.0, per_slice_per_window=2), window_ms=60_000)
    >>> [s.admit("m|v|control|home|eu", 1_000 + i) for i in range(3)]
    [True, True, False]
    >>> s.admit("m|v|control|home|us", 1_000), s.admit("m|v|control|home|eu", 61_000)
    (True, True)
    >>> TraceSampler(TraceRule(sample_rate=0.01), 60_000).sampled("r1") == TraceSampler(
    ...     TraceRule(sample_rate=0.01), 60_000).sampled("r1")
    True
    """

    # Windows of counts kept: events up to this many windows late are still capped, older counts go.
    KEEP_WINDOWS = 10

    def __init__(self, rule: TraceRule, window_ms: int) -> None:
        self.rule = rule
        self.window_ms = window_ms
        self._counts: dict[int, dict[str, int]] = {}
        self._totals: dict[int, int] = {}
        self.capped = 0
        self._threshold = int(rule.sample_rate * 2**32)

    def sampled(self, request_id: str) -> bool:
        """Whether the request id is in the sample (a pure function of the id and the rate)."""
        return trace_hash(request_id) < self._threshold

    def admit(self, slice_: str, ts: int) -> bool:
        """Count one sampled request of ``slice_`` at event time ``ts``; False when its window is full."""
        start = ts - ts % self.window_ms
        counts = self._counts.get(start)
        if counts is None:
            newest = max(self._counts, default=start)
            if start < newest - self.KEEP_WINDOWS * self.window_ms:
                self.capped += 1
                return False  # far too late to matter for "recent" examples
            counts = self._counts[start] = {}
            self._totals[start] = 0
            horizon = max(newest, start) - self.KEEP_WINDOWS * self.window_ms
            for old in [w for w in self._counts if w < horizon]:
                del self._counts[old]
                del self._totals[old]
        n = counts.get(slice_, 0)
        if n >= self.rule.per_slice_per_window or self._totals[start] >= self.rule.per_window:
            self.capped += 1
            return False
        counts[slice_] = n + 1
        self._totals[start] += 1
        return True


@dataclass(slots=True)
class TraceRecord:
    """One captured request (see the module docstring); ``engagement`` is attached when read back.

    >>> from stream_monitor.core.events import parse_event
    >>> event = parse_event(b'{"type": "serving", "request_id": "r1", "ts": 1764086400000, "model": "m",'
    ...     b' "model_version": "v1", "arm": "control", "surface": "home", "segment": {"region": "eu"},'
    ...     b' "latency_ms": {"total": 80.0}, "sources": {"collab": 10},'
    ...     b' "items": [{"id": "a", "score": 0.9}], "features": {"age_days": 40},'
    ...     b' "feature_ts": {"age_days": 1764086340000}}')
    >>> record = TraceRecord.from_serving(event, "m|v1|control|home|eu", TraceRule())
    >>> record.feature_age_ms, record.slate
    ({'age_days': 60000}, [{'id': 'a', 'score': 0.9}])
    >>> decode_trace(encode_trace(record, TraceRule())) == record
    True
    """

    request_id: str
    ts: int
    series: str
    key: dict[str, str]
    segment: dict[str, str] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    funnel: dict[str, int] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    feature_age_ms: dict[str, int] = field(default_factory=dict)
    slate: list[dict[str, Any]] = field(default_factory=list)
    slate_len: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    fallback: bool = False
    empty: bool = False
    error: str | None = None
    truncated: list[str] = field(default_factory=list)
    engagement: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_serving(cls, event: ServingEvent, series: str, rule: TraceRule) -> TraceRecord:
        """The trace of a serving event whose (folded) series key is ``series``."""
        truncated: list[str] = []
        key = {
            "model": _cut(event.model),
            "model_version": _cut(event.model_version),
            "arm": event.arm,
            "surface": _cut(event.surface),
        }
        features: dict[str, Any] = {}
        ages: dict[str, int] = {}
        dropped = set(rule.drop_features)
        names = list(dict.fromkeys([*event.features, *event.feature_ts]))
        if len(names) > rule.max_features:
            truncated.append("features")
            names = names[: rule.max_features]
        for name in names:
            cut = _cut(str(name))
            if rule.feature_values and name not in dropped and name in event.features:
                features[cut] = _scalar(event.features[name])
            ts = event.feature_ts.get(name)
            if type(ts) is int:
                ages[cut] = event.ts - ts
        slate: list[dict[str, Any]] = []
        for item in event.items[: rule.max_items]:
            if isinstance(item, dict):
                entry: dict[str, Any] = {k: _scalar(item[k]) for k in ("id", "score", "source") if k in item}
                slate.append(entry)
        if len(event.items) > rule.max_items:
            truncated.append("slate")
        return cls(
            request_id=event.request_id,
            ts=event.ts,
            series=series,
            key=key,
            segment=_small_map(event.segment, truncated, "segment", str),
            sources=_small_map(event.sources, truncated, "sources", int),
            funnel=_small_map(event.funnel, truncated, "funnel", int),
            features=features,
            feature_age_ms=ages,
            slate=slate,
            slate_len=len(event.items),
            latency_ms=_small_map(event.latency_ms, truncated, "latency_ms", float),
            fallback=event.fallback,
            empty=event.empty_slate,
            error=_cut(event.error) if event.error is not None else None,
            truncated=truncated,
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "v": TRACE_VERSION,
            "request_id": self.request_id,
            "ts": self.ts,
            "series": self.series,
            "key": self.key,
            "segment": self.segment,
            "sources": self.sources,
            "funnel": self.funnel,
            "features": self.features,
            "feature_age_ms": self.feature_age_ms,
            "slate": self.slate,
            "slate_len": self.slate_len,
            "latency_ms": self.latency_ms,
            "fallback": self.fallback,
            "empty": self.empty,
            "error": self.error,
            "truncated": self.truncated,
            "engagement": self.engagement,
        }


def encode_trace(record: TraceRecord, rule: TraceRule) -> bytes:
    """Versioned JSON of at most ``rule.max_bytes``: features, then the slate, are cut until it fits."""
    doc = record.to_json_dict()
    doc.pop("engagement")  # stored beside the trace, appended as it arrives
    raw = orjson.dumps(doc)
    while len(raw) > rule.max_bytes:
        # Halve the biggest list or map that can still shrink; the keys and flags always fit.
        name = max(("features", "feature_age_ms", "slate", "sources"), key=lambda n: len(doc[n]))
        if not doc[name]:
            raise TraceFormatError(f"trace of {record.request_id!r} does not fit in {rule.max_bytes} bytes")
        value = doc[name]
        keep = len(value) // 2
        doc[name] = value[:keep] if isinstance(value, list) else dict(list(value.items())[:keep])
        if name not in doc["truncated"]:
            doc["truncated"].append(name)
        raw = orjson.dumps(doc)
    return raw


def decode_trace(raw: bytes, engagement: Iterable[bytes] = ()) -> TraceRecord:
    """A stored trace, with its stored engagement (unreadable engagement entries are skipped).

    >>> decode_trace(b'{"v": 99}')
    Traceback (most recent call last):
    ...
    stream_monitor.core.traces.TraceFormatError: trace version 99 is not 1
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"trace is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TraceFormatError(f"trace must be a JSON object, got {type(doc).__name__}")
    if doc.get("v") != TRACE_VERSION:
        raise TraceFormatError(f"trace version {doc.get('v')!r} is not {TRACE_VERSION}")
    try:
        record = TraceRecord(
            request_id=_typed(doc, "request_id", str),
            ts=_typed(doc, "ts", int),
            series=_typed(doc, "series", str),
            key=_str_map(doc["key"]),
            segment=_str_map(doc.get("segment", {})),
            sources={str(k): int(v) for k, v in _typed(doc, "sources", dict).items()},
            funnel={str(k): int(v) for k, v in _typed(doc, "funnel", dict).items()},
            features=dict(_typed(doc, "features", dict)),
            feature_age_ms={str(k): int(v) for k, v in _typed(doc, "feature_age_ms", dict).items()},
            slate=[dict(i) for i in _typed(doc, "slate", list)],
            slate_len=_typed(doc, "slate_len", int),
            latency_ms={str(k): float(v) for k, v in _typed(doc, "latency_ms", dict).items()},
            fallback=bool(doc.get("fallback", False)),
            empty=bool(doc.get("empty", False)),
            error=doc["error"] if isinstance(doc.get("error"), str) else None,
            truncated=[str(t) for t in _typed(doc, "truncated", list)],
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TraceFormatError):
            raise
        raise TraceFormatError(f"trace is malformed: {exc!r}") from exc
    for entry in engagement:
        try:
            record.engagement.append(decode_engagement(entry))
        except TraceFormatError:
            continue
    record.engagement.sort(key=lambda e: (e["ts"], str(e.get("action"))))
    return record


def encode_engagement(event: EngagementEvent) -> bytes:
    """One engagement event as stored beside its trace (identical events encode identically).

    >>> encode_engagement(EngagementEvent("r1", 1764086401000, "click", "a", 0))
    b'{"ts":1764086401000,"action":"click","item_id":"a","position":0,"value":0.0}'
    """
    return orjson.dumps(
        {
            "ts": event.ts,
            "action": event.action,
            "item_id": _cut(event.item_id) if event.item_id is not None else None,
            "position": event.position,
            "value": event.value,
        }
    )


def decode_engagement(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"engagement entry is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or type(doc.get("ts")) is not int or not isinstance(doc.get("action"), str):
        raise TraceFormatError("engagement entry is not an object with an integer ts and an action")
    return doc


@dataclass(slots=True)
class TraceBatch:
    """Traces and engagement captured since the last commit, ready for a trace store."""

    # (request id, series, event ts, encoded trace)
    traces: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    # (request id, event ts, encoded engagement)
    engagement: list[tuple[str, int, bytes]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.traces or self.engagement)

    def __len__(self) -> int:
        return len(self.traces) + len(self.engagement)


class TraceCapture:
    """The engine's side of context capture: sample serving and engagement events into a batch.

    Memory is bounded: at most ``max_pending`` entries wait for a commit (more are dropped and counted),
    and the sampler keeps counts for a few windows only.

    >>> from stream_monitor.core.events import parse_event
    >>> capture = TraceCapture(TraceRule(sample_rate=1.0), window_ms=60_000)
    >>> capture.serving(parse_event(b'{"type": "serving", "request_id": "r1", "ts": 1764086400000,'
    ...     b' "model": "m", "model_version": "v1", "arm": "control", "surface": "home",'
    ...     b' "latency_ms": {"total": 80.0}}'), "m|v1|control|home")
    True
    >>> capture.engagement(EngagementEvent("r1", 1764086401000, "click"))
    True
    >>> batch = capture.take()
    >>> [t[:3] for t in batch.traces], len(batch.engagement), bool(capture.take())
    ([('r1', 'm|v1|control|home', 1764086400000)], 1, False)
    """

    def __init__(self, rule: TraceRule, window_ms: int, max_pending: int = 20_000) -> None:
        self.rule = rule
        self.sampler = TraceSampler(rule, window_ms)
        self.max_pending = max_pending
        self._batch = TraceBatch()
        self.captured = 0
        self.dropped = 0
        self.oversized = 0

    def serving(self, event: ServingEvent, series: str) -> bool:
        """Trace the request if it is sampled and its slice's window has room; True when traced."""
        if not self.sampler.sampled(event.request_id) or not self.sampler.admit(series, event.ts):
            return False
        if len(self._batch) >= self.max_pending:
            self.dropped += 1
            return False
        try:
            raw = encode_trace(TraceRecord.from_serving(event, series, self.rule), self.rule)
        except (TraceFormatError, TypeError, ValueError):
            # orjson refuses e.g. integers beyond 64 bits in a feature value: no trace, never a crash.
            self.oversized += 1
            return False
        self._batch.traces.append((event.request_id, series, event.ts, raw))
        self.captured += 1
        return True

    def engagement(self, event: EngagementEvent) -> bool:
        """Keep engagement of a sampled request id (the store attaches it only to a stored trace)."""
        if not self.sampler.sampled(event.request_id):
            return False
        if len(self._batch) >= self.max_pending:
            self.dropped += 1
            return False
        self._batch.engagement.append((event.request_id, event.ts, encode_engagement(event)))
        return True

    def take(self) -> TraceBatch:
        batch, self._batch = self._batch, TraceBatch()
        return batch


def slice_key(series: str, key_dims: Sequence[str]) -> dict[str, str]:
    """The key of a stored series string (as the accumulator builds it).

    >>> slice_key("m|v1|control|home|eu", ("model", "model_version", "arm", "surface", "region"))
    {'model': 'm', 'model_version': 'v1', 'arm': 'control', 'surface': 'home', 'region': 'eu'}
    """
    values = split_series(series)
    if len(values) != len(key_dims):
        return {}
    return dict(zip(key_dims, values, strict=True))


def matching_slices(series: Iterable[str], key_dims: Sequence[str], pattern: Mapping[str, str]) -> list[str]:
    """The stored series that fall in the slice ``pattern`` names (``*`` or an absent dim: any value).

    >>> dims = ("model", "model_version", "arm", "surface", "region")
    >>> matching_slices(["m|v1|control|home|eu", "m|v1|control|home|us", "m|v2|canary|home|eu"], dims,
    ...                 {"model": "m", "model_version": "*", "region": "eu"})
    ['m|v1|control|home|eu', 'm|v2|canary|home|eu']
    """
    wanted = [(i, pattern[d]) for i, d in enumerate(key_dims) if pattern.get(d, ALL) != ALL]
    out = []
    for s in series:
        values = split_series(s)
        if len(values) == len(key_dims) and all(values[i] == v for i, v in wanted):
            out.append(s)
    return out


def fallback_pattern(pattern: Mapping[str, str]) -> dict[str, str] | None:
    """The wider slice to take examples from when ``pattern`` has none: its model and version.

    None when that is no wider (or there is no model to narrow to).

    >>> fallback_pattern({"model": "m", "model_version": "v1", "arm": "canary", "region": "eu"})
    {'model': 'm', 'model_version': 'v1'}
    >>> fallback_pattern({"model": "m", "model_version": "v1", "arm": "*"}) is None
    True
    """
    model = pattern.get("model", ALL)
    if model in (ALL, OTHER):
        return None
    wide = {"model": model, "model_version": pattern.get("model_version", ALL)}
    narrower = any(v != ALL for d, v in pattern.items() if d not in wide)
    return wide if narrower else None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_STRING else text[: MAX_STRING - 3] + "..."


def _scalar(value: object) -> Any:
    """A JSON scalar fit for a trace: strings cut, numbers kept, anything nested summarised."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list | dict):
        return f"<{type(value).__name__} of {len(value)}>"
    return _cut(repr(value))


def _small_map(mapping: Mapping[str, Any], truncated: list[str], name: str, kind: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if len(out) >= MAX_MAP_ENTRIES:
            truncated.append(name)
            break
        try:
            out[_cut(str(key))] = _cut(value) if kind is str else kind(value)
        except (TypeError, ValueError, OverflowError):
            continue  # e.g. a non-numeric source count: not part of the trace
    return out


def _typed(doc: Mapping[str, Any], name: str, kind: type) -> Any:
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TraceFormatError(f"trace field {name!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TraceFormatError(f"trace key must be an object, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}
