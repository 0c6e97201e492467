"""Incident timeline and post-mortem skeleton: what the monitor said, in order, for one time range.

Input is plain data the worker and ``replay`` already write: alert documents (:meth:`Alert.to_dict`,
``firing`` and ``resolved``), canary/shadow verdict documents (``stream-monitor.health/v1``), the release
history (:class:`~stream_monitor.core.lineage.DeploymentRecord`), dataset arrivals
(:class:`~stream_monitor.core.datasets.DatasetArrival`) and, optionally, a
:class:`~stream_monitor.core.diagnosis.Diagnosis` of the same range. Output is an :class:`Incident`:

* alert **spans** (a firing alert and the resolved message that closed it, one per dedupe key);
* **groups** of related alerts, as Alertmanager groups them (deploy/alertmanager/alertmanager.yml:
  ``group_by: [model, model_version]``), split where they do not overlap in time, with the **inhibition**
  relations of the same file applied in the worker's vocabulary (:data:`INHIBIT_RULES`: a stale feature
  explains its drift, lost traffic the distributions of its slice, a ROLLBACK verdict its version's
  alerts). A group whose every alert is explained by a cause in another group joins that group: one
  incident is a cause and the symptoms it explains;
* an ordered **timeline** (:class:`~stream_monitor.core.diagnosis.Marker` entries, as ``diagnose`` uses):
  deployments, rollbacks and promotions, verdict changes (HOLD -> ROLLBACK), dataset arrivals (late ones
  marked), first-seen and resolution of every group, the onset guesses of the diagnosis;
* **detection delay**: first alert emitted minus the onset guess (the earliest series that moved, or the
  deployment just before the first alert);
* a **post-mortem skeleton** in markdown (:meth:`Incident.to_markdown`).

Pure: standard library and this package's core modules only.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_monitor.core.datasets import DatasetArrival
from stream_monitor.core.diagnosis import CAUSAL_LAYER, MAX_LAYER, Diagnosis, Marker
from stream_monitor.core.fields import join_series
from stream_monitor.core.lineage import DeploymentRecord, ReleaseHistory, build_history
from stream_monitor.core.runbooks import incident_level
from stream_monitor.core.topology import DatasetRule

__all__ = [
    "BASE_DIMS",
    "INHIBIT_RULES",
    "AlertGroup",
    "AlertSpan",
    "Incident",
    "InhibitRule",
    "build_incident",
]

ALL = "*"
# Key dimensions that name what served (the rest are segment dimensions), as core/runbooks.py reads them.
BASE_DIMS: tuple[str, ...] = ("model", "model_version", "arm", "surface")
# Alerts of one (model, version) whose spans are this close are one group (Alertmanager's group_interval).
DEFAULT_MERGE_GAP_MS = 5 * 60_000
# A deployment up to this long before the first alert can be the onset of the incident.
DEFAULT_LOOKBACK_MS = 60 * 60_000
_FOREVER = 2**62
# Signals whose metric names a feature after the first dot ("p95_age_s.<feature>", "psi.<feature>").
_FEATURE_SIGNALS = frozenset({"freshness", "feature_drift", "feature_quality"})


# -- alert spans -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AlertSpan:
    """One alert from first seen (its firing window) to its resolution (``None``: still open).

    >>> doc = {"id": "a-1", "status": "firing", "severity": "warning", "signal": "freshness",
    ...        "metric": "p95_age_s.watch_minutes_7d", "key": {"model": "m", "model_version": "*",
    ...        "arm": "*", "surface": "home", "region": "eu"}, "series": "m|*|*|home|eu",
    ...        "window": {"start": 60_000, "end": 120_000}, "emitted_at": 121_000, "message": "stale"}
    >>> span = AlertSpan.from_doc(doc)
    >>> span.feature, span.slice, span.sev, span.end_or(999)
    ('watch_minutes_7d', 'region=eu', 'SEV3', 999)
    """

    id: str
    signal: str
    metric: str
    key: dict[str, str]
    series: str
    severity: str
    first_seen: int
    emitted_at: int
    message: str
    resolved_at: int | None = None
    observed: float | None = None
    expected: float | None = None
    threshold: float | None = None
    unit: str = ""
    runbook: str = ""
    action: str = ""
    lineage: dict[str, dict[str, Any]] = field(default_factory=dict)
    inhibited_by: list[str] = field(default_factory=list)
    inhibits: list[str] = field(default_factory=list)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AlertSpan:
        """A span opened by a ``firing`` alert document (KeyError/TypeError/ValueError when malformed)."""
        key = {str(k): str(v) for k, v in dict(doc["key"]).items()}
        start = int(doc["window"]["start"])
        return cls(
            id=str(doc["id"]),
            signal=str(doc["signal"]),
            metric=str(doc["metric"]),
            key=key,
            series=str(doc.get("series", join_series(key.values()))),
            severity=str(doc.get("severity", "warning")),
            first_seen=start,
            emitted_at=int(doc.get("emitted_at", doc["window"].get("end", start))),
            message=str(doc.get("message", "")),
            observed=_num(doc.get("observed")),
            expected=_num(doc.get("expected")),
            threshold=_num(doc.get("threshold")),
            unit=str(doc.get("unit", "")),
            runbook=str(doc.get("runbook", "")),
            action=str(doc.get("action", "")),
            lineage={str(v): dict(x) for v, x in dict(doc.get("lineage") or {}).items()},
        )

    @property
    def dedupe_key(self) -> str:
        return f"{self.signal}|{self.metric}|{self.series}"

    @property
    def model(self) -> str:
        return self.key.get("model", ALL)

    @property
    def version(self) -> str:
        return self.key.get("model_version", ALL)

    @property
    def feature(self) -> str | None:
        """The feature a freshness/drift/quality alert is about (its metric after the first dot)."""
        if self.signal in _FEATURE_SIGNALS and "." in self.metric:
            return self.metric.split(".", 1)[1]
        return None

    @property
    def segment(self) -> tuple[tuple[str, str], ...]:
        return tuple((d, v) for d, v in self.key.items() if d not in BASE_DIMS)

    @property
    def slice(self) -> str:
        """The arm and segment the alert names (model and version are its group's)."""
        named = [("arm", self.key.get("arm", ALL)), *self.segment]
        return ",".join(f"{d}={v}" for d, v in named if v != ALL) or "*"

    @property
    def sev(self) -> str:
        return incident_level(self.signal, self.severity, self.metric, self.key)

    def end_or(self, until: int) -> int:
        return self.resolved_at if self.resolved_at is not None else until

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "signal": self.signal,
            "metric": self.metric,
            "key": self.key,
            "slice": self.slice,
            "severity": self.severity,
            "sev": self.sev,
            "first_seen": self.first_seen,
            "emitted_at": self.emitted_at,
            "resolved_at": self.resolved_at,
            "observed": self.observed,
            "expected": self.expected,
            "threshold": self.threshold,
            "unit": self.unit,
            "message": self.message,
            "runbook": self.runbook,
            "action": self.action,
            "lineage": self.lineage,
            "inhibited_by": self.inhibited_by,
            "inhibits": self.inhibits,
        }


