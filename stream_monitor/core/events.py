"""Event contract: parse and validate the JSON events producers send.

Parsing is strict at the edge and cheap on the hot path: one ``orjson.loads`` and a handful of type checks.
A bad event raises :class:`EventError` naming the field and the offending value; callers turn that into a
dead-letter record, never into a crash.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, final

import orjson

__all__ = [
    "ARMS",
    "MAX_EVENT_BYTES",
    "NDJSON",
    "DatasetEvent",
    "DeploymentEvent",
    "EngagementEvent",
    "Event",
    "EventError",
    "ServingEvent",
    "decode_document",
    "is_ndjson",
    "parse_document",
    "parse_event",
    "parse_timestamp",
]

ARMS: Final = frozenset({"control", "canary", "shadow"})
ACTIONS: Final = frozenset({"impression", "click", "play", "complete"})
MAX_EVENT_BYTES: Final = 1_000_000
MAX_ID_CHARS: Final = 128
# Deployment lineage is kept in the release history (up to 200 records a model): bounded per record.
LINEAGE_STRINGS: Final = ("training_data", "feature_set", "code_commit", "artifact_digest")
MAX_LINEAGE_CHARS: Final = 512
MAX_VALIDATION_METRICS: Final = 64
MAX_LINEAGE_EXTRA_BYTES: Final = 4096
# Epoch-ms bounds: 2000-01-01 .. 2100-01-01. Anything outside is a unit mistake (seconds, micros).
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 4_102_444_800_000
_INF: Final = math.inf
# RFC 3339 date-time (datetime.fromisoformat alone also takes other ISO 8601 forms).
_RFC3339: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class EventError(ValueError):
    """An event that does not follow the contract.

    ``reason`` is a short machine code (used as a metric label and in dead-letter records); the message
    names the field and the value.

    >>> try:
    ...     parse_event(b'{"type": "engagement", "request_id": "r1", "action": "play", "ts": "yesterday"}')
    ... except EventError as exc:
    ...     print(exc.reason, exc.field, "|", exc)
    invalid_field ts | ts: 'yesterday' is not epoch milliseconds or an RFC 3339 date-time
    """

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.reason = reason
        self.field = field


@final
@dataclass(slots=True)
class ServingEvent:
    """One served recommendation request."""

    request_id: str
    ts: int
    model: str
    model_version: str
    arm: str
    surface: str
    segment: dict[str, str]
    latency_ms: dict[str, float]
    funnel: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, Any] = field(default_factory=dict)
    feature_ts: dict[str, int] = field(default_factory=dict)
    fallback: bool = False
    error: str | None = None

    @property
    def empty_slate(self) -> bool:
        """A successful response that returned no item (errors are counted as errors, not here)."""
        if self.error is not None:
            return False
        returned = self.funnel.get("returned")
        return not self.items if returned is None else returned == 0


# Not frozen, like ServingEvent: a frozen dataclass sets each field through object.__setattr__, which made
# building one 4x slower (520 vs 125 ns), on the path of three events in four.
@final
@dataclass(slots=True)
class EngagementEvent:
    """A user's reaction to a served item."""

    request_id: str
    ts: int
    action: str
    item_id: str | None = None
    position: int | None = None
    value: float = 0.0


@final
@dataclass(slots=True, frozen=True)
class DeploymentEvent:
    """A model version starting (or changing traffic) on an arm."""

    ts: int
    model: str
    model_version: str
    arm: str
    traffic: float | None = None
    baseline_version: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    reason: str | None = None


@final
@dataclass(slots=True, frozen=True)
class DatasetEvent:
    """A batch job landed one partition of a dataset (checked against the dataset's arrival SLA)."""

    name: str
    partition: str
    ts: int
    rows: int


Event = ServingEvent | EngagementEvent | DeploymentEvent | DatasetEvent


# The content type of a batched message: several events, one JSON object per line (docs/events.md).
NDJSON = b"application/x-ndjson"


def is_ndjson(headers: Any) -> bool:
    """Whether a Kafka message's headers declare it a batch of newline-delimited events.

    Headers are a sequence of ``(name, value)`` pairs (Kafka clients) or a mapping; a ``content-type``
    of ``application/x-ndjson`` (parameters after ``;`` ignored) marks a batch.

    >>> is_ndjson([("content-type", b"application/x-ndjson; charset=utf-8")])
    True
    >>> is_ndjson(None), is_ndjson({"Content-Type": b"application/json"})
    (False, False)
    """
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(
        str(name).lower() == "content-type" and bytes(value or b"").split(b";")[0].strip() == NDJSON
        for name, value in items
    )


