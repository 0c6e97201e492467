"""CalibratedDetector and its TailCalibrator: scores that rank, calibrate, know seasons and re-learn.

The contract every detector keeps (unit interval, warm-up, determinism, state round trip) is in
test_detectors.py; these are the behaviours this detector is for.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from stream_monitor.core.detectors import DEFAULT_THRESHOLD, CalibratedDetector, load_detector
from stream_monitor.core.detectors.calibrated import periods_for_interval
from stream_monitor.core.stats.tail import TailCalibrator

pytestmark = pytest.mark.unit

DAY = 288  # five-minute rows


def _scores(values: list[float], **kwargs: object) -> list[float]:
    detector = CalibratedDetector(**kwargs)  # type: ignore[arg-type]
    return [detector.update(v) for v in values]


def _alerts(scores: list[float], start: int = 0, stop: int | None = None) -> list[int]:
    return [i for i, s in enumerate(scores[start:stop], start) if s >= DEFAULT_THRESHOLD]


def _sine_days(days: int, noise: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [50 + 20 * math.sin(2 * math.pi * i / DAY) + rng.gauss(0, noise) for i in range(days * DAY)]


def _square_days(days: int, noise: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [20 + 60 * (DAY // 3 <= i % DAY < 2 * DAY // 3) + rng.gauss(0, noise) for i in range(days * DAY)]


# -- the score ranks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_scores_of_a_noisy_clean_series_are_continuous(seed: int) -> None:
    rng = random.Random(seed)
    scores = _scores([100 + rng.gauss(0, 5) for _ in range(3000)])
    _, most_shared = Counter(scores).most_common(1)[0]
    assert most_shared < 0.05 * len(scores)  # the warm-up's zeros are the only value that repeats
    assert _alerts(scores) == []


def test_scores_rank_injected_anomalies_above_clean_points() -> None:
    rng = random.Random(7)
    values = [100 + rng.gauss(0, 5) for _ in range(3000)]
    injected = list(range(600, 3000, 300))
    for i in injected:
        values[i] += 50  # ten sigmas
    scores = _scores(values)
    clean = sorted(s for i, s in enumerate(scores) if i not in injected and i >= 100)
    assert min(scores[i] for i in injected) > clean[-1]
    assert _alerts(scores, 100) == injected


def test_the_score_rises_with_the_evidence() -> None:
    rng = random.Random(3)
    history = [10 + rng.gauss(0, 1) for _ in range(800)]
    by_size = []
    for sigmas in (3, 5, 7, 9):
        detector = CalibratedDetector()
        for value in history:
            detector.update(value)
        by_size.append(detector.update(10 + sigmas))
    assert by_size == sorted(by_size) and len(set(by_size)) == 4
    assert by_size[0] < DEFAULT_THRESHOLD < by_size[-1]


# -- seasons ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [_sine_days, _square_days])
@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_a_daily_cycle_is_not_an_anomaly_after_its_first_two_cycles(shape, noise) -> None:  # type: ignore[no-untyped-def]
    values = shape(10, noise, seed=1)
    detector = CalibratedDetector(periods=periods_for_interval(300.0))
    scores = [detector.update(v) for v in values]
    assert _alerts(scores, 2 * DAY) == []
    assert detector.period == DAY


@pytest.mark.parametrize("seed", range(3))
def test_a_flattened_day_is_an_anomaly(seed: int) -> None:
    values = _sine_days(12, 1.0, seed)
    rng = random.Random(seed)
    flat = range(8 * DAY, 9 * DAY)
    for i in flat:
        values[i] = 50 + rng.gauss(0, 1)
    scores = _scores(values, periods=(DAY,))
    assert _alerts(scores, 2 * DAY, flat.start) == []
    assert any(s >= DEFAULT_THRESHOLD for s in scores[flat.start : flat.start + DAY // 3])


def test_a_series_without_a_cycle_does_not_use_one() -> None:
    rng = random.Random(4)
    detector = CalibratedDetector(periods=(DAY,))
    for _ in range(5 * DAY):
        detector.update(100 + rng.gauss(0, 5))
    assert detector.period is None


# -- what recurs, and what lasts ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_routine_spikes_become_expected_and_a_new_fault_still_shows(seed: int) -> None:
    rng = random.Random(seed)
    values = [30 + rng.gauss(0, 3) if rng.random() > 0.024 else 100.0 for _ in range(4000)]
    for i in range(3000, 3100):
        values[i] += 25  # a lasting rise among the routine spikes
    scores = _scores(values)
    assert len(_alerts(scores, 600, 3000)) <= 2  # about 60 spikes in those rows
    assert _alerts(scores, 3000, 3010)


@pytest.mark.parametrize("seed", range(5))
def test_a_level_shift_alerts_early_then_the_baseline_relearns(seed: int) -> None:
    rng = random.Random(seed)
    values = [10 + rng.gauss(0, 1) for _ in range(1600)]
    for i in range(1000, 1600):
        values[i] += 6
    scores = _scores(values)
    alerts = _alerts(scores, 100)
    assert alerts and alerts[0] <= 1002
    assert all(i < 1015 for i in alerts)  # then the new level is the normal one


def test_a_relearnt_level_survives_a_state_round_trip() -> None:
    rng = random.Random(9)
    detector = CalibratedDetector(periods=(24,))
    for i in range(500):
        detector.update(10 + 5 * math.sin(2 * math.pi * i / 24) + rng.gauss(0, 0.5) + (8 if i > 400 else 0))
    restored = load_detector(detector.to_state())
    assert isinstance(restored, CalibratedDetector) and restored.period == detector.period
    tail = [10 + rng.gauss(0, 0.5) for _ in range(50)]
    assert [restored.update(v) for v in tail] == [detector.update(v) for v in tail]


def test_periods_follow_the_interval() -> None:
    assert periods_for_interval(300.0) == (288, 2016)
    assert periods_for_interval(3600.0) == (24, 168)
    assert periods_for_interval(7.0) == ()  # a day is not a whole number of 7 s rows
    assert periods_for_interval(math.nan) == ()


# -- the calibrator ----------------------------------------------------------------------------------------


def test_tail_probabilities_are_calibrated_on_the_body_and_conservative_in_the_tail() -> None:
    rng = random.Random(11)
    calibrator = TailCalibrator(size=2000)
    below: Counter[float] = Counter()
    trials = 20_000
    for _ in range(trials):
        value = rng.gauss(0, 1)
        p = calibrator.survival(value)
        if p is not None:
            for level in (0.1, 0.01, 0.001):
                below[level] += p <= level
        calibrator.add(value)
    assert below[0.1] / trials == pytest.approx(0.1, abs=0.015)
    assert below[0.01] / trials == pytest.approx(0.01, abs=0.004)
    assert below[0.001] / trials <= 0.002  # the exponential tail overstates a normal tail's probability


def test_tail_survival_is_monotone_and_continuous() -> None:
    calibrator = TailCalibrator(size=500)
    rng = random.Random(2)
    calibrator.extend(rng.expovariate(1.0) for _ in range(500))
    grid = [i / 100 for i in range(0, 1500)]
    survival = [calibrator.survival(x) for x in grid]
    assert all(a is not None and b is not None and a >= b for a, b in itertools.pairwise(survival))
    steps = [a - b for a, b in itertools.pairwise(survival)]  # type: ignore[operator]
    assert max(steps) < 0.02  # no jump at the threshold between the body and the fitted tail


def test_a_capped_outlier_does_not_stretch_the_tail_it_is_judged_against() -> None:
    rng = random.Random(5)
    plain, capped = TailCalibrator(), TailCalibrator()
    for _ in range(200):
        value = rng.gauss(0, 1)
        plain.add(value)
        capped.add(value, cap=1e-3)
    plain.add(50.0)
    capped.add(50.0, cap=1e-3)
    assert capped.survival(8.0) < plain.survival(8.0) / 100  # type: ignore[operator]