def _num(value: Any) -> float | None:
    return None if value is None or isinstance(value, bool) else float(value)


def _spans(alerts: Iterable[Mapping[str, Any]], notes: list[str]) -> list[AlertSpan]:
    """Pair firing and resolved messages by dedupe key; duplicates (at-least-once delivery) count once."""
    docs: list[Mapping[str, Any]] = []
    bad = 0
    for doc in alerts:
        if not isinstance(doc, Mapping) or doc.get("status") not in ("firing", "resolved"):
            bad += 1
            continue
        docs.append(doc)
    docs.sort(key=lambda d: (_start(d), d.get("status") != "resolved"))
    open_: dict[str, AlertSpan] = {}
    out: list[AlertSpan] = []
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        try:
            ident = (str(doc["id"]), str(doc["status"]))
            if ident in seen:
                continue
            seen.add(ident)
            if doc["status"] == "firing":
                span = AlertSpan.from_doc(doc)
                if span.dedupe_key not in open_:
                    open_[span.dedupe_key] = span
                    out.append(span)
            else:
                dedupe = f"{doc['signal']}|{doc['metric']}|{doc.get('series', '')}"
                opened = open_.pop(dedupe, None)
                if opened is not None:
                    opened.resolved_at = _start(doc)
        except (KeyError, TypeError, ValueError, AttributeError):
            bad += 1
    if bad:
        notes.append(f"{bad} alert documents were not readable alerts and were skipped")
    return out


def _start(doc: Mapping[str, Any]) -> int:
    try:
        return int(doc["window"]["start"])
    except (KeyError, TypeError, ValueError):
        return -_FOREVER


# -- inhibition ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InhibitRule:
    """A cause that explains a symptom while both are open, in the worker's alert vocabulary.

    ``alertmanager`` is the source matcher of the rule it mirrors in deploy/alertmanager/alertmanager.yml
    (a test checks that each of that file's rules has its mirror here). ``equal`` names what the two
    must share: key dimensions, ``feature`` (from the metric), ``segment`` (every segment dimension).

    >>> rule = INHIBIT_RULES[1]
    >>> rule.name, rule.equal
    ('stale_feature_explains_drift', ('model', 'feature'))
    """

    name: str
    alertmanager: str
    source: Callable[[AlertSpan], bool]
    target: Callable[[AlertSpan], bool]
    equal: tuple[str, ...]
    why: str

    def shared(self, span: AlertSpan, dim: str) -> str | tuple[tuple[str, str], ...] | None:
        if dim == "feature":
            return span.feature
        if dim == "segment":
            return span.segment
        if dim in ("signal", "metric", "series"):
            return str(getattr(span, dim))
        return span.key.get(dim, ALL)

    def applies(self, cause: AlertSpan, symptom: AlertSpan) -> bool:
        if cause is symptom or not (self.source(cause) and self.target(symptom)):
            return False
        return all(self.shared(cause, d) == self.shared(symptom, d) for d in self.equal)


