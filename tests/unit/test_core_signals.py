"""Signals of a closed window and alert bookkeeping (stream_monitor.core.signals, stream_monitor.core.alerts).

Covers parsing flat window sums, roll-ups, the rate / latency / volume rules, localisation of breaches to
the slice that explains them, and AlertBook's open / dedupe / resolve cycle with its JSON checkpoint.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.aggregates import WindowAccumulator
from stream_monitor.core.alerts import STATE_VERSION, Alert, AlertBook, DetectorState, StateFormatError
from stream_monitor.core.events import ServingEvent
from stream_monitor.core.series import Breach, SeriesStats, SignalValue, parse_window, rollup
from stream_monitor.core.signals import WindowEvaluator, localise
from stream_monitor.core.sketch import ZERO_BUCKET
from stream_monitor.core.topology import LatencyRule, Topology, VolumeRule
from stream_monitor.core.windows import WindowSpec
from stream_monitor.topology import parse_topology

pytestmark = pytest.mark.unit

HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=100)

T0 = 1_764_086_400_000
MINUTE = 60_000
DIMS = ("model", "model_version", "arm", "surface", "platform", "region")


def _topology(**kw: Any) -> Topology:
    base: dict[str, Any] = {"name": "t", "window": WindowSpec(MINUTE), "segment_dims": ("platform", "region")}
    base.update(kw)
    return Topology(**base)


def _event(
    platform: str = "ios",
    region: str = "eu",
    *,
    total: float = 50.0,
    ranking: float | None = None,
    error: bool = False,
    version: str = "v1",
) -> ServingEvent:
    latency = {"total": total} if ranking is None else {"total": total, "ranking": ranking}
    return ServingEvent(
        "r",
        T0,
        "m",
        version,
        "control",
        "home",
        {"platform": platform, "region": region},
        latency,
        funnel={"returned": 20},
        error="boom" if error else None,
    )


def _window(topo: Topology, events: list[ServingEvent]) -> dict[str, float]:
    acc = WindowAccumulator(topo)
    for offset, event in enumerate(events):
        acc.add_serving("p/0", offset, event)
    parts = acc.take()
    return parts["p/0"].windows[T0] if parts else {}


def _cells(cells: dict[tuple[str, str], tuple[int, int]], **kw: Any) -> list[ServingEvent]:
    """Events for (platform, region) -> (requests, errors)."""
    out = []
    for (platform, region), (n, errors) in cells.items():
        out.extend(_event(platform, region, error=i < errors, **kw) for i in range(n))
    return out


def _key(platform: str = "*", region: str = "*", version: str = "v1") -> tuple[str, ...]:
    return ("m", version, "control", "home", platform, region)


def _evaluate(
    topo: Topology, fields: dict[str, float], history: dict[str, list[float]] | None = None
) -> tuple[list[SignalValue], list[Breach], dict[str, float]]:
    found = WindowEvaluator(topo).evaluate(fields, {} if history is None else history, {})
    return found.all_values, found.breaches, found.engagement


# -- parse_window / rollup ------------------------------------------------------------------------------


def test_parse_window_splits_series_metrics_and_engagement() -> None:
    fields = {
        "m|v1|control|home|ios|eu#n": 3,
        "m|v1|control|home|ios|eu#err": 1,
        "m|v1|control|home|ios|eu#lat.total.97": 2,
        "m|v1|control|home|ios|eu#lat.total.98": 1,
        f"m|v1|control|home|ios|eu#lat.total.{ZERO_BUCKET}": 4,
        "m|v1|control|home|ios|eu#lat.ranking.-3": 1,
        "m|v1|control|home|ios|us#n": 2,
        "*#eng.click": 2,
        "*#eng.play": 5,
        "*#something": 9,  # not engagement: ignored
        "m|v1|control|home#n": 11,  # written under other dimensions: not comparable, ignored
        "m|v1|control|home|ios|eu|new#n": 11,
    }
    series, engagement = parse_window(fields, n_dims=6)
    assert set(series) == {_key("ios", "eu"), _key("ios", "us")}
    eu = series[_key("ios", "eu")]
    assert eu.n == 3
    assert eu.counters == {"err": 1}
    assert eu.latency == {"total": {97: 2, 98: 1, ZERO_BUCKET: 4}, "ranking": {-3: 1}}
    assert series[_key("ios", "us")].n == 2
    assert engagement == {"click": 2, "play": 5}


def test_parse_window_of_empty_window() -> None:
    assert parse_window({}, n_dims=6) == ({}, {})


def test_rollup_merges_over_dropped_dimensions() -> None:
    series = {
        ("m", "eu"): SeriesStats(n=2, counters={"err": 1}, latency={"total": {5: 2}}),
        ("m", "us"): SeriesStats(n=3, counters={"err": 2, "fb": 1}, latency={"total": {5: 1, 6: 2}}),
        ("k", "us"): SeriesStats(n=7),
    }
    rolled = rollup(series, ("model", "region"), keep=("model",))
    assert set(rolled) == {("m", "*"), ("k", "*")}
    m = rolled[("m", "*")]
    assert (m.n, m.counters, m.latency) == (5, {"err": 3, "fb": 1}, {"total": {5: 3, 6: 2}})
    everything = rollup(series, ("model", "region"), keep=())
    assert {k: v.n for k, v in everything.items()} == {("*", "*"): 12}
    identity = rollup(series, ("model", "region"), keep=("model", "region"))
    assert {k: v.n for k, v in identity.items()} == {k: v.n for k, v in series.items()}
    # Inputs are not modified.
    assert series[("m", "eu")].n == 2 and series[("m", "eu")].latency == {"total": {5: 2}}


@HYPOTHESIS
@given(
    rows=st.dictionaries(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y", "z"])),
        st.integers(min_value=0, max_value=1000),
        max_size=6,
    ),
    keep=st.sampled_from([(), ("d0",), ("d1",), ("d0", "d1")]),
)
def test_rollup_preserves_totals(rows: dict[tuple[str, str], int], keep: tuple[str, ...]) -> None:
    series = {k: SeriesStats(n=n, counters={"err": n // 2}) for k, n in rows.items()}
    rolled = rollup(series, ("d0", "d1"), keep=keep)
    assert sum(s.n for s in rolled.values()) == sum(rows.values())
    assert sum(s.counters.get("err", 0) for s in rolled.values()) == sum(n // 2 for n in rows.values())


def test_levels_follow_group_by() -> None:
    topo = _topology()
    assert topo.group_by == ((), ("platform",), ("region",))
    fields = _window(topo, _cells({("ios", "eu"): (5, 0), ("web", "us"): (7, 0)}))
    series, _ = parse_window(fields, len(topo.key_dims))
    evaluator = WindowEvaluator(topo)
    levels = {k: v.n for k, v in evaluator.levels(series, with_version=True).items()}
    assert levels == {
        _key(): 12,
        _key(platform="ios"): 5,
        _key(platform="web"): 7,
        _key(region="eu"): 5,
        _key(region="us"): 7,
    }
    no_version = {k: v.n for k, v in evaluator.levels(series, with_version=False).items()}
    assert no_version[("m", "*", "control", "home", "*", "*")] == 12


# -- rates ----------------------------------------------------------------------------------------------


def test_rate_values_and_min_count() -> None:
    topo = _topology()
    fields = _window(topo, _cells({("ios", "eu"): (60, 0), ("ios", "us"): (49, 0)}))
    values, breaches, _ = _evaluate(topo, fields)
    assert breaches == []
    rate_keys = {v.key for v in values if v.signal == "error_rate"}
    # 49 requests in region=us is under min_count (50): not evaluated at that level.
    assert rate_keys == {_key(), _key(platform="ios"), _key(region="eu")}
    assert all(v.value == 0.0 and v.metric == "ratio" for v in values if v.signal == "error_rate")
    signals = {v.signal for v in values}
    assert {"error_rate", "fallback_rate", "empty_slate_rate", "latency", "volume"} <= signals


@pytest.mark.parametrize(
    ("errors", "severity"),
    [(2, None), (5, None), (6, "warning"), (10, "warning"), (11, "critical")],
)
def test_error_rate_threshold_and_severity(errors: int, severity: str | None) -> None:
    # 100 requests, threshold 2 %, critical above 5 x 2 % = 10 %. A breach needs the rate above the
    # threshold with 99 % confidence (Wilson lower bound): 5 of 100 is not enough evidence, 6 is.
    topo = _topology(segment_dims=())
    fields = _window(topo, _cells({("ios", "eu"): (100, errors)}))
    _, breaches, _ = _evaluate(topo, fields)
    rate = [b for b in breaches if b.signal == "error_rate"]
    if severity is None:
        assert rate == []
    else:
        (breach,) = rate
        assert (breach.metric, breach.key, breach.unit, breach.threshold) == (
            "ratio",
            ("m", "v1", "control", "home"),
            "ratio",
            0.02,
        )
        assert breach.observed == errors / 100
        assert breach.severity == severity
        assert breach.expected is None
        assert f"error rate is {errors / 100:.1%} over 100 requests, above the 2.0% limit" == breach.message


# -- latency --------------------------------------------------------------------------------------------


def test_latency_quantile_values_for_configured_stages() -> None:
    topo = _topology(
        segment_dims=(),
        latency=LatencyRule(slas_ms={"total": {0.99: 250.0}, "ranking": {0.95: 40.0}}, min_count=10),
    )
    events = [_event(total=float(i), ranking=10.0) for i in range(1, 101)]
    values, breaches, _ = _evaluate(topo, _window(topo, events))
    latency = {v.metric: v.value for v in values if v.signal == "latency"}
    assert set(latency) == {
        "p50.total",
        "p95.total",
        "p99.total",
        "p50.ranking",
        "p95.ranking",
        "p99.ranking",
    }
    assert latency["p99.total"] == pytest.approx(99, rel=0.02)
    assert latency["p50.total"] == pytest.approx(50, rel=0.02)
    assert latency["p95.ranking"] == pytest.approx(10, rel=0.02)
    assert [b for b in breaches if b.signal == "latency"] == []


def test_latency_stage_without_data_is_skipped() -> None:
    topo = _topology(
        segment_dims=(), latency=LatencyRule(slas_ms={"total": {0.99: 250.0}, "ranking": {0.99: 1.0}})
    )
    values, breaches, _ = _evaluate(topo, _window(topo, [_event(total=10.0)] * 60))
    assert {v.metric for v in values if v.signal == "latency"} == {"p50.total", "p95.total", "p99.total"}
    assert breaches == []


@pytest.mark.parametrize(("ms", "severity"), [(240.0, None), (300.0, "warning"), (600.0, "critical")])
def test_latency_against_sla(ms: float, severity: str | None) -> None:
    topo = _topology(segment_dims=())  # default: total p99 <= 250 ms, critical above 2 x
    _, breaches, _ = _evaluate(topo, _window(topo, [_event(total=ms)] * 60))
    if severity is None:
        assert breaches == []
        return
    (breach,) = breaches
    assert (breach.signal, breach.metric, breach.unit, breach.threshold, breach.severity) == (
        "latency",
        "p99.total",
        "ms",
        250.0,
        severity,
    )
    assert breach.observed == pytest.approx(ms, rel=topo.relative_accuracy)
    assert "total latency p99 is" in breach.message and "above the 250 ms SLA" in breach.message


def test_latency_needs_min_count() -> None:
    topo = _topology(segment_dims=())
    values, breaches, _ = _evaluate(topo, _window(topo, [_event(total=900.0)] * 49))
    assert breaches == []
    assert not [v for v in values if v.signal == "latency"]


def test_latency_rule_from_yaml_quantile_keys_match_evaluated_quantiles() -> None:
    topo = parse_topology(
        {"name": "x", "signals": {"latency": {"sla_ms": {"total": {"p95": 100, "p50": 20}}}}}
    )
    _, breaches, _ = _evaluate(topo, _window(topo, [_event(total=150.0)] * 60))
    assert sorted(b.metric for b in breaches) == ["p50.total", "p95.total"]


def test_latency_stage_with_a_dot_in_its_name() -> None:
    # Regression: parse_window split "lat.<stage>.<bucket>" on the first dots and crashed on "db.read".
    topo = parse_topology({"name": "x", "signals": {"latency": {"sla_ms": {"db.read": {"p99": 50}}}}})
    acc = WindowAccumulator(topo)
    for offset in range(60):
        event = _event(total=10.0)
        event.latency_ms["db.read"] = 80.0
        acc.add_serving("p/0", offset, event)
    fields = acc.take()["p/0"].windows[T0]
    _, breaches, _ = _evaluate(topo, fields)
    assert [b.metric for b in breaches] == ["p99.db.read"]


# -- volume ---------------------------------------------------------------------------------------------

VOLUME = VolumeRule(
    baseline_windows=5, min_history=3, drop_ratio=0.5, min_expected=20.0, forget_after_windows=4
)
VOLUME_KEY = ("m", "*", "control", "home")
VOLUME_NAME = "m|*|control|home"


class _Volume:
    """Evaluate successive windows of one series' count against a shared history."""

    def __init__(self, rule: VolumeRule = VOLUME) -> None:
        self.topo = _topology(segment_dims=(), volume=rule)
        self.evaluator = WindowEvaluator(self.topo)
        self.history: dict[str, list[float]] = {}
        self.absent: dict[str, int] = {}

    def window(self, count: int, **versions: int) -> tuple[list[SignalValue], list[Breach]]:
        fields: dict[str, float] = {}
        if count:
            fields["m|v1|control|home#n"] = count
        for version, n in versions.items():
            fields[f"m|{version}|control|home#n"] = n
        found = self.evaluator.evaluate(fields, self.history, self.absent)
        values, breaches = found.all_values, found.breaches
        return [v for v in values if v.signal == "volume"], [b for b in breaches if b.signal == "volume"]


