"""Load a ``topologies/*.yaml`` spec into a :class:`~stream_monitor.core.topology.Topology`.

Errors name the file and the dotted path of the offending entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from stream_monitor.core.reference import PinnedProfile, ProfileFormatError, binning, profile_fingerprint
from stream_monitor.core.topology import (
    DEFAULT_BURN_ALERTS,
    DEFAULT_RATES,
    AlertRule,
    AnomalyRule,
    AnomalySeries,
    BurnAlert,
    CanaryRule,
    DatasetRule,
    EngagementRatioRule,
    FeatureRule,
    FeatureSpec,
    FreshnessRule,
    LabelRule,
    LatencyRule,
    RankingRule,
    RateRule,
    ShadowRule,
    SloObjective,
    SloRule,
    SourceRule,
    Topology,
    TraceRule,
    VolumeRule,
)
from stream_monitor.core.windows import WindowSpec

__all__ = ["DEFAULT_TOPOLOGY", "TopologyError", "load_topology", "parse_duration_ms", "parse_topology"]

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent / "data" / "default.yaml"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RATE_COUNTERS = {"error_rate": "err", "fallback_rate": "fb", "empty_slate_rate": "empty"}


class TopologyError(ValueError):
    """A topology spec that cannot be used."""


def parse_duration_ms(value: object, where: str = "duration") -> int:
    """``"60s"``, ``"5m"``, ``"250ms"`` or an integer of milliseconds.

    >>> parse_duration_ms("90s"), parse_duration_ms(250), parse_duration_ms("1.5m")
    (90000, 250, 90000)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return round(float(match.group(1)) * _UNITS[match.group(2)])
    raise TopologyError(f"{where}: {value!r} is not a duration like 60s, 5m or 250ms")


def load_topology(path: Path | str | None = None) -> Topology:
    """Read a topology file (the packaged default when ``path`` is None or missing)."""
    file = Path(path) if path is not None else DEFAULT_TOPOLOGY
    if path is not None and not file.is_file():
        raise TopologyError(f"{file}: no such topology file")
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TopologyError(f"{file}: not valid YAML: {exc}") from exc
    try:
        return parse_topology(doc, base_dir=file.parent)
    except TopologyError as exc:
        raise TopologyError(f"{file}: {exc}") from exc


def parse_topology(doc: Any, base_dir: Path | None = None) -> Topology:
    """Build a Topology from a parsed YAML document (relative file names are relative to ``base_dir``).

    >>> t = parse_topology({"name": "x", "window": {"size": "30s"}, "segment_dims": ["region"]})
    >>> t.window.size_ms, t.group_by
    (30000, ((), ('region',)))
    """
    if not isinstance(doc, dict):
        raise TopologyError("the document must be a mapping")
    window = _mapping(doc, "window", required=False)
    segment_dims = tuple(_str_list(doc.get("segment_dims", []), "segment_dims"))
    signals = _mapping(doc, "signals", required=False)
    try:
        ranking = _ranking(_mapping(signals, "ranking", required=False))
        spec = WindowSpec(
            parse_duration_ms(window.get("size", "60s"), "window.size"),
            parse_duration_ms(window.get("allowed_lateness", "0s"), "window.allowed_lateness"),
        )
        group_by = tuple(
            tuple(_str_list(g, f"group_by[{i}]")) for i, g in enumerate(doc.get("group_by", []) or [])
        )
        topology = Topology(
            name=str(doc.get("name", "default")),
            window=spec,
            segment_dims=segment_dims,
            group_by=group_by,
            max_values_per_dim=int(doc.get("max_values_per_dim", 64)),
            max_series=int(doc.get("max_series", 10_000)),
            relative_accuracy=float(doc.get("relative_accuracy", 0.02)),
            volume=_volume(_mapping(signals, "volume", required=False)),
            latency=_latency(_mapping(signals, "latency", required=False)),
            rates=_rates(_mapping(signals, "rates", required=False)),
            freshness=_freshness(_mapping(signals, "freshness", required=False)),
            sources=_sources(_mapping(signals, "candidate_source", required=False)),
            labels=_labels(_mapping(doc, "labels", required=False)),
            engagement=EngagementRatioRule(
                **_known(
                    _mapping(signals, "engagement_ratio", required=False),
                    EngagementRatioRule,
                    "signals.engagement_ratio",
                )
            ),
            features=_features(_mapping(signals, "features", required=False), ranking, base_dir),
            ranking=ranking,
            slo=_slo(_mapping(doc, "slo", required=False)),
            datasets=_datasets(_mapping(doc, "datasets", required=False)),
            anomaly=_anomaly(_mapping(doc, "anomaly", required=False)),
            alerts=AlertRule(**_known(_mapping(doc, "alerts", required=False), AlertRule, "alerts")),
            canary=_canary(_mapping(doc, "canary", required=False)),
            traces=_traces(_mapping(doc, "traces", required=False)),
            shadow=_shadow(_mapping(doc, "shadow", required=False)),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, TopologyError):
            raise
        raise TopologyError(str(exc)) from exc
    return topology


