"""What to monitor: the typed form of a ``topologies/*.yaml`` spec (loading YAML happens outside core)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stream_monitor.core.reference import PinnedProfile
from stream_monitor.core.windows import WindowSpec

__all__ = [
    "DEFAULT_BURN_ALERTS",
    "DEFAULT_RATES",
    "AlertRule",
    "AnomalyRule",
    "AnomalySeries",
    "BurnAlert",
    "CanaryRule",
    "DatasetRule",
    "EngagementRatioRule",
    "FeatureRule",
    "FeatureSpec",
    "FreshnessRule",
    "LabelRule",
    "LatencyRule",
    "RankingRule",
    "RateRule",
    "ShadowRule",
    "SloObjective",
    "SloRule",
    "SourceRule",
    "Topology",
    "TraceRule",
    "VolumeRule",
]

KEY_DIMS = ("model", "model_version", "arm", "surface")


@dataclass(frozen=True, slots=True)
class VolumeRule:
    """Traffic drop / silent segment: the window's count against the trailing median of earlier windows.

    A window breaches when its count is below ``expected x (1 - drop_ratio)`` *and* a count that small is
    less likely than ``alpha`` at that floor's rate (one-sided Poisson test): at a few events a window, a
    plain ratio would fire on noise (20 expected, 9 seen: 0.5 % of clean windows).
    """

    baseline_windows: int = 15
    min_history: int = 5
    drop_ratio: float = 0.5
    min_expected: float = 20.0
    forget_after_windows: int = 1440
    alpha: float = 0.001

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"volume alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True, slots=True)
class RateRule:
    """A rate of flagged requests (errors, fallbacks, empty slates) against a fixed ceiling."""

    signal: str
    counter: str
    threshold: float
    min_count: int = 50
    critical_factor: float = 5.0
    clear_ratio: float = 0.8
    # z of the one-sided confidence that the true rate is above the threshold (2.326: 99 %).
    z: float = 2.326


@dataclass(frozen=True, slots=True)
class LatencyRule:
    """Per-stage latency quantiles against SLAs, e.g. ``{"total": {0.99: 250.0}}``."""

    slas_ms: dict[str, dict[float, float]]
    min_count: int = 50
    critical_factor: float = 2.0
    clear_ratio: float = 0.9

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.slas_ms)


@dataclass(frozen=True, slots=True)
class FreshnessRule:
    """Per-feature age (event ts minus the feature's ``feature_ts``) quantiles against SLAs in seconds."""

    slas_s: dict[str, dict[float, float]] = field(default_factory=dict)
    min_count: int = 100
    critical_factor: float = 4.0
    clear_ratio: float = 0.9

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.slas_s)


@dataclass(frozen=True, slots=True)
class SourceRule:
    """Candidate-source mix: a source's share of candidates against its own trailing median."""

    sources: tuple[str, ...] = ()
    baseline_windows: int = 15
    min_history: int = 5
    drop_ratio: float = 0.7
    min_share: float = 0.02
    min_count: int = 100


@dataclass(frozen=True, slots=True)
class EngagementRatioRule:
    """Impressions logged per serving request, against its trailing median (logging breaks)."""

    action: str = "impression"
    baseline_windows: int = 15
    min_history: int = 5
    drop_ratio: float = 0.5
    min_requests: int = 100


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """How one feature of the serving events' ``features`` object is profiled.

    ``kind`` is ``numeric`` or ``categorical``. Numeric values go to linear bins over ``range`` (``bins``
    of them) when a range is given, else to signed log bins of ``relative_width``. ``default`` is the
    value a producer writes when it has nothing (0, -1, "unknown"): its share is watched with
    ``max_default_rate``.
    """

    name: str
    kind: str = "numeric"
    range: tuple[float, float] | None = None
    bins: int = 20
    relative_width: float = 0.1
    default: float | str | None = None
    max_default_rate: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "categorical"):
            raise ValueError(f"feature {self.name}: kind must be numeric or categorical, got {self.kind!r}")
        if not self.name or any(c in self.name for c in ".|#="):
            raise ValueError(f"feature name {self.name!r} must be non-empty without '.', '|', '#' or '='")


