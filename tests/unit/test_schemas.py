"""The event contract: JSON Schemas in docs/schemas/ and the examples in docs/events.md.

Every fenced ```json block of docs/events.md is preceded by a marker naming the schema it must pass
(``<!-- schema: NAME -->``) or fail (``<!-- invalid: NAME -->``). Examples of the three input events are
also fed to the worker's parser, so the documentation, the schemas and the code cannot drift apart.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from stream_monitor.config import Topics
from stream_monitor.core.events import EventError, parse_event

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "docs" / "schemas"
EVENTS_MD = ROOT / "docs" / "events.md"
SCHEMA_NAMES = ("serving", "engagement", "deployment", "dataset", "alert", "deadletter", "health")
INPUT_EVENTS = ("serving", "engagement", "deployment", "dataset")

_BLOCK = re.compile(r"^```json[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*(schema|invalid):\s*([a-z_]+)\s*-->\s*\Z")


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    return loaded


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _errors(name: str, instance: object) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in _validator(name).iter_errors(instance)]


def _doc_examples() -> list[tuple[str, str, Any, int]]:
    """(kind, schema name, parsed JSON, line number) for every ```json block of docs/events.md."""
    text = EVENTS_MD.read_text(encoding="utf-8")
    examples = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        marker = _MARKER.search(text[: match.start()])
        if marker is None:
            raise AssertionError(f"docs/events.md:{line}: json block without a <!-- schema: NAME --> marker")
        examples.append((marker.group(1), marker.group(2), json.loads(match.group(1)), line))
    return examples


EXAMPLES = _doc_examples()


def _example_id(example: tuple[str, str, Any, int]) -> str:
    kind, name, _doc, line = example
    return f"{kind}-{name}-line{line}"


# --- the schemas themselves -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = _schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_no_unexpected_schema_files() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(
        f"{n}.schema.json" for n in SCHEMA_NAMES
    )


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_allow_extra_fields(name: str) -> None:
    """Forward compatibility: producers may add fields, consumers ignore them."""
    assert _schema(name).get("additionalProperties", True) is not False
    valid = next(doc for kind, n, doc, _ in EXAMPLES if kind == "schema" and n == name)
    assert _errors(name, {**valid, "x_new_field": {"anything": [1, 2]}}) == []


def test_alert_signal_is_not_a_closed_set() -> None:
    signal = _schema("alert")["properties"]["signal"]
    assert "enum" not in signal and "const" not in signal
    alert = next(doc for kind, n, doc, _ in EXAMPLES if kind == "schema" and n == "alert")
    assert _errors("alert", {**alert, "signal": "feature_drift"}) == []


# --- the examples in docs/events.md -----------------------------------------------------------------


def test_every_schema_has_a_documented_example() -> None:
    documented = {name for kind, name, _doc, _line in EXAMPLES if kind == "schema"}
    assert documented == set(SCHEMA_NAMES)
    assert {name for kind, name, _doc, _line in EXAMPLES} <= set(SCHEMA_NAMES)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[0] == "schema"], ids=_example_id)
def test_documented_example_is_valid(example: tuple[str, str, Any, int]) -> None:
    _kind, name, doc, line = example
    assert _errors(name, doc) == [], f"docs/events.md:{line}"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[0] == "invalid"], ids=_example_id)
def test_documented_counter_example_is_rejected(example: tuple[str, str, Any, int]) -> None:
    _kind, name, doc, line = example
    assert _errors(name, doc) != [], f"docs/events.md:{line} should be rejected by {name}.schema.json"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e[1] in INPUT_EVENTS], ids=_example_id)
def test_documented_input_events_agree_with_the_parser(example: tuple[str, str, Any, int]) -> None:
    kind, name, doc, line = example
    raw = json.dumps(doc).encode()
    if kind == "schema":
        event = parse_event(raw, expected=name)
        assert type(event).__name__.lower() == f"{name}event", f"docs/events.md:{line}"
    else:
        with pytest.raises(EventError):
            parse_event(raw, expected=name)


def test_dead_letter_example_holds_the_rejected_event() -> None:
    """The documented dead-letter record is what the worker would write for the documented bad event."""
    record = next(doc for kind, n, doc, _ in EXAMPLES if kind == "schema" and n == "deadletter")
    original = base64.b64decode(record["value_b64"], validate=True)
    assert record["topic"] == Topics().serving
    assert json.loads(original) in [
        doc for kind, n, doc, _ in EXAMPLES if kind == "invalid" and n == "serving"
    ]
    with pytest.raises(EventError) as caught:
        parse_event(original, expected="serving")
    assert caught.value.reason == record["reason"]
    assert str(caught.value) == record["detail"]
    assert base64.b64decode(record["key_b64"], validate=True).decode() == json.loads(original)["request_id"]


def test_documented_topics_are_the_defaults() -> None:
    text = EVENTS_MD.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"`(recs\.[a-z_]+)`", text))
    assert mentioned <= set(Topics().model_dump().values())
    assert {Topics().serving, Topics().engagement, Topics().deployments, Topics().alerts} <= mentioned


# --- hand-written events that must be rejected --------------------------------------------------------

SERVING: dict[str, Any] = {
    "type": "serving",
    "request_id": "7f3c9a",
    "ts": 1764086400123,
    "model": "home-ranker",
    "model_version": "2026.11.20-3",
    "arm": "control",
    "surface": "home",
    "latency_ms": {"total": 84.2},
}


_DROP = object()


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of doc with the dotted path set to value (or removed when value is _DROP)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    if value is _DROP:
        del node[last]
    else:
        node[last] = value
    return out


INVALID_SERVING = {
    "wrong arm": ("arm", "beta", "invalid_field"),
    "arm upper-case": ("arm", "Control", "invalid_field"),
    "ts as float string": ("ts", "1764086400.123", "invalid_field"),
    "ts epoch seconds": ("ts", 1764086400, "invalid_field"),
    "ts without offset": ("ts", "2025-11-25T16:00:00.123", "invalid_field"),
    "ts bool": ("ts", True, "invalid_field"),
    "negative total latency": ("latency_ms.total", -0.5, "invalid_field"),
    "negative stage latency": ("latency_ms.ranking", -1, "invalid_field"),
    "latency as string": ("latency_ms.total", "84.2", "invalid_field"),
    "missing total latency": ("latency_ms.total", _DROP, "missing_field"),
    "missing latency": ("latency_ms", _DROP, "missing_field"),
    "missing request_id": ("request_id", _DROP, "missing_field"),
    "empty request_id": ("request_id", "", "invalid_field"),
    "request_id too long": ("request_id", "r" * 129, "invalid_field"),
    "model too long": ("model", "m" * 129, "invalid_field"),
    "missing model_version": ("model_version", _DROP, "missing_field"),
    "missing surface": ("surface", _DROP, "missing_field"),
    "segment value not a string": ("segment", {"platform": 3}, "invalid_field"),
    "segment value too long": ("segment", {"platform": "p" * 129}, "invalid_field"),
    "negative funnel count": ("funnel", {"returned": -1}, "invalid_field"),
    "fallback as string": ("fallback", "false", "invalid_field"),
    "error as number": ("error", 500, "invalid_field"),
    "wrong type": ("type", "engagement", "unknown_type"),
}


@pytest.mark.parametrize("case", sorted(INVALID_SERVING))
def test_invalid_serving_event_is_rejected(case: str) -> None:
    path, value, reason = INVALID_SERVING[case]
    doc = _with(SERVING, path, value)
    assert _errors("serving", doc) != [], case
    with pytest.raises(EventError) as caught:
        parse_event(json.dumps(doc).encode(), expected="serving")
    assert caught.value.reason == reason


def test_valid_variants_of_serving_event() -> None:
    assert _errors("serving", SERVING) == []
    for ts in ("2025-11-25T16:00:00.123Z", "2025-11-25T17:00:00+01:00", "2025-11-25T16:00:00.123456Z"):
        assert _errors("serving", {**SERVING, "ts": ts}) == [], ts
        assert parse_event(json.dumps({**SERVING, "ts": ts}).encode()).ts // 1000 == 1764086400
    assert _errors("serving", {**SERVING, "request_id": "r" * 128, "error": None, "segment": {}}) == []


ENGAGEMENT: dict[str, Any] = {
    "type": "engagement",
    "request_id": "7f3c9a",
    "ts": 1764086412000,
    "action": "click",
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("request_id", _DROP),
        ("action", "like"),
        ("action", _DROP),
        ("ts", _DROP),
        ("ts", 1764086412000.5),
        ("position", -1),
        ("position", 1.5),
        ("value", "1.0"),
    ],
)
def test_invalid_engagement_event_is_rejected(path: str, value: Any) -> None:
    doc = _with(ENGAGEMENT, path, value)
    assert _errors("engagement", doc) != []
    with pytest.raises(EventError):
        parse_event(json.dumps(doc).encode(), expected="engagement")


DEPLOYMENT: dict[str, Any] = {
    "type": "deployment",
    "ts": 1764084600000,
    "model": "home-ranker",
    "model_version": "2026.11.24-1",
    "arm": "canary",
}


@pytest.mark.parametrize(
    ("path", "value"),
    [("traffic", 1.5), ("traffic", -0.1), ("arm", "blue"), ("model", _DROP), ("model_version", _DROP)],
)
def test_invalid_deployment_event_is_rejected(path: str, value: Any) -> None:
    doc = _with(DEPLOYMENT, path, value)
    assert _errors("deployment", doc) != []
    with pytest.raises(EventError):
        parse_event(json.dumps(doc).encode(), expected="deployment")


DATASET: dict[str, Any] = {
    "type": "dataset",
    "name": "user_features_hourly",
    "partition": "2025-11-25T15:00",
    "ts": 1764086652000,
    "rows": 1204331,
}


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("name", _DROP, "missing_field"),
        ("name", "", "invalid_field"),
        ("name", "n" * 129, "invalid_field"),
        ("partition", 15, "invalid_field"),
        ("partition", _DROP, "missing_field"),
        ("ts", _DROP, "missing_field"),
        ("ts", 1764086652, "invalid_field"),
        ("rows", -1, "invalid_field"),
        ("rows", 1.5, "invalid_field"),
        ("rows", True, "invalid_field"),
        ("rows", "1000", "invalid_field"),
        ("rows", _DROP, "missing_field"),
        ("type", "deployment", "unknown_type"),
    ],
)
def test_invalid_dataset_event_is_rejected(path: str, value: Any, reason: str) -> None:
    doc = _with(DATASET, path, value)
    assert _errors("dataset", doc) != []
    with pytest.raises(EventError) as caught:
        parse_event(json.dumps(doc).encode(), expected="dataset")
    assert caught.value.reason == reason
    assert caught.value.field == path


def test_valid_dataset_event_parses() -> None:
    assert _errors("dataset", DATASET) == []
    event = parse_event(json.dumps({**DATASET, "ts": "2025-11-25T16:04:12Z"}).encode(), expected="dataset")
    assert (event.name, event.partition, event.ts, event.rows) == (  # type: ignore[union-attr]
        "user_features_hourly",
        "2025-11-25T15:00",
        1764086652000,
        1204331,
    )
    assert _errors("dataset", {**DATASET, "rows": 0}) == []


def _documented(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = next(d for kind, n, d, _ in EXAMPLES if kind == "schema" and n == name)
    return doc


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("id", "a-XYZ"),
        ("id", "3f9c2b7e1d4a6c80"),
        ("status", "open"),
        ("severity", "page"),
        ("key", {"model": 1}),
        ("window", {"start": 0, "end": 60000}),
        ("expected", "86"),
        ("emitted_at", _DROP),
        ("observed", None),
    ],
)
def test_invalid_alert_is_rejected(path: str, value: Any) -> None:
    assert _errors("alert", _with(_documented("alert"), path, value)) != []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("value_b64", "not base64!"),
        ("value_b64", "YzBmZmVl="),
        ("value_b64", None),
        ("key_b64", "%%%"),
        ("partition", -1),
        ("reason", "Invalid Field"),
        ("dead_lettered_at", _DROP),
    ],
)
def test_invalid_dead_letter_record_is_rejected(path: str, value: Any) -> None:
    assert _errors("deadletter", _with(_documented("deadletter"), path, value)) != []


def test_dead_letter_keeps_non_utf8_bytes() -> None:
    raw = b"\xff\xfe{not json"
    record = {**_documented("deadletter"), "reason": "invalid_json", "key_b64": None}
    record["value_b64"] = base64.b64encode(raw).decode("ascii")
    assert _errors("deadletter", record) == []
    with pytest.raises(EventError) as caught:
        parse_event(raw, expected="serving")
    assert caught.value.reason == record["reason"]


def test_documented_check_jsonschema_command_works(tmp_path: Path) -> None:
    """docs/events.md tells producers to run check-jsonschema; it must accept the schemas and examples."""
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed; it is a dev dependency (pip install -e '.[dev]')")
    for name in SCHEMA_NAMES:
        good = tmp_path / f"{name}-good.json"
        good.write_text(json.dumps(_documented(name)))
        command = [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--schemafile",
            str(SCHEMA_DIR / f"{name}.schema.json"),
        ]
        ok = subprocess.run([*command, str(good)], capture_output=True, text=True, timeout=120, check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "serving-bad.json"
    bad.write_text(json.dumps({**SERVING, "ts": "2025-11-25T16:00:00.123"}))
    command = [
        sys.executable,
        "-m",
        "check_jsonschema",
        "--schemafile",
        str(SCHEMA_DIR / "serving.schema.json"),
    ]
    rejected = subprocess.run([*command, str(bad)], capture_output=True, text=True, timeout=120, check=False)
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr


# --- what the monitor itself writes -------------------------------------------------------------------


def test_alerts_from_the_alert_book_follow_the_schema() -> None:
    from stream_monitor.core.alerts import AlertBook, DetectorState
    from stream_monitor.core.series import Breach

    dims = ("model", "model_version", "arm", "surface", "platform", "region", "tenure")
    key = ("home-ranker", "2026.11.24-1", "canary", "home", "*", "eu", "*")
    breach = Breach("error_rate", "ratio", key, 0.2, None, 0.02, "ratio", "critical", "error rate is 20.0 %")
    book, state = AlertBook(dims, topology="default"), DetectorState()
    (firing,) = book.update(state, [breach], (1764086400000, 1764086460000), now_ms=1764086461000)
    (resolved,) = book.update(
        state, [], (1764086460000, 1764086520000), now_ms=1764086521000, evaluated={breach.identity: 0.0}
    )
    for alert in (firing, resolved):
        doc = json.loads(json.dumps(alert.to_dict()))
        assert _errors("alert", doc) == [], doc
        assert alert.dedupe_key == f"{doc['signal']}|{doc['metric']}|{doc['series']}"
    assert (firing.status, resolved.status, firing.id) == ("firing", "resolved", resolved.id)


def test_dead_letters_from_the_sink_follow_the_schema() -> None:
    from stream_monitor.sinks.base import DeadLetter

    for key, value in ((b"c0ffee", b'{"type": "serving"}'), (None, b"\xff\xfe{not json"), (b"", b"")):
        record = DeadLetter(
            reason="invalid_json",
            detail="not valid UTF-8 JSON",
            topic=Topics().serving,
            partition=0,
            offset=7,
            timestamp_ms=None,
            key=key,
            value=value,
            worker="stream-monitor-0",
            dead_lettered_at=1764086401350,
        )
        doc = json.loads(json.dumps(record.to_dict()))
        assert _errors("deadletter", doc) == [], doc
        assert base64.b64decode(doc["value_b64"], validate=True) == value


def test_alerts_carry_a_runbook_and_an_action_also_when_opened_before_they_existed() -> None:
    from stream_monitor.core.alerts import Alert, AlertBook, DetectorState
    from stream_monitor.core.series import Breach

    dims = ("model", "model_version", "arm", "surface", "platform", "region", "tenure")
    key = ("home-ranker", "2026.11.24-1", "canary", "home", "*", "*", "*")
    breach = Breach("score_drift", "psi", key, 0.9, None, 0.25, "psi", "critical", "scores drift")
    book, state = AlertBook(dims, topology="default"), DetectorState()
    (firing,) = book.update(state, [breach], (1764086400000, 1764086460000), now_ms=1764086461000)
    assert firing.runbook == "docs/runbooks/score_drift.md"
    assert "roll back to the previous version on arm canary" in firing.action
    assert "stream-monitor lineage home-ranker" in firing.action
    assert _errors("alert", json.loads(json.dumps(firing.to_dict()))) == []

    # A checkpoint written before runbooks: its open alert loads and resolves with both fields filled in.
    (dedupe,) = state.open_alerts
    for name in ("runbook", "action"):
        del state.open_alerts[dedupe][name]
    restored = DetectorState.from_json_dict(json.loads(json.dumps(state.to_json_dict())))
    assert Alert.from_dict(restored.open_alerts[dedupe]).runbook == ""
    (resolved,) = book.update(
        restored, [], (1764086460000, 1764086520000), now_ms=1764086521000, evaluated={breach.identity: 0.0}
    )
    assert (resolved.status, resolved.runbook) == ("resolved", firing.runbook)
    assert resolved.action == firing.action
    assert _errors("alert", json.loads(json.dumps(resolved.to_dict()))) == []
    assert _errors("alert", {**resolved.to_dict(), "runbook": ""}) != []