def test_volume_warm_up_then_drop() -> None:
    vol = _Volume()
    for _ in range(2):
        assert vol.window(100)[1] == []
    assert vol.window(0)[1] == []  # warm-up (2 windows of history < 3): even silence does not alert
    assert vol.history[VOLUME_NAME] == [100, 100, 0]
    vol.window(100)
    # median of [100, 100, 0, 100] = 100; 25 < 50 and P(X <= 25 | Poisson(50)) = 0.0002 < alpha
    values, breaches = vol.window(25)
    assert [v.value for v in values] == [25]
    (breach,) = breaches
    assert (breach.key, breach.metric, breach.unit, breach.severity) == (
        VOLUME_KEY,
        "count",
        "events",
        "warning",
    )
    assert (breach.observed, breach.expected, breach.threshold) == (25, 100, 50)
    assert breach.message == "25 events, 75% below against a trailing median of 100 per window"


def test_volume_below_the_floor_by_noise_alone_does_not_breach() -> None:
    # 40 of an expected 100 is under the floor of 50, but 8.6 % of windows at a rate of 50 are that small:
    # not evidence of a drop. At 20 expected, 9 seen (0.5 % of clean windows) is noise too; silence is not.
    for expected, seen, breaches in ((100, 40, 0), (20, 9, 0), (20, 0, 1)):
        vol = _Volume()
        for _ in range(4):
            vol.window(expected)
        assert len(vol.window(seen)[1]) == breaches, (expected, seen)