@dataclass(frozen=True, slots=True)
class FeatureRule:
    """Feature distribution drift and data quality (null, invalid and default-value rates).

    Drift compares each window's histogram of a feature with a reference: ``trailing`` (an exponentially
    decayed sum of earlier windows of the same slice, half-life ``half_life_windows``),
    ``previous_version`` (the profile the model's previous version saw on the same slice) or ``pinned``
    (a fixed profile such as the training data's, per slice: core/reference.py). A breach needs
    both an effect (PSI at least ``psi_threshold``) and significance: the drift p-values of every
    (slice, feature) tested in the window go through Benjamini-Hochberg at false discovery rate ``fdr``.
    """

    features: tuple[FeatureSpec, ...] = ()
    sample_every: int = 1
    min_count: int = 200
    psi_threshold: float = 0.25
    fdr: float = 0.01
    reference: str = "trailing"
    half_life_windows: float = 30.0
    min_reference_windows: int = 5
    max_values: int = 64
    max_null_rate: float = 0.05
    max_invalid_rate: float = 0.01
    max_unseen_share: float = 0.1
    z: float = 2.326
    clear_ratio: float = 0.8
    # The fixed reference of ``reference: pinned`` (core/reference.py), loaded outside core.
    pinned: PinnedProfile | None = None

    def __post_init__(self) -> None:
        if self.reference not in ("trailing", "previous_version", "pinned"):
            raise ValueError(
                f"reference must be trailing, previous_version or pinned, got {self.reference!r}"
            )
        if self.reference == "pinned" and self.pinned is None:
            raise ValueError("reference: pinned needs a pinned profile (signals.features.pinned_profile)")
        if self.sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {self.sample_every!r}")
        if not 0 < self.fdr < 1:
            raise ValueError(f"fdr must be in (0, 1), got {self.fdr!r}")


@dataclass(frozen=True, slots=True)
class RankingRule:
    """Ranking behaviour from each served slate (``items``: id, score): score distribution and collapse,
    duplicates within a slate, position/score order, catalogue coverage and popularity concentration.

    Rates (constant-score slates, duplicates, inversions) alert above a ceiling with confidence (Wilson
    bound, like the request rates). Coverage (distinct items) and score entropy are compared with their
    trailing median; popularity bias is the long tail's share of exposure (outside the items that usually
    take ``head_share`` of it) against the slice's reference; score drift uses the feature drift test.
    """

    enabled: bool = False
    sample_every: int = 1
    score_range: tuple[float, float] = (0.0, 1.0)
    score_bins: int = 20
    item_buckets: int = 256
    item_sample: int = 16
    top_k: int = 10
    min_slates: int = 100
    max_constant_slate_rate: float = 0.05
    max_duplicate_rate: float = 0.02
    max_inversion_rate: float = 0.05
    baseline_windows: int = 15
    min_history: int = 5
    coverage_drop_ratio: float = 0.5
    head_share: float = 0.8
    tail_drop_ratio: float = 0.5
    entropy_drop_ratio: float = 0.5
    z: float = 2.326
    clear_ratio: float = 0.8


@dataclass(frozen=True, slots=True)
class SloObjective:
    """One service-level objective: which requests are good, and the share of them that must be.

    ``kind`` is ``availability`` (good: no ``error``) or ``latency`` (good: the ``stage`` latency is at
    most ``threshold_ms``, read off the window's log-bucket counts).
    """

    name: str
    kind: str
    objective: float
    threshold_ms: float | None = None
    stage: str = "total"

    def __post_init__(self) -> None:
        if self.kind not in ("availability", "latency"):
            raise ValueError(f"slo {self.name}: kind {self.kind!r} is not availability or latency")
        if not 0.0 < self.objective < 1.0:
            raise ValueError(f"slo {self.name}: objective {self.objective!r} is not in (0, 1)")
        if self.kind == "latency" and (self.threshold_ms is None or self.threshold_ms <= 0):
            raise ValueError(f"slo {self.name}: a latency objective needs threshold_ms > 0")


@dataclass(frozen=True, slots=True)
class BurnAlert:
    """Alert when the error budget burns faster than ``factor`` over both the long and the short window."""

    name: str
    long_ms: int
    short_ms: int
    factor: float
    severity: str

    def __post_init__(self) -> None:
        if not 0 < self.short_ms < self.long_ms:
            raise ValueError(
                f"burn alert {self.name}: need 0 < short ({self.short_ms} ms) < long ({self.long_ms} ms)"
            )
        if self.factor <= 0:
            raise ValueError(f"burn alert {self.name}: factor {self.factor!r} must be positive")
        if self.severity not in ("critical", "warning", "info"):
            raise ValueError(
                f"burn alert {self.name}: severity {self.severity!r} is not critical/warning/info"
            )


