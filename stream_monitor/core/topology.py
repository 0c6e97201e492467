"""What to monitor: the typed form of a ``topologies/*.yaml`` spec (loading YAML happens outside core)."""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_monitor.core.windows import WindowSpec

__all__ = [
    "DEFAULT_RATES",
    "EngagementRatioRule",
    "FreshnessRule",
    "LabelRule",
    "LatencyRule",
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
    labels: LabelRule = field(default_factory=LabelRule)

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