def _is_traffic_loss(span: AlertSpan) -> bool:
    # A volume alert is a loss when the count fell below what was expected (a silent slice has no expected).
    return span.signal == "volume" and (
        span.expected is None or span.observed is None or span.observed < span.expected
    )


INHIBIT_RULES: tuple[InhibitRule, ...] = (
    InhibitRule(
        "critical_over_warning",
        'severity="critical"',
        lambda s: s.severity == "critical",
        lambda s: s.severity == "warning",
        ("signal", "metric", "series"),
        "the critical alert of the same series says more",
    ),
    InhibitRule(
        "stale_feature_explains_drift",
        'cause="stale_feature"',
        lambda s: s.signal == "freshness",
        lambda s: s.signal == "feature_drift",
        ("model", "feature"),
        "a stale feature explains its drift",
    ),
    InhibitRule(
        "stale_feature_shifts_scores",
        'cause="stale_feature"',
        lambda s: s.signal == "freshness",
        lambda s: s.signal == "score_drift",
        ("model", "model_version"),
        "stale inputs shift the model's scores",
    ),
    InhibitRule(
        "traffic_loss_explains_distributions",
        'cause="traffic_loss"',
        _is_traffic_loss,
        lambda s: s.signal in ("feature_drift", "score_drift", "candidate_source", "funnel", "label_ctr"),
        ("model", "surface", "segment"),
        "losing a slice's traffic changes everything measured on it",
    ),
)
# The bad_release rule's source is a ROLLBACK verdict, not an alert: see _inhibit_by_verdicts.
BAD_RELEASE_MATCHER = 'cause="bad_release"'


@dataclass(frozen=True, slots=True)
class _Rollback:
    """A span of ROLLBACK decisions of one rollout (from its first ROLLBACK to its next other decision)."""

    ref: str
    model: str
    version: str
    arm: str
    start: int
    end: int | None


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 <= b1 and b0 <= a1


def _inhibit(spans: Sequence[AlertSpan], rollbacks: Sequence[_Rollback], until: int) -> None:
    for cause in spans:
        for symptom in spans:
            for rule in INHIBIT_RULES:
                if rule.applies(cause, symptom) and _overlap(
                    cause.first_seen, cause.end_or(until), symptom.first_seen, symptom.end_or(until)
                ):
                    symptom.inhibited_by.append(f"{cause.id} ({rule.why})")
                    cause.inhibits.append(symptom.id)
                    break
    # A canary the analysis decided to roll back: every other signal alert of that version adds nothing.
    for rb in rollbacks:
        for symptom in spans:
            names_version = symptom.version == rb.version or (
                symptom.version == ALL and symptom.key.get("arm") == rb.arm
            )
            if (
                symptom.model == rb.model
                and names_version
                and _overlap(rb.start, rb.end if rb.end is not None else until, symptom.first_seen, until)
            ):
                symptom.inhibited_by.append(f"{rb.ref} (the verdict already says what to do)")


# -- groups --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AlertGroup:
    """Related alerts: one model and version, overlapping in time, with the symptoms their causes explain.

    >>> g = AlertGroup("G1", "home-ranker", "v2", 60_000, 180_000)
    >>> g.label
    'home-ranker v2'
    """

    id: str
    model: str
    version: str
    start: int
    end: int | None
    alerts: list[AlertSpan] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} {self.version}" if self.version != ALL else f"{self.model} (all versions)"

    @property
    def causes(self) -> list[AlertSpan]:
        """Alerts that explain others and are not themselves explained."""
        return [a for a in self.alerts if a.inhibits and not a.inhibited_by]

    @property
    def top(self) -> AlertSpan:
        """The alert to read first: a cause, else the most upstream (core/diagnosis.py layers), earliest."""
        return min(
            self.alerts,
            key=lambda a: (
                not (a.inhibits and not a.inhibited_by),
                bool(a.inhibited_by),
                CAUSAL_LAYER.get(a.signal, MAX_LAYER),
                a.first_seen,
            ),
        )

    @property
    def sev(self) -> str:
        return min(a.sev for a in self.alerts)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "model_version": self.version,
            "start": self.start,
            "end": self.end,
            "sev": self.sev,
            "top": self.top.id,
            "causes": [a.id for a in self.causes],
            "alerts": [a.to_json_dict() for a in self.alerts],
        }