# The SRE workbook's first two pairs ("Alerting on SLOs", multiwindow multi-burn-rate): 2 % of a 30-day
# budget in 1 h pages, 5 % in 6 h is a ticket. Its third pair (3 d / 6 h x1) needs 3 days of history.
DEFAULT_BURN_ALERTS = (
    BurnAlert("page", long_ms=3_600_000, short_ms=300_000, factor=14.4, severity="critical"),
    BurnAlert("ticket", long_ms=21_600_000, short_ms=1_800_000, factor=6.0, severity="warning"),
)


@dataclass(frozen=True, slots=True)
class SloRule:
    """Error-budget burn alerts on the SLOs of each top-level series (see core/slo.py)."""

    objectives: tuple[SloObjective, ...] = ()
    alerts: tuple[BurnAlert, ...] = DEFAULT_BURN_ALERTS
    budget_period_ms: int = 30 * 86_400_000
    # "top": one SLO per (model, model_version, arm, surface); "all": every group_by roll-up as well.
    levels: str = "top"
    max_series: int = 64
    # The long window must hold at least this many requests before it can alert.
    min_events: int = 100
    clear_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.levels not in ("top", "all"):
            raise ValueError(f"slo levels {self.levels!r} is not top or all")
        if self.max_series < 1 or self.min_events < 0:
            raise ValueError("slo max_series must be >= 1 and min_events >= 0")
        names = [o.name for o in self.objectives] + [a.name for a in self.alerts]
        if len(set(names)) != len(names):
            raise ValueError(f"slo objective and alert names must be unique, got {names}")


@dataclass(frozen=True, slots=True)
class DatasetRule:
    """Arrival SLA of a batch dataset: a partition every ``every_ms`` (+ ``grace_ms``), of ``min_rows``."""

    name: str
    every_ms: int
    grace_ms: int = 0
    min_rows: int = 0
    severity: str = "warning"

    def __post_init__(self) -> None:
        if self.every_ms <= 0 or self.grace_ms < 0 or self.min_rows < 0:
            raise ValueError(f"dataset {self.name}: need every > 0, grace >= 0 and min_rows >= 0")
        if self.severity not in ("critical", "warning", "info"):
            raise ValueError(f"dataset {self.name}: severity {self.severity!r} is not critical/warning/info")

    @property
    def deadline_ms(self) -> int:
        """How old the newest partition may get before the dataset is late."""
        return self.every_ms + self.grace_ms


