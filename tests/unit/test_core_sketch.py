"""The mergeable quantile sketch (stream_monitor.core.sketch.LogBuckets).

``quantile`` reads back the value of rank ``floor(q * (n - 1))`` (0-based, no interpolation), so the
reference here is that nearest-rank order statistic of the raw sample, not numpy's interpolated quantile;
the estimate must be within ``relative_accuracy`` of it.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.sketch import ZERO_BUCKET, LogBuckets

pytestmark = pytest.mark.unit

HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=200)
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
# Floating-point slack on top of the relative accuracy (log/ceil at bucket edges).
EPS = 1e-9


def _counts(lb: LogBuckets, values: np.ndarray | list[float]) -> dict[int, int]:
    return dict(Counter(lb.bucket(float(v)) for v in values))


def _nearest_rank(values: np.ndarray | list[float], q: float) -> float:
    """The order statistic quantile() targets: 0-based rank floor(q * (n - 1))."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return float(ordered[math.floor(q * (len(ordered) - 1))])


def _within(estimate: float, truth: float, accuracy: float) -> bool:
    return abs(estimate - truth) <= (accuracy + EPS) * abs(truth)


# -- accuracy against numpy -----------------------------------------------------------------------------


@pytest.mark.parametrize("accuracy", [0.005, 0.01, 0.02, 0.05])
@pytest.mark.parametrize(
    ("seed", "mean", "sigma", "n"), [(1, 3.0, 0.5, 2_000), (2, 4.5, 1.2, 10_000), (3, 0.0, 2.0, 501)]
)
def test_quantiles_within_relative_accuracy_of_numpy(
    accuracy: float, seed: int, mean: float, sigma: float, n: int
) -> None:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=mean, sigma=sigma, size=n)
    lb = LogBuckets(relative_accuracy=accuracy)
    counts = _counts(lb, values)
    for q in QUANTILES:
        truth = float(np.quantile(values, q, method="lower"))
        assert truth == _nearest_rank(values, q)  # numpy's "lower" is exactly the nearest rank targeted
        estimate = lb.quantile(counts, q)
        assert _within(estimate, truth, accuracy), (q, estimate, truth)


def test_quantile_rank_discretisation_is_lower_nearest_rank() -> None:
    lb = LogBuckets(relative_accuracy=0.001)
    values = [10.0, 20.0, 30.0, 40.0]  # far apart: every value has its own bucket
    counts = _counts(lb, values)
    # rank q*(n-1) = 1.5 for the median: the sketch answers the lower neighbour (20), not 25.
    assert lb.quantile(counts, 0.5) == pytest.approx(20.0, rel=0.001)
    assert lb.quantile(counts, 0.0) == pytest.approx(10.0, rel=0.001)
    assert lb.quantile(counts, 1.0) == pytest.approx(40.0, rel=0.001)
    assert lb.quantile(counts, 0.99) == pytest.approx(30.0, rel=0.001)  # rank 2.97 -> 30


@HYPOTHESIS
@given(
    values=st.lists(st.floats(min_value=0.01, max_value=1e7), min_size=1, max_size=300),
    q=st.floats(min_value=0.0, max_value=1.0),
    accuracy=st.sampled_from([0.001, 0.01, 0.02, 0.1, 0.3]),
)
def test_quantile_relative_error_bound_on_any_positive_sample(
    values: list[float], q: float, accuracy: float
) -> None:
    lb = LogBuckets(relative_accuracy=accuracy)
    estimate = lb.quantile(_counts(lb, values), q)
    assert _within(estimate, _nearest_rank(values, q), accuracy)


@HYPOTHESIS
@given(value=st.floats(min_value=1.001e-3, max_value=1e12), accuracy=st.floats(min_value=1e-4, max_value=0.9))
def test_bucket_value_round_trip(value: float, accuracy: float) -> None:
    lb = LogBuckets(relative_accuracy=accuracy)
    assert _within(lb.value_of(lb.bucket(value)), value, accuracy)


def test_gamma_and_bucket_boundaries() -> None:
    lb = LogBuckets(relative_accuracy=0.02)
    assert lb.gamma == pytest.approx(1.02 / 0.98)
    # Bucket k holds (gamma^(k-1), gamma^k]: monotone in the value.
    previous = None
    for v in np.geomspace(0.01, 1e6, 500):
        b = lb.bucket(float(v))
        assert previous is None or b >= previous
        previous = b
    assert lb.bucket(1.0) == 0