def _group(spans: Sequence[AlertSpan], gap_ms: int, until: int) -> list[AlertGroup]:
    by_series: dict[tuple[str, str], list[AlertSpan]] = {}
    for span in sorted(spans, key=lambda s: (s.first_seen, s.id)):
        by_series.setdefault((span.model, span.version), []).append(span)
    groups: list[AlertGroup] = []
    for (model, version), members in by_series.items():
        current: AlertGroup | None = None
        for span in members:
            if current is None or span.first_seen > (current.end or until) + gap_ms:
                current = AlertGroup("", model, version, span.first_seen, span.resolved_at)
                groups.append(current)
            current.alerts.append(span)
            ends = [a.end_or(until) for a in current.alerts]
            current.end = None if any(a.resolved_at is None for a in current.alerts) else max(ends)
    # A group that only holds symptoms explained by causes in one other group joins it.
    owner = {a.id: g for g in groups for a in g.alerts}
    for group in list(groups):
        explained_by = {
            id(owner[ref.split(" ", 1)[0]])
            for a in group.alerts
            for ref in a.inhibited_by
            if ref.split(" ", 1)[0] in owner
        }
        if not group.alerts or not all(a.inhibited_by for a in group.alerts) or len(explained_by) != 1:
            continue
        (target_id,) = explained_by
        target = next(g for g in groups if id(g) == target_id)
        if target is group:
            continue
        target.alerts.extend(group.alerts)
        target.start = min(target.start, group.start)
        target.end = None if target.end is None or group.end is None else max(target.end, group.end)
        for a in group.alerts:
            owner[a.id] = target
        group.alerts = []
    kept = [g for g in groups if g.alerts]
    kept.sort(key=lambda g: (g.start, g.model, g.version))
    for number, group in enumerate(kept, 1):
        group.id = f"G{number}"
        group.alerts.sort(key=lambda a: (bool(a.inhibited_by), a.first_seen, a.id))
    return kept


