"""Incident library for the traffic simulator: faults to inject, each knowing its own ground truth.

An :class:`Incident` says *what* goes wrong (``kind``), *when* (``onset_ms`` for ``duration_ms``, open-ended
when ``None``), *how badly* (``magnitude``) and *to whom* (``target``: segment dimensions a request must
match, e.g. ``{"region": "eu"}``; an empty target hits every request). Its :attr:`Incident.ground_truth` is
what a correct monitor must report: the signal that should fire and the slice key it should name. That
pairing is what lets the demo and the tests score detection instead of eyeballing it.

Kinds (see :data:`INCIDENT_KINDS`):

============================  =====================  ===========================================  ========
kind                          signal                 effect on matching requests after onset      default
============================  =====================  ===========================================  ========
``latency_regression``        ``latency``            one stage's latency (``stage``, default      x4
                                                     ranking) is multiplied by ``magnitude``
``traffic_drop``              ``volume``             a fraction ``magnitude`` of requests         1.0
                                                     disappears
``error_spike``               ``error_rate``         the error rate becomes ``magnitude``         0.2
``fallback_spike``            ``fallback_rate``      the fallback rate becomes ``magnitude``      0.3
``empty_slates``              ``empty_slate_rate``   the empty-slate rate becomes ``magnitude``   0.2
``stale_feature``             ``freshness``          one feature's ``feature_ts`` (``feature``,   21600 s
                                                     default watch_minutes_7d) moves back, so
                                                     its age grows by ``magnitude`` seconds
                                                     (at most a year)
``source_outage``             ``candidate_source``   one candidate source (``source``, default    1.0
                                                     trending) returns nothing for a fraction
                                                     ``magnitude`` of requests; the others fill
                                                     its candidates and slate positions
``engagement_logging_break``  ``engagement_ratio``   a fraction ``magnitude`` of engagement       0.9
                                                     events (every action) is never emitted
``feature_drift``             ``feature_drift``      one feature's value (``feature``, default    x3
                                                     watch_minutes_7d) is multiplied by
                                                     ``magnitude``
``null_spike``                ``feature_quality``    one feature (``feature``) is null for a      0.3
                                                     fraction ``magnitude`` of requests
``score_collapse``            ``score_collapse``     every item of a fraction ``magnitude`` of    1.0
                                                     slates gets the same score (0.5)
``popularity_collapse``       ``popularity``         a fraction ``magnitude`` of slates comes     1.0
                                                     from the 200 most popular items only
``diversity_collapse``        ``diversity``          a fraction ``magnitude`` of slates repeats   0.5
                                                     its first 4 items (duplicates in a slate)
``ctr_drop_after_release``    ``release_ctr``        a new version (``version``, default          0.5
                                                     :data:`RELEASE_VERSION`) is deployed on the
                                                     arm (target ``arm``, default control) at
                                                     onset and serves all its requests; in the
                                                     target slice its click probability is
                                                     ``magnitude`` lower (relative), so CTR and
                                                     play rate drop
============================  =====================  ===========================================  ========

Incidents on the batch data path live in :data:`DATA_INCIDENT_KINDS`, apart from the request-path kinds
above (whose registry the detection bench and the request-level tests iterate over):

==================  ===================  ==============================================  ========
kind                signal               effect                                          default
==================  ===================  ==============================================  ========
``dataset_late``    ``dataset_arrival``  partitions of one dataset (``dataset``, default  7200 s
                                         user_features_hourly) due at or after onset
                                         (and before the end) land ``magnitude``
                                         seconds later than scheduled
==================  ===================  ==============================================  ========

Bad canaries live in :data:`CANARY_INCIDENT_KINDS` (judged by the canary analysis, docs/canary.md, not by
an alert signal; their ground-truth signal is ``canary`` and their key ``{"arm": "canary"}``). They need a
simulator with ``canary_share > 0`` and always bend the canary arm (the default and only allowed target arm):

=========================  ===============================================================  ========
kind                       effect on the canary's requests after onset                      default
=========================  ===============================================================  ========
``canary_ctr_drop``        click probability ``magnitude`` lower (relative)                  0.03
``canary_latency``         every stage's latency multiplied by ``magnitude``                 x1.3
``canary_broken_feature``  one feature (``feature``, default watch_minutes_7d) null on a     0.1
                           fraction ``magnitude`` of requests, whose click probability is
                           multiplied by :data:`BROKEN_FEATURE_CLICK_FACTOR` (0.7)
=========================  ===============================================================  ========

Bad shadows live in :data:`SHADOW_INCIDENT_KINDS` (judged by the shadow analysis, docs/canary.md "Shadow
analysis"; ground-truth signal ``shadow``, key ``{"arm": "shadow"}``). They need a simulator with
``shadow_share > 0`` and bend the shadow's slates only (its serving events; users never see them):

=======================  ==============================================================  ========
kind                     effect on the shadow's responses after onset                     default
=======================  ==============================================================  ========
``shadow_divergence``    a fraction ``magnitude`` of shadow slates is unrelated to the     0.5
                         control's (items drawn afresh from the catalogue)
``shadow_score_shift``   every shadow score is multiplied by ``magnitude``                 x0.8
``shadow_empty``         a fraction ``magnitude`` of shadow responses is an empty slate    0.2
=======================  ==============================================================  ========

A ``dataset_late`` needs the dataset in the simulator's ``SimConfig.datasets``; its ground-truth key is
``{}`` (datasets have no slice) and its ``detail`` the dataset's name.

Ground truth names the slice the monitor must report (:attr:`GroundTruth.key`, the incident's target) and,
for ``stale_feature``, ``feature_drift``, ``null_spike`` and ``source_outage``, the feature or source in
:attr:`GroundTruth.detail`; for ``ctr_drop_after_release`` the detail is the new version (the alert's
``model_version``). When that incident ends the arm goes back to its previous version (a rollback).
``engagement_logging_break`` is the exception: engagement events carry only a request id, no segment, so
the monitor can see their ratio to serving requests only fleet-wide. Its ground-truth key is therefore always
``{}`` (global), and a spec naming no slice hits every request. An explicit slice is still allowed (only
engagement of that slice's requests is then lost, a smaller global dip), but the key stays ``{}``. Unlike
the request-level kinds, its window applies to each engagement event's own ``ts``: engagement of a request
served before onset that would be logged after it is lost too.

This module is pure: standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ARMS",
    "BROKEN_FEATURE_CLICK_FACTOR",
    "CANARY_INCIDENT_KINDS",
    "DATA_INCIDENT_KINDS",
    "DEFAULT_ONSET_S",
    "DEFAULT_TARGET",
    "FRESHNESS_FEATURES",
    "INCIDENT_KINDS",
    "PLATFORMS",
    "REGIONS",
    "RELEASE_VERSION",
    "SEGMENT_DIMS",
    "SHADOW_INCIDENT_KINDS",
    "SOURCES",
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
# Candidate sources (the serving event's ``sources`` keys and each item's ``source``).
SOURCES: tuple[str, ...] = ("collab", "trending", "continue_watching")
# Features whose computation time the simulator reports in ``feature_ts`` (what stale_feature can age).
FRESHNESS_FEATURES: tuple[str, ...] = ("watch_minutes_7d", "days_since_signup")
SEGMENT_DIMS: tuple[str, ...] = ("platform", "region", "tenure")
# Order matters only for display: ground-truth keys list the routing dims before the user segment.
TARGET_DIMS: tuple[str, ...] = ("model", "surface", "arm", *SEGMENT_DIMS)

# The version a ctr_drop_after_release deploys unless the spec names one.
RELEASE_VERSION = "2026.12.04-1"

# A CLI spec that names no slice hits EU traffic: a whole-fleet incident would not exercise the monitor's
# ability to localise a fault, which is the point of the demo. Build an Incident directly for a global one.
# (Kinds whose ground truth is always global, see IncidentKind.global_key, default to every request.)
DEFAULT_TARGET: Mapping[str, str] = MappingProxyType({"region": "eu"})
DEFAULT_ONSET_S = 900.0

# A stale_feature ages a feature by at most a year: far past any freshness SLA, and feature_ts stays a valid
# epoch-ms timestamp (the event schema rejects dates before 2000) for any simulated time after 2001.
_MAX_STALENESS_S = 365 * 86_400.0

_CLOSED_VOCAB: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"platform": PLATFORMS, "region": REGIONS, "tenure": TENURES, "arm": (*ARMS, "shadow")}
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
    # Default ``feature`` / ``source`` for kinds that take one; ``None``: the kind does not accept the key.
    default_feature: str | None = None
    default_source: str | None = None
    # Default ``dataset`` for kinds on the batch data path (any name the simulator's config schedules).
    default_dataset: str | None = None
    # The monitor sees this signal only fleet-wide: the ground-truth key is always {} and a spec naming no
    # slice targets every request instead of DEFAULT_TARGET.
    global_key: bool = False
    # A release: the incident deploys a new version (``Incident.version``) on the target's arm at onset.
    release: bool = False
    # A bad canary: it bends the canary arm only (its target always has arm=canary).
    canary: bool = False
    # A bad shadow: it bends the shadow's responses only (its target always has arm=shadow).
    shadow: bool = False

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
            IncidentKind(
                "stale_feature",
                "freshness",
                6 * 3600.0,
                0.0,
                _MAX_STALENESS_S,
                False,
                "one feature's age grows by magnitude seconds",
                default_feature="watch_minutes_7d",
            ),
            IncidentKind(
                "source_outage",
                "candidate_source",
                1.0,
                0.0,
                1.0,
                False,
                "one candidate source returns nothing for a fraction magnitude of requests",
                default_source="trending",
            ),
            IncidentKind(
                "feature_drift",
                "feature_drift",
                3.0,
                0.0,
                1000.0,
                False,
                "multiplies one feature's value by magnitude (an upstream unit or pipeline change)",
                default_feature="watch_minutes_7d",
            ),
            IncidentKind(
                "null_spike",
                "feature_quality",
                0.3,
                0.0,
                1.0,
                False,
                "one feature is null for a fraction magnitude of requests",
                default_feature="watch_minutes_7d",
            ),
            IncidentKind(
                "score_collapse",
                "score_collapse",
                1.0,
                0.0,
                1.0,
                False,
                "the ranker returns one constant score for a fraction magnitude of slates",
            ),
            IncidentKind(
                "popularity_collapse",
                "popularity",
                1.0,
                0.0,
                1.0,
                False,
                "a fraction magnitude of slates is filled from the 200 most popular items only",
            ),
            IncidentKind(
                "diversity_collapse",
                "diversity",
                0.5,
                0.0,
                1.0,
                False,
                "a fraction magnitude of slates repeats its first 4 items over and over",
            ),
            IncidentKind(
                "engagement_logging_break",
                "engagement_ratio",
                0.9,
                0.0,
                1.0,
                False,
                "a fraction magnitude of engagement events is not emitted",
                global_key=True,
            ),
            IncidentKind(
                "ctr_drop_after_release",
                "release_ctr",
                0.5,
                0.0,
                1.0,
                False,
                "a new version is deployed at onset; its click probability is magnitude lower (relative)",
                release=True,
            ),
        )
    }
)


# Batch data-path incidents: kept out of INCIDENT_KINDS, which lists what bends request-level traffic.
DATA_INCIDENT_KINDS: Mapping[str, IncidentKind] = MappingProxyType(
    {
        "dataset_late": IncidentKind(
            "dataset_late",
            "dataset_arrival",
            7200.0,
            0.0,
            7 * 86_400.0,
            False,
            "partitions of one dataset land magnitude seconds late",
            global_key=True,
            default_dataset="user_features_hourly",
        )
    }
)
# Bad canaries (the canary analysis' ground truth, docs/canary.md): they bend the canary arm of a
# simulator run with ``canary_share > 0`` and are judged by the canary verdict, not by an alert signal, so
# they are kept out of INCIDENT_KINDS (which the detection bench iterates over).
CANARY_INCIDENT_KINDS: Mapping[str, IncidentKind] = MappingProxyType(
    {
        k.name: k
        for k in (
            IncidentKind(
                "canary_ctr_drop",
                "canary",
                0.03,
                0.0,
                1.0,
                False,
                "the canary's click probability is magnitude lower (relative)",
                canary=True,
            ),
            IncidentKind(
                "canary_latency",
                "canary",
                1.3,
                0.0,
                math.inf,
                False,
                "every stage of the canary's latency is multiplied by magnitude",
                canary=True,
            ),
            IncidentKind(
                "canary_broken_feature",
                "canary",
                0.1,
                0.0,
                1.0,
                False,
                "one feature is null on a fraction magnitude of the canary's requests, whose click "
                "probability is then 30 % lower",
                default_feature="watch_minutes_7d",
                canary=True,
            ),
        )
    }
)
# Bad shadows (the shadow analysis' ground truth, docs/canary.md "Shadow analysis"): they bend the shadow
# responses of a simulator run with ``shadow_share > 0`` and are judged by the shadow verdict.
SHADOW_INCIDENT_KINDS: Mapping[str, IncidentKind] = MappingProxyType(
    {
        k.name: k
        for k in (
            IncidentKind(
                "shadow_divergence",
                "shadow",
                0.5,
                0.0,
                1.0,
                False,
                "a fraction magnitude of the shadow's slates is unrelated to the control's",
                shadow=True,
            ),
            IncidentKind(
                "shadow_score_shift",
                "shadow",
                0.8,
                0.0,
                100.0,
                False,
                "every score of the shadow is multiplied by magnitude",
                shadow=True,
            ),
            IncidentKind(
                "shadow_empty",
                "shadow",
                0.2,
                0.0,
                1.0,
                False,
                "a fraction magnitude of the shadow's responses is an empty slate",
                shadow=True,
            ),
        )
    }
)
# Relative click probability of a request whose feature is broken (canary_broken_feature): 10 % of the
# canary's traffic broken then costs it 3 % of its CTR.
BROKEN_FEATURE_CLICK_FACTOR = 0.7
_ALL_KINDS: Mapping[str, IncidentKind] = MappingProxyType(
    {**INCIDENT_KINDS, **DATA_INCIDENT_KINDS, **CANARY_INCIDENT_KINDS, **SHADOW_INCIDENT_KINDS}
)


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """What a correct monitor reports for one incident: ``signal`` fires for the slice ``key``.

    ``key`` holds only the dimensions that identify the affected slice (an empty key means global);
    ``stage`` names the latency stage for latency incidents and is ``None`` otherwise. ``end_ms`` is
    ``None`` for an incident that never recovers. ``detail`` names what inside the slice broke when the
    signal is per feature or per source: the feature of a ``stale_feature``, the source of a
    ``source_outage``; ``None`` otherwise.

    >>> GroundTruth("volume", {"region": "eu"}, 1_000).key
    {'region': 'eu'}
    """

    signal: str
    key: dict[str, str]
    onset_ms: int
    stage: str | None = None
    end_ms: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """One fault to inject into simulated traffic, with its ground truth.

    ``magnitude=None``, and ``stage`` / ``feature`` / ``source`` left ``None`` for a kind that takes one,
    are replaced by the kind's defaults, so the stored object always says exactly what was injected. Units
    of ``magnitude``: a multiplier (latency), a fraction or rate in [0, 1] (the others), seconds of extra
    feature age (``stale_feature``).

    >>> inc = Incident("latency_regression", onset_ms=1_000, target={"region": "eu"})
    >>> inc.magnitude, inc.stage
    (4.0, 'ranking')
    >>> inc.ground_truth  # doctest: +NORMALIZE_WHITESPACE
    GroundTruth(signal='latency', key={'region': 'eu'}, onset_ms=1000, stage='ranking', end_ms=None,
                detail=None)
    >>> inc.active(999), inc.active(1_000)
    (False, True)
    >>> Incident("stale_feature", 1_000, target={"region": "eu"}).ground_truth.detail
    'watch_minutes_7d'
    >>> Incident("engagement_logging_break", 1_000, target={"region": "eu"}).ground_truth.key
    {}
    """

    kind: str
    onset_ms: int
    duration_ms: int | None = None
    magnitude: float | None = None
    target: Mapping[str, str] = field(default_factory=dict)
    stage: str | None = None
    feature: str | None = None
    source: str | None = None
    dataset: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        spec = _ALL_KINDS.get(self.kind)
        if spec is None:
            raise ValueError(f"unknown incident kind {self.kind!r}; expected one of {sorted(_ALL_KINDS)}")
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
        feature = _check_choice(self.kind, "feature", self.feature, spec.default_feature, FRESHNESS_FEATURES)
        source = _check_choice(self.kind, "source", self.source, spec.default_source, SOURCES)
        dataset = _check_choice(self.kind, "dataset", self.dataset, spec.default_dataset, None)
        if dataset is not None and self.target:
            raise ValueError(
                f"{self.kind} hits a dataset, not a slice: give no target, got {dict(self.target)}"
            )
        version = self.version
        if spec.release:
            version = version or RELEASE_VERSION
            if self.target.get("arm", "control") not in ARMS:
                raise ValueError(f"a release targets an arm of {list(ARMS)}, not {self.target.get('arm')!r}")
        elif version is not None:
            raise ValueError(f"version applies only to ctr_drop_after_release, not {self.kind}")
        if spec.canary and self.target.get("arm", "canary") != "canary":
            raise ValueError(f"{self.kind} bends the canary arm: its target arm must be canary")
        if spec.shadow and self.target.get("arm", "shadow") != "shadow":
            raise ValueError(f"{self.kind} bends the shadow's responses: its target arm must be shadow")
        target = dict(self.target)
        if spec.canary:
            target.setdefault("arm", "canary")
        if spec.shadow:
            target.setdefault("arm", "shadow")
        for dim, value in target.items():
            if dim not in TARGET_DIMS:
                raise ValueError(f"unknown target dimension {dim!r}; expected one of {list(TARGET_DIMS)}")
            if not isinstance(value, str) or not value:
                raise ValueError(f"target {dim} must be a non-empty string, got {value!r}")
        # Frozen dataclass: normalised values go in through object.__setattr__. The target is copied (in
        # canonical dimension order) so a caller mutating its dict later cannot change a running incident.
        object.__setattr__(self, "magnitude", magnitude)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "feature", feature)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "target", {d: target[d] for d in TARGET_DIMS if d in target})

    @property
    def end_ms(self) -> int | None:
        """First event time at which the incident is over (``None``: it never ends)."""
        return None if self.duration_ms is None else self.onset_ms + self.duration_ms

    @property
    def signal(self) -> str:
        """Name of the monitor signal this incident must trip."""
        return _ALL_KINDS[self.kind].signal

    @property
    def factor(self) -> float:
        """The normalised magnitude (never ``None`` after construction)."""
        # __post_init__ always fills magnitude; the Optional type exists only for the constructor.
        return (
            float(self.magnitude) if self.magnitude is not None else _ALL_KINDS[self.kind].default_magnitude
        )

    @property
    def ground_truth(self) -> GroundTruth:
        """The signal that must fire, the slice key it must name, and the feature or source at fault."""
        key = {} if _ALL_KINDS[self.kind].global_key else dict(self.target)
        detail = self.feature or self.source or self.dataset or self.version
        return GroundTruth(self.signal, key, self.onset_ms, self.stage, self.end_ms, detail)

    def active(self, ts_ms: int) -> bool:
        """Whether the incident is in effect at event time ``ts_ms``."""
        end = self.end_ms
        return ts_ms >= self.onset_ms and (end is None or ts_ms < end)

    def describe(self) -> str:
        """One human line: kind, slice, magnitude and timing (for CLI banners and logs).

        >>> Incident("stale_feature", 0, 60_000, target={"region": "eu"}).describe().split(" onset")[0]
        'stale_feature: signal=freshness key={region=eu} feature=watch_minutes_7d magnitude=21600'
        >>> Incident("engagement_logging_break", 0, target={"region": "eu"}).describe().split(" magnitude")[0]
        'engagement_logging_break: signal=engagement_ratio key={global} slice={region=eu}'
        """
        truth = self.ground_truth
        key = ",".join(f"{k}={v}" for k, v in truth.key.items()) or "global"
        if truth.key != self.target:
            # A global-key kind injected on a slice: say where it was injected as well as what to expect.
            key += "} slice={" + ",".join(f"{k}={v}" for k, v in self.target.items())
        extra = "".join(
            f" {name}={value}"
            for name, value in (
                ("stage", self.stage),
                ("feature", self.feature),
                ("source", self.source),
                ("dataset", self.dataset),
                ("version", self.version),
            )
            if value
        )
        dur = "open-ended" if self.duration_ms is None else f"for {self.duration_ms / 1000:g}s"
        return (
            f"{self.kind}: signal={self.signal} key={{{key}}}{extra} magnitude={self.factor:g} "
            f"onset_ms={self.onset_ms} {dur}"
        )


def _check_choice(
    kind: str, name: str, value: str | None, default: str | None, allowed: tuple[str, ...] | None
) -> str | None:
    """Normalise an incident's ``feature`` / ``source`` / ``dataset``: the kind's default, a known value
    (any non-empty string when ``allowed`` is None), or ``None``."""
    if default is None:
        if value is not None:
            users = [k.name for k in _ALL_KINDS.values() if getattr(k, f"default_{name}") is not None]
            raise ValueError(f"{name} applies only to {', '.join(users)}, not {kind}")
        return None
    value = value or default
    if allowed is None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        return value
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")
    return value


def _default_target(kind: IncidentKind) -> dict[str, str]:
    if kind.global_key:
        return {}
    if kind.canary:
        return {"arm": "canary"}
    if kind.shadow:
        return {"arm": "shadow"}
    # A release is deployed on an arm: without a slice it degrades the whole control arm.
    return {"arm": "control"} if kind.release else dict(DEFAULT_TARGET)


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
    ``stage`` (latency_regression only), ``feature`` (stale_feature only), ``source`` (source_outage only),
    ``dataset`` (dataset_late only), ``magnitude``, ``onset`` and ``duration`` (seconds; onset is relative
    to ``start_ms``). A spec naming no slice dimension targets :data:`DEFAULT_TARGET` (region=eu), except
    for a kind whose ground truth is global (engagement_logging_break, dataset_late), which then targets
    every request.

    >>> inc = parse_incident("latency_regression:region=eu,stage=ranking,magnitude=4,onset=900", 0)
    >>> inc.onset_ms, inc.target, inc.stage, inc.magnitude
    (900000, {'region': 'eu'}, 'ranking', 4.0)
    >>> truth = parse_incident("traffic_drop", 1_000, default_onset_s=60).ground_truth
    >>> truth  # doctest: +NORMALIZE_WHITESPACE
    GroundTruth(signal='volume', key={'region': 'eu'}, onset_ms=61000, stage=None, end_ms=None,
                detail=None)
    >>> inc = parse_incident("stale_feature:feature=days_since_signup,magnitude=7200", 0)
    >>> inc.target, inc.feature, inc.magnitude
    ({'region': 'eu'}, 'days_since_signup', 7200.0)
    >>> parse_incident("source_outage:source=collab,tenure=new", 0).ground_truth.detail
    'collab'
    >>> parse_incident("engagement_logging_break", 0).target
    {}
    >>> parse_incident("dataset_late:magnitude=3600", 0).ground_truth  # doctest: +NORMALIZE_WHITESPACE
    GroundTruth(signal='dataset_arrival', key={}, onset_ms=900000, stage=None, end_ms=None,
                detail='user_features_hourly')
    >>> parse_incident("ctr_drop_after_release:arm=control,magnitude=0.4", 0).ground_truth.detail
    '2026.12.04-1'
    >>> parse_incident("error_spike:region=mars", 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: incident spec 'error_spike:region=mars': unknown region 'mars'; expected one of [...]
    """
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in _ALL_KINDS:
        raise ValueError(
            f"incident spec {spec!r}: unknown kind {kind!r}; expected one of {sorted(_ALL_KINDS)}"
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

    spec_kind = _ALL_KINDS[kind]
    target: dict[str, str] = {}
    magnitude: float | None = None
    stage: str | None = None
    choices: dict[str, str] = {}
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
            if not spec_kind.uses_stage:
                raise ValueError(f"incident spec {spec!r}: stage applies only to latency_regression")
            if value not in STAGES:
                raise ValueError(
                    f"incident spec {spec!r}: unknown stage {value!r}; expected one of {list(STAGES)}"
                )
            stage = value
        elif name in ("feature", "source"):
            if getattr(spec_kind, f"default_{name}") is None:
                users = [k.name for k in INCIDENT_KINDS.values() if getattr(k, f"default_{name}") is not None]
                raise ValueError(f"incident spec {spec!r}: {name} applies only to {', '.join(users)}")
            allowed = FRESHNESS_FEATURES if name == "feature" else SOURCES
            if value not in allowed:
                raise ValueError(
                    f"incident spec {spec!r}: unknown {name} {value!r}; expected one of {list(allowed)}"
                )
            choices[name] = value
        elif name == "dataset":
            if spec_kind.default_dataset is None:
                users = [k.name for k in _ALL_KINDS.values() if k.default_dataset is not None]
                raise ValueError(f"incident spec {spec!r}: dataset applies only to {', '.join(users)}")
            choices[name] = value
        elif name == "version":
            if not spec_kind.release:
                raise ValueError(f"incident spec {spec!r}: version applies only to ctr_drop_after_release")
            choices[name] = value
        elif name == "magnitude":
            magnitude = _parse_float(spec, name, value)
            try:
                spec_kind.check_magnitude(magnitude)
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
            known = [*TARGET_DIMS, "stage", "feature", "source", "magnitude", "onset", "duration", "dataset"]
            known.append("version")
            raise ValueError(f"incident spec {spec!r}: unknown key {name!r}; expected one of {known}")
    return Incident(
        kind=kind,
        onset_ms=start_ms + round(onset_s * 1000),
        duration_ms=duration_ms,
        magnitude=magnitude,
        target=target or _default_target(spec_kind),
        stage=stage,
        feature=choices.get("feature"),
        source=choices.get("source"),
        dataset=choices.get("dataset"),
        version=choices.get("version"),
    )