def test_quantile_of_empty_counts_is_nan() -> None:
    lb = LogBuckets()
    assert math.isnan(lb.quantile({}, 0.5))
    assert math.isnan(lb.quantile({3: 0}, 0.99))


def test_quantile_accepts_float_counts() -> None:
    lb = LogBuckets()
    b = lb.bucket(100.0)
    assert lb.quantile({b: 2.0}, 0.5) == lb.value_of(b)


# -- zero bucket ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -0.0, -1.0, -1e9, 1e-3, 5e-4, 1e-300])
def test_zero_and_negative_values_go_to_the_zero_bucket(value: float) -> None:
    lb = LogBuckets()
    assert lb.bucket(value) == ZERO_BUCKET
    assert lb.value_of(ZERO_BUCKET) == 0.0


def test_just_above_min_value_is_a_regular_bucket() -> None:
    lb = LogBuckets(min_value=1e-3)
    assert lb.bucket(1.01e-3) != ZERO_BUCKET
    assert LogBuckets(min_value=10.0).bucket(5.0) == ZERO_BUCKET


def test_zero_bucket_sorts_first_in_quantiles() -> None:
    lb = LogBuckets()
    counts = _counts(lb, [0.0, 0.0, 0.0, 50.0])
    assert counts[ZERO_BUCKET] == 3
    assert lb.quantile(counts, 0.0) == 0.0
    assert lb.quantile(counts, 0.5) == 0.0
    assert lb.quantile(counts, 1.0) == pytest.approx(50.0, rel=lb.relative_accuracy)


# -- merge ----------------------------------------------------------------------------------------------

sketches = st.dictionaries(
    st.one_of(st.just(ZERO_BUCKET), st.integers(min_value=-500, max_value=500)),
    st.integers(min_value=0, max_value=10**6),
    max_size=20,
)


@HYPOTHESIS
@given(a=sketches, b=sketches)
def test_merge_is_commutative(a: dict[int, int], b: dict[int, int]) -> None:
    assert LogBuckets.merge([a, b]) == LogBuckets.merge([b, a])


@HYPOTHESIS
@given(a=sketches, b=sketches, c=sketches)
def test_merge_is_associative(a: dict[int, int], b: dict[int, int], c: dict[int, int]) -> None:
    left = LogBuckets.merge([LogBuckets.merge([a, b]), c])
    right = LogBuckets.merge([a, LogBuckets.merge([b, c])])
    assert left == right == LogBuckets.merge([a, b, c])


@HYPOTHESIS
@given(a=sketches)
def test_merge_identity_and_inputs_untouched(a: dict[int, int]) -> None:
    before = dict(a)
    assert LogBuckets.merge([a, {}]) == a
    assert LogBuckets.merge([]) == {}
    assert a == before


@HYPOTHESIS
@given(
    parts=st.lists(st.lists(st.floats(min_value=0.0, max_value=1e5), max_size=50), min_size=1, max_size=6),
    q=st.floats(min_value=0.0, max_value=1.0),
)
def test_merged_sketch_equals_sketch_of_all_values(parts: list[list[float]], q: float) -> None:
    lb = LogBuckets()
    merged = LogBuckets.merge(_counts(lb, p) for p in parts)
    whole = _counts(lb, [v for p in parts for v in p])
    assert merged == whole
    if whole:
        assert lb.quantile(merged, q) == lb.quantile(whole, q)


# -- invalid arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("accuracy", [0.0, 1.0, -0.02, 1.5, math.nan, math.inf])
def test_invalid_relative_accuracy(accuracy: float) -> None:
    with pytest.raises(ValueError, match=r"relative_accuracy must be in \(0, 1\), got") as info:
        LogBuckets(relative_accuracy=accuracy)
    assert repr(accuracy) in str(info.value) or str(accuracy) in str(info.value)


@pytest.mark.parametrize("q", [-0.01, 1.01, 99.0, math.nan])
def test_invalid_quantile(q: float) -> None:
    lb = LogBuckets()
    with pytest.raises(ValueError, match=r"quantile must be in \[0, 1\], got") as info:
        lb.quantile({lb.bucket(1.0): 1}, q)
    assert str(q) in str(info.value)


def test_invalid_quantile_is_rejected_even_when_empty() -> None:
    with pytest.raises(ValueError, match="quantile"):
        LogBuckets().quantile({}, 2.0)
