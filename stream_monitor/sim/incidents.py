"""Incident library for the traffic simulator: faults to inject, each knowing its own ground truth.

An :class:`Incident` says *what* goes wrong (``kind``), *when* (``onset_ms`` for ``duration_ms``, open-ended
when ``None``), *how badly* (``magnitude``) and *to whom* (``target``: segment dimensions a request must
match, e.g. ``{"region": "eu"}``; an empty target hits every request). Its :attr:`Incident.ground_truth` is
what a correct monitor must report: the signal that should fire and the slice key it should name. That
pairing is what lets the demo and the tests score detection instead of eyeballing it.

Kinds (see :data:`INCIDENT_KINDS`):

=====================  =====================  ==================================================  ========
kind                   signal                 effect on matching requests after onset             default
=====================  =====================  ==================================================  ========
``latency_regression``  ``latency``           one stage's latency (``stage``, default ranking)    x4
                                              is multiplied by ``magnitude``
``traffic_drop``        ``volume``            a fraction ``magnitude`` of requests disappears     1.0
``error_spike``         ``error_rate``        the error rate becomes ``magnitude``                0.2
``fallback_spike``      ``fallback_rate``     the fallback rate becomes ``magnitude``             0.3
``empty_slates``        ``empty_slate_rate``  the empty-slate rate becomes ``magnitude``          0.2
=====================  =====================  ==================================================  ========

This module is pure: standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ARMS",
    "DEFAULT_ONSET_S",
    "DEFAULT_TARGET",
    "INCIDENT_KINDS",
    "PLATFORMS",
    "REGIONS",
    "SEGMENT_DIMS",
    "STAGES",
    "TARGET_DIMS",
    "TENURES",
    "GroundTruth",
    "Incident",
    "IncidentKind",
    "parse_incident",
]

# Vocabulary shared with the traffic generator. It lives here rather than in traffic.py because the
# incident parser must validate slice values and traffic.py already imports this module.
PLATFORMS: tuple[str, ...] = ("ios", "android", "web", "tv")
REGIONS: tuple[str, ...] = ("us", "eu", "latam", "apac")
TENURES: tuple[str, ...] = ("new", "established")
ARMS: tuple[str, ...] = ("control", "canary")
STAGES: tuple[str, ...] = ("retrieval", "features", "ranking")
SEGMENT_DIMS: tuple[str, ...] = ("platform", "region", "tenure")
# Order matters only for display: ground-truth keys list the routing dims before the user segment.
TARGET_DIMS: tuple[str, ...] = ("model", "surface", "arm", *SEGMENT_DIMS)

# A CLI spec that names no slice hits EU traffic: a whole-fleet incident would not exercise the monitor's
# ability to localise a fault, which is the point of the demo. Build an Incident directly for a global one.
DEFAULT_TARGET: Mapping[str, str] = MappingProxyType({"region": "eu"})
DEFAULT_ONSET_S = 900.0

_CLOSED_VOCAB: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"platform": PLATFORMS, "region": REGIONS, "tenure": TENURES, "arm": ARMS}
)


@dataclass(frozen=True, slots=True)
class IncidentKind:
    """Registry entry: which signal an incident kind must trip and what magnitudes make sense.

    >>> INCIDENT_KINDS["error_spike"].signal, INCIDENT_KINDS["error_spike"].default_magnitude
    ('error_rate', 0.2)
    """

    name: str
    signal: str
    default_magnitude: float
    min_magnitude: float
    max_magnitude: float
    # Whether min_magnitude itself is allowed; a zero multiplier or a 0 % drop is not an incident.
    min_inclusive: bool
    description: str
    uses_stage: bool = False

    def check_magnitude(self, magnitude: float) -> None:
        """Raise ValueError unless ``magnitude`` is finite and inside this kind's range."""
        low_ok = magnitude >= self.min_magnitude if self.min_inclusive else magnitude > self.min_magnitude
        if not math.isfinite(magnitude) or not low_ok or magnitude > self.max_magnitude:
            bracket = "[" if self.min_inclusive else "("
            high = "inf)" if math.isinf(self.max_magnitude) else f"{self.max_magnitude:g}]"
            raise ValueError(
                f"magnitude {magnitude!r} out of range for {self.name}: "
                f"expected {bracket}{self.min_magnitude:g}, {high}"
            )


