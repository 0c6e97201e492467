"""The event contract at the edge (stream_monitor.core.events): parse_event and parse_timestamp.

Every rejection must be an :class:`EventError` with the documented ``reason`` code (docs/events.md, "What
happens to bad events") and a message naming the offending field; nothing else may escape, whatever the
bytes.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.events import (
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    DeploymentEvent,
    EngagementEvent,
    EventError,
    ServingEvent,
    parse_event,
    parse_timestamp,
)

pytestmark = pytest.mark.unit

HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=400)

# -- the contract examples of docs/events.md ------------------------------------------------------------

SERVING_FULL = (
    b'{"type": "serving", "request_id": "7f3c9a", "ts": 1764086400123, "model": "home-ranker", '
    b'"model_version": "2026.11.20-3", "arm": "control", "surface": "home", "segment": {"platform": "ios", '
    b'"region": "us", "tenure": "new"}, "latency_ms": {"total": 84.2, "retrieval": 21.0, "features": 30.5, '
    b'"ranking": 25.1}, "funnel": {"retrieved": 1200, "filtered": 800, "ranked": 200, "returned": 20}, '
    b'"sources": {"collab": 600, "trending": 300, "continue_watching": 300}, "items": [{"id": "s123", '
    b'"score": 0.91, "source": "collab"}], "features": {"watch_minutes_7d": 312.0, "days_since_signup": 40, '
    b'"country": "US"}, "feature_ts": {"watch_minutes_7d": 1764080000000}, "fallback": false, "error": null}'
)
SERVING_MINIMAL_RFC3339 = b"""{
  "type": "serving",
  "request_id": "b81e02",
  "ts": "2025-11-25T16:00:00.123Z",
  "model": "home-ranker",
  "model_version": "2026.11.24-1",
  "arm": "canary",
  "surface": "home",
  "latency_ms": {"total": 412.0},
  "fallback": true,
  "error": "ranker_timeout"
}"""
ENGAGEMENT_CLICK = (
    b'{"type": "engagement", "request_id": "7f3c9a", "ts": 1764086412000, "item_id": "s123", "position": 0, '
    b'"action": "click", "value": 0.0}'
)
ENGAGEMENT_COMPLETE_RFC3339 = (
    b'{"type": "engagement", "request_id": "7f3c9a", "ts": "2025-11-25T16:05:12Z", "item_id": "s123", '
    b'"position": 0, "action": "complete", "value": 1420.5}'
)
DEPLOYMENT = b"""{
  "type": "deployment",
  "ts": 1764084600000,
  "model": "home-ranker",
  "model_version": "2026.11.24-1",
  "arm": "canary",
  "traffic": 0.05,
  "baseline_version": "2026.11.20-3",
  "lineage": {
    "training_data": "warehouse.interactions@2026-11-23",
    "feature_set": "home-features:v12",
    "code_commit": "4f2c1e9",
    "artifact_digest": "sha256:9b2f6c0d4e8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c",
    "validation": {"ndcg@10": 0.41}
  },
  "actor": "ci",
  "reason": "weekly retrain"
}"""


def test_full_serving_example() -> None:
    event = parse_event(SERVING_FULL, expected="serving")
    assert isinstance(event, ServingEvent)
    assert (event.request_id, event.ts, event.model, event.model_version, event.arm, event.surface) == (
        "7f3c9a",
        1_764_086_400_123,
        "home-ranker",
        "2026.11.20-3",
        "control",
        "home",
    )
    assert event.segment == {"platform": "ios", "region": "us", "tenure": "new"}
    assert event.latency_ms == {"total": 84.2, "retrieval": 21.0, "features": 30.5, "ranking": 25.1}
    assert event.funnel["returned"] == 20
    assert event.sources == {"collab": 600, "trending": 300, "continue_watching": 300}
    assert event.items == [{"id": "s123", "score": 0.91, "source": "collab"}]
    assert event.feature_ts == {"watch_minutes_7d": 1_764_080_000_000}
    assert event.fallback is False
    assert event.error is None
    assert event.empty_slate is False


def test_minimal_serving_example_with_rfc3339_timestamp() -> None:
    event = parse_event(SERVING_MINIMAL_RFC3339, expected="serving")
    assert isinstance(event, ServingEvent)
    assert event.ts == 1_764_086_400_123
    assert event.arm == "canary"
    assert event.latency_ms == {"total": 412.0}
    assert event.segment == {} and event.funnel == {} and event.items == [] and event.features == {}
    assert event.fallback is True
    assert event.error == "ranker_timeout"
    # An errored response is counted as an error, not as an empty slate.
    assert event.empty_slate is False


def test_engagement_examples() -> None:
    click = parse_event(ENGAGEMENT_CLICK, expected="engagement")
    assert click == EngagementEvent("7f3c9a", 1_764_086_412_000, "click", "s123", 0, 0.0)
    complete = parse_event(ENGAGEMENT_COMPLETE_RFC3339, expected="engagement")
    assert complete == EngagementEvent("7f3c9a", 1_764_086_712_000, "complete", "s123", 0, 1420.5)


def test_deployment_example() -> None:
    event = parse_event(DEPLOYMENT, expected="deployment")
    assert isinstance(event, DeploymentEvent)
    assert (event.ts, event.model, event.model_version, event.arm) == (
        1_764_084_600_000,
        "home-ranker",
        "2026.11.24-1",
        "canary",
    )
    assert event.traffic == 0.05
    assert event.baseline_version == "2026.11.20-3"
    assert event.lineage["validation"] == {"ndcg@10": 0.41}
    assert (event.actor, event.reason) == ("ci", "weekly retrain")


def test_type_decides_the_event_class_without_expected() -> None:
    assert isinstance(parse_event(SERVING_FULL), ServingEvent)
    assert isinstance(parse_event(ENGAGEMENT_CLICK), EngagementEvent)
    assert isinstance(parse_event(DEPLOYMENT), DeploymentEvent)


def test_unknown_fields_are_ignored() -> None:
    doc = {**orjson.loads(ENGAGEMENT_CLICK), "experiment": {"id": 7}, "schema_version": 3}
    assert parse_event(orjson.dumps(doc)) == parse_event(ENGAGEMENT_CLICK)


@pytest.mark.parametrize(
    ("funnel", "items", "error", "empty"),
    [
        ({"returned": 0}, [{"id": "a"}], None, True),  # funnel.returned wins over items
        ({"returned": 3}, [], None, False),
        ({}, [], None, True),  # without funnel.returned, no items is empty
        ({}, [{"id": "a"}], None, False),
        ({"returned": 0}, [], "timeout", False),  # errors are not empty slates
    ],
)
def test_empty_slate(
    funnel: dict[str, int], items: list[dict[str, str]], error: str | None, empty: bool
) -> None:
    doc = {**_serving(), "funnel": funnel, "items": items, "error": error}
    event = parse_event(orjson.dumps(doc))
    assert isinstance(event, ServingEvent)
    assert event.empty_slate is empty


# -- timestamps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (1_764_086_400_123, 1_764_086_400_123),
        ("2025-11-25T16:00:00.123Z", 1_764_086_400_123),
        ("2025-11-25T17:00:00.123+01:00", 1_764_086_400_123),
        ("2025-11-25T11:30:00.123-04:30", 1_764_086_400_123),
        ("2025-11-25T16:00:00Z", 1_764_086_400_000),
        ("2025-11-25T16:00:00+00:00", 1_764_086_400_000),
        ("2025-11-25T16:00:00.1234Z", 1_764_086_400_123),  # sub-millisecond fractions are rounded away
        ("2025-11-25T16:00:00.1236Z", 1_764_086_400_124),
        ("2025-11-25T16:00:00.1234567890123Z", 1_764_086_400_123),  # any number of fraction digits
        ("2025-11-25T16:00:00-00:00", 1_764_086_400_000),
        (946_684_800_000, 946_684_800_000),  # 2000-01-01: the lower bound is inclusive
        ("2000-01-01T00:00:00Z", 946_684_800_000),
        (4_102_444_799_999, 4_102_444_799_999),  # one ms before 2100-01-01
    ],
)
def test_parse_timestamp_accepts(value: object, ms: int) -> None:
    assert parse_timestamp(value) == ms


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (1_764_086_400, "outside 2000..2100"),  # seconds instead of milliseconds
        (1_764_086_400_123_000, "outside 2000..2100"),  # microseconds
        (946_684_799_999, "outside 2000..2100"),
        (4_102_444_800_000, "outside 2000..2100"),  # 2100-01-01 is excluded
        (-1, "outside 2000..2100"),
        ("1999-12-31T23:59:59.999Z", "outside 2000..2100"),
        ("2100-01-01T00:00:00Z", "outside 2000..2100"),
        (1_764_086_400_123.0, "is not epoch milliseconds (an integer)"),  # decimal point: rejected
        (True, "is not epoch milliseconds (an integer)"),
        (None, "is not epoch milliseconds (an integer)"),
        ([1_764_086_400_123], "is not epoch milliseconds (an integer)"),
        ("1764086400.123", "is not epoch milliseconds or an RFC 3339 date-time"),
        ("1764086400123", "is not epoch milliseconds or an RFC 3339 date-time"),
        ("yesterday", "is not epoch milliseconds or an RFC 3339 date-time"),
        ("", "is not epoch milliseconds or an RFC 3339 date-time"),
        ("2025-11-25T16:00:00", "is not epoch milliseconds or an RFC 3339 date-time"),  # no offset
        ("2025-11-25", "is not epoch milliseconds or an RFC 3339 date-time"),
    ],
)
def test_parse_timestamp_rejects(value: object, fragment: str) -> None:
    with pytest.raises(EventError) as info:
        parse_timestamp(value, "feature_ts.x")
    assert info.value.reason == "invalid_field"
    assert info.value.field == "feature_ts.x"
    assert str(info.value).startswith("feature_ts.x: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "2025-11-25 16:00:00Z",  # space instead of T
        "2025-11-25t16:00:00Z",  # lower-case t (docs: upper-case T)
        "20251125T160000Z",  # ISO 8601 basic format
        "2025-W48-2T16:00:00Z",  # ISO week date
        "2025-11-25T16:00Z",  # no seconds
        "2025-11-25T16:00:00+0100",  # offset without a colon
        "\uff12\uff10\uff12\uff15-11-25T16:00:00Z",  # full-width digits
        "2025-11-25T16:00:00Z\n",
        " 2025-11-25T16:00:00Z",
    ],
)
def test_parse_timestamp_rejects_non_rfc3339_iso_forms(value: str) -> None:
    # Regression: datetime.fromisoformat alone accepted these ISO 8601 forms.
    with pytest.raises(EventError) as info:
        parse_timestamp(value)
    assert info.value.reason == "invalid_field"
    assert "RFC 3339" in str(info.value)


# -- rejections: one table, every path ------------------------------------------------------------------


def _serving(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "serving",
        "request_id": "r1",
        "ts": 1_764_086_400_123,
        "model": "home-ranker",
        "model_version": "v1",
        "arm": "control",
        "surface": "home",
        "segment": {"platform": "ios", "region": "eu"},
        "latency_ms": {"total": 80.0, "ranking": 20.0},
        "funnel": {"returned": 20},
        "items": [{"id": "s1"}],
    }
    doc.update(changes)
    return doc


def _engagement(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "engagement",
        "request_id": "r1",
        "ts": 1_764_086_412_000,
        "action": "click",
    }
    doc.update(changes)
    return doc


def _deployment(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "deployment",
        "ts": 1_764_084_600_000,
        "model": "home-ranker",
        "model_version": "v2",
        "arm": "canary",
    }
    doc.update(changes)
    return doc


def _without(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != name}


def test_builders_are_valid() -> None:
    for doc in (_serving(), _engagement(), _deployment()):
        parse_event(orjson.dumps(doc))


LONG = "x" * (MAX_ID_CHARS + 1)

REJECTIONS: list[Any] = [
    # missing required fields
    *(
        pytest.param(_without(_serving(), name), "missing_field", name, id=f"serving without {name}")
        for name in ("request_id", "ts", "model", "model_version", "arm", "surface", "latency_ms")
    ),
    pytest.param(_serving(latency_ms={"ranking": 3.0}), "missing_field", "latency_ms.total", id="no total"),
    pytest.param(_serving(latency_ms={}), "missing_field", "latency_ms.total", id="empty latency"),
    pytest.param(_serving(model=None), "missing_field", "model", id="model null"),
    *(
        pytest.param(_without(_engagement(), name), "missing_field", name, id=f"engagement without {name}")
        for name in ("request_id", "ts", "action")
    ),
    *(
        pytest.param(_without(_deployment(), name), "missing_field", name, id=f"deployment without {name}")
        for name in ("ts", "model", "model_version", "arm")
    ),
    # wrong types
    pytest.param(_serving(ts=True), "invalid_field", "ts", id="bool as ts"),
    pytest.param(_serving(ts=1_764_086_400_123.0), "invalid_field", "ts", id="ts with decimal point"),
    pytest.param(_serving(ts=1_764_086_400), "invalid_field", "ts", id="ts in seconds"),
    pytest.param(_serving(ts=1_764_086_400_123_000), "invalid_field", "ts", id="ts in microseconds"),
    pytest.param(_serving(ts="1764086400.123"), "invalid_field", "ts", id="ts as decimal string"),
    pytest.param(_serving(ts="2025-11-25T16:00:00"), "invalid_field", "ts", id="ts without offset"),
    pytest.param(_serving(ts="2125-11-25T16:00:00Z"), "invalid_field", "ts", id="ts after 2100"),
    pytest.param(_serving(request_id=7), "invalid_field", "request_id", id="int request_id"),
    pytest.param(_serving(request_id=""), "invalid_field", "request_id", id="empty request_id"),
    pytest.param(_serving(model=True), "invalid_field", "model", id="bool model"),
    pytest.param(_serving(surface=["home"]), "invalid_field", "surface", id="list surface"),
    pytest.param(
        _serving(latency_ms={"total": "80"}), "invalid_field", "latency_ms.total", id="string latency"
    ),
    pytest.param(
        _serving(latency_ms={"total": True}), "invalid_field", "latency_ms.total", id="bool latency"
    ),
    pytest.param(
        _serving(latency_ms={"total": -0.1}), "invalid_field", "latency_ms.total", id="negative total"
    ),
    pytest.param(
        _serving(latency_ms={"total": 8.0, "ranking": -1.0}),
        "invalid_field",
        "latency_ms.ranking",
        id="negative stage latency",
    ),
    pytest.param(
        _serving(latency_ms={"total": 8.0, "ranking": "NaN"}),
        "invalid_field",
        "latency_ms.ranking",
        id="NaN-like string latency",
    ),
    pytest.param(_serving(latency_ms=[80.0]), "invalid_field", "latency_ms", id="latency not an object"),
    pytest.param(_serving(segment={"region": 3}), "invalid_field", "segment.region", id="int segment value"),
    pytest.param(
        _serving(segment={"region": LONG}), "invalid_field", "segment.region", id="long segment value"
    ),
    pytest.param(_serving(segment="eu"), "invalid_field", "segment", id="segment not an object"),
    pytest.param(_serving(funnel={"returned": -1}), "invalid_field", "funnel.returned", id="negative count"),
    pytest.param(_serving(funnel={"returned": 2.5}), "invalid_field", "funnel.returned", id="float count"),
    pytest.param(
        _serving(funnel={"returned": False}), "invalid_field", "funnel.returned", id="bool as count"
    ),
    pytest.param(_serving(items={"id": "s1"}), "invalid_field", "items", id="items not a list"),
    pytest.param(_serving(fallback=1), "invalid_field", "fallback", id="int as fallback"),
    pytest.param(_serving(fallback="false"), "invalid_field", "fallback", id="string fallback"),
    pytest.param(_serving(error=500), "invalid_field", "error", id="int error"),
    pytest.param(_serving(features=[1, 2]), "invalid_field", "features", id="features not an object"),
    # arm and other enumerations
    pytest.param(_serving(arm="beta"), "invalid_field", "arm", id="arm beta"),
    pytest.param(_serving(arm="Control"), "invalid_field", "arm", id="arm is case sensitive"),
    pytest.param(_deployment(arm="treatment"), "invalid_field", "arm", id="deployment arm"),
    pytest.param(_engagement(action="like"), "invalid_field", "action", id="unknown action"),
    # overlong strings
    pytest.param(_serving(request_id=LONG), "invalid_field", "request_id", id="long request_id"),
    pytest.param(_serving(model=LONG), "invalid_field", "model", id="long model"),
    pytest.param(_engagement(action=LONG), "invalid_field", "action", id="long action"),
    pytest.param(_deployment(model_version=LONG), "invalid_field", "model_version", id="long version"),
    # engagement specifics
    pytest.param(_engagement(position=-1), "invalid_field", "position", id="negative position"),
    pytest.param(_engagement(position=True), "invalid_field", "position", id="bool as position"),
    pytest.param(_engagement(position="0"), "invalid_field", "position", id="string position"),
    pytest.param(_engagement(item_id=123), "invalid_field", "item_id", id="int item_id"),
    pytest.param(_engagement(value="12.5"), "invalid_field", "value", id="string value"),
    pytest.param(_engagement(value=False), "invalid_field", "value", id="bool value"),
    pytest.param(_engagement(value=None), "invalid_field", "value", id="null value"),
    # deployment specifics
    pytest.param(_deployment(traffic=5), "invalid_field", "traffic", id="traffic as percentage"),
    pytest.param(_deployment(traffic=-0.1), "invalid_field", "traffic", id="negative traffic"),
    pytest.param(_deployment(traffic="0.5"), "invalid_field", "traffic", id="string traffic"),
    pytest.param(_deployment(lineage="sha"), "invalid_field", "lineage", id="lineage not an object"),
    # type
    pytest.param(_serving(type="impression"), "unknown_type", "type", id="unknown type"),
    pytest.param(_without(_serving(), "type"), "unknown_type", "type", id="no type"),
    pytest.param(_serving(type=None), "unknown_type", "type", id="null type"),
    pytest.param(_serving(type=["serving"]), "unknown_type", "type", id="list type"),
]


@pytest.mark.parametrize(("doc", "reason", "field"), REJECTIONS)
def test_rejections_name_reason_and_field(doc: dict[str, Any], reason: str, field: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(orjson.dumps(doc))
    err = info.value
    assert (err.reason, err.field) == (reason, field)
    assert str(err).startswith(f"{field}: "), str(err)
    assert isinstance(err, ValueError)  # callers may catch ValueError


def test_rejection_message_quotes_the_offending_value() -> None:
    with pytest.raises(EventError, match=r"^arm: 'beta' is not one of control, canary, shadow$"):
        parse_event(orjson.dumps(_serving(arm="beta")))
    with pytest.raises(EventError, match=r"^latency_ms\.ranking: -1\.0 is negative$"):
        parse_event(orjson.dumps(_serving(latency_ms={"total": 1.0, "ranking": -1.0})))
    with pytest.raises(EventError, match=r"^request_id: 129 characters, the limit is 128$"):
        parse_event(orjson.dumps(_serving(request_id=LONG)))


def test_long_offending_values_are_shortened_in_the_message() -> None:
    with pytest.raises(EventError) as info:
        parse_event(orjson.dumps(_serving(segment={"region": "y" * 10_000})))
    assert len(str(info.value)) < 200
    assert str(info.value).endswith("... is not a short string")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        pytest.param(_serving(ts=None), "ts", id="ts null"),
        pytest.param(_engagement(ts=None), "ts", id="engagement ts null"),
        pytest.param(_deployment(ts=None), "ts", id="deployment ts null"),
        pytest.param(_serving(latency_ms={"total": None}), "latency_ms.total", id="latency_ms.total null"),
        pytest.param(_serving(request_id=None), "request_id", id="request_id null"),
        pytest.param(_engagement(action=None), "action", id="action null"),
        pytest.param(_deployment(arm=None), "arm", id="arm null"),
    ],
)
def test_required_field_null_is_missing_field(doc: dict[str, Any], field: str) -> None:
    # docs/events.md: missing_field is "a required field is absent or null" (ts and total were invalid_field).
    with pytest.raises(EventError) as info:
        parse_event(orjson.dumps(doc))
    assert (info.value.reason, info.value.field) == ("missing_field", field)


def test_nullable_optional_fields_accept_null() -> None:
    # The fields the schemas declare nullable: null means "not given".
    event = parse_event(orjson.dumps(_serving(error=None)))
    assert isinstance(event, ServingEvent) and event.error is None
    deployment = parse_event(
        orjson.dumps(_deployment(traffic=None, baseline_version=None, actor=None, reason=None))
    )
    assert isinstance(deployment, DeploymentEvent)
    assert (deployment.traffic, deployment.baseline_version, deployment.actor, deployment.reason) == (
        None,
    ) * 4
    engagement = parse_event(orjson.dumps(_engagement(item_id=None, position=None)))
    assert engagement == EngagementEvent("r1", 1_764_086_412_000, "click", None, None, 0.0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"type": "serving"',
        b'{"type": "serving", "latency_ms": {"total": NaN}}',  # orjson rejects NaN / Infinity literals
        b'{"type": "serving", "latency_ms": {"total": Infinity}}',
        b'{"type": "serving", "latency_ms": {"total": 1e999}}',  # overflows to infinity: rejected by orjson
        b"{'type': 'serving'}",
        b'{"type": "serving",}',
    ],
)
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert info.value.reason == "invalid_json"
    assert info.value.field is None
    assert str(info.value).startswith("not valid UTF-8 JSON")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "serving", "request_id": "\xff\xfe"}',
        b"\xc3\x28",
        '{"type": "serving"}'.encode("utf-16"),
        b'{"type": "serving", "request_id": "\\ud800"}',  # lone surrogate escape
    ],
)
def test_invalid_utf8(raw: bytes) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert info.value.reason == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[]", "list"), (b"[1, 2]", "list"), (b'"serving"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_non_object_json(raw: bytes, kind: str) -> None:
    with pytest.raises(EventError, match=f"^expected a JSON object, got {kind}$") as info:
        parse_event(raw)
    assert info.value.reason == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (ENGAGEMENT_CLICK, "serving"),
        (SERVING_FULL, "engagement"),
        (SERVING_FULL, "deployment"),
        (DEPLOYMENT, "serving"),
    ],
)
def test_expected_type_mismatch(raw: bytes, expected: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw, expected=expected)
    assert (info.value.reason, info.value.field) == ("unknown_type", "type")
    assert f"on a topic that carries {expected!r} events" in str(info.value)


def test_expected_type_is_checked_before_the_body() -> None:
    # A wrong-topic event is reported as such even if it would also be invalid.
    with pytest.raises(EventError) as info:
        parse_event(orjson.dumps(_engagement(action="like")), expected="serving")
    assert info.value.reason == "unknown_type"


def test_too_large() -> None:
    doc = _serving(features={"blob": "z" * MAX_EVENT_BYTES})
    raw = orjson.dumps(doc)
    assert len(raw) > MAX_EVENT_BYTES
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert info.value.reason == "too_large"
    assert f"event is {len(raw)} bytes, the limit is {MAX_EVENT_BYTES}" in str(info.value)


def test_too_large_is_checked_before_json() -> None:
    with pytest.raises(EventError) as info:
        parse_event(b"\xff" * (MAX_EVENT_BYTES + 1))
    assert info.value.reason == "too_large"


def test_exactly_max_bytes_is_accepted() -> None:
    base = orjson.dumps(_serving(features={"blob": ""}))
    doc = _serving(features={"blob": "z" * (MAX_EVENT_BYTES - len(base))})
    raw = orjson.dumps(doc)
    assert len(raw) == MAX_EVENT_BYTES
    assert isinstance(parse_event(raw), ServingEvent)


@pytest.mark.parametrize("length", [1, MAX_ID_CHARS])
def test_identifier_length_bounds_are_inclusive(length: int) -> None:
    value = "i" * length
    event = parse_event(orjson.dumps(_serving(request_id=value, model=value, segment={"region": value})))
    assert isinstance(event, ServingEvent)
    assert event.request_id == value


# -- never anything but an event or EventError ----------------------------------------------------------

_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(
        ["serving", "engagement", "deployment", "control", "canary", "click", "2025-11-25T16:00Z"]
    )
    | st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000)
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
_FIELDS = st.sampled_from(
    [
        "type", "request_id", "ts", "model", "model_version", "arm", "surface", "segment", "latency_ms",
        "funnel", "sources", "items", "features", "feature_ts", "fallback", "error", "action", "item_id",
        "position", "value", "traffic", "baseline_version", "lineage", "actor", "reason",
    ]
)  # fmt: skip


def _outcome_is_event_or_event_error(raw: bytes, expected: str | None = None) -> None:
    try:
        event = parse_event(raw, expected=expected)
    except EventError as exc:
        assert exc.reason in {"invalid_json", "missing_field", "invalid_field", "unknown_type", "too_large"}
        assert str(exc)
    else:
        assert isinstance(event, ServingEvent | EngagementEvent | DeploymentEvent)


@HYPOTHESIS
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    _outcome_is_event_or_event_error(raw)


@HYPOTHESIS
@given(doc=_json)
def test_arbitrary_json(doc: Any) -> None:
    _outcome_is_event_or_event_error(orjson.dumps(doc))


@HYPOTHESIS
@given(
    kind=st.sampled_from(["serving", "engagement", "deployment"]),
    base=st.sampled_from([_serving(), _engagement(), _deployment()]),
    changes=st.dictionaries(_FIELDS, _json, max_size=4),
    drop=st.lists(_FIELDS, max_size=3),
    expected=st.sampled_from([None, "serving", "engagement", "deployment"]),
)
def test_arbitrary_json_dicts_near_the_contract(
    kind: str, base: dict[str, Any], changes: dict[str, Any], drop: list[str], expected: str | None
) -> None:
    doc = {k: v for k, v in {**base, "type": kind, **changes}.items() if k not in drop}
    _outcome_is_event_or_event_error(orjson.dumps(doc), expected)


@HYPOTHESIS
@given(value=st.one_of(st.text(max_size=40), _json))
def test_parse_timestamp_never_raises_anything_else(value: Any) -> None:
    try:
        ms = parse_timestamp(value)
    except EventError as exc:
        assert (exc.reason, exc.field) == ("invalid_field", "ts")
    else:
        assert 946_684_800_000 <= ms < 4_102_444_800_000