def test_volume_silent_series_is_critical() -> None:
    vol = _Volume()
    for _ in range(3):
        vol.window(100)
    values, breaches = vol.window(0)
    assert [(v.key, v.value) for v in values] == [(VOLUME_KEY, 0.0)]
    (breach,) = breaches
    assert breach.severity == "critical"
    assert breach.message.startswith("no events (silent)")


def test_volume_at_exactly_the_threshold_does_not_breach() -> None:
    vol = _Volume()
    for _ in range(3):
        vol.window(100)
    assert vol.window(50)[1] == []


def test_volume_breaching_windows_do_not_teach_the_baseline() -> None:
    vol = _Volume()
    for _ in range(3):
        vol.window(100)
    for _ in range(3):  # a long outage (shorter than forget_after_windows) keeps alerting
        assert len(vol.window(10)[1]) == 1
    assert vol.history[VOLUME_NAME] == [100, 100, 100]
    assert vol.window(100)[1] == []
    assert vol.history[VOLUME_NAME] == [100, 100, 100, 100]


def test_volume_baseline_is_a_trailing_window() -> None:
    vol = _Volume()
    for _ in range(5):
        vol.window(100)
    for _ in range(5):
        vol.window(300)  # the level moves up; not a breach
    assert vol.history[VOLUME_NAME] == [300] * 5  # at most baseline_windows kept
    (breach,) = vol.window(100)[1]  # against the new median 300 (floor 150), not the old 100
    assert breach.expected == 300