_LABEL_DURATIONS = ("maturity", "retention")


def _labels(doc: dict[str, Any]) -> LabelRule:
    """The ``labels:`` section: durations ``maturity`` / ``retention``, the rest as LabelRule fields."""
    rest = {k: v for k, v in doc.items() if k not in _LABEL_DURATIONS}
    known = _known(rest, LabelRule, "labels")
    for name in _LABEL_DURATIONS:
        if name in doc:
            known[f"{name}_ms"] = parse_duration_ms(doc[name], f"labels.{name}")
    return LabelRule(**known)


def _anomaly(doc: dict[str, Any]) -> AnomalyRule:
    """The ``anomaly:`` section: detector settings and the list of watched ``series``.

    >>> rule = _anomaly({"budget_per_day": 2,
    ...                  "series": [{"signal": "latency", "metric": "p99.*", "side": "up"}]})
    >>> rule.budget_per_day, rule.watch("latency", "p99.total")
    (2, AnomalySeries(signal='latency', metric='p99.*', side='up'))
    """
    rest = {k: v for k, v in doc.items() if k != "series"}
    known = _known(rest, AnomalyRule, "anomaly", ("series",))
    raw = doc.get("series", []) or []
    if not isinstance(raw, list):
        raise TopologyError("anomaly.series: expected a list of {signal, metric, side} mappings")
    series = []
    for i, item in enumerate(raw):
        where = f"anomaly.series[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("signal"), str):
            raise TopologyError(f"{where}: expected a mapping with a signal name")
        unknown = set(item) - {"signal", "metric", "side"}
        if unknown:
            raise TopologyError(f"{where}: unknown keys {sorted(unknown)} (known: metric, side, signal)")
        series.append(AnomalySeries(**{k: str(v) for k, v in item.items()}))
    return AnomalyRule(series=tuple(series), **known)


def _volume(doc: dict[str, Any]) -> VolumeRule:
    return VolumeRule(**_known(doc, VolumeRule, "signals.volume"))


def _quantile_slas(doc: object, where: str) -> dict[str, dict[float, float]]:
    if not isinstance(doc, dict):
        raise TopologyError(f"{where}: expected a mapping of name -> {{p99: limit}}")
    slas: dict[str, dict[float, float]] = {}
    for name, quantiles in doc.items():
        if not isinstance(quantiles, dict):
            raise TopologyError(f"{where}.{name}: expected a mapping like {{p99: 250}}")
        slas[str(name)] = {}
        for q, limit in quantiles.items():
            match = re.fullmatch(r"p(50|95|99)", str(q))
            if not match:
                raise TopologyError(f"{where}.{name}: {q!r} is not one of p50, p95, p99")
            slas[str(name)][int(match.group(1)) / 100] = float(limit)
    return slas


def _latency(doc: dict[str, Any]) -> LatencyRule:
    slas = _quantile_slas(doc.get("sla_ms") or {"total": {"p99": 250}}, "signals.latency.sla_ms")
    rest = {k: v for k, v in doc.items() if k != "sla_ms"}
    return LatencyRule(slas_ms=slas, **_known(rest, LatencyRule, "signals.latency"))