def parse_timestamp(value: object, name: str = "ts") -> int:
    """Epoch milliseconds from an integer or an RFC 3339 string.

    >>> parse_timestamp(1764086400123)
    1764086400123
    >>> parse_timestamp("2025-11-25T16:00:00.123Z")
    1764086400123
    """
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str):
        if not _RFC3339.match(value):
            raise EventError(
                "invalid_field", name, f"{_short(value)} is not epoch milliseconds or an RFC 3339 date-time"
            )
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise EventError(
                "invalid_field", name, f"{_short(value)} is not epoch milliseconds or an RFC 3339 date-time"
            ) from None
        if parsed.tzinfo is None:
            raise EventError("invalid_field", name, f"{_short(value)} has no UTC offset (RFC 3339 needs one)")
        ms = round(parsed.timestamp() * 1000)
    else:
        raise EventError("invalid_field", name, f"{_short(value)} is not epoch milliseconds (an integer)")
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise EventError("invalid_field", name, f"{ms} is outside 2000..2100 in epoch milliseconds")
    return ms


def parse_event(raw: bytes, expected: str | None = None) -> Event:
    """Parse one Kafka message value into a typed event.

    ``expected`` is the event type the topic carries; another type on that topic is rejected.

    >>> e = parse_event(b'{"type":"engagement","request_id":"r1","ts":1764086412000,"action":"click"}')
    >>> (type(e).__name__, e.action)
    ('EngagementEvent', 'click')
    """
    return parse_document(decode_document(raw), expected)