@dataclass(frozen=True, slots=True)
class LabelRule:
    """Late labels: the serving/engagement join and the label metrics' alert rules (docs/signals.md).

    A request's labels are final ``maturity_ms`` after the end of its serving window; ``k`` is the cut-off of
    NDCG@k; ``sample_rate`` keeps that share of request ids (by hash, so both sides agree); at most
    ``max_pending`` requests wait per partition; ids of matured requests are remembered ``retention_ms`` to
    tell late engagement from orphans.
    """

    enabled: bool = True
    maturity_ms: int = 900_000
    k: int = 10
    sample_rate: float = 1.0
    max_pending: int = 200_000
    retention_ms: int = 3_600_000
    # Drop rules (CTR and play rate against the series' own trailing median, or, for a version with
    # fewer than min_history windows, against the previous version's on the same slice).
    baseline_windows: int = 15
    min_history: int = 5
    drop_ratio: float = 0.25
    min_impressions: int = 1000
    # z of the one-sided confidence that the rate is below the floor (3.09: 99.9 %).
    z: float = 3.09
    # Orphan engagement (no serving request): alert above this share of sampled engagement events.
    max_orphan_ratio: float = 0.05
    min_engagement: int = 1000

    def __post_init__(self) -> None:
        if self.maturity_ms < 0 or self.retention_ms < 0:
            raise ValueError(f"labels: maturity and retention must be >= 0 ms, got {self.maturity_ms}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"labels.sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not 1 <= self.k <= 32:
            raise ValueError(f"labels.k must be in 1..32 (grades are kept for 32 positions), got {self.k}")
        if self.max_pending < 1:
            raise ValueError(f"labels.max_pending must be >= 1, got {self.max_pending}")


@dataclass(frozen=True, slots=True)
class CanaryRule:
    """Canary analysis thresholds (the ``canary:`` section; see docs/canary.md).

    ``alpha`` bounds the chance that an A/A canary is ever rolled back, over every look: it is split
    evenly (Bonferroni) over the metrics, each judged with an anytime-valid confidence sequence.
    ``margin`` is the relative non-inferiority margin of the engagement metrics (PROMOTE needs the
    interval above ``-margin``); ``mixture_scale`` / ``rank_mixture_scale`` tune where the confidence
    sequences are tightest (an effect of about that size on the log-ratio / probability scale).
    """

    enabled: bool = True
    alpha: float = 0.05
    margin: float = 0.02
    mixture_scale: float = 0.03
    rank_mixture_scale: float = 0.05
    latency_floor: float = 0.10
    score_floor: float = 0.05
    rate_floor: float = 0.005
    feature_floor: float = 0.01
    min_windows: int = 10
    min_impressions: int = 5_000
    min_requests: int = 1_000
    min_count: int = 200
    pass_score: float = 90.0
    fail_score: float = 50.0
    valid_for_ms: int = 180_000
    weights: tuple[tuple[str, float], ...] = (
        ("engagement", 50.0),
        ("latency", 20.0),
        ("guardrail", 20.0),
        ("scores", 10.0),
    )
    critical: tuple[str, ...] = (
        "ctr",
        "play_rate",
        "latency.total",
        "error_rate",
        "fallback_rate",
        "empty_slate_rate",
        "feature_invalid",
    )
    max_suspects: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"canary.alpha must be in (0, 1), got {self.alpha!r}")
        for name in ("margin", "mixture_scale", "rank_mixture_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"canary.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.fail_score <= self.pass_score <= 100.0:
            raise ValueError(
                f"canary: need 0 <= fail_score <= pass_score <= 100, got {self.fail_score}, {self.pass_score}"
            )
        if any(w < 0 for _, w in self.weights):
            raise ValueError("canary.weights must be >= 0")
        if self.valid_for_ms <= 0:
            raise ValueError(f"canary.valid_for must be > 0, got {self.valid_for_ms} ms")


@dataclass(frozen=True, slots=True)
class ShadowRule:
    """Shadow analysis thresholds (the ``shadow:`` section; see docs/canary.md "Shadow analysis").

    A shadow version scores a copy of some requests; its serving events (arm ``shadow``) are paired with
    the control's of the same request id within ``pairing_ms`` of event time and their top-``k`` slates
    compared (Jaccard@k and rank-biased overlap with persistence ``rbo_p``). ``min_jaccard`` /
    ``min_rbo`` are the overlaps below which a shadow is confidently divergent (bad); ``score_floor`` and
    ``rate_floor`` are the effect floors of the score shift and of the empty / fallback / error rates.
    Control events are buffered only while a shadow of their model was seen within ``active_ms`` on the
    same partition, for ``sample_rate`` of request ids, at most ``max_pending`` per partition.

    >>> ShadowRule(rbo_p=1.0)
    Traceback (most recent call last):
    ...
    ValueError: shadow.rbo_p must be in (0, 1), got 1.0
    """

    enabled: bool = True
    alpha: float = 0.05
    k: int = 10
    rbo_p: float = 0.9
    pairing_ms: int = 30_000
    active_ms: int = 600_000
    sample_rate: float = 1.0
    max_pending: int = 100_000
    min_jaccard: float = 0.5
    min_rbo: float = 0.6
    overlap_mixture_scale: float = 0.05
    rank_mixture_scale: float = 0.05
    score_floor: float = 0.05
    rate_floor: float = 0.005
    min_windows: int = 5
    min_pairs: int = 500
    min_count: int = 200
    valid_for_ms: int = 180_000
    critical: tuple[str, ...] = (
        "overlap.jaccard",
        "overlap.rbo",
        "score",
        "error_rate",
        "fallback_rate",
        "empty_slate_rate",
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"shadow.alpha must be in (0, 1), got {self.alpha!r}")
        if not 1 <= self.k <= 100:
            raise ValueError(f"shadow.k must be in 1..100, got {self.k!r}")
        if not 0.0 < self.rbo_p < 1.0:
            raise ValueError(f"shadow.rbo_p must be in (0, 1), got {self.rbo_p!r}")
        for name in ("pairing_ms", "active_ms", "valid_for_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"shadow.{name.removesuffix('_ms')} must be > 0, got {getattr(self, name)!r} ms"
                )
        if self.active_ms < self.pairing_ms:
            raise ValueError(
                f"shadow.active ({self.active_ms} ms) must be at least shadow.pairing ({self.pairing_ms} ms)"
            )
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"shadow.sample_rate must be in (0, 1], got {self.sample_rate!r}")
        for name in ("min_jaccard", "min_rbo"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"shadow.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("overlap_mixture_scale", "rank_mixture_scale", "score_floor", "rate_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"shadow.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_pending", "min_windows", "min_pairs", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"shadow.{name} must be >= 1, got {getattr(self, name)!r}")