def _freshness(doc: dict[str, Any]) -> FreshnessRule:
    slas = _quantile_slas(doc.get("sla_s") or {}, "signals.freshness.sla_s")
    rest = {k: v for k, v in doc.items() if k != "sla_s"}
    return FreshnessRule(slas_s=slas, **_known(rest, FreshnessRule, "signals.freshness"))


def _sources(doc: dict[str, Any]) -> SourceRule:
    rest = dict(doc)
    sources = tuple(_str_list(rest.pop("sources", []), "signals.candidate_source.sources"))
    return SourceRule(sources=sources, **_known(rest, SourceRule, "signals.candidate_source"))


def _features(doc: dict[str, Any], ranking: RankingRule, base_dir: Path | None) -> FeatureRule:
    where = "signals.features"
    rest = dict(doc)
    pinned_path = rest.pop("pinned_profile", None)
    specs: list[FeatureSpec] = []
    for kind in ("numeric", "categorical"):
        declared = rest.pop(kind, None) or {}
        if not isinstance(declared, dict):
            raise TopologyError(f"{where}.{kind}: expected a mapping of feature name -> options")
        for name, options in declared.items():
            options = options or {}
            if not isinstance(options, dict):
                raise TopologyError(f"{where}.{kind}.{name}: expected a mapping of options")
            fields = {k: v for k, v in options.items()}
            if "range" in fields:
                value = fields["range"]
                if not (
                    isinstance(value, list)
                    and len(value) == 2
                    and all(isinstance(v, int | float) for v in value)
                ):
                    raise TopologyError(f"{where}.{kind}.{name}.range: expected [low, high], got {value!r}")
                fields["range"] = (float(value[0]), float(value[1]))
            _known(fields, FeatureSpec, f"{where}.{kind}.{name}", skip=("name", "kind"))
            try:
                specs.append(FeatureSpec(name=str(name), kind=kind, **fields))
            except ValueError as exc:
                raise TopologyError(f"{where}.{kind}.{name}: {exc}") from exc
    pinned = None
    if pinned_path is not None:
        pinned = _pinned(pinned_path, tuple(specs), ranking, base_dir, f"{where}.pinned_profile")
    known = _known(rest, FeatureRule, where, skip=("features", "pinned"))
    return FeatureRule(features=tuple(specs), pinned=pinned, **known)


def _pinned(
    value: object, specs: tuple[FeatureSpec, ...], ranking: RankingRule, base_dir: Path | None, where: str
) -> PinnedProfile:
    """Load the pinned reference profile named by the topology, checked against its binning."""
    if not isinstance(value, str) or not value:
        raise TopologyError(f"{where}: expected a file name, got {value!r}")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TopologyError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return PinnedProfile.from_json(raw, profile_fingerprint(binning(specs, ranking)))
    except ProfileFormatError as exc:
        raise TopologyError(f"{where}: {path}: {exc}") from exc


def _ranking(doc: dict[str, Any]) -> RankingRule:
    where = "signals.ranking"
    if not doc:
        return RankingRule()
    fields = dict(doc)
    if "score_range" in fields:
        value = fields["score_range"]
        if not (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)
        ):
            raise TopologyError(f"{where}.score_range: expected [low, high], got {value!r}")
        fields["score_range"] = (float(value[0]), float(value[1]))
    fields.setdefault("enabled", True)  # declaring the section turns it on
    return RankingRule(**_known(fields, RankingRule, where))


def _rates(doc: dict[str, Any]) -> tuple[RateRule, ...]:
    if not doc:
        return DEFAULT_RATES
    rules = []
    for signal, spec in doc.items():
        where = f"signals.rates.{signal}"
        if not isinstance(spec, dict):
            raise TopologyError(f"{where}: expected a mapping")
        counter = spec.get("counter", _RATE_COUNTERS.get(signal))
        if counter is None:
            raise TopologyError(f"{where}: unknown rate signal; give its counter (err, fb or empty)")
        rest = {k: v for k, v in spec.items() if k != "counter"}
        rules.append(RateRule(signal=signal, counter=counter, **_known(rest, RateRule, where)))
    return tuple(rules)