def test_volume_ignores_small_series() -> None:
    vol = _Volume()
    for _ in range(3):
        vol.window(19)
    assert vol.window(0)[1] == []  # median 19 < min_expected 20


def test_volume_forgets_series_absent_for_too_long() -> None:
    vol = _Volume()
    for _ in range(3):
        vol.window(100)
    for _ in range(4):  # absent 4 windows: still remembered, still silent
        values, breaches = vol.window(0)
        assert len(values) == 1 and len(breaches) == 1
    values, breaches = vol.window(0)  # the 5th: forgotten
    assert values == [] and breaches == []
    assert VOLUME_NAME not in vol.history and VOLUME_NAME not in vol.absent
    assert vol.window(100)[1] == []  # comes back as a new series, warming up again
    assert vol.history[VOLUME_NAME] == [100]


def test_volume_is_counted_over_all_versions() -> None:
    vol = _Volume()
    for _ in range(3):
        vol.window(0, v1=60, v2=40)
    # The rollout moves traffic from v1 to v2: the model's volume is unchanged, no alert.
    values, breaches = vol.window(0, v1=5, v2=95)
    assert [(v.key, v.value) for v in values] == [(VOLUME_KEY, 100)]
    assert breaches == []


# -- localisation ---------------------------------------------------------------------------------------

REGIONS = ("us", "eu", "apac")
PLATFORMS = ("ios", "android", "web")


def _grid(errors: dict[tuple[str, str], int], n: int = 100) -> list[ServingEvent]:
    return _cells({(p, r): (n, errors.get((p, r), 0)) for p in PLATFORMS for r in REGIONS})