DEFAULT_RATES = (
    RateRule("error_rate", "err", threshold=0.02),
    RateRule("fallback_rate", "fb", threshold=0.05),
    RateRule("empty_slate_rate", "empty", threshold=0.02),
)


_ANOMALY_SIDES = ("both", "up", "down")


@dataclass(frozen=True, slots=True)
class AnomalySeries:
    """Which per-window series the anomaly detectors watch: one signal's metric (``*`` at the end: a
    prefix, e.g. ``p99.*``), and the side that counts (``up``: latency, rates; ``down``: volume)."""

    signal: str
    metric: str = "*"
    side: str = "both"

    def __post_init__(self) -> None:
        if self.side not in _ANOMALY_SIDES:
            raise ValueError(
                f"anomaly series {self.signal}: side {self.side!r} is not one of {_ANOMALY_SIDES}"
            )

    def matches(self, signal: str, metric: str) -> bool:
        """Whether a signal value of ``signal`` / ``metric`` belongs to this series."""
        if signal != self.signal:
            return False
        if self.metric.endswith("*"):
            return metric.startswith(self.metric[:-1])
        return metric == self.metric


@dataclass(frozen=True, slots=True)
class AlertRule:
    """How every alert resolves (core/alerts.py ``AlertBook``), whatever signal opened it.

    An alert resolves only after ``clear_windows`` evaluated windows in a row without a breach and back
    inside its clearing band (judged against the threshold it opened at), so one continuing fault gives
    one alert, not a train of fire / resolve / fire.

    >>> AlertRule(clear_windows=0)
    Traceback (most recent call last):
    ...
    ValueError: alerts clear_windows must be in 1..60, got 0
    """

    clear_windows: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.clear_windows <= 60:
            raise ValueError(f"alerts clear_windows must be in 1..60, got {self.clear_windows}")


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    """Adaptive detectors (core/detectors.py) on per-window signal series, under an alarm budget.

    ``budget_per_day`` new anomaly alerts a day at most, across every watched series (a token bucket of
    ``burst`` tokens); alerts past it are counted as suppressed. ``max_segment_dims`` bounds the roll-up
    levels watched (0: per model version only; 1: also each single segment dimension), ``max_series`` the
    number of detectors (newcomers past it are not watched).
    """

    series: tuple[AnomalySeries, ...] = ()
    # A calibrated score (core/detectors/calibrated.py): 0.6 is a tail probability of about 2e-7.
    threshold: float = 0.6
    budget_per_day: float = 1.0
    burst: float = 2.0
    max_series: int = 400
    max_segment_dims: int = 1
    severity: str = "warning"
    clear_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"anomaly threshold must be in (0, 1], got {self.threshold}")
        if self.budget_per_day < 0 or self.burst < 1:
            raise ValueError("anomaly budget_per_day must be >= 0 and burst >= 1")
        if self.max_series < 1 or self.max_segment_dims < 0:
            raise ValueError("anomaly max_series must be >= 1 and max_segment_dims >= 0")
        if self.severity not in ("critical", "warning", "info"):
            raise ValueError(f"anomaly severity {self.severity!r} is not critical/warning/info")
        if not 0.0 < self.clear_ratio <= 1.0:
            raise ValueError(f"anomaly clear_ratio must be in (0, 1], got {self.clear_ratio}")

    def watch(self, signal: str, metric: str) -> AnomalySeries | None:
        """The first series spec that covers ``signal`` / ``metric`` (None: not watched)."""
        return next((s for s in self.series if s.matches(signal, metric)), None)


