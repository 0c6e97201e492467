"""The rollout gate: what a deployment controller is told about a model's canary verdict.

A verdict document (schema ``stream-monitor.health/v1``, docs/schemas/health.schema.json) is computed
at each window close and published to ``recs.health`` and the state store. A controller polls the
worker's HTTP gate, which answers from the newest verdict with :func:`gate_response`:

==========================================  ======  ==========
verdict                                      status  decision
==========================================  ======  ==========
decision PROMOTE, not expired                200     PROMOTE
decision HOLD (incl. INCONCLUSIVE)           409     HOLD
decision ROLLBACK, not expired               412     ROLLBACK
expired (now past ``valid_until``)           409     HOLD
unreadable document                          409     HOLD
no verdict for the model / version           404     HOLD
==========================================  ======  ==========

Only PROMOTE is 2xx, because Flagger's webhooks read any 2xx as "go"; the body is the same JSON in
every case, for Argo Rollouts' ``web`` provider (which reads it by ``jsonPath``) and for people.

Pure: standard library and orjson only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

__all__ = [
    "DECISIONS",
    "DECISION_VALUES",
    "SCHEMA",
    "VerdictError",
    "check_verdict",
    "gate_response",
    "health_key",
    "load_verdicts",
    "select_verdict",
]

SCHEMA: Final = "stream-monitor.health/v1"
DECISIONS: Final = ("PROMOTE", "HOLD", "ROLLBACK")
# The value of the stream_monitor_canary_verdict gauge: "< 0" is the rollback alert in PromQL.
DECISION_VALUES: Final = {"PROMOTE": 1, "HOLD": 0, "ROLLBACK": -1}
VERDICTS: Final = ("PASS", "MARGINAL", "FAIL", "INCONCLUSIVE")
KINDS: Final = ("canary", "shadow")
_STATUS: Final = {"PROMOTE": 200, "HOLD": 409, "ROLLBACK": 412}


class VerdictError(ValueError):
    """A verdict document that does not follow the schema (the message names the field)."""


def health_key(doc: Mapping[str, Any]) -> str:
    """The Kafka key of a verdict on ``recs.health`` (compacted: the newest per rollout stays).

    >>> health_key({"model": "home-ranker", "deployment": "v2@1764086400000"})
    'home-ranker/v2@1764086400000'
    """
    return f"{doc['model']}/{doc['deployment']}"


def check_verdict(doc: object) -> dict[str, Any]:
    """Check the fields the gate, the metrics and the CLI rely on; returns the document.

    >>> check_verdict({"schema": "stream-monitor.health/v1", "model": "m"})
    Traceback (most recent call last):
    ...
    stream_monitor.core.gate.VerdictError: verdict: deployment: None is not a non-empty string
    """
    if not isinstance(doc, dict):
        raise VerdictError(f"verdict: expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise VerdictError(f"verdict: schema: {doc.get('schema')!r} is not {SCHEMA!r}")
    for name in ("model", "deployment", "reason"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise VerdictError(f"verdict: {name}: {doc.get(name)!r} is not a non-empty string")
    for name, allowed in (("kind", KINDS), ("verdict", VERDICTS), ("decision", DECISIONS)):
        if doc.get(name) not in allowed:
            raise VerdictError(f"verdict: {name}: {doc.get(name)!r} is not one of {', '.join(allowed)}")
    for name in ("emitted_at", "valid_until"):
        if type(doc.get(name)) is not int:
            raise VerdictError(f"verdict: {name}: {doc.get(name)!r} is not epoch milliseconds")
    score = doc.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 100:
        raise VerdictError(f"verdict: score: {score!r} is not a number in [0, 100]")
    for arm in ("candidate", "baseline"):
        side = doc.get(arm)
        if not isinstance(side, dict) or not isinstance(side.get("version"), str):
            raise VerdictError(f"verdict: {arm}.version: missing or not a string")
    if not isinstance(doc.get("metrics"), list):
        raise VerdictError(f"verdict: metrics: {doc.get('metrics')!r} is not a list")
    return doc


def load_verdicts(raw: Mapping[str, bytes]) -> tuple[list[dict[str, Any]], list[str]]:
    """Decode stored verdict documents (key -> JSON); returns (documents, keys that were not JSON objects).

    >>> load_verdicts({"m/v2@1": b'{"deployment": "v2@1"}', "m/x": b"{oops"})
    ([{'deployment': 'v2@1'}], ['m/x'])
    """
    docs: list[dict[str, Any]] = []
    bad: list[str] = []
    for key, value in sorted(raw.items()):
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            docs.append(doc)
        else:
            bad.append(key)
    return docs, bad


def select_verdict(
    docs: Iterable[Mapping[str, Any]],
    *,
    version: str | None = None,
    deployment: str | None = None,
    kind: str | None = None,
) -> dict[str, Any] | None:
    """The newest verdict (by ``emitted_at``) matching the candidate version, rollout id and kind.

    A controller passes the version it is rolling out, so a verdict about an earlier rollout of the
    model is never read as a "go" for this one.

    >>> docs = [{"deployment": "v2@1", "kind": "canary", "emitted_at": 5, "candidate": {"version": "v2"}},
    ...         {"deployment": "v3@9", "kind": "canary", "emitted_at": 9, "candidate": {"version": "v3"}}]
    >>> select_verdict(docs)["deployment"], select_verdict(docs, version="v2")["deployment"]
    ('v3@9', 'v2@1')
    >>> select_verdict(docs, version="v4") is None
    True
    """
    best: dict[str, Any] | None = None
    for doc in docs:
        candidate = doc.get("candidate")
        if version is not None and (not isinstance(candidate, dict) or candidate.get("version") != version):
            continue
        if deployment is not None and doc.get("deployment") != deployment:
            continue
        if kind is not None and doc.get("kind") != kind:
            continue
        emitted = doc.get("emitted_at")
        if not isinstance(emitted, int):
            continue
        if best is None or emitted > best["emitted_at"]:
            best = dict(doc)
    return best


def gate_response(doc: Mapping[str, Any] | None, now_ms: int) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for a controller (see the table in the module docstring).

    >>> doc = {"schema": SCHEMA, "model": "m", "deployment": "v2@1", "kind": "canary", "verdict": "PASS",
    ...        "decision": "PROMOTE", "reason": "all metrics pass", "score": 96, "emitted_at": 1_000,
    ...        "valid_until": 121_000, "candidate": {"version": "v2"}, "baseline": {"version": "v1"},
    ...        "metrics": []}
    >>> status, body = gate_response(doc, now_ms=60_000)
    >>> status, body["decision"], body["promote"]
    (200, 'PROMOTE', True)
    >>> status, body = gate_response(doc, now_ms=200_000)
    >>> status, body["decision"], body["stale"]
    (409, 'HOLD', True)
    >>> gate_response(None, now_ms=0)[0]
    404
    """
    if doc is None:
        return 404, _body(None, "HOLD", "INCONCLUSIVE", "no verdict for this model yet", now_ms)
    try:
        checked = check_verdict(dict(doc))
    except VerdictError as exc:
        return 409, _body(None, "HOLD", "INCONCLUSIVE", f"stored verdict unreadable: {exc}", now_ms)
    if now_ms > checked["valid_until"]:
        reason = (
            f"verdict expired {(now_ms - checked['valid_until']) // 1000} s ago (the monitor has not "
            f"judged since); it was {checked['decision']}: {checked['reason']}"
        )
        return 409, _body(checked, "HOLD", "INCONCLUSIVE", reason, now_ms, stale=True)
    decision = checked["decision"]
    return _STATUS[decision], _body(checked, decision, checked["verdict"], checked["reason"], now_ms)


def _body(
    doc: Mapping[str, Any] | None,
    decision: str,
    verdict: str,
    reason: str,
    now_ms: int,
    stale: bool = False,
) -> dict[str, Any]:
    def version(side: str) -> Any:
        part = doc.get(side) if doc is not None else None
        return part.get("version") if isinstance(part, dict) else None

    return {
        "decision": decision,
        "promote": decision == "PROMOTE",
        "rollback": decision == "ROLLBACK",
        "value": DECISION_VALUES[decision],
        "verdict": verdict,
        "reason": reason,
        "stale": stale,
        "model": doc.get("model") if doc is not None else None,
        "deployment": doc.get("deployment") if doc is not None else None,
        "kind": doc.get("kind") if doc is not None else None,
        "candidate_version": version("candidate"),
        "baseline_version": version("baseline"),
        "score": doc.get("score") if doc is not None else None,
        "emitted_at": doc.get("emitted_at") if doc is not None else None,
        "valid_until": doc.get("valid_until") if doc is not None else None,
        "checked_at": now_ms,
    }
