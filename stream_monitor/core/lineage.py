"""Release history: which model version served which arm, when, at what share, and where it came from.

The engine stores every deployment event of a model as a record (JSON, see
:meth:`DeploymentRecord.to_json`) in the model's append-only history, committed exactly once with the
batch that read it (newest :data:`HISTORY_LIMIT` kept). This module turns those records back into a
:class:`ReleaseHistory`: the releases in order, the version live on each arm now, and for each release
the version it replaced on its arm, which is what a rollback goes back to. Alerts and canary verdicts
take the lineage of the versions they are about from here (:func:`lineage_for`).

Pure: imports the standard library and orjson only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = [
    "HISTORY_LIMIT",
    "DeploymentRecord",
    "LineageError",
    "Release",
    "ReleaseHistory",
    "build_history",
    "lineage_for",
]

HISTORY_LIMIT: Final = 200
# Key values that stand for "all versions" (a roll-up) or "folded by the cardinality cap".
_ANY_VERSION: Final = frozenset({"*", "other", ""})


class LineageError(ValueError):
    """A stored deployment record that cannot be read (names the record and the field)."""


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """One deployment event as stored in the release history.

    >>> r = DeploymentRecord(1_764_086_400_000, "home-ranker", "v2", "canary", 0.05,
    ...                      lineage={"code_commit": "4f2c1e9"}, actor="ci")
    >>> DeploymentRecord.from_json(r.to_json()) == r
    True
    >>> DeploymentRecord.from_json(b'{"ts": 1, "model": "m", "model_version": 7, "arm": "canary"}')
    Traceback (most recent call last):
    ...
    stream_monitor.core.lineage.LineageError: deployment record: model_version: 7 is not a string
    """

    ts: int
    model: str
    version: str
    arm: str
    traffic: float | None = None
    baseline_version: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    reason: str | None = None

    @property
    def live(self) -> bool:
        """Whether the arm serves this version (a traffic share of 0 takes the arm down)."""
        return self.traffic is None or self.traffic > 0

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "model": self.model,
            "model_version": self.version,
            "arm": self.arm,
            "traffic": self.traffic,
            "baseline_version": self.baseline_version,
            "lineage": self.lineage,
            "actor": self.actor,
            "reason": self.reason,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_json_dict())

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeploymentRecord:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise LineageError(f"deployment record: not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise LineageError(f"deployment record: expected a JSON object, got {type(doc).__name__}")
        return cls.from_json_dict(doc)

    @classmethod
    def from_json_dict(cls, doc: Mapping[str, Any]) -> DeploymentRecord:
        ts = doc.get("ts")
        if type(ts) is not int:
            raise LineageError(f"deployment record: ts: {ts!r} is not epoch milliseconds")
        traffic = doc.get("traffic")
        if traffic is not None and (isinstance(traffic, bool) or not isinstance(traffic, int | float)):
            raise LineageError(f"deployment record: traffic: {traffic!r} is not a number")
        lineage = doc.get("lineage") or {}
        if not isinstance(lineage, dict):
            raise LineageError(f"deployment record: lineage: {lineage!r} is not a JSON object")
        return cls(
            ts=ts,
            model=_text(doc, "model"),
            version=_text(doc, "model_version"),
            arm=_text(doc, "arm"),
            traffic=None if traffic is None else float(traffic),
            baseline_version=_text(doc, "baseline_version", optional=True),
            lineage=lineage,
            actor=_text(doc, "actor", optional=True),
            reason=_text(doc, "reason", optional=True),
        )


def _text(doc: Mapping[str, Any], name: str, optional: bool = False) -> Any:
    value = doc.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise LineageError(f"deployment record: {name}: {value!r} is not a string")
    return value


@dataclass(frozen=True, slots=True)
class Release:
    """One step of the history: a record, and the version live on its arm just before (rollback target)."""

    record: DeploymentRecord
    previous: str | None

    def to_json_dict(self) -> dict[str, Any]:
        return {**self.record.to_json_dict(), "previous_version": self.previous}


@dataclass(slots=True)
class ReleaseHistory:
    """A model's releases in the order they were committed (oldest first).

    >>> history = build_history("m", [
    ...     DeploymentRecord(1, "m", "v1", "control", 1.0).to_json(),
    ...     DeploymentRecord(2, "m", "v2", "canary", 0.05, baseline_version="v1").to_json(),
    ...     DeploymentRecord(3, "m", "v2", "control", 1.0, reason="promoted").to_json(),
    ...     DeploymentRecord(4, "m", "v2", "canary", 0.0).to_json(),
    ... ])
    >>> {arm: r.version for arm, r in history.live().items()}
    {'control': 'v2'}
    >>> history.rollback_target("control"), [r.previous for r in history.releases]
    ('v1', [None, None, 'v1', None])
    """

    model: str
    releases: list[Release] = field(default_factory=list)

    def live(self) -> dict[str, DeploymentRecord]:
        """The version each arm serves now (arms taken down with traffic 0 are left out)."""
        latest: dict[str, DeploymentRecord] = {}
        for release in self.releases:
            latest[release.record.arm] = release.record
        return {arm: r for arm, r in sorted(latest.items()) if r.live}

    def rollback_target(self, arm: str) -> str | None:
        """The version the arm served before its current one (None when it never changed)."""
        if arm not in self.live():
            return None
        # build_history carries "previous" across share changes of the same version.
        return self.releases[_last_on(self, arm)].previous

    def lineage_of(self, version: str) -> dict[str, Any]:
        """The newest non-empty lineage recorded for a version (any arm), else ``{}``."""
        for release in reversed(self.releases):
            if release.record.version == version and release.record.lineage:
                return dict(release.record.lineage)
        return {}

    def record_of(self, version: str) -> DeploymentRecord | None:
        """The newest record of a version (any arm)."""
        for release in reversed(self.releases):
            if release.record.version == version:
                return release.record
        return None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            # The lineage of a live version comes from its newest event that had one (a traffic step
            # usually repeats none).
            "live": {
                arm: {**r.to_json_dict(), "lineage": self.lineage_of(r.version)}
                for arm, r in self.live().items()
            },
            "rollback_targets": {arm: self.rollback_target(arm) for arm in self.live()},
            "releases": [r.to_json_dict() for r in self.releases],
        }


def build_history(model: str, records: Iterable[bytes | str]) -> ReleaseHistory:
    """Read a model's stored records (in commit order) into a history; raises LineageError on a bad one."""
    history = ReleaseHistory(model)
    on_arm: dict[str, DeploymentRecord] = {}
    for number, raw in enumerate(records, 1):
        try:
            record = DeploymentRecord.from_json(raw)
        except LineageError as exc:
            raise LineageError(f"{model} history entry {number}: {exc}") from exc
        if record.model != model:
            raise LineageError(f"{model} history entry {number}: record is for model {record.model!r}")
        before = on_arm.get(record.arm)
        if before is None or not before.live:
            previous = None
        elif before.version != record.version:
            previous = before.version
        else:
            # The same version changing its share: what it replaced is still the rollback target.
            previous = history.releases[_last_on(history, record.arm)].previous
        history.releases.append(Release(record, previous))
        on_arm[record.arm] = record
    return history