def decode_document(raw: bytes) -> dict[str, Any]:
    """The JSON object of one message value: the first half of :func:`parse_event`.

    A reader that must look at a line before it knows where it goes (``replay`` routes each line to the
    topic its ``type`` names) decodes it once with this and validates it with :func:`parse_document`.

    >>> decode_document(b'{"type": "serving"}')
    {'type': 'serving'}
    >>> decode_document(b'[1]')
    Traceback (most recent call last):
    ...
    stream_monitor.core.events.EventError: expected a JSON object, got list
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError("too_large", None, f"event is {len(raw)} bytes, the limit is {MAX_EVENT_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError("invalid_json", None, f"not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EventError("invalid_json", None, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def parse_document(doc: dict[str, Any], expected: str | None = None) -> Event:
    """Validate a decoded JSON object into a typed event: the second half of :func:`parse_event`.

    >>> parse_document({"type": "engagement", "request_id": "r1", "ts": 1764086412000}, "serving")
    Traceback (most recent call last):
    ...
    stream_monitor.core.events.EventError: type: 'engagement' on a topic that carries 'serving' events
    """
    kind = doc.get("type")
    if expected is not None and kind != expected:
        raise EventError(
            "unknown_type", "type", f"{_short(kind)} on a topic that carries {expected!r} events"
        )
    if kind == "serving":
        return _serving(doc)
    if kind == "engagement":
        return _engagement(doc)
    if kind == "deployment":
        return _deployment(doc)
    if kind == "dataset":
        return _dataset(doc)
    raise EventError(
        "unknown_type", "type", f"{_short(kind)} is not one of serving, engagement, deployment, dataset"
    )


def _serving(doc: dict[str, Any]) -> ServingEvent:
    latency = _mapping(doc, "latency_ms", required=True)
    checked_latency: dict[str, float] = {}
    for stage, ms in latency.items():
        if type(ms) is float and 0.0 <= ms < _INF:  # the common case, without building the field name
            checked_latency[stage] = ms
        elif ms is not None:
            checked_latency[stage] = _non_negative(ms, f"latency_ms.{stage}")
    if "total" not in checked_latency:
        raise EventError("missing_field", "latency_ms.total", "is required")
    segment = _mapping(doc, "segment")
    for dim, value in segment.items():
        if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
            raise EventError("invalid_field", f"segment.{dim}", f"{_short(value)} is not a short string")
    arm = _string(doc, "arm")
    if arm not in ARMS:
        raise EventError("invalid_field", "arm", f"{_short(arm)} is not one of control, canary, shadow")
    funnel = _mapping(doc, "funnel")
    for stage, count in funnel.items():
        if type(count) is not int or count < 0:  # type() is: a bool is not a count
            raise EventError("invalid_field", f"funnel.{stage}", f"{_short(count)} is not a count")
    items = doc.get("items", [])
    if not isinstance(items, list):
        raise EventError("invalid_field", "items", f"{_short(items)} is not a list")
    fallback = doc.get("fallback", False)
    if not isinstance(fallback, bool):
        raise EventError("invalid_field", "fallback", f"{_short(fallback)} is not true or false")
    error = doc.get("error")
    if error is not None and not isinstance(error, str):
        raise EventError("invalid_field", "error", f"{_short(error)} is not null or a string")
    return ServingEvent(
        request_id=_string(doc, "request_id"),
        ts=_timestamp(doc),
        model=_string(doc, "model"),
        model_version=_string(doc, "model_version"),
        arm=arm,
        surface=_string(doc, "surface"),
        segment=segment,
        latency_ms=checked_latency,
        funnel=funnel,
        sources=_mapping(doc, "sources"),
        items=items,
        features=_mapping(doc, "features"),
        feature_ts=_mapping(doc, "feature_ts"),
        fallback=fallback,
        error=error,
    )


def _engagement(doc: dict[str, Any]) -> EngagementEvent:
    # The hot path of the worker (3 of 4 events): each field is checked inline first, and only a value
    # that fails the quick check goes through the helper, which raises the precise error (or accepts it).
    # The order of the checks, and so which error a bad event gets, is the same as through the helpers.
    action = doc.get("action")
    if type(action) is not str or action not in ACTIONS:
        action = _string(doc, "action")
    if action not in ACTIONS:
        raise EventError("invalid_field", "action", f"{_short(action)} is not one of {sorted(ACTIONS)}")
    position = doc.get("position")
    if position is not None and (not isinstance(position, int) or isinstance(position, bool) or position < 0):
        raise EventError("invalid_field", "position", f"{_short(position)} is not a position (integer >= 0)")
    item_id = doc.get("item_id")
    if item_id is not None and not isinstance(item_id, str):
        raise EventError("invalid_field", "item_id", f"{_short(item_id)} is not a string")
    value = doc.get("value", 0.0)
    request_id = doc.get("request_id")
    if type(request_id) is not str or not 0 < len(request_id) <= MAX_ID_CHARS:
        request_id = _string(doc, "request_id")
    ts = doc.get("ts")
    if type(ts) is not int or not MIN_TS_MS <= ts < MAX_TS_MS:
        ts = _timestamp(doc)
    if type(value) is not float or not -_INF < value < _INF:
        value = _finite(value, "value")
    return EngagementEvent(request_id, ts, action, item_id, position, value)


def _deployment(doc: dict[str, Any]) -> DeploymentEvent:
    arm = _string(doc, "arm")
    if arm not in ARMS:
        raise EventError("invalid_field", "arm", f"{_short(arm)} is not one of control, canary, shadow")
    traffic = doc.get("traffic")
    if traffic is not None:
        traffic = _finite(traffic, "traffic")
        if not 0.0 <= traffic <= 1.0:
            raise EventError("invalid_field", "traffic", f"{traffic} is not a share in [0, 1]")
    baseline = doc.get("baseline_version")
    return DeploymentEvent(
        ts=_timestamp(doc),
        model=_string(doc, "model"),
        model_version=_string(doc, "model_version"),
        arm=arm,
        traffic=traffic,
        baseline_version=baseline if isinstance(baseline, str) else None,
        lineage=_lineage(_mapping(doc, "lineage")),
        actor=_note(doc, "actor"),
        reason=_note(doc, "reason"),
    )


def _note(doc: dict[str, Any], name: str) -> str | None:
    """An optional free-text field (actor, reason): a non-string is ignored, an oversized one rejected."""
    value = doc.get(name)
    if not isinstance(value, str):
        return None
    if len(value) > MAX_LINEAGE_CHARS:
        raise EventError("invalid_field", name, f"{len(value)} characters, the limit is {MAX_LINEAGE_CHARS}")
    return value


def _lineage(lineage: dict[str, Any]) -> dict[str, Any]:
    """Check a deployment's lineage: known fields typed, unknown ones kept but bounded in size.

    ``offline_validation`` is accepted as another name of ``validation`` and stored as ``validation``.

    >>> _lineage({"code_commit": "4f2c1e9", "offline_validation": {"ndcg@10": 0.41}, "team": "recs"})
    {'code_commit': '4f2c1e9', 'validation': {'ndcg@10': 0.41}, 'team': 'recs'}
    >>> _lineage({"code_commit": 4})
    Traceback (most recent call last):
    ...
    stream_monitor.core.events.EventError: lineage.code_commit: 4 is not a string
    """
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in lineage.items():
        if value is None:
            continue  # null means "not known", as if absent
        if name in LINEAGE_STRINGS:
            if not isinstance(value, str):
                raise EventError("invalid_field", f"lineage.{name}", f"{_short(value)} is not a string")
            if len(value) > MAX_LINEAGE_CHARS:
                raise EventError(
                    "invalid_field",
                    f"lineage.{name}",
                    f"{len(value)} characters, the limit is {MAX_LINEAGE_CHARS}",
                )
            out[name] = value
        elif name in ("validation", "offline_validation"):
            if "validation" in out:
                raise EventError(
                    "invalid_field", f"lineage.{name}", "validation and offline_validation are both given"
                )
            out["validation"] = _validation(value, f"lineage.{name}")
        else:
            extra[name] = value
    if extra:
        size = len(orjson.dumps(extra))
        if size > MAX_LINEAGE_EXTRA_BYTES:
            raise EventError(
                "invalid_field",
                "lineage",
                f"other fields ({', '.join(_short(k, 20) for k in list(extra)[:3])}, ...) take {size} bytes, "
                f"the limit is {MAX_LINEAGE_EXTRA_BYTES}",
            )
        out.update(extra)
    return out


def _validation(value: object, name: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise EventError("invalid_field", name, f"{_short(value)} is not a JSON object of numbers")
    if len(value) > MAX_VALIDATION_METRICS:
        limit = MAX_VALIDATION_METRICS
        raise EventError("invalid_field", name, f"{len(value)} metrics, the limit is {limit}")
    out: dict[str, float] = {}
    for metric, number in value.items():
        if len(metric) > MAX_ID_CHARS:
            raise EventError("invalid_field", f"{name}.{metric[:20]}...", f"name of {len(metric)} characters")
        out[metric] = _finite(number, f"{name}.{metric}")
    return out


def _dataset(doc: dict[str, Any]) -> DatasetEvent:
    """
    >>> parse_event(b'{"type": "dataset", "name": "user_features_hourly", "partition": "2025-11-25T15",'
    ...             b' "ts": 1764086400000, "rows": 1.5}')
    Traceback (most recent call last):
    ...
    stream_monitor.core.events.EventError: rows: 1.5 is not a row count (an integer >= 0)
    """
    rows = doc.get("rows")
    if rows is None:
        raise EventError("missing_field", "rows", "is required")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise EventError("invalid_field", "rows", f"{_short(rows)} is not a row count (an integer >= 0)")
    return DatasetEvent(
        name=_string(doc, "name"),
        partition=_string(doc, "partition"),
        ts=_timestamp(doc),
        rows=rows,
    )


def _timestamp(doc: dict[str, Any]) -> int:
    ts = doc.get("ts")
    if type(ts) is int and MIN_TS_MS <= ts < MAX_TS_MS:  # epoch ms in range: nothing to convert
        return ts
    if ts is None:
        raise EventError("missing_field", "ts", "is required")
    return parse_timestamp(doc["ts"], "ts")


def _string(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if type(value) is str and 0 < len(value) <= MAX_ID_CHARS:
        return value
    if value is None:
        raise EventError("missing_field", name, "is required")
    if not isinstance(value, str) or not value:
        raise EventError("invalid_field", name, f"{_short(value)} is not a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise EventError("invalid_field", name, f"{len(value)} characters, the limit is {MAX_ID_CHARS}")
    return value


def _mapping(doc: dict[str, Any], name: str, required: bool = False) -> dict[str, Any]:
    value = doc.get(name)
    if type(value) is dict:
        return value
    if value is None:
        if required:
            raise EventError("missing_field", name, "is required")
        return {}
    if not isinstance(value, dict):
        raise EventError("invalid_field", name, f"{_short(value)} is not a JSON object")
    return value


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError("invalid_field", name, f"{_short(value)} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise EventError("invalid_field", name, f"{_short(value)} is not finite")
    return number


def _non_negative(value: object, name: str) -> float:
    number = _finite(value, name)
    if number < 0:
        raise EventError("invalid_field", name, f"{number} is negative")
    return number


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