# -- the incident ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Incident:
    """Everything known about one time range: groups, timeline, detection delay, suspected root cause.

    >>> inc = Incident(since_ms=0, until_ms=60_000)
    >>> inc.to_json_dict()["groups"], inc.detection_delay_ms
    ([], None)
    >>> "## Timeline" in inc.to_markdown()
    True
    """

    since_ms: int
    until_ms: int
    model: str | None = None
    groups: list[AlertGroup] = field(default_factory=list)
    timeline: list[Marker] = field(default_factory=list)
    onset_ms: int | None = None
    onset_reason: str = ""
    detected_ms: int | None = None
    root_cause: str | None = None
    root_cause_evidence: list[str] = field(default_factory=list)
    rollback_targets: dict[str, str] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    late_datasets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[AlertSpan]:
        return [a for g in self.groups for a in g.alerts]

    @property
    def detection_delay_ms(self) -> int | None:
        if self.detected_ms is None or self.onset_ms is None:
            return None
        return max(0, self.detected_ms - self.onset_ms)

    @property
    def start_ms(self) -> int | None:
        starts = [g.start for g in self.groups] + ([self.onset_ms] if self.onset_ms is not None else [])
        return min(starts) if starts else None

    @property
    def end_ms(self) -> int | None:
        """When the last group resolved (``None``: still open, or nothing fired)."""
        if not self.groups or any(g.end is None for g in self.groups):
            return None
        return max(g.end for g in self.groups if g.end is not None)

    @property
    def affected(self) -> dict[str, list[str]]:
        models = sorted({a.model for a in self.alerts} | {str(v["model"]) for v in self.verdicts})
        versions = sorted(
            {f"{a.model} {a.version}" for a in self.alerts if a.version != ALL}
            | {f"{v['model']} {v['version']}" for v in self.verdicts}
        )
        slices = sorted({a.slice for a in self.alerts})
        return {"models": models, "versions": versions, "slices": slices}

    @property
    def worst_sev(self) -> str | None:
        sevs = [g.sev for g in self.groups]
        if any(v["decision"] == "ROLLBACK" for v in self.verdicts):
            sevs.append("SEV2")  # docs/alerting.md: canary verdict ROLLBACK is SEV2
        return min(sevs) if sevs else None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "since_ms": self.since_ms,
            "until_ms": self.until_ms,
            "model": self.model,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "sev": self.worst_sev,
            "affected": self.affected,
            "onset_ms": self.onset_ms,
            "onset_reason": self.onset_reason,
            "detected_ms": self.detected_ms,
            "detection_delay_ms": self.detection_delay_ms,
            "root_cause": self.root_cause,
            "root_cause_evidence": self.root_cause_evidence,
            "rollback_targets": self.rollback_targets,
            "groups": [g.to_json_dict() for g in self.groups],
            "verdicts": self.verdicts,
            "late_datasets": self.late_datasets,
            "timeline": [m.to_json_dict() for m in self.timeline],
            "notes": self.notes,
        }

    def to_text(self) -> str:
        """The terminal view: groups (cause first, inhibited symptoms marked), then the timeline."""
        head = f"Incident {_t(self.since_ms)} .. {_t(self.until_ms)}"
        out = [head + (f" (model {self.model})" if self.model else "") + f": {self.worst_sev or 'no alerts'}"]
        for note in self.notes:
            out.append(f"  note: {note}")
        if self.detection_delay_ms is not None:
            out.append(
                f"  onset {_t(self.onset_ms)} ({self.onset_reason}), first alert {_t(self.detected_ms)}: "
                f"detected after {_dur(self.detection_delay_ms)}"
            )
        if self.root_cause:
            out.append(f"  suspected root cause (hypothesis): {self.root_cause}")
        out.append("")
        out.append(f"Groups ({len(self.groups)})")
        for g in self.groups:
            out.append(f"  {g.id} {g.label} {g.sev}  {_t(g.start)} .. {_t(g.end) if g.end else 'open'}")
            for a in g.alerts:
                mark = "cause" if a.inhibits and not a.inhibited_by else "inhibited" if a.inhibited_by else ""
                out.append(f"    {a.sev} {a.signal}.{a.metric} {a.slice} [{mark or 'alert'}] {a.id}")
                for ref in a.inhibited_by[:2]:
                    out.append(f"        caused by {ref}")
        out.append("")
        out.append("Timeline (UTC)")
        for m in self.timeline:
            out.append(f"  {_t(m.ts)}  {m.kind:<11} {m.label}")
        return "\n".join(out)

    def to_markdown(self, title: str | None = None) -> str:
        """The post-mortem skeleton: every section present, facts filled in, the rest left as prompts."""
        aff = self.affected
        what = ", ".join(aff["versions"] or aff["models"]) or "no alert"
        default = (
            f"Post-mortem: {self.worst_sev or 'no'} incident on {what} ({_t(self.start_ms or self.since_ms)})"
        )
        lines = [f"# {title or default}", ""]
        lines += ["## Summary", ""]
        if self.groups or self.verdicts:
            lines.append(
                f"Between {_t(self.start_ms)} and "
                f"{_t(self.end_ms) if self.end_ms else 'the end of the range (still open)'} "
                f"stream-monitor raised {len(self.alerts)} alert(s) in {len(self.groups)} group(s) "
                f"(worst {self.worst_sev}) on {', '.join(aff['models']) or '-'}."
            )
        else:
            lines.append("No alert and no verdict in the range.")
        lines += [
            "",
            "_TODO: one paragraph in plain words: what users saw, for how long, what fixed it._",
            "",
        ]
        lines += ["## Impact", ""]
        lines.append(f"- Models: {', '.join(aff['models']) or '-'}")
        lines.append(f"- Versions: {', '.join(aff['versions']) or '-'}")
        lines.append(f"- Slices: {', '.join(aff['slices']) or '-'}")
        duration = (self.end_ms or self.until_ms) - self.start_ms if self.start_ms is not None else None
        lines.append(
            f"- Duration: {_dur(duration) if duration is not None else '-'}"
            + ("" if self.end_ms else " (open at the end of the range)")
        )
        lines.append("- Metrics (observed vs expected / threshold at first alert):")
        for a in self.alerts:
            if a.inhibited_by:
                continue
            ref = a.expected if a.expected is not None else a.threshold
            lines.append(
                f"  - `{a.signal}.{a.metric}` {a.slice}: {_val(a.observed, a.unit)} vs {_val(ref, a.unit)}"
            )
        lines += ["- _TODO: user-facing impact (requests, sessions, revenue)._", ""]
        lines += ["## Timeline", "", "| time (UTC) | what | detail |", "|---|---|---|"]
        for m in self.timeline:
            lines.append(f"| {_t(m.ts)} | {m.kind} | {m.label.replace('|', '/')} |")
        lines += ["", "## Detection", ""]
        if self.detection_delay_ms is not None:
            lines.append(
                f"First alert emitted {_t(self.detected_ms)}; onset guess {_t(self.onset_ms)} "
                f"({self.onset_reason}): detection delay {_dur(self.detection_delay_ms)}."
            )
        else:
            lines.append("No detection delay: no alert, or no onset guess in the range.")
        inhibited = sum(1 for a in self.alerts if a.inhibited_by)
        lines.append(
            f"{len(self.alerts) - inhibited} alert(s) would page or ticket; {inhibited} were symptoms "
            "explained by a cause (inhibited)."
        )
        lines += ["", "- _TODO: was it detected by the monitor or by a person? Could it be earlier?_", ""]
        lines += ["## Root cause", ""]
        if self.root_cause:
            lines.append(f"**Hypothesis (to be confirmed):** {self.root_cause}")
            lines += [f"- {e}" for e in self.root_cause_evidence]
        else:
            lines.append("**Hypothesis (to be confirmed):** _none suggested by the monitor._")
        lines += ["", "_TODO: confirmed root cause and why it happened (five whys)._", ""]
        lines += ["## Mitigation", ""]
        actions = list(dict.fromkeys(a.action for a in self.alerts if a.action and not a.inhibited_by))
        for arm, target in self.rollback_targets.items():
            lines.append(f"- Roll back {arm} to **{target}** (release history: `stream-monitor lineage`).")
        lines += [f"- {action}" for action in actions] or ["- _no suggested action_"]
        lines += ["- _TODO: what was actually done, and when._", ""]
        lines += ["## Action items", ""]
        for g in self.groups:
            top = g.top
            lines.append(
                f"- [ ] {g.id}: fix the cause of `{top.signal}.{top.metric}` on {g.label} {top.slice}"
            )
        for name in self.late_datasets:
            lines.append(f"- [ ] make dataset {name} land on time (or alert its owner earlier)")
        lines += [
            "- [ ] confirm the root cause hypothesis above",
            "- [ ] add a test or a guard so this cannot ship again",
            "- [ ] review thresholds: was the detection delay acceptable?",
            "",
        ]
        lines += ["## Links", ""]
        runbooks = sorted({a.runbook for a in self.alerts if a.runbook})
        lines += [f"- Runbook: [{r}]({r})" for r in runbooks] or ["- _no runbook_"]
        lines.append("- Diagnosis: `stream-monitor diagnose` over the same range")
        return "\n".join(lines) + "\n"