def _slo(doc: dict[str, Any]) -> SloRule:
    """The ``slo:`` section (see docs/signals.md, "Error-budget burn").

    >>> rule = _slo({"objectives": {"availability": {"objective": 0.999}}, "budget_period": "28d"})
    >>> rule.objectives[0].kind, rule.budget_period_ms, [a.name for a in rule.alerts]
    ('availability', 2419200000, ['page', 'ticket'])
    """
    rest = dict(doc)
    objectives = []
    for name, spec in (rest.pop("objectives", None) or {}).items():
        where = f"slo.objectives.{name}"
        if not isinstance(spec, dict):
            raise TopologyError(f"{where}: expected a mapping like {{objective: 0.999}}")
        spec = dict(spec)
        kind = spec.pop("kind", name if name in ("availability", "latency") else None)
        if kind is None:
            raise TopologyError(f"{where}: give its kind (availability or latency)")
        if "objective" not in spec:
            raise TopologyError(f"{where}: objective is required (e.g. 0.999)")
        objectives.append(
            SloObjective(
                name=str(name), kind=str(kind), **_known(spec, SloObjective, where, ("name", "kind"))
            )
        )
    alerts: tuple[BurnAlert, ...] = DEFAULT_BURN_ALERTS
    if "alerts" in rest:
        alerts_doc = rest.pop("alerts")
        if not isinstance(alerts_doc, dict) or not alerts_doc:
            raise TopologyError("slo.alerts: expected a mapping of name -> {long, short, factor, severity}")
        built = []
        for name, spec in alerts_doc.items():
            where = f"slo.alerts.{name}"
            if not isinstance(spec, dict) or set(spec) != {"long", "short", "factor", "severity"}:
                raise TopologyError(f"{where}: expected exactly long, short, factor and severity")
            built.append(
                BurnAlert(
                    name=str(name),
                    long_ms=parse_duration_ms(spec["long"], f"{where}.long"),
                    short_ms=parse_duration_ms(spec["short"], f"{where}.short"),
                    factor=float(spec["factor"]),
                    severity=str(spec["severity"]),
                )
            )
        alerts = tuple(built)
    if "budget_period" in rest:
        rest["budget_period_ms"] = parse_duration_ms(rest.pop("budget_period"), "slo.budget_period")
    return SloRule(
        objectives=tuple(objectives), alerts=alerts, **_known(rest, SloRule, "slo", ("objectives", "alerts"))
    )


def _datasets(doc: dict[str, Any]) -> tuple[DatasetRule, ...]:
    """The ``datasets:`` section: arrival SLAs per dataset name.

    >>> _datasets({"user_features_hourly": {"every": "1h", "grace": "30m", "min_rows": 1000}})[0].deadline_ms
    5400000
    """
    rules = []
    for name, spec in doc.items():
        where = f"datasets.{name}"
        if not isinstance(spec, dict) or "every" not in spec:
            raise TopologyError(f"{where}: expected a mapping with at least every (e.g. {{every: 1h}})")
        rest = dict(spec)
        every = parse_duration_ms(rest.pop("every"), f"{where}.every")
        grace = parse_duration_ms(rest.pop("grace", 0), f"{where}.grace")
        rules.append(
            DatasetRule(
                name=str(name),
                every_ms=every,
                grace_ms=grace,
                **_known(rest, DatasetRule, where, ("name", "every_ms", "grace_ms")),
            )
        )
    return tuple(rules)


def _known(doc: dict[str, Any], cls: type, where: str, skip: Iterable[str] = ()) -> dict[str, Any]:
    declared: set[str] = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    fields = declared - {"signal", "counter", "slas_ms", "slas_s", "sources", *skip}
    unknown = set(doc) - fields
    if unknown:
        raise TopologyError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(fields)})")
    return dict(doc)


def _mapping(doc: dict[str, Any], name: str, required: bool = True) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        if required:
            raise TopologyError(f"{name}: is required")
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{name}: expected a mapping, got {type(value).__name__}")
    return value


def _str_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TopologyError(f"{where}: expected a list of strings")
    return list(value)