def _error_breaches(errors: dict[tuple[str, str], int]) -> list[tuple[str, ...]]:
    topo = _topology()
    _, breaches, _ = _evaluate(topo, _window(topo, _grid(errors)))
    return sorted(b.key for b in breaches if b.signal == "error_rate")


def test_slice_local_breach_is_reported_at_that_slice_only() -> None:
    # Region eu at 30 % errors in every platform; global (10 %) and every platform (10 %) breach too.
    keys = _error_breaches({(p, "eu"): 30 for p in PLATFORMS})
    assert keys == [_key(region="eu")]


def _latency_breaches(slow: list[float]) -> list[tuple[str, tuple[str, ...]]]:
    """p99.total breaches when each (platform, eu) cell has these slow requests in 100 (40 ms otherwise)."""
    topo = _topology()
    events = []
    for p in PLATFORMS:
        for r in REGIONS:
            tail = slow if r == "eu" else []
            events.extend(_event(p, r, total=tail[i] if i < len(tail) else 40.0) for i in range(100))
    _, breaches, _ = _evaluate(topo, _window(topo, events))
    return [(b.metric, b.key) for b in breaches]


def test_slice_local_latency_breach_is_reported_at_that_slice_only() -> None:
    # eu's p99 (700 ms) is above the SLA (250 ms), and so are every platform's (400 ms) and the total's
    # (500 ms), only because they contain eu's slow requests.
    assert _latency_breaches([400.0, 500.0, 700.0, 900.0]) == [("p99.total", _key(region="eu"))]


def test_slice_local_saturated_latency_breach_is_reported_at_that_slice_only() -> None:
    # Regression: with every p99 tied at 900 ms a platform slice was kept first and nothing explained away.
    # 10 % of eu requests time out at 900 ms: eu, every platform and the total all have p99 = 900 ms.
    assert _latency_breaches([900.0] * 10) == [("p99.total", _key(region="eu"))]


def test_two_slices_breaching_independently_are_both_reported() -> None:
    # android is bad (5 %) in every region and eu is bad (5 %) on every platform: two problems, two alerts.
    # Their siblings stay under 2 % (each holds a third of the other problem) and so does the rest.
    errors = {(p, r): 5 for p in PLATFORMS for r in REGIONS if p == "android" or r == "eu"}
    assert _error_breaches(errors) == sorted([_key(platform="android"), _key(region="eu")])


def test_global_breach_is_reported_at_the_top_level_only() -> None:
    # Regression: every slice of every dimension was reported along with the top level.
    keys = _error_breaches({(p, r): 30 for p in PLATFORMS for r in REGIONS})
    assert keys == [_key()]


def test_cell_local_breach_is_reported_at_both_slices_of_the_cell() -> None:
    # Errors only in the (android, eu) cell: android (20 %) and eu (20 %) breach, their siblings do not.
    # The cell is not a group_by level; each slice explains the other, so both are kept (not the total).
    assert _error_breaches({("android", "eu"): 60}) == sorted([_key(platform="android"), _key(region="eu")])


def test_no_breach_no_report() -> None:
    assert _error_breaches({}) == []


_cells_strategy = st.dictionaries(
    st.tuples(st.sampled_from(PLATFORMS), st.sampled_from(REGIONS)),
    st.tuples(st.integers(min_value=0, max_value=150), st.integers(min_value=0, max_value=150)),
    min_size=1,
).map(lambda c: {k: (n, min(e, n)) for k, (n, e) in c.items()})


@HYPOTHESIS
@given(cells=_cells_strategy)
def test_localisation_keeps_a_subset_and_never_drops_a_whole_group(
    cells: dict[tuple[str, str], tuple[int, int]],
) -> None:
    topo = _topology()
    evaluator = WindowEvaluator(topo)
    # The breaches before localisation: a rate over its ceiling *with confidence* (2 errors in 50 requests
    # are 4 % but no breach).
    found = evaluator.evaluate(_window(topo, _cells(cells)), {}, {})
    raw = {b.key for b in found.raw_breaches if b.signal == "error_rate"}
    kept = [b.key for b in found.breaches if b.signal == "error_rate"]
    assert len(kept) == len(set(kept))
    assert set(kept) <= raw  # never invents a breach
    assert bool(kept) == bool(raw)  # something is reported whenever something breaches


@HYPOTHESIS
@given(cells=_cells_strategy, rnd=st.randoms(use_true_random=False))
def test_localisation_does_not_depend_on_field_order(
    cells: dict[tuple[str, str], tuple[int, int]], rnd: Any
) -> None:
    topo = _topology()
    fields = _window(topo, _cells(cells))
    shuffled = list(fields.items())
    rnd.shuffle(shuffled)
    _, first, _ = _evaluate(topo, fields)
    _, second, _ = _evaluate(topo, dict(shuffled))
    assert sorted(b.identity for b in first) == sorted(b.identity for b in second)