def _t(ms: int | None) -> str:
    if ms is None:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _dur(ms: int) -> str:
    s = ms // 1000
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def _val(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value:.2%}"
    return f"{value:.4g} {unit}".strip()


# -- assembly -----------------------------------------------------------------------------------------------


def _verdict_changes(
    verdicts: Iterable[Mapping[str, Any]], lo: int, hi: int, model: str | None, notes: list[str]
) -> tuple[list[Marker], list[_Rollback], list[dict[str, Any]]]:
    by_rollout: dict[str, list[Mapping[str, Any]]] = {}
    bad = 0
    for doc in verdicts:
        try:
            if model is not None and doc["model"] != model:
                continue
            int(doc["window"]["end"])
            str(doc["decision"])
            by_rollout.setdefault(f"{doc['model']}/{doc['deployment']}", []).append(doc)
        except (KeyError, TypeError, ValueError):
            bad += 1
    if bad:
        notes.append(f"{bad} verdict documents were not readable and were skipped")
    markers: list[Marker] = []
    rollbacks: list[_Rollback] = []
    summary: list[dict[str, Any]] = []
    for ref, docs in sorted(by_rollout.items()):
        docs.sort(key=lambda d: int(d["window"]["end"]))
        previous: str | None = None
        rb_start: int | None = None
        candidate = dict(docs[0].get("candidate") or {})
        kind = str(docs[0].get("kind", "canary"))
        version, arm = str(candidate.get("version", "?")), str(candidate.get("arm", "canary"))
        for doc in docs:
            end, decision = int(doc["window"]["end"]), str(doc["decision"])
            if decision != previous and lo <= end < hi:
                change = f"{previous} -> {decision}" if previous else decision
                markers.append(
                    Marker(end, "verdict", f"{kind} {ref}: {change} ({doc.get('reason', '')})".strip())
                )
            if decision == "ROLLBACK" and rb_start is None:
                rb_start = end
            elif decision != "ROLLBACK" and rb_start is not None:
                rollbacks.append(_Rollback(f"verdict:{ref}", str(doc["model"]), version, arm, rb_start, end))
                rb_start = None
            previous = decision
        if rb_start is not None:
            rollbacks.append(_Rollback(f"verdict:{ref}", str(docs[0]["model"]), version, arm, rb_start, None))
        last = docs[-1]
        if lo <= int(last["window"]["end"]) or any(lo <= int(d["window"]["end"]) < hi for d in docs):
            summary.append(
                {
                    "rollout": ref,
                    "kind": kind,
                    "model": str(last["model"]),
                    "version": version,
                    "arm": arm,
                    "decision": str(last["decision"]),
                    "decisions": list(dict.fromkeys(str(d["decision"]) for d in docs)),
                    "reason": str(last.get("reason", "")),
                }
            )
    return markers, rollbacks, summary


def _deployment_markers(
    histories: Mapping[str, ReleaseHistory], lo: int, hi: int
) -> tuple[list[Marker], dict[tuple[str, str, str], str], list[Marker]]:
    """Deployments, rollbacks and promotions; per (model, version, arm) the version it replaced; and the
    markers that can start an incident (a version the model never served before, after a first one)."""
    markers: list[Marker] = []
    new_versions: list[Marker] = []
    replaced: dict[tuple[str, str, str], str] = {}
    for name, hist in histories.items():
        served: dict[str, list[str]] = {}
        for release in hist.releases:
            r = release.record
            if release.previous:
                replaced[(name, r.version, r.arm)] = release.previous
            before_on_arm = served.get(r.arm, [])
            elsewhere = {v for arm, vs in served.items() if arm != r.arm for v in vs}
            if not r.live:
                kind, text = "deployment", f"{name} arm {r.arm} taken down ({r.version})"
            elif release.previous and r.version in before_on_arm:
                kind, text = "rollback", f"{name} {r.arm} back to {r.version} (from {release.previous})"
            elif release.previous and r.version in elsewhere:
                kind, text = (
                    "promotion",
                    f"{name} {r.version} promoted to {r.arm} (replacing {release.previous})",
                )
            else:
                share = f" at {r.traffic:.0%}" if r.traffic is not None else ""
                was = f" (replacing {release.previous})" if release.previous else ""
                kind, text = "deployment", f"{name} {r.version} on {r.arm}{share}{was}"
            if r.reason:
                text += f": {r.reason}"
            is_new = r.live and bool(served) and r.version not in {v for vs in served.values() for v in vs}
            served.setdefault(r.arm, []).append(r.version)
            if lo <= r.ts < hi:
                markers.append(Marker(r.ts, kind, text))
                if is_new:
                    new_versions.append(markers[-1])
    return markers, replaced, new_versions