def _canary(doc: dict[str, Any]) -> CanaryRule:
    """The ``canary:`` section (docs/canary.md): ``valid_for`` is a duration, ``weights`` a mapping of
    group -> weight, ``critical`` a list of metric names (a name also covers ``name.<anything>``).

    >>> rule = _canary({"alpha": 0.01, "valid_for": "5m", "weights": {"engagement": 1}, "critical": ["ctr"]})
    >>> rule.alpha, rule.valid_for_ms, rule.weights, rule.critical
    (0.01, 300000, (('engagement', 1.0),), ('ctr',))
    """
    rest = {k: v for k, v in doc.items() if k not in ("valid_for", "weights", "critical")}
    known = _known(rest, CanaryRule, "canary", ("valid_for_ms",))
    if "valid_for" in doc:
        known["valid_for_ms"] = parse_duration_ms(doc["valid_for"], "canary.valid_for")
    if "weights" in doc:
        weights = doc["weights"]
        if not isinstance(weights, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in weights.values()
        ):
            raise TopologyError("canary.weights: expected a mapping of group -> number")
        known["weights"] = tuple((str(k), float(v)) for k, v in weights.items())
    if "critical" in doc:
        known["critical"] = tuple(_str_list(doc["critical"], "canary.critical"))
    return CanaryRule(**known)


def _traces(doc: dict[str, Any]) -> TraceRule:
    """The ``traces:`` section (docs/traces.md): ``ttl`` is a duration, ``drop_features`` a list of names.

    >>> rule = _traces({"sample_rate": 0.05, "ttl": "6h", "drop_features": ["email_domain"]})
    >>> rule.sample_rate, rule.ttl_ms, rule.drop_features
    (0.05, 21600000, ('email_domain',))
    """
    rest = {k: v for k, v in doc.items() if k not in ("ttl", "drop_features")}
    known = _known(rest, TraceRule, "traces", ("ttl_ms",))
    if "ttl" in doc:
        known["ttl_ms"] = parse_duration_ms(doc["ttl"], "traces.ttl")
    if "drop_features" in doc:
        known["drop_features"] = tuple(_str_list(doc["drop_features"], "traces.drop_features"))
    return TraceRule(**known)


_SHADOW_DURATIONS = ("pairing", "active", "valid_for")


def _shadow(doc: dict[str, Any]) -> ShadowRule:
    """The ``shadow:`` section (docs/canary.md "Shadow analysis"): ``pairing`` / ``active`` /
    ``valid_for`` are durations, ``critical`` a list of metric names, the rest ShadowRule fields.

    >>> rule = _shadow({"pairing": "10s", "min_rbo": 0.7, "critical": ["overlap.rbo"]})
    >>> rule.pairing_ms, rule.min_rbo, rule.critical
    (10000, 0.7, ('overlap.rbo',))
    >>> _shadow({"rbo": 0.9})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream_monitor.topology.TopologyError: shadow: unknown keys ['rbo'] (known: ['active', 'alpha', ...])
    """
    rest = {k: v for k, v in doc.items() if k not in (*_SHADOW_DURATIONS, "critical")}
    declared = set(ShadowRule.__dataclass_fields__)
    allowed = (declared - {f"{d}_ms" for d in _SHADOW_DURATIONS}) | set(_SHADOW_DURATIONS)
    unknown = set(doc) - allowed
    if unknown:
        raise TopologyError(f"shadow: unknown keys {sorted(unknown)} (known: {sorted(allowed)})")
    known: dict[str, Any] = dict(rest)
    for name in _SHADOW_DURATIONS:
        if name in doc:
            known[f"{name}_ms"] = parse_duration_ms(doc[name], f"shadow.{name}")
    if "critical" in doc:
        known["critical"] = tuple(_str_list(doc["critical"], "shadow.critical"))
    for name, value in known.items():
        if name not in ("enabled", "critical") and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise TopologyError(f"shadow.{name.removesuffix('_ms')}: expected a number, got {value!r}")
    if "enabled" in known and not isinstance(known["enabled"], bool):
        raise TopologyError(f"shadow.enabled: expected true or false, got {known['enabled']!r}")
    try:
        return ShadowRule(**known)
    except ValueError as exc:
        raise TopologyError(str(exc)) from exc