def _b(key: tuple[str, ...], signal: str = "latency", metric: str = "p99.total") -> Breach:
    return Breach(signal, metric, key, 9.0, None, 1.0, "ms", "warning", "")


def _v(key: tuple[str, ...], signal: str = "latency", metric: str = "p99.total") -> SignalValue:
    return SignalValue(signal, metric, key, 0.0)


def test_localise_keeps_two_localising_dimensions() -> None:
    values = [_v(_key(region=r)) for r in REGIONS] + [_v(_key(platform=p)) for p in PLATFORMS] + [_v(_key())]
    breaches = [_b(_key(region="eu")), _b(_key(platform="android")), _b(_key())]
    kept = localise(breaches, values, DIMS)
    assert sorted(b.key for b in kept) == sorted([_key(region="eu"), _key(platform="android")])


def test_localise_global_breach_kept_at_top_level_only() -> None:
    values = [_v(_key(region=r)) for r in REGIONS] + [_v(_key())]
    breaches = [_b(_key(region=r)) for r in REGIONS] + [_b(_key())]
    assert [b.key for b in localise(breaches, values, DIMS)] == [_key()]


def test_localise_is_per_signal_metric_and_base_key() -> None:
    values = [_v(_key(region=r)) for r in REGIONS] + [_v(_key())]
    values += [_v(_key(region=r), metric="p99.ranking") for r in REGIONS]
    breaches = [
        _b(_key(region="eu")),
        _b(_key()),
        # another metric, where every region breaches: global wins there
        *(_b(_key(region=r), metric="p99.ranking") for r in REGIONS),
        _b(_key(), metric="p99.ranking"),
    ]
    kept = localise(breaches, values, DIMS)
    assert sorted((b.metric, b.key) for b in kept) == [
        ("p99.ranking", _key()),
        ("p99.total", _key(region="eu")),
    ]


def test_localise_single_evaluated_value_does_not_localise() -> None:
    # Only one region had enough data to be evaluated: its breach does not single it out.
    values = [_v(_key(region="eu")), _v(_key())]
    kept = localise([_b(_key(region="eu")), _b(_key())], values, DIMS)
    assert [b.key for b in kept] == [_key()]


def test_localise_keeps_slice_breach_without_global_breach() -> None:
    values = [_v(_key(region=r)) for r in REGIONS] + [_v(_key())]
    kept = localise([_b(_key(region="eu"))], values, DIMS)
    assert [b.key for b in kept] == [_key(region="eu")]


def test_localise_separates_versions() -> None:
    values = [_v(_key(region=r, version=v)) for r in REGIONS for v in ("v1", "v2")]
    breaches = [_b(_key(region="eu", version="v2")), _b(_key(version="v2")), _b(_key(version="v1"))]
    kept = localise(breaches, values, DIMS)
    assert sorted(b.key for b in kept) == sorted([_key(region="eu", version="v2"), _key(version="v1")])


# -- AlertBook ------------------------------------------------------------------------------------------

BOOK_DIMS = ("model", "region")


def _rate(key: tuple[str, str] = ("m", "eu"), observed: float = 0.2, signal: str = "error_rate") -> Breach:
    return Breach(signal, "ratio", key, observed, None, 0.02, "ratio", "critical", "error rate is high")


def _book() -> AlertBook:
    return AlertBook(BOOK_DIMS, topology="t", clear_ratios={"error_rate": 0.8})


def _w(i: int) -> tuple[int, int]:
    return (T0 + i * MINUTE, T0 + (i + 1) * MINUTE)


def test_alert_fires_once_and_does_not_repeat_while_open() -> None:
    book, state = _book(), DetectorState()
    breach = _rate()
    (alert,) = book.update(state, [breach], _w(0), now_ms=T0 + 95_000)
    assert alert.status == "firing"
    assert (alert.signal, alert.metric, alert.severity, alert.topology) == (
        "error_rate",
        "ratio",
        "critical",
        "t",
    )
    assert alert.key == {"model": "m", "region": "eu"}
    assert alert.series == "m|eu"
    assert alert.dedupe_key == "error_rate|ratio|m|eu"
    assert alert.window == {"start": T0, "end": T0 + MINUTE, "size_ms": MINUTE}
    assert (alert.opened_at, alert.emitted_at) == (T0, T0 + 95_000)
    assert (alert.observed, alert.expected, alert.threshold, alert.unit) == (0.2, None, 0.02, "ratio")
    assert alert.message == "model=m region=eu: error rate is high"
    assert re.fullmatch(r"a-[0-9a-f]{16}", alert.id)
    assert list(state.open_alerts) == ["error_rate|ratio|m|eu"]
    for i in range(1, 5):
        assert book.update(state, [breach], _w(i), now_ms=0, evaluated={breach.identity: 0.2}) == []
    assert len(state.open_alerts) == 1


