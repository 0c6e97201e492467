"""Properties of the shared statistics that every signal and verdict leans on."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from stream_monitor.core.stats.proportions import (
    clopper_pearson,
    poisson_cdf,
    wilson_lower_bound,
    wilson_upper_bound,
)
from stream_monitor.core.stats.ranks import mann_whitney, quantile_bounds
from stream_monitor.core.stats.sequential import diff_cs, paired_diff_cs, ratio_cs


@pytest.mark.parametrize(("k", "n"), [(k, n) for n in (1, 2, 5, 30, 1000) for k in sorted({0, 1, n // 2, n})])
def test_rate_bounds_hold_the_observed_rate_and_stay_in_the_unit_interval(k: int, n: int) -> None:
    lo, hi = wilson_lower_bound(k, n, 2.326), wilson_upper_bound(k, n, 2.326)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    cp_lo, cp_hi = clopper_pearson(k, n, 0.98)
    assert 0.0 <= cp_lo <= k / n <= cp_hi <= 1.0


def test_wilson_bounds_tighten_with_more_trials_and_widen_with_more_confidence() -> None:
    assert wilson_lower_bound(10, 100, 2.326) < wilson_lower_bound(100, 1000, 2.326)
    assert wilson_lower_bound(10, 100, 3.09) < wilson_lower_bound(10, 100, 2.326)


def test_no_trials_bounds_nothing() -> None:
    assert (wilson_lower_bound(0, 0, 2.0), wilson_upper_bound(0, 0, 2.0)) == (0.0, 1.0)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def _miss_probability(bound: Callable[[int], float], n: int, p: float, above: bool) -> float:
    """Exact probability, over Binomial(n, p), that a bound lands on the wrong side of p."""
    return sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k)
        for k in range(n + 1)
        if (bound(k) > p if above else bound(k) < p)
    )


@pytest.mark.parametrize("p", [0.01, 0.02, 0.05, 0.1, 0.3, 0.5])
def test_the_wilson_lower_bound_keeps_near_its_confidence_at_a_hundred_trials(p: float) -> None:
    """One-sided 99 % (z = 2.326): the bound is above the truth about 1 % of the time (never 2.5 %).

    At 20 trials it is not: p = 0.02 is missed 6 % of the time (2 hits of 20 already clear it), which
    is why small-count callers must not read it as exact."""
    assert _miss_probability(lambda k: wilson_lower_bound(k, 100, 2.326), 100, p, above=True) < 0.025


@pytest.mark.parametrize("n", [5, 20, 100])
@pytest.mark.parametrize("p", [0.01, 0.02, 0.05, 0.3])
def test_clopper_pearson_is_conservative_at_any_count(n: int, p: float) -> None:
    lower = _miss_probability(lambda k: clopper_pearson(k, n, 0.98)[0], n, p, above=True)
    upper = _miss_probability(lambda k: clopper_pearson(k, n, 0.98)[1], n, p, above=False)
    assert lower <= 0.01 + 1e-9 and upper <= 0.01 + 1e-9


def test_comparisons_of_equal_arms_are_centred_on_no_difference() -> None:
    for cs in (ratio_cs, diff_cs):
        est, lo, hi = cs(50, 1000, 50, 1000, 0.03, 0.05)
        assert est == pytest.approx(0.0) and lo < 0 < hi
    est, lo, hi = paired_diff_cs(20, 20, 1000, 0.01, 0.05)
    assert est == 0.0 and lo < 0 < hi


def test_mann_whitney_is_antisymmetric() -> None:
    a, b = {1.0: 3, 2.0: 5, 4.0: 1}, {2.0: 2, 3.0: 4}
    ab, ba = mann_whitney(a, b), mann_whitney(b, a)
    assert ab.theta + ba.theta == pytest.approx(1.0)
    assert ab.p_value == pytest.approx(ba.p_value)


def test_quantile_bounds_bracket_the_quantile() -> None:
    counts = {float(v): 1.0 for v in range(1, 101)}
    for q in (0.1, 0.5, 0.9):
        est, lo, hi = quantile_bounds(counts, q, 1.96)
        assert lo <= est <= hi
        assert est == pytest.approx(q * 100, abs=1)


def test_every_pair_of_tiny_samples_gives_a_valid_p_value() -> None:
    for a, b in itertools.product(range(3), repeat=2):
        mw = mann_whitney({1.0: a, 2.0: 1}, {1.0: b})
        assert 0.0 <= mw.p_value <= 1.0


@pytest.mark.parametrize(
    ("count", "mean"),
    [(0, 10), (2, 10), (9, 20), (150, 180), (200, 260), (201, 260), (400, 500), (5000, 5600)],
)
def test_the_poisson_tail_matches_scipy_exact_and_approximated(count: int, mean: float) -> None:
    poisson = pytest.importorskip("scipy.stats").poisson
    # Exact up to 200; Wilson-Hilferty above it, within a few percent of the (tiny) tail probability.
    assert poisson_cdf(count, mean) == pytest.approx(
        poisson.cdf(count, mean), rel=1e-9 if count <= 200 else 0.05
    )