def _dataset_markers(
    arrivals: Iterable[DatasetArrival], rules: Mapping[str, DatasetRule], lo: int, hi: int
) -> tuple[list[Marker], list[str]]:
    """Arrivals; one that came more than ``every + grace`` after the previous one of its dataset is late."""
    markers: list[Marker] = []
    late: list[str] = []
    last: dict[str, int] = {}
    for a in sorted(arrivals, key=lambda a: a.ts):
        rule = rules.get(a.name)
        gap = a.ts - last[a.name] if a.name in last else None
        last[a.name] = a.ts
        if not lo <= a.ts < hi:
            continue
        text = f"{a.name} {a.partition} ({a.rows} rows)"
        kind = "dataset"
        if rule is not None and gap is not None and gap > rule.deadline_ms:
            kind = "dataset-late"
            text += f": {_dur(gap - rule.every_ms)} later than due"
            late.append(a.name)
        if rule is not None and a.rows < rule.min_rows:
            kind = "dataset-late"
            text += f": short ({rule.min_rows} rows expected)"
            late.append(a.name)
        markers.append(Marker(a.ts, kind, text))
    return markers, list(dict.fromkeys(late))


def build_incident(
    alerts: Iterable[Mapping[str, Any]],
    verdicts: Iterable[Mapping[str, Any]] = (),
    deployments: Iterable[DeploymentRecord] = (),
    datasets: Iterable[DatasetArrival] = (),
    diagnosis: Diagnosis | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    model: str | None = None,
    dataset_rules: Iterable[DatasetRule] = (),
    merge_gap_ms: int = DEFAULT_MERGE_GAP_MS,
    lookback_ms: int = DEFAULT_LOOKBACK_MS,
) -> Incident:
    """Assemble the incident of ``[since_ms, until_ms)`` (see the module docstring).

    An alert belongs to the range when its span overlaps it; deployments up to ``lookback_ms`` before
    the range are on the timeline too (a release an hour before the first alert is often its cause).

    >>> fresh = {"id": "a-f", "status": "firing", "severity": "warning", "signal": "freshness",
    ...          "metric": "p95_age_s.watch_minutes_7d", "window": {"start": 600_000, "end": 660_000},
    ...          "key": {"model": "m", "model_version": "*", "arm": "*", "surface": "home", "region": "eu"}}
    >>> drift = {**fresh, "id": "a-d", "signal": "feature_drift", "metric": "psi.watch_minutes_7d",
    ...          "key": {**fresh["key"], "model_version": "v2"}, "window": {"start": 660_000, "end": 720_000}}
    >>> inc = build_incident([fresh, drift], since_ms=0, until_ms=3_600_000)
    >>> [(g.id, [a.id for a in g.alerts]) for g in inc.groups]
    [('G1', ['a-f', 'a-d'])]
    >>> inc.groups[0].alerts[1].inhibited_by
    ['a-f (a stale feature explains its drift)']
    """
    notes: list[str] = []
    lo = since_ms if since_ms is not None else -_FOREVER
    hi = until_ms if until_ms is not None else _FOREVER
    if lo >= hi:
        raise ValueError(f"the range is empty: since {since_ms} is not before until {until_ms}")
    spans = [
        s
        for s in _spans(alerts, notes)
        if (model is None or s.model in (model, ALL)) and _overlap(s.first_seen, s.end_or(hi), lo, hi - 1)
    ]
    verdict_markers, rollbacks, verdict_summary = _verdict_changes(verdicts, lo, hi, model, notes)
    _inhibit(spans, rollbacks, hi)
    groups = _group(spans, merge_gap_ms, hi)

    by_model: dict[str, list[DeploymentRecord]] = {}
    for record in deployments:
        if model is None or record.model == model:
            by_model.setdefault(record.model, []).append(record)
    histories = {
        name: build_history(name, [r.to_json() for r in sorted(recs, key=lambda r: r.ts)])
        for name, recs in by_model.items()
    }
    deploy_markers, replaced, new_versions = _deployment_markers(histories, lo - lookback_ms, hi)
    dataset_markers, late = _dataset_markers(datasets, {r.name: r for r in dataset_rules}, lo, hi)

    inc = Incident(
        since_ms=lo,
        until_ms=hi,
        model=model,
        groups=groups,
        verdicts=verdict_summary,
        late_datasets=late,
        notes=notes,
    )
    timeline = [*deploy_markers, *verdict_markers, *dataset_markers]
    for g in groups:
        inhibited = sum(1 for a in g.alerts if a.inhibited_by)
        top = g.top
        label = f"{g.id} {g.label} {g.sev}: {top.signal}.{top.metric} {top.slice}"
        extra = len(g.alerts) - 1
        if extra:
            label += f" (+{extra} related, {inhibited} inhibited)"
        timeline.append(Marker(g.start, "alert", label))
        if g.end is not None:
            timeline.append(Marker(g.end, "resolved", f"{g.id} {g.label}: last alert resolved"))

    # Detection: first alert emitted; onset: the earliest moved series of the diagnosis, else the
    # deployment shortly before the first alert, else the first alert's window.
    if spans:
        first = min(spans, key=lambda s: s.emitted_at)
        inc.detected_ms = first.emitted_at
        first_window = min(s.first_seen for s in spans)
        candidates: list[tuple[int, str]] = [(first_window, f"window of the first alert {first.signal}")]
        if diagnosis is not None:
            moved = [m for m in diagnosis.timeline if m.kind == "moved" and lo <= m.ts <= first_window]
            candidates += [(m.ts, f"first moved series: {m.label}") for m in moved[:1]]
        before = [m for m in new_versions if first_window - lookback_ms <= m.ts <= first_window]
        if before:
            candidates.append((before[-1].ts, f"deployment: {before[-1].label}"))
        inc.onset_ms, inc.onset_reason = min(candidates)
        if inc.onset_ms < lo:
            timeline.append(Marker(inc.onset_ms, "onset", inc.onset_reason))
    elif diagnosis is not None:
        moved = [m for m in diagnosis.timeline if m.kind == "moved" and lo <= m.ts < hi]
        if moved:
            inc.onset_ms, inc.onset_reason = moved[0].ts, f"first moved series: {moved[0].label}"
    if diagnosis is not None:
        timeline += [m for m in diagnosis.timeline if m.kind == "moved"][:5]
    timeline.sort(key=lambda m: (m.ts, _KIND_ORDER.get(m.kind, 9), m.label))
    inc.timeline = timeline
    # Without bounds the range is what the inputs cover: first to last thing known to have happened.
    seen = [m.ts for m in timeline] + [s.emitted_at for s in spans]
    if until_ms is None:
        inc.until_ms = max(seen) + 1 if seen else 0
    if since_ms is None:
        inc.since_ms = min(seen) if seen else inc.until_ms - 1

    # Root cause: the diagnosis' top suspect, else the top cause alert of the worst group.
    top_suspect = diagnosis.top if diagnosis is not None else None
    if top_suspect is not None:
        inc.root_cause = (
            f"{top_suspect.name} ({top_suspect.kind} suspect of stream-monitor diagnose, "
            f"score {top_suspect.score:.2f})"
        )
        inc.root_cause_evidence = list(top_suspect.evidence[:4])
    elif any(v["decision"] == "ROLLBACK" for v in verdict_summary):
        v = next(v for v in verdict_summary if v["decision"] == "ROLLBACK")
        inc.root_cause = f"release: {v['model']} {v['version']} on {v['arm']} ({v['kind']} verdict ROLLBACK)"
        inc.root_cause_evidence = [v["reason"]]
    elif groups:
        worst = min(groups, key=lambda g: (g.sev, g.start))
        top = worst.top
        inc.root_cause = f"{top.signal}: {top.signal}.{top.metric} on {worst.label} {top.slice}"
        inc.root_cause_evidence = [top.message] + [
            f"explains {len(top.inhibits)} other alerts" for _ in (1,) if top.inhibits
        ]

    # Rollback targets: the version each alerting (or rolled-back) version replaced on its arm.
    for span in spans:
        for version, info in span.lineage.items():
            if version != span.version:  # a roll-up's lineage lists every live version
                continue
            arm = str(info.get("arm", "?"))
            target = replaced.get((span.model, version, arm))
            if target:
                inc.rollback_targets.setdefault(f"{span.model} {arm}", target)
    for rb in rollbacks:
        target = replaced.get((rb.model, rb.version, rb.arm))
        if target:
            inc.rollback_targets.setdefault(f"{rb.model} {rb.arm}", target)
    if top_suspect is not None and top_suspect.rollback_target:
        arm = top_suspect.key.get("arm", "?")
        inc.rollback_targets.setdefault(
            f"{top_suspect.key.get('model', '?')} {arm}", top_suspect.rollback_target
        )
    return inc


# Same-time entries read cause first: deployments before verdicts before alerts.
_KIND_ORDER = {
    "onset": 0,
    "deployment": 1,
    "rollback": 1,
    "promotion": 1,
    "dataset": 2,
    "dataset-late": 2,
    "moved": 3,
    "alert": 4,
    "verdict": 5,
    "resolved": 6,
}