def test_alert_resolves_when_evaluated_below_the_clear_level() -> None:
    book, state = _book(), DetectorState()
    breach = _rate()
    (fired,) = book.update(state, [breach], _w(0), now_ms=1)
    (resolved,) = book.update(state, [], _w(3), now_ms=2, evaluated={breach.identity: 0.01})
    assert resolved.status == "resolved"
    assert resolved.id == fired.id
    assert resolved.opened_at == T0
    assert resolved.window == {"start": T0 + 3 * MINUTE, "end": T0 + 4 * MINUTE, "size_ms": MINUTE}
    assert resolved.observed == 0.01
    assert resolved.emitted_at == 2
    assert resolved.message == "model=m region=eu: error rate ratio back to 1.0% after 240 s"
    assert state.open_alerts == {}


@pytest.mark.parametrize(
    ("value", "resolves"), [(0.019, False), (0.0165, False), (0.0155, True), (0.0, True)]
)
def test_alert_resolution_hysteresis(value: float, resolves: bool) -> None:
    # Threshold 2 %, clear ratio 0.8: below the threshold is not enough, it must be back under 1.6 %.
    book, state = _book(), DetectorState()
    breach = _rate()
    book.update(state, [breach], _w(0), now_ms=1)
    out = book.update(state, [], _w(1), now_ms=2, evaluated={breach.identity: value})
    assert [a.status for a in out] == (["resolved"] if resolves else [])
    assert bool(state.open_alerts) is not resolves


def test_signal_without_clear_ratio_resolves_as_soon_as_it_does_not_breach() -> None:
    book, state = _book(), DetectorState()
    breach = Breach("volume", "count", ("m", "eu"), 0.0, 100.0, 50.0, "events", "critical", "silent")
    book.update(state, [breach], _w(0), now_ms=1)
    (resolved,) = book.update(state, [], _w(1), now_ms=2, evaluated={breach.identity: 51.0})
    assert resolved.status == "resolved"
    assert resolved.message == "model=m region=eu: volume count back to 51 events after 120 s"


def test_alert_stays_open_without_data() -> None:
    book, state = _book(), DetectorState()
    breach = _rate()
    book.update(state, [breach], _w(0), now_ms=1)
    other = _rate(("m", "us")).identity
    for i in range(1, 10):
        # Not evaluated (too few requests) or only other keys evaluated: never resolves on silence.
        assert book.update(state, [], _w(i), now_ms=2) == []
        assert book.update(state, [], _w(i), now_ms=2, evaluated={other: 0.0}) == []
    assert list(state.open_alerts) == ["error_rate|ratio|m|eu"]


def test_breach_and_evaluation_in_the_same_window_keeps_it_open() -> None:
    book, state = _book(), DetectorState()
    breach = _rate()
    book.update(state, [breach], _w(0), now_ms=1)
    assert book.update(state, [breach], _w(1), now_ms=2, evaluated={breach.identity: 0.0}) == []


def test_alert_ids_are_deterministic() -> None:
    breach = _rate()
    first = _book().update(DetectorState(), [breach], _w(0), now_ms=1)[0]
    again = AlertBook(BOOK_DIMS, topology="other").update(DetectorState(), [breach], _w(0), now_ms=999)[0]
    later = _book().update(DetectorState(), [breach], _w(1), now_ms=1)[0]
    elsewhere = _book().update(DetectorState(), [_rate(("m", "us"))], _w(0), now_ms=1)[0]
    assert first.id == again.id  # same dedupe key and window: same id (consumers de-duplicate on it)
    assert len({first.id, later.id, elsewhere.id}) == 3


def test_reopened_alert_gets_a_new_id() -> None:
    book, state = _book(), DetectorState()
    breach = _rate()
    (first,) = book.update(state, [breach], _w(0), now_ms=1)
    book.update(state, [], _w(1), now_ms=2, evaluated={breach.identity: 0.0})
    (second,) = book.update(state, [breach], _w(2), now_ms=3)
    assert second.status == "firing" and second.id != first.id and second.opened_at == T0 + 2 * MINUTE


def test_several_breaches_several_alerts() -> None:
    book, state = _book(), DetectorState()
    breaches = [_rate(("m", "eu")), _rate(("m", "us")), _rate(("m", "eu"), signal="fallback_rate")]
    alerts = book.update(state, breaches, _w(0), now_ms=1)
    assert len(alerts) == 3 and len({a.id for a in alerts}) == 3
    assert len(state.open_alerts) == 3