@dataclass(frozen=True, slots=True)
class Topology:
    """One monitoring topology: windows, key dimensions, roll-ups and signal rules.

    >>> t = Topology(name="t", window=WindowSpec(60_000), segment_dims=("region",))
    >>> t.key_dims
    ('model', 'model_version', 'arm', 'surface', 'region')
    >>> t.group_by
    ((), ('region',))
    """

    name: str
    window: WindowSpec
    segment_dims: tuple[str, ...] = ()
    group_by: tuple[tuple[str, ...], ...] = ()
    max_values_per_dim: int = 64
    max_series: int = 10_000
    relative_accuracy: float = 0.02
    volume: VolumeRule = field(default_factory=VolumeRule)
    latency: LatencyRule = field(
        default_factory=lambda: LatencyRule(slas_ms={"total": {0.99: 250.0}}),
    )
    rates: tuple[RateRule, ...] = DEFAULT_RATES
    freshness: FreshnessRule = field(default_factory=FreshnessRule)
    sources: SourceRule = field(default_factory=SourceRule)
    engagement: EngagementRatioRule = field(default_factory=EngagementRatioRule)
    features: FeatureRule = field(default_factory=FeatureRule)
    ranking: RankingRule = field(default_factory=RankingRule)
    slo: SloRule = field(default_factory=SloRule)
    datasets: tuple[DatasetRule, ...] = ()
    labels: LabelRule = field(default_factory=LabelRule)
    anomaly: AnomalyRule = field(default_factory=AnomalyRule)
    alerts: AlertRule = field(default_factory=AlertRule)
    canary: CanaryRule = field(default_factory=CanaryRule)
    traces: TraceRule = field(default_factory=lambda: TraceRule())
    shadow: ShadowRule = field(default_factory=ShadowRule)

    def __post_init__(self) -> None:
        if not self.group_by:
            # Default roll-ups: everything, and each segment dimension on its own.
            object.__setattr__(self, "group_by", ((), *((d,) for d in self.segment_dims)))
        for group in self.group_by:
            unknown = set(group) - set(self.segment_dims)
            if unknown:
                raise ValueError(f"group_by {list(group)} names unknown segment dims {sorted(unknown)}")

    @property
    def key_dims(self) -> tuple[str, ...]:
        return (*KEY_DIMS, *self.segment_dims)


@dataclass(frozen=True, slots=True)
class TraceRule:
    """The ``traces:`` section of a topology: what is captured, how much, and for how long.

    >>> TraceRule(sample_rate=0.5).ttl_s
    86400
    >>> TraceRule(sample_rate=2.0)
    Traceback (most recent call last):
    ...
    ValueError: traces.sample_rate must be in [0, 1], got 2.0
    """

    enabled: bool = True
    # Share of requests traced, by request-id hash (0 disables capture).
    sample_rate: float = 0.01
    # Traced requests per slice per event-time window, and in all per window (per worker).
    per_slice_per_window: int = 5
    per_window: int = 200
    # Traces kept per slice in the store: older ones are deleted as newer arrive (the memory bound).
    per_slice: int = 100
    ttl_ms: int = 86_400_000
    # Truncation: slate items, features, engagement events per request, and the encoded size.
    max_items: int = 20
    max_features: int = 64
    max_engagement: int = 20
    max_bytes: int = 8192
    # Privacy: feature values of these features are never stored (their ages are); feature_values=False
    # stores no feature value at all.
    drop_features: tuple[str, ...] = ()
    feature_values: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0 or math.isnan(self.sample_rate):
            raise ValueError(f"traces.sample_rate must be in [0, 1], got {self.sample_rate!r}")
        for name in ("per_slice_per_window", "per_window", "per_slice", "max_engagement"):
            if getattr(self, name) < 1:
                raise ValueError(f"traces.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.ttl_ms < 1000:
            raise ValueError(f"traces.ttl must be at least 1 s, got {self.ttl_ms} ms")
        if self.max_items < 0 or self.max_features < 0:
            raise ValueError("traces.max_items and traces.max_features must be >= 0")
        if self.max_bytes < 1024:
            raise ValueError(f"traces.max_bytes must be >= 1024, got {self.max_bytes}")

    @property
    def ttl_s(self) -> int:
        return max(1, self.ttl_ms // 1000)

    @property
    def active(self) -> bool:
        return self.enabled and self.sample_rate > 0.0
