"""What to monitor: the typed form of a ``topologies/*.yaml`` spec (loading YAML happens outside core)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_monitor.core.windows import WindowSpec

__all__ = [
    "DEFAULT_RATES",
    "EngagementRatioRule",
    "FeatureRule",
    "FeatureSpec",
    "FreshnessRule",
    "LatencyRule",
    "RankingRule",
    "RateRule",
    "SourceRule",
    "Topology",
    "VolumeRule",
]

KEY_DIMS = ("model", "model_version", "arm", "surface")


@dataclass(frozen=True, slots=True)
class VolumeRule:
    """Traffic drop / silent segment: the window's count against the trailing median of earlier windows."""

    baseline_windows: int = 15
    min_history: int = 5
    drop_ratio: float = 0.5
    min_expected: float = 20.0
    forget_after_windows: int = 1440


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
    decayed sum of earlier windows of the same slice, half-life ``half_life_windows``) or
    ``previous_version`` (the profile the model's previous version saw on the same slice). A breach needs
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

    def __post_init__(self) -> None:
        if self.reference not in ("trailing", "previous_version"):
            raise ValueError(f"reference must be trailing or previous_version, got {self.reference!r}")
        if self.sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {self.sample_every!r}")
        if not 0 < self.fdr < 1:
            raise ValueError(f"fdr must be in (0, 1), got {self.fdr!r}")


@dataclass(frozen=True, slots=True)
class RankingRule:
    """Ranking behaviour from each served slate (``items``: id, score): score distribution and collapse,
    duplicates within a slate, position/score order, catalogue coverage and popularity concentration.

    Rates (constant-score slates, duplicates, inversions) alert above a ceiling with confidence (Wilson
    bound, like the request rates). Coverage (distinct items) and the top-``top_k`` share are compared
    with their trailing median; score drift uses the feature drift test and reference.
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
    top_share_rise: float = 0.15
    entropy_drop_ratio: float = 0.5
    z: float = 2.326
    clear_ratio: float = 0.8


DEFAULT_RATES = (
    RateRule("error_rate", "err", threshold=0.02),
    RateRule("fallback_rate", "fb", threshold=0.05),
    RateRule("empty_slate_rate", "empty", threshold=0.02),
)


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