def test_alert_dict_round_trip() -> None:
    (alert,) = _book().update(DetectorState(), [_rate()], _w(0), now_ms=1)
    doc = orjson.loads(orjson.dumps(alert.to_dict()))
    assert Alert.from_dict(doc) == alert
    assert Alert.from_dict({**doc, "extra": 1}) == alert  # unknown fields are ignored


# -- DetectorState checkpoint ---------------------------------------------------------------------------


def _state_with_data() -> DetectorState:
    state = DetectorState(
        last_closed_end=T0 + MINUTE,
        volume_history={"m|*|control|home|*|eu": [100.0, 98.0, 103.0]},
        volume_absent={"m|*|control|home|*|eu": 0, "m|*|control|home|*|us": 2},
    )
    _book().update(state, [_rate()], _w(0), now_ms=1)
    return state


def test_detector_state_json_round_trip() -> None:
    state = _state_with_data()
    doc = state.to_json_dict()
    assert doc["version"] == STATE_VERSION
    loaded = DetectorState.from_json_dict(orjson.loads(orjson.dumps(doc)))
    assert loaded == state
    assert DetectorState.from_json_dict(DetectorState().to_json_dict()) == DetectorState()


def test_restored_state_continues_the_alert_cycle() -> None:
    state = DetectorState.from_json_dict(orjson.loads(orjson.dumps(_state_with_data().to_json_dict())))
    book = _book()
    assert book.update(state, [_rate()], _w(1), now_ms=2) == []  # still open after the restore
    (resolved,) = book.update(state, [], _w(2), now_ms=3, evaluated={_rate().identity: 0.0})
    assert resolved.status == "resolved"


def _valid_doc() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(orjson.dumps(_state_with_data().to_json_dict()))
    return doc


def _alert_doc() -> dict[str, Any]:
    return dict(next(iter(_valid_doc()["open_alerts"].values())))


BAD_STATES: list[Any] = [
    pytest.param([], "must be a JSON object, got list", id="list"),
    pytest.param("state", "must be a JSON object, got str", id="string"),
    pytest.param(None, "must be a JSON object, got NoneType", id="null"),
    pytest.param({**_valid_doc(), "version": 5}, "version 5 is not 4", id="future version"),
    pytest.param({**_valid_doc(), "version": "1"}, "version '1' is not 4", id="version as string"),
    pytest.param({**_valid_doc(), "slo_history": {"k": [1, 0, 5]}}, "pairs", id="slo history odd"),
    pytest.param({**_valid_doc(), "slo_history": {"k": "10"}}, "malformed", id="slo history string"),
    pytest.param({k: v for k, v in _valid_doc().items() if k != "version"}, "version None", id="no version"),
    pytest.param({"version": 1}, "malformed", id="version only"),
    pytest.param({k: v for k, v in _valid_doc().items() if k != "open_alerts"}, "malformed", id="no alerts"),
    pytest.param({**_valid_doc(), "volume_history": [1, 2]}, "malformed", id="history list"),
    pytest.param({**_valid_doc(), "volume_history": {"k": ["x"]}}, "malformed", id="history not numbers"),
    pytest.param({**_valid_doc(), "volume_history": {"k": 5}}, "malformed", id="history not a list"),
    pytest.param({**_valid_doc(), "volume_absent": {"k": "many"}}, "malformed", id="absent not int"),
    pytest.param({**_valid_doc(), "open_alerts": {"k": 3}}, "malformed", id="alert not object"),
    pytest.param(
        {**_valid_doc(), "open_alerts": {"k": {"id": "a-1"}}}, "malformed", id="alert missing fields"
    ),
    pytest.param(
        {**_valid_doc(), "open_alerts": {"k": {k: v for k, v in _alert_doc().items() if k != "threshold"}}},
        "malformed",
        id="alert missing threshold",
    ),
    pytest.param({**_valid_doc(), "last_closed_end": "yesterday"}, "last_closed_end", id="end not int"),
    pytest.param({**_valid_doc(), "last_closed_end": 1.5}, "last_closed_end", id="end float"),
]


@pytest.mark.parametrize(("doc", "fragment"), BAD_STATES)
def test_detector_state_rejects_bad_versions_and_shapes(doc: object, fragment: str) -> None:
    with pytest.raises(StateFormatError, match=re.escape(fragment)):
        DetectorState.from_json_dict(doc)


def test_state_format_error_is_a_value_error() -> None:
    assert issubclass(StateFormatError, ValueError)


def test_detector_state_rejects_string_history() -> None:
    # Regression: the string "12" was loaded as the history [1.0, 2.0].
    with pytest.raises(StateFormatError):
        DetectorState.from_json_dict({**_valid_doc(), "volume_history": {"k": "12"}})