INCIDENT_KINDS: Mapping[str, IncidentKind] = MappingProxyType(
    {
        k.name: k
        for k in (
            IncidentKind(
                "latency_regression",
                "latency",
                4.0,
                0.0,
                math.inf,
                False,
                "multiplies one stage's latency by magnitude",
                uses_stage=True,
            ),
            IncidentKind("traffic_drop", "volume", 1.0, 0.0, 1.0, False, "drops a fraction of requests"),
            IncidentKind("error_spike", "error_rate", 0.2, 0.0, 1.0, True, "error rate becomes magnitude"),
            IncidentKind(
                "fallback_spike", "fallback_rate", 0.3, 0.0, 1.0, True, "fallback rate becomes magnitude"
            ),
            IncidentKind(
                "empty_slates", "empty_slate_rate", 0.2, 0.0, 1.0, True, "empty-slate rate becomes magnitude"
            ),
        )
    }
)


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What a correct monitor reports for one incident: ``signal`` fires for the slice ``key``.

    ``key`` holds only the dimensions that identify the affected slice (an empty key means global);
    ``stage`` names the latency stage for latency incidents and is ``None`` otherwise. ``end_ms`` is
    ``None`` for an incident that never recovers.

    >>> GroundTruth("volume", {"region": "eu"}, 1_000).key
    {'region': 'eu'}
    """

    signal: str
    key: dict[str, str]
    onset_ms: int
    stage: str | None = None
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """One fault to inject into simulated traffic, with its ground truth.

    ``magnitude=None`` and (for latency) ``stage=None`` are replaced by the kind's defaults, so the stored
    object always says exactly what was injected.

    >>> inc = Incident("latency_regression", onset_ms=1_000, target={"region": "eu"})
    >>> inc.magnitude, inc.stage
    (4.0, 'ranking')
    >>> inc.ground_truth
    GroundTruth(signal='latency', key={'region': 'eu'}, onset_ms=1000, stage='ranking', end_ms=None)
    >>> inc.active(999), inc.active(1_000)
    (False, True)
    """

    kind: str
    onset_ms: int
    duration_ms: int | None = None
    magnitude: float | None = None
    target: Mapping[str, str] = field(default_factory=dict)
    stage: str | None = None

    def __post_init__(self) -> None:
        spec = INCIDENT_KINDS.get(self.kind)
        if spec is None:
            raise ValueError(f"unknown incident kind {self.kind!r}; expected one of {sorted(INCIDENT_KINDS)}")
        if self.duration_ms is not None and self.duration_ms <= 0:
            raise ValueError(f"duration_ms must be positive or None, got {self.duration_ms!r}")
        magnitude = spec.default_magnitude if self.magnitude is None else float(self.magnitude)
        spec.check_magnitude(magnitude)
        stage = self.stage
        if spec.uses_stage:
            stage = stage or "ranking"
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
        elif stage is not None:
            raise ValueError(f"stage applies only to latency_regression, not {self.kind}")
        for dim, value in self.target.items():
            if dim not in TARGET_DIMS:
                raise ValueError(f"unknown target dimension {dim!r}; expected one of {list(TARGET_DIMS)}")
            if not isinstance(value, str) or not value:
                raise ValueError(f"target {dim} must be a non-empty string, got {value!r}")
        # Frozen dataclass: normalised values go in through object.__setattr__. The target is copied (in
        # canonical dimension order) so a caller mutating its dict later cannot change a running incident.
        object.__setattr__(self, "magnitude", magnitude)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "target", {d: self.target[d] for d in TARGET_DIMS if d in self.target})

    @property
    def end_ms(self) -> int | None:
        """First event time at which the incident is over (``None``: it never ends)."""
        return None if self.duration_ms is None else self.onset_ms + self.duration_ms

    @property
    def signal(self) -> str:
        """Name of the monitor signal this incident must trip."""
        return INCIDENT_KINDS[self.kind].signal

    @property
    def factor(self) -> float:
        """The normalised magnitude (never ``None`` after construction)."""
        # __post_init__ always fills magnitude; the Optional type exists only for the constructor.
        return (
            float(self.magnitude)
            if self.magnitude is not None
            else INCIDENT_KINDS[self.kind].default_magnitude
        )

    @property
    def ground_truth(self) -> GroundTruth:
        """The signal that must fire and the slice key it must name."""
        return GroundTruth(self.signal, dict(self.target), self.onset_ms, self.stage, self.end_ms)

    def active(self, ts_ms: int) -> bool:
        """Whether the incident is in effect at event time ``ts_ms``."""
        end = self.end_ms
        return ts_ms >= self.onset_ms and (end is None or ts_ms < end)

    def describe(self) -> str:
        """One human line: kind, slice, magnitude and timing (for CLI banners and logs)."""
        key = ",".join(f"{k}={v}" for k, v in self.target.items()) or "global"
        stage = f" stage={self.stage}" if self.stage else ""
        dur = "open-ended" if self.duration_ms is None else f"for {self.duration_ms / 1000:g}s"
        return (
            f"{self.kind}: signal={self.signal} key={{{key}}}{stage} magnitude={self.factor:g} "
            f"onset_ms={self.onset_ms} {dur}"
        )


def _parse_float(spec: str, name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"incident spec {spec!r}: {name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"incident spec {spec!r}: {name}={raw!r} is not finite")
    return value


def parse_incident(spec: str, start_ms: int, default_onset_s: float = DEFAULT_ONSET_S) -> Incident:
    """Parse a CLI incident spec ``kind[:key=value,...]`` into an :class:`Incident`.

    Keys: slice dimensions (``platform``, ``region``, ``tenure``, ``arm``, ``model``, ``surface``),
    ``stage`` (latency only), ``magnitude``, ``onset`` and ``duration`` (seconds; onset is relative to
    ``start_ms``). A spec naming no slice dimension targets :data:`DEFAULT_TARGET` (region=eu).

    >>> inc = parse_incident("latency_regression:region=eu,stage=ranking,magnitude=4,onset=900", 0)
    >>> inc.onset_ms, inc.target, inc.stage, inc.magnitude
    (900000, {'region': 'eu'}, 'ranking', 4.0)
    >>> parse_incident("traffic_drop", 1_000, default_onset_s=60).ground_truth
    GroundTruth(signal='volume', key={'region': 'eu'}, onset_ms=61000, stage=None, end_ms=None)
    >>> parse_incident("error_spike:region=mars", 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: incident spec 'error_spike:region=mars': unknown region 'mars'; expected one of [...]
    """
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in INCIDENT_KINDS:
        raise ValueError(
            f"incident spec {spec!r}: unknown kind {kind!r}; expected one of {sorted(INCIDENT_KINDS)}"
        )
    if sep and not rest.strip():
        raise ValueError(f"incident spec {spec!r}: nothing after ':'; expected key=value pairs")
    seen: dict[str, str] = {}
    for part in rest.split(",") if rest.strip() else []:
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise ValueError(f"incident spec {spec!r}: expected key=value, got {part.strip()!r}")
        if name in seen:
            raise ValueError(f"incident spec {spec!r}: {name} given twice")
        seen[name] = value

    target: dict[str, str] = {}
    magnitude: float | None = None
    stage: str | None = None
    onset_s = default_onset_s
    duration_ms: int | None = None
    for name, value in seen.items():
        if name in TARGET_DIMS:
            allowed = _CLOSED_VOCAB.get(name)
            if allowed is not None and value not in allowed:
                raise ValueError(
                    f"incident spec {spec!r}: unknown {name} {value!r}; expected one of {list(allowed)}"
                )
            target[name] = value
        elif name == "stage":
            if not INCIDENT_KINDS[kind].uses_stage:
                raise ValueError(f"incident spec {spec!r}: stage applies only to latency_regression")
            if value not in STAGES:
                raise ValueError(
                    f"incident spec {spec!r}: unknown stage {value!r}; expected one of {list(STAGES)}"
                )
            stage = value
        elif name == "magnitude":
            magnitude = _parse_float(spec, name, value)
            try:
                INCIDENT_KINDS[kind].check_magnitude(magnitude)
            except ValueError as exc:
                raise ValueError(f"incident spec {spec!r}: {exc}") from None
        elif name == "onset":
            onset_s = _parse_float(spec, name, value)
            if onset_s < 0:
                raise ValueError(f"incident spec {spec!r}: onset={value!r} must be >= 0 seconds")
        elif name == "duration":
            duration_s = _parse_float(spec, name, value)
            if duration_s <= 0:
                raise ValueError(f"incident spec {spec!r}: duration={value!r} must be > 0 seconds")
            duration_ms = round(duration_s * 1000)
        else:
            known = [*TARGET_DIMS, "stage", "magnitude", "onset", "duration"]
            raise ValueError(f"incident spec {spec!r}: unknown key {name!r}; expected one of {known}")
    return Incident(
        kind=kind,
        onset_ms=start_ms + round(onset_s * 1000),
        duration_ms=duration_ms,
        magnitude=magnitude,
        target=target or dict(DEFAULT_TARGET),
        stage=stage,
    )