def _last_on(history: ReleaseHistory, arm: str) -> int:
    for index in range(len(history.releases) - 1, -1, -1):
        if history.releases[index].record.arm == arm:
            return index
    raise LineageError(f"no release on arm {arm!r}")  # pragma: no cover - callers check first


def lineage_for(history: ReleaseHistory | None, version: str | None) -> dict[str, dict[str, Any]]:
    """Lineage of the versions a key names: ``{version: {arm, deployed_at, ...lineage fields}}``.

    A concrete version gives that version; a roll-up (``*``), a folded value (``other``) or no version
    gives every version live now. Unknown versions and models give ``{}``.

    >>> h = build_history("m", [DeploymentRecord(5, "m", "v1", "control", 1.0,
    ...                                          lineage={"code_commit": "abc"}).to_json()])
    >>> lineage_for(h, "v1")
    {'v1': {'arm': 'control', 'deployed_at': 5, 'code_commit': 'abc'}}
    >>> lineage_for(h, "*") == lineage_for(h, "v1"), lineage_for(h, "v9"), lineage_for(None, "v1")
    (True, {}, {})
    """
    if history is None:
        return {}
    if version is None or version in _ANY_VERSION:
        records = list(history.live().values())
    else:
        found = history.record_of(version)
        records = [found] if found is not None else []
    return {r.version: {"arm": r.arm, "deployed_at": r.ts, **history.lineage_of(r.version)} for r in records}
