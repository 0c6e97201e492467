"""Anytime-valid confidence sequences: intervals that may be looked at after every window.

Each comparison is the normal-mixture boundary of Robbins (the mSPRT of Johari et al. 2017 inverted, the
asymptotic confidence sequence of Waudby-Smith et al. 2023 in "intrinsic time" ``V``, the variance of the
estimate): with mixing variance ``tau**2`` the set ``estimate +/- mixture_halfwidth(V, tau, alpha)``
covers the truth at every look simultaneously with probability ``>= 1 - alpha`` (asymptotically). The
canary and shadow verdicts are built on these, so judging every window does not inflate false rollbacks.

>>> est, lo, hi = diff_cs(10, 1000, 10, 1000, tau=0.01, alpha=0.05)
>>> est, lo < 0 < hi
(0.0, True)
"""

from __future__ import annotations

import math

__all__ = ["diff_cs", "mixture_halfwidth", "paired_diff_cs", "ratio_cs"]


def mixture_halfwidth(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence at an estimate's ``variance``.

    >>> round(mixture_halfwidth(1e-4, 0.03, 0.05), 4)
    0.0304
    >>> mixture_halfwidth(1e-4, 0.03, 0.05) > 1.96 * 1e-2  # wider than a fixed-sample interval
    True
    """
    if not variance > 0:
        return 0.0 if variance == 0 else math.inf
    t2 = tau * tau
    return math.sqrt(
        2.0 * variance * (variance + t2) / t2 * math.log(math.sqrt((variance + t2) / variance) / alpha)
    )


def ratio_cs(
    hits_c: float, n_c: float, hits_b: float, n_b: float, tau: float, alpha: float
) -> tuple[float, float, float]:
    """Relative difference ``p_c / p_b - 1`` of two proportions and its anytime-valid bounds.

    >>> est, lo, hi = ratio_cs(970, 10_000, 1000, 10_000, tau=0.03, alpha=0.05)
    >>> round(est, 3), lo < est < hi
    (-0.03, True)
    """
    # Half a success added to each side keeps the log finite when a rate is 0 (Haldane).
    p_c = (hits_c + 0.5) / (n_c + 1.0)
    p_b = (hits_b + 0.5) / (n_b + 1.0)
    log_ratio = math.log(p_c / p_b)
    variance = (1.0 - p_c) / ((n_c + 1.0) * p_c) + (1.0 - p_b) / ((n_b + 1.0) * p_b)
    hw = mixture_halfwidth(variance, tau, alpha)
    est = (hits_c / n_c) / (hits_b / n_b) - 1.0 if hits_b > 0 and n_c > 0 else math.exp(log_ratio) - 1.0
    return est, math.exp(log_ratio - hw) - 1.0, math.exp(log_ratio + hw) - 1.0


def diff_cs(
    hits_c: float, n_c: float, hits_b: float, n_b: float, tau: float, alpha: float
) -> tuple[float, float, float]:
    """Absolute difference ``p_c - p_b`` of two proportions and its anytime-valid bounds.

    The variance uses Agresti-Caffo's one success and one failure added per arm, so a rate of 0 in a
    short run still has a sensible width.

    >>> est, lo, hi = diff_cs(30, 1000, 2, 1000, tau=0.01, alpha=0.05)
    >>> round(est, 3), lo > 0
    (0.028, True)
    """
    p_c = (hits_c + 1.0) / (n_c + 2.0)
    p_b = (hits_b + 1.0) / (n_b + 2.0)
    variance = p_c * (1.0 - p_c) / (n_c + 2.0) + p_b * (1.0 - p_b) / (n_b + 2.0)
    est = hits_c / n_c - hits_b / n_b if n_c > 0 and n_b > 0 else 0.0
    hw = mixture_halfwidth(variance, tau, alpha)
    return est, p_c - p_b - hw, p_c - p_b + hw


def paired_diff_cs(
    only_a: float, only_b: float, n: float, tau: float, alpha: float
) -> tuple[float, float, float]:
    """Difference of two rates measured on the same ``n`` units, ``p_a - p_b``, and its anytime-valid
    bounds, from the discordant counts (``only_a``: units where only a has the event).

    Each unit contributes ``d = a - b`` in {-1, 0, 1}; the variance of the mean is ``(P(d != 0) - est^2) /
    n``, with one discordant unit of each kind added (as Agresti-Caffo do per arm) so that a run without
    any discordant unit still has a width.

    >>> est, lo, hi = paired_diff_cs(0, 0, 5_000, tau=0.005, alpha=0.01)
    >>> est, hi < 0.005
    (0.0, True)
    >>> paired_diff_cs(300, 10, 5_000, tau=0.005, alpha=0.01)[1] > 0.04
    True
    """
    if n <= 0:
        return 0.0, -math.inf, math.inf
    est = (only_a - only_b) / n
    smoothed = (only_a - only_b) / (n + 2.0)
    variance = max((only_a + only_b + 2.0) / (n + 2.0) - smoothed * smoothed, 0.0) / (n + 2.0)
    hw = mixture_halfwidth(variance, tau, alpha)
    return est, smoothed - hw, smoothed + hw
