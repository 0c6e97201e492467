"""Profile maths (core/profile.py) against scipy and hand-computed values, and the hot-path profiler."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from scipy.spatial.distance import jensenshannon

from stream_monitor.core.events import ServingEvent, parse_event
from stream_monitor.core.profile import ItemBuckets, LinearBins, SignedLogBins, ValueCap
from stream_monitor.core.profiler import Profiler
from stream_monitor.core.series import parse_window
from stream_monitor.core.stats.distributions import (
    benjamini_hochberg,
    chi2_sf,
    drift_pvalue,
    gini,
    jensen_shannon,
    linear_count,
    normalised_entropy,
    psi,
    top_share,
    wasserstein,
)
from stream_monitor.core.topology import FeatureRule, FeatureSpec, RankingRule, Topology
from stream_monitor.core.windows import WindowSpec

FINITE = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(FINITE)
def test_linear_bins_put_each_value_in_the_bin_that_covers_it(value: float) -> None:
    bins = LinearBins(-10.0, 10.0, 40)
    b = bins.bin(value)
    assert -1 <= b <= 40
    if -10.0 <= value < 10.0:
        assert -10.0 + b * 0.5 - 1e-9 <= value < -10.0 + (b + 1) * 0.5 + 1e-9  # up to rounding


@given(st.floats(min_value=1e-2, max_value=1e11))
def test_signed_log_bins_bound_the_relative_error(value: float) -> None:
    bins = SignedLogBins(relative_width=0.1)
    for x in (value, -value):
        centre = bins.value_of(bins.bin(x))
        assert math.copysign(1, centre) == math.copysign(1, x)
        assert abs(centre - x) <= 0.1 * abs(x) + 1e-12


def test_bins_reject_bad_parameters() -> None:
    with pytest.raises(ValueError, match="finite lo < hi"):
        LinearBins(1.0, 1.0, 10)
    with pytest.raises(ValueError, match=r"n must be in \[1, 1000\]"):
        LinearBins(0.0, 1.0, 0)
    with pytest.raises(ValueError, match=r"relative_width must be in \(0, 1\)"):
        SignedLogBins(relative_width=1.5)


def _random_hist(rng: random.Random, bins: int) -> dict[int, float]:
    return {b: float(rng.randint(0, 50)) for b in range(bins) if rng.random() < 0.8} or {0: 1.0}


@pytest.mark.parametrize("seed", range(20))
def test_jensen_shannon_matches_scipy(seed: int) -> None:
    rng = random.Random(seed)
    p, q = _random_hist(rng, 12), _random_hist(rng, 12)
    keys = sorted(set(p) | set(q))
    expected = jensenshannon([p.get(k, 0) for k in keys], [q.get(k, 0) for k in keys], base=2) ** 2
    assert jensen_shannon(p, q) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_wasserstein_matches_scipy_on_bin_centres(seed: int) -> None:
    rng = random.Random(seed)
    bins = LinearBins(0.0, 10.0, 10)
    p, q = _random_hist(rng, 10), _random_hist(rng, 10)
    expected = scipy_stats.wasserstein_distance(
        [bins.value_of(b) for b in p], [bins.value_of(b) for b in q], list(p.values()), list(q.values())
    )
    assert wasserstein(p, q, bins.value_of) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_psi_is_the_symmetrised_kl_divergence_without_empty_bins() -> None:
    p, q = {0: 30.0, 1: 50.0, 2: 20.0}, {0: 40.0, 1: 40.0, 2: 20.0}
    exact = sum((p[b] / 100 - q[b] / 100) * math.log(p[b] / q[b]) for b in p)
    assert psi(p, q, pseudo=0.0) == pytest.approx(exact)
    assert psi(p, p) == pytest.approx(0.0)
    # An empty bin on one side stays finite thanks to the pseudo-count.
    assert math.isfinite(psi({0: 100.0}, {1: 100.0}))


@pytest.mark.parametrize(("x", "dof"), [(3.84, 1), (10.0, 5), (30.0, 20), (100.0, 60), (150.0, 99)])
def test_chi2_tail_is_close_to_scipy(x: float, dof: int) -> None:
    expected = scipy_stats.chi2.sf(x, dof)
    assert chi2_sf(x, dof) == pytest.approx(expected, rel=0.1, abs=1e-4)


def test_drift_pvalue_is_calibrated_on_samples_of_one_distribution() -> None:
    # Under "same distribution", p-values are close to uniform: about 5 % fall under 0.05.
    rng = np.random.default_rng(3)
    bins = SignedLogBins(0.1)
    under = 0
    runs = 300
    for _ in range(runs):
        current: dict[int, float] = {}
        reference: dict[int, float] = {}
        for hist, n in ((current, 400), (reference, 4000)):
            for value in rng.lognormal(4.0, 1.0, size=n).tolist():
                b = bins.bin(value)
                hist[b] = hist.get(b, 0) + 1
        under += drift_pvalue(current, reference) < 0.05
    assert 0.0 <= under / runs <= 0.12
    shifted = {b + 3: c for b, c in current.items()}
    assert drift_pvalue(shifted, reference) < 1e-6


def test_benjamini_hochberg_step_up() -> None:
    pvalues = {
        i: p for i, p in enumerate([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    }
    # Classic example: at q = 0.05 the step-up rejects the two smallest only.
    assert benjamini_hochberg(pvalues, 0.05) == {0, 1}
    assert benjamini_hochberg({}, 0.05) == set()
    assert benjamini_hochberg({"a": 0.9}, 0.05) == set()


def test_linear_count_estimates_distinct_items() -> None:
    buckets = ItemBuckets(1024, sample=1)
    for distinct in (50, 500, 2000):
        counts: dict[int, float] = {}
        for i in range(distinct):
            b = buckets.bucket(f"item-{i}")
            counts[b] = counts.get(b, 0) + 3
        assert linear_count(counts, 1024) == pytest.approx(distinct, rel=0.1)
    assert linear_count({i: 1 for i in range(16)}, 16) == math.inf


def test_item_sampling_is_stable_and_close_to_its_rate() -> None:
    a, b = ItemBuckets(256, sample=16), ItemBuckets(256, sample=16)
    ids = [f"title-{i}" for i in range(32_000)]
    kept = [i for i in ids if a.bucket(i) >= 0]
    assert [b.bucket(i) for i in ids] == [a.bucket(i) for i in ids]
    assert len(kept) == pytest.approx(2000, rel=0.1)


def test_concentration_measures() -> None:
    even = {i: 10.0 for i in range(100)}
    assert gini(even, 100) == pytest.approx(0.0)
    assert top_share(even, 10) == pytest.approx(0.1)
    skewed = {0: 900.0, **{i: 1.0 for i in range(1, 101)}}
    assert gini(skewed, 101) > 0.85
    assert top_share(skewed, 1) == pytest.approx(0.9)
    assert normalised_entropy({0: 1.0}, 22) == 0.0
    assert normalised_entropy({i: 1.0 for i in range(22)}, 22) == pytest.approx(1.0)


def test_value_cap_folds_newcomers_and_cleans_separators() -> None:
    cap = ValueCap(max_values=2)
    assert cap.value("c", "a|b#c") == "a_b_c"
    assert cap.value("c", "x") == "x"
    assert cap.value("c", "y") == "other"
    assert cap.value("c", "a|b#c") == "a_b_c"
    assert cap.value("d", "y") == "y"  # per feature


# -- profiler -------------------------------------------------------------------------------------------


def _topology(sample_every: int = 1) -> Topology:
    return Topology(
        "t",
        WindowSpec(60_000),
        features=FeatureRule(
            features=(
                FeatureSpec("watch", range=(0.0, 100.0), bins=10, default=0, max_default_rate=0.5),
                FeatureSpec("country", kind="categorical", default="unknown"),
            ),
            sample_every=sample_every,
            max_values=3,
        ),
        ranking=RankingRule(enabled=True, item_buckets=16, item_sample=1),
    )


def _event(**overrides: object) -> ServingEvent:
    fields: dict[str, object] = {
        "features": {"watch": 12.5, "country": "FR"},
        "items": [{"id": "a", "score": 0.9}, {"id": "b", "score": 0.8}],
    }
    fields.update(overrides)
    request_id = str(fields.pop("request_id", "r"))
    return ServingEvent(request_id, 0, "m", "v", "control", "home", {}, {}, **fields)  # type: ignore[arg-type]


def test_profiler_counts_quality_problems_per_feature() -> None:
    profiler = Profiler(_topology())
    window: dict[str, float] = {}
    for features in (
        {"watch": None, "country": None},  # null
        {},  # missing counts as null
        {"watch": "12", "country": 3.5},  # wrong types
        {"watch": True, "country": ["FR"]},  # a bool is not a number; a list is not a category
        {"watch": 0, "country": "unknown"},  # defaults
    ):
        profiler.add(window, "s#", _event(features=features, items=[]))
    assert window["s#prof"] == 5
    assert window["s#fnull.watch"] == 2 and window["s#fnull.country"] == 2
    assert window["s#fbad.watch"] == 2 and window["s#fbad.country"] == 2
    assert window["s#fdef.watch"] == 1 and window["s#fdef.country"] == 1
    assert window["s#fv.watch.0"] == 1 and window["s#fc.country.unknown"] == 1


def test_profiler_survives_hostile_slates() -> None:
    profiler = Profiler(_topology())
    window: dict[str, float] = {}
    items = [
        "x",
        None,
        7,
        {"id": 3, "score": "high"},
        {"score": True},
        {"id": "a"},
        {"id": "a", "score": 0.5},
    ]
    profiler.add(window, "s#", _event(items=items))
    assert window["s#rk.items"] == 2 and window["s#rk.dup"] == 1
    assert "s#rk.multi" not in window  # one scored item: no constant-slate judgement
    assert window["s#sc.10"] == 1


def test_profiler_skips_fallback_slates_and_samples_requests_by_id() -> None:
    profiler = Profiler(_topology(sample_every=4))
    window: dict[str, float] = {}
    for i in range(400):
        profiler.add(window, "s#", _event(request_id=f"r{i}", fallback=True))
    assert 60 <= window["s#prof"] <= 140  # about one in four
    assert not any(name.startswith(("s#rk.", "s#sc.", "s#it.")) for name in window)
    # The sample is a function of the request ids: another worker (or a replay) picks the same ones.
    again: dict[str, float] = {}
    other = Profiler(_topology(sample_every=4))
    for i in reversed(range(400)):
        other.add(again, "s#", _event(request_id=f"r{i}", fallback=True))
    assert again == window


def test_profiler_counts_inversions_constant_slates_and_score_bins() -> None:
    profiler = Profiler(_topology())
    window: dict[str, float] = {}
    profiler.add(window, "s#", _event(items=[{"id": "a", "score": 0.5}, {"id": "b", "score": 0.5}]))
    profiler.add(window, "s#", _event(items=[{"id": "a", "score": 0.2}, {"id": "b", "score": 0.7}]))
    assert window["s#rk.const"] == 1 and window["s#rk.multi"] == 2
    assert window["s#rk.pairs"] == 2 and window["s#rk.inv"] == 1
    assert window["s#sc.10"] == 2 and window["s#sc.4"] == 1 and window["s#sc.14"] == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=60), st.integers(1, 59))
def test_profiles_merge_exactly_across_batches(choices: list[int], cut: int) -> None:
    # The same events, split into two batches (two workers), sum to the single batch's profile.
    events = [
        _event(
            features={"watch": c * 11.0, "country": "abcdefghij"[c]},
            items=[{"id": f"i{c}", "score": c / 10}, {"id": f"i{c + 1}", "score": c / 20}],
        )
        for c in choices
    ]
    whole: dict[str, float] = {}
    profiler = Profiler(_topology())
    for ev in events:
        profiler.add(whole, "s#", ev)
    parts: list[dict[str, float]] = [{}, {}]
    cut = min(cut, len(events))
    first, second = Profiler(_topology()), Profiler(_topology())
    for ev in events[:cut]:
        first.add(parts[0], "s#", ev)
    for ev in events[cut:]:
        second.add(parts[1], "s#", ev)
    merged: dict[str, float] = {}
    for part in parts:
        for name, value in part.items():
            merged[name] = merged.get(name, 0) + value

    # Categorical caps are per worker, so compare everything but the categorical values exactly, and
    # those by total.
    def split(fields: dict[str, float]) -> tuple[dict[str, float], float]:
        plain = {k: v for k, v in fields.items() if ".fc." not in k and "#fc." not in k}
        return plain, sum(v for k, v in fields.items() if "#fc." in k)

    assert split(merged) == split(whole)


def test_profile_fields_parse_back_into_histograms() -> None:
    raw = (
        b'{"type":"serving","request_id":"r","ts":1764086400000,"model":"m","model_version":"v",'
        b'"arm":"control","surface":"home","segment":{},"latency_ms":{"total":5},'
        b'"features":{"watch":50,"country":"a.b"},"items":[{"id":"x","score":0.3}]}'
    )
    event = parse_event(raw)
    assert isinstance(event, ServingEvent)
    window: dict[str, float] = {}
    Profiler(_topology()).add(window, "m|v|control|home#", event)
    stats, _ = parse_window(window, n_dims=4)
    hists = stats[("m", "v", "control", "home")].hists
    assert hists["fv.watch"] == {"5": 1} and hists["fc.country"] == {"a.b": 1}
    assert hists["sc"] == {"6": 1} and sum(hists["it"].values()) == 1


# -- topology ---------------------------------------------------------------------------------------------


def test_topology_reads_feature_and_ranking_sections() -> None:
    from stream_monitor.topology import load_topology, parse_topology

    topo = parse_topology(
        {
            "name": "x",
            "signals": {
                "features": {
                    "sample_every": 2,
                    "numeric": {
                        "age": {"range": [0, 120], "bins": 12, "default": -1, "max_default_rate": 0.2}
                    },
                    "categorical": {"country": None},
                },
                "ranking": {"score_range": [-5, 5], "top_k": 5},
            },
        }
    )
    age, country = topo.features.features
    assert (age.kind, age.range, age.bins, age.default, age.max_default_rate) == (
        "numeric",
        (0.0, 120.0),
        12,
        -1,
        0.2,
    )
    assert (country.kind, country.range) == ("categorical", None)
    assert topo.features.sample_every == 2
    assert topo.ranking.enabled and topo.ranking.score_range == (-5.0, 5.0) and topo.ranking.top_k == 5
    assert not parse_topology({"name": "y"}).ranking.enabled  # off unless declared
    default = load_topology()
    assert {f.name for f in default.features.features} == {"watch_minutes_7d", "days_since_signup", "country"}
    assert default.ranking.enabled


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"numeric": {"a.b": {}}}, "must be non-empty without '.'"),
        ({"numeric": {"a": {"range": [1]}}}, r"signals.features.numeric.a.range: expected \[low, high\]"),
        ({"numeric": {"a": {"colour": 1}}}, r"signals.features.numeric.a: unknown keys \['colour'\]"),
        ({"numeric": ["a"]}, "signals.features.numeric: expected a mapping"),
        ({"reference": "yesterday"}, "reference must be trailing, previous_version or pinned"),
        ({"fdr": 2}, r"fdr must be in \(0, 1\)"),
        ({"sample_every": 0}, "sample_every must be >= 1"),
    ],
)
def test_topology_rejects_bad_feature_specs(features: dict[str, object], message: str) -> None:
    from stream_monitor.topology import TopologyError, parse_topology

    with pytest.raises(TopologyError, match=message):
        parse_topology({"name": "x", "signals": {"features": features}})
