"""Alerts and their de-duplication: one open alert per (signal, metric, key), resolved when it clears.

:class:`AlertBook` turns the breaches of successive windows into ``firing`` and ``resolved`` alerts. Its
state (open alerts, volume and baseline history, SLO counts) is a plain JSON document with a version
number, so a checkpoint in Redis is data that is checked on load, never code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from stream_monitor.core.canary import CanaryAnalyzer, CanaryStateError
from stream_monitor.core.fields import join_series
from stream_monitor.core.runbooks import DEFAULT_RUNBOOK_BASE, runbook_for, suggested_action
from stream_monitor.core.series import Breach
from stream_monitor.core.shadow import ShadowAnalyzer, ShadowStateError
from stream_monitor.core.state_format import StateFormatError

__all__ = ["STATE_VERSION", "Alert", "AlertBook", "DetectorState", "StateFormatError"]

STATE_VERSION = 4  # 2 added `baselines`, 3 `profiles` and `slo_history`, 4 `canary`; versions 1-3 still load


# Alert fields filled in when an alert is emitted (from the store), never kept in the checkpoint.
_EMIT_ONLY = frozenset({"lineage", "example_request_ids"})
# In an open alert's checkpoint document: windows in a row its value has spent inside the clearing band.
_CLEARING = "clearing_windows"


@dataclass(slots=True)
class Alert:
    """One alert message as published on the alerts topic (see docs/schemas/alert.schema.json)."""

    id: str
    status: str
    severity: str
    signal: str
    metric: str
    key: dict[str, str]
    series: str
    window: dict[str, int]
    observed: float
    expected: float | None
    threshold: float | None
    unit: str
    message: str
    opened_at: int
    emitted_at: int
    topology: str
    # Added later, so with defaults: checkpoints written before them still load (see from_dict).
    runbook: str = ""
    action: str = ""
    # Lineage of the model version(s) in the key, {version: {arm, deployed_at, ...}} (core/lineage.py).
    # Filled in when the alert is emitted; not part of the checkpoint, so older alerts load without it.
    lineage: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Ids of a few recent traced requests of the alert's slice (core/traces.py, docs/traces.md); filled in
    # when the alert is emitted, not part of the checkpoint.
    example_request_ids: list[str] = field(default_factory=list)

    @property
    def dedupe_key(self) -> str:
        return f"{self.signal}|{self.metric}|{self.series}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Alert:
        optional = {"runbook": "", "action": ""}  # alerts opened before these fields existed
        doc = {**optional, **doc}
        # lineage and example_request_ids are added later too: documents without them still load.
        return cls(**{n: doc[n] for n in cls.__dataclass_fields__ if n in doc or n not in _EMIT_ONLY})


@dataclass(slots=True)
class DetectorState:
    """Everything detection carries from one window to the next."""

    last_closed_end: int | None = None
    volume_history: dict[str, list[float]] = field(default_factory=dict)
    volume_absent: dict[str, int] = field(default_factory=dict)
    open_alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, list[float]] = field(default_factory=dict)
    # Drift references (core/profile_signals.py): "ref|<hist>|<series>" and "ver|<hist>|<series>" entries
    # of plain JSON (version strings and {bin: count} maps).
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-window (total, bad) SLO counts, "<objective>|<series>" -> [total, bad, total, bad, ...].
    slo_history: dict[str, list[int]] = field(default_factory=dict)
    # The anomaly layer's checkpoint (core/anomaly.py): token bucket and per-series detector states, each
    # checked by core/detectors.py when loaded. Absent from older checkpoints (then empty).
    anomaly: dict[str, Any] = field(default_factory=dict)
    # Canary analysis (core/canary.py): a JSON document checked by CanaryAnalyzer.check_state.
    canary: dict[str, Any] = field(default_factory=dict)
    # Shadow analysis (core/shadow.py): a JSON document checked by ShadowAnalyzer.check_state.
    shadow: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        # Shallow on purpose: the caller serialises it at once, and dataclasses.asdict deep-copied every
        # list of the anomaly detectors' histories (about 140 ms a window for the default topology).
        return {"version": STATE_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_json_dict(cls, doc: object) -> DetectorState:
        """Load a checkpoint, checking its version and shape.

        >>> DetectorState.from_json_dict({"version": 99})
        Traceback (most recent call last):
        ...
        stream_monitor.core.state_format.StateFormatError: detector state version 99 is not 4
        >>> DetectorState.from_json_dict({"version": 2, "last_closed_end": 60_000, "volume_history": {},
        ...     "volume_absent": {}, "open_alerts": {}, "baselines": {}}).slo_history
        {}
        """
        if not isinstance(doc, dict):
            raise StateFormatError(f"detector state must be a JSON object, got {type(doc).__name__}")
        if doc.get("version") not in (1, 2, 3, STATE_VERSION):
            raise StateFormatError(f"detector state version {doc.get('version')!r} is not {STATE_VERSION}")
        doc = {
            "baselines": {},
            "profiles": {},
            "slo_history": {},
            "anomaly": {},
            "canary": {},
            "shadow": {},
            **doc,
        }
        try:
            names = (
                "volume_history",
                "volume_absent",
                "open_alerts",
                "baselines",
                "profiles",
                "slo_history",
                "anomaly",
            )
            for name in names:
                if not isinstance(doc.get(name), dict):
                    raise StateFormatError(f"detector state {name} must be a JSON object")
            for name in ("volume_history", "baselines", "slo_history"):
                if not all(isinstance(v, list) for v in doc[name].values()):
                    raise StateFormatError(f"detector state {name} values must be lists")
            state = cls(
                last_closed_end=doc["last_closed_end"],
                volume_history={str(k): [float(x) for x in v] for k, v in doc["volume_history"].items()},
                volume_absent={str(k): int(v) for k, v in doc["volume_absent"].items()},
                open_alerts={str(k): dict(v) for k, v in doc["open_alerts"].items()},
                baselines={str(k): [float(x) for x in v] for k, v in doc["baselines"].items()},
                profiles={str(k): _profile_entry(v) for k, v in doc["profiles"].items()},
                slo_history={str(k): [int(x) for x in v] for k, v in doc["slo_history"].items()},
                anomaly=dict(doc["anomaly"]),
            )
            if doc["canary"]:
                state.canary = CanaryAnalyzer.check_state(doc["canary"])
            if doc["shadow"]:
                state.shadow = ShadowAnalyzer.check_state(doc["shadow"])
            if any(len(v) % 2 for v in state.slo_history.values()):
                raise StateFormatError("detector state slo_history lists must hold (total, bad) pairs")
            for alert in state.open_alerts.values():
                Alert.from_dict(alert)
        except (CanaryStateError, ShadowStateError) as exc:
            raise StateFormatError(str(exc)) from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFormatError(f"detector state is malformed: {exc!r}") from exc
        if state.last_closed_end is not None and not isinstance(state.last_closed_end, int):
            raise StateFormatError("detector state last_closed_end must be an integer")
        return state


class AlertBook:
    """Opens, keeps and resolves alerts from per-window breaches.

    >>> from stream_monitor.core.series import Breach
    >>> book = AlertBook(("model", "region"), topology="t")
    >>> state = DetectorState()
    >>> b = Breach("error_rate", "ratio", ("m", "eu"), 0.2, None, 0.02, "ratio", "critical", "errors")
    >>> [a.status for a in book.update(state, [b], (0, 60_000), now_ms=1)]
    ['firing']
    >>> book.update(state, [b], (60_000, 120_000), now_ms=2)  # still open: nothing new
    []
    >>> [a.status for a in book.update(state, [], (120_000, 180_000), now_ms=3, evaluated={b.identity: 0.01})]
    ['resolved']
    """

    def __init__(
        self,
        key_dims: tuple[str, ...],
        topology: str,
        clear_ratios: Mapping[str, float] | None = None,
        runbook_base: str = DEFAULT_RUNBOOK_BASE,
        clear_windows: int = 1,
    ) -> None:
        self.key_dims = key_dims
        self.topology = topology
        self.runbook_base = runbook_base
        # Hysteresis for ceiling signals: an alert resolves only once the value is back below
        # threshold * ratio, so a value hovering at the threshold does not flap.
        self.clear_ratios = dict(clear_ratios or {})
        if clear_windows < 1:
            raise ValueError(f"clear_windows must be >= 1, got {clear_windows}")
        self.clear_windows = clear_windows

    def inside_clearing_band(self, alert: Mapping[str, Any], value: float) -> bool:
        """Whether ``value`` is back where the open ``alert`` (its document) may resolve.

        The band is judged against the threshold the alert opened at, in the direction it broke: a
        ceiling alert (observed above its threshold) clears at or below threshold x clear_ratio, a floor
        alert (observed below) at or above its threshold. A baseline that moved since (a slice that
        dropped for long enough to pull its own baseline down) so never makes a fault look resolved.

        >>> book = AlertBook(("model",), "t", {"diversity": 0.8})
        >>> floor = {"signal": "diversity", "observed": 3.0, "threshold": 20.0}
        >>> book.inside_clearing_band(floor, 16.0), book.inside_clearing_band(floor, 21.0)
        (False, True)
        >>> ceiling = {"signal": "diversity", "observed": 0.5, "threshold": 0.2}
        >>> book.inside_clearing_band(ceiling, 0.18), book.inside_clearing_band(ceiling, 0.15)
        (False, True)
        """
        threshold, observed = alert.get("threshold"), alert.get("observed")
        if threshold is None or observed is None or observed == threshold:
            return True  # nothing to hold the value to: the signal's own "no breach" decides
        if observed > threshold:
            return bool(value <= threshold * self.clear_ratios.get(alert["signal"], 1.0))
        return bool(value >= threshold)

    def update(
        self,
        state: DetectorState,
        breaches: Iterable[Breach],
        window: tuple[int, int],
        now_ms: int,
        evaluated: Mapping[tuple[str, str, tuple[str, ...]], float] | None = None,
    ) -> list[Alert]:
        """Alerts to emit for one closed window.

        An open alert resolves once its key has been evaluated (``evaluated``) without a breach and
        inside its clearing band (:meth:`inside_clearing_band`) for ``clear_windows`` windows in a row;
        a breach or a value outside the band starts the count over, and a window where the key has too
        little data to be evaluated neither counts nor resets (no alert resolves on silence).
        """
        start, end = window
        out: list[Alert] = []
        breaching: set[str] = set()
        for breach in breaches:
            series = join_series(breach.key)
            dedupe = f"{breach.signal}|{breach.metric}|{series}"
            breaching.add(dedupe)
            if dedupe in state.open_alerts:
                continue
            key = dict(zip(self.key_dims, breach.key, strict=True))
            alert = Alert(
                id="a-" + hashlib.sha1(f"{dedupe}|{start}".encode()).hexdigest()[:16],
                status="firing",
                severity=breach.severity,
                signal=breach.signal,
                metric=breach.metric,
                key=key,
                series=series,
                window={"start": start, "end": end, "size_ms": end - start},
                observed=breach.observed,
                expected=breach.expected,
                threshold=breach.threshold,
                unit=breach.unit,
                message=f"{_describe(self.key_dims, breach.key)}: {breach.message}",
                opened_at=start,
                emitted_at=now_ms,
                topology=self.topology,
                runbook=runbook_for(breach.signal, self.runbook_base),
                action=suggested_action(breach.signal, breach.metric, key),
            )
            state.open_alerts[dedupe] = {k: v for k, v in alert.to_dict().items() if k not in _EMIT_ONLY}
            out.append(alert)
        values = {f"{s}|{m}|{join_series(k)}": v for (s, m, k), v in (evaluated or {}).items()}
        for dedupe in breaching & set(state.open_alerts):
            state.open_alerts[dedupe].pop(_CLEARING, None)  # breaching again: the clearing starts over
        for dedupe in sorted(set(values) & set(state.open_alerts) - breaching):
            doc = state.open_alerts[dedupe]
            if not self.inside_clearing_band(doc, values[dedupe]):
                doc.pop(_CLEARING, None)
                continue
            doc[_CLEARING] = doc.get(_CLEARING, 0) + 1
            if doc[_CLEARING] < self.clear_windows:
                continue
            opened = Alert.from_dict(state.open_alerts.pop(dedupe))
            opened.status = "resolved"
            opened.window = {"start": start, "end": end, "size_ms": end - start}
            opened.emitted_at = now_ms
            opened.observed = values[dedupe]
            if not opened.runbook:  # opened by a version without runbooks
                opened.runbook = runbook_for(opened.signal, self.runbook_base)
                opened.action = suggested_action(opened.signal, opened.metric, opened.key)
            what = f"{opened.signal.replace('_', ' ')} {opened.metric}"
            opened.message = (
                f"{_describe(self.key_dims, tuple(opened.key.values()))}: {what} back to "
                f"{_fmt(opened.observed, opened.unit)} after {(end - opened.opened_at) // 1000} s"
            )
            out.append(opened)
        return out


def _profile_entry(doc: object) -> dict[str, Any]:
    """A drift reference entry: versions are strings, "w" a window count, "c"/"p" {bin: count} maps."""
    if not isinstance(doc, dict):
        raise StateFormatError(f"detector state profile entries must be objects, got {type(doc).__name__}")
    entry: dict[str, Any] = {}
    for name, value in doc.items():
        if name in ("c", "p"):
            if not isinstance(value, dict):
                raise StateFormatError(f"detector state profile {name!r} must be an object")
            entry[name] = {str(b): float(c) for b, c in value.items()}
        elif name == "w":
            entry[name] = int(value)
        elif name in ("cur", "prev"):
            entry[name] = str(value)
        else:
            raise StateFormatError(f"detector state profile entry has an unknown field {name!r}")
    return entry


def _fmt(value: float, unit: str) -> str:
    if unit == "psi":
        return f"PSI {value:.2f}"
    return f"{value:.1%}" if unit == "ratio" else f"{value:.0f} {unit}"


def _describe(dims: tuple[str, ...], key: tuple[str, ...]) -> str:
    return " ".join(f"{d}={v}" for d, v in zip(dims, key, strict=True) if v != "*")
