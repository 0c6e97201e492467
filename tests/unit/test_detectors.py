"""Series detectors (stream_monitor.core.detectors): one contract for every implementation, then behaviour.

The contract: scores in [0, 1], exactly 0 during the warm-up, deterministic, no look-ahead, a JSON state
round trip that continues identically, and precise errors for states of another version or shape.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from stream_monitor.core.alerts import StateFormatError
from stream_monitor.core.detectors import (
    DEFAULT_THRESHOLD,
    DETECTOR_STATE_VERSION,
    CalibratedDetector,
    DetectorStateError,
    EnsembleDetector,
    RiverDrift,
    RobustBaseline,
    SeriesDetector,
    default_detector,
    load_detector,
)
from stream_monitor.core.stats.robust import robust_location_scale

pytestmark = pytest.mark.unit

Factory = Callable[[], SeriesDetector]

# Every implementation, in the configurations that matter (seasonal baseline, both river methods, one-sided).
IMPLEMENTATIONS: dict[str, Factory] = {
    "robust_baseline": RobustBaseline,
    "robust_baseline_up": lambda: RobustBaseline(side="up", window=30, min_history=10),
    "robust_baseline_seasonal": lambda: RobustBaseline(period=12, cycles=3, min_cycles=2),
    "river_adwin": lambda: RiverDrift("adwin"),
    "river_page_hinkley": lambda: RiverDrift("page_hinkley", params={"threshold": 10.0}),
    "river_page_hinkley_raw_down": lambda: RiverDrift("page_hinkley", side="down", standardize=False),
    "ensemble_default": default_detector,
    "calibrated": CalibratedDetector,
    "calibrated_seasonal_up": lambda: CalibratedDetector(side="up", periods=(24,), min_history=20),
    "ensemble_custom": lambda: EnsembleDetector(
        [RobustBaseline(window=10, min_history=5), RiverDrift("adwin")]
    ),
}


def _series(seed: int, n: int = 400) -> list[float]:
    """Noise around 100 with a wave, spikes, a level shift and a drop: something for every member."""
    rng = random.Random(seed)
    values = []
    for i in range(n):
        value = 100 + 5 * math.sin(i / 10) + rng.gauss(0, 2)
        if i % 97 == 50:
            value += 40  # spike
        if i >= 250:
            value += 15  # level shift
        if 330 <= i < 340:
            value = 20.0  # drop
        values.append(value)
    return values


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return IMPLEMENTATIONS[request.param]


# -- contract ---------------------------------------------------------------------------------------------


def test_scores_are_in_unit_interval(factory: Factory) -> None:
    det = factory()
    scores = [det.update(v) for v in _series(1)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) > 0.5  # the spikes, shift and drop are noticed by every configuration


def test_warm_up_is_neutral_whatever_the_values(factory: Factory) -> None:
    det = factory()
    wild = [1e9 if i % 2 else -1e9 for i in range(det.warmup)]
    assert [det.update(v) for v in wild] == [0.0] * det.warmup


def test_deterministic_and_no_look_ahead(factory: Factory) -> None:
    values = _series(2)
    a, b = factory(), factory()
    first = [a.update(v) for v in values]
    assert first == [b.update(v) for v in values]
    # Scores of a prefix do not depend on what comes after it.
    c = factory()
    altered = values[:200] + [v * 3 for v in values[200:]]
    assert [c.update(v) for v in altered][:200] == first[:200]


def test_state_round_trip_continues_identically(factory: Factory) -> None:
    values = _series(3)
    original = factory()
    # 300 values: within RiverDrift's replay bound (1000), where restoring is exact.
    for v in values[:300]:
        original.update(v)
    state = original.to_state()
    text = json.dumps(state, allow_nan=False)  # JSON-safe: no NaN, no objects
    restored = load_detector(json.loads(text))
    assert type(restored) is type(original)
    assert type(original).from_state(json.loads(text)).to_state() == state
    assert [restored.update(v) for v in values[300:]] == [original.update(v) for v in values[300:]]
    assert restored.to_state() == original.to_state()


def test_state_of_another_version_is_refused_precisely(factory: Factory) -> None:
    det = factory()
    for v in _series(4)[:50]:
        det.update(v)
    state = det.to_state()
    kind = state["kind"]
    for bad in (DETECTOR_STATE_VERSION + 1, 0, "1", True, None):
        doc = {**state, "version": bad}
        message = f"{kind} state version {bad!r} is not {DETECTOR_STATE_VERSION}"
        with pytest.raises(DetectorStateError, match=f"^{re.escape(message)}$"):
            type(det).from_state(doc)
        with pytest.raises(DetectorStateError, match=f"^{re.escape(message)}$"):
            load_detector(doc)


def test_state_errors_are_state_format_errors(factory: Factory) -> None:
    det = factory()
    state = det.to_state()
    with pytest.raises(StateFormatError, match="must be a JSON object, got list"):
        type(det).from_state([state])  # type: ignore[arg-type]
    with pytest.raises(DetectorStateError, match=r"state has kind 'other'"):
        type(det).from_state({**state, "kind": "other"})
    some_field = next(k for k in state if k not in ("kind", "version"))
    with pytest.raises(DetectorStateError, match=rf"state lacks \['{some_field}'\]"):
        type(det).from_state({k: v for k, v in state.items() if k != some_field})


def test_non_finite_input_is_refused(factory: Factory) -> None:
    det = factory()
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            det.update(bad)


# -- state shape checks -------------------------------------------------------------------------------------


def _robust_state() -> dict[str, Any]:
    det = RobustBaseline(window=10, min_history=5)
    for v in range(12):
        det.update(float(v))
    return det.to_state()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"window": 2}}, "robust_baseline state params are invalid: need window >= 3"),
        ({"params": {"colour": "red"}}, "robust_baseline state params are invalid: "),
        ({"params": ["window", 10]}, "robust_baseline state params must be a JSON object"),
        ({"values": [1.0, "2"]}, "robust_baseline state values must be a list of finite numbers"),
        ({"values": [1.0, None]}, "robust_baseline state values must be a list of finite numbers"),
        ({"residuals": {}}, "robust_baseline state residuals must be a list of finite numbers"),
        ({"values": [1.0] * 11}, "robust_baseline state holds more history than its params allow"),
        ({"seen": -1}, "robust_baseline state seen must be a non-negative integer, got -1"),
        ({"seen": True}, "robust_baseline state seen must be a non-negative integer, got True"),
        ({"seen": 3}, "robust_baseline state seen=3 is less than its 10 values"),
    ],
)
def test_robust_baseline_state_shape_errors(change: dict[str, Any], message: str) -> None:
    state = {**_robust_state(), **change}
    with pytest.raises(DetectorStateError, match=f"^{re.escape(message)}"):
        RobustBaseline.from_state(state)


def test_river_state_refuses_unknown_params_and_oversized_replay() -> None:
    state = RiverDrift("adwin", window=60, lag=0, replay=100).to_state()
    with pytest.raises(DetectorStateError, match=r"unknown adwin params \['threshold'\]"):
        RiverDrift.from_state({**state, "params": {**state["params"], "params": {"threshold": 3}}})
    with pytest.raises(DetectorStateError, match="must be a finite number"):
        RiverDrift.from_state({**state, "params": {**state["params"], "params": {"delta": "0.1"}}})
    with pytest.raises(DetectorStateError, match="holds 101 inputs for seen=101 and replay=100"):
        RiverDrift.from_state({**state, "inputs": [1.0] * 101, "seen": 101})


def test_ensemble_state_errors() -> None:
    with pytest.raises(DetectorStateError, match="ensemble state members must be a non-empty list"):
        EnsembleDetector.from_state({"kind": "ensemble", "version": 1, "members": []})
    with pytest.raises(DetectorStateError, match="unknown detector kind 'pickle'"):
        EnsembleDetector.from_state({"kind": "ensemble", "version": 1, "members": [{"kind": "pickle"}]})


def test_river_state_beyond_the_replay_bound_restores_a_younger_detector() -> None:
    # Documented bound: past `replay` inputs the restored detector is the one that started `replay` ago.
    values = _series(5)
    original = RiverDrift("page_hinkley", window=60, lag=0, replay=100)
    for v in values[:300]:
        original.update(v)
    restored = RiverDrift.from_state(original.to_state())
    assert restored.seen == original.seen == 300
    younger = RiverDrift("page_hinkley", window=60, lag=0, replay=100)
    for v in values[200:300]:
        younger.update(v)
    assert [restored.update(v) for v in values[300:]] == [younger.update(v) for v in values[300:]]


# -- behaviour ---------------------------------------------------------------------------------------------


def _noise(seed: int, n: int, sigma: float = 1.0, level: float = 100.0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0, sigma) for _ in range(n)]


@pytest.mark.parametrize("make", [RobustBaseline, default_detector], ids=["robust_baseline", "default"])
@pytest.mark.parametrize("seed", range(5))
def test_level_shift_of_five_mad_scores_above_0_9_within_a_few_points(make: Factory, seed: int) -> None:
    history = _noise(seed, 100)
    # "MAD" is the consistently scaled MAD (1.4826 x the raw median absolute deviation, as R's mad()).
    _, mad = robust_location_scale(history[-60:])
    det = make()
    for v in history:
        det.update(v)
    shifted = [v + 5 * mad for v in _noise(seed + 100, 5)]
    assert max(det.update(v) for v in shifted) > 0.9


@pytest.mark.parametrize("make", [RobustBaseline, default_detector], ids=["robust_baseline", "default"])
def test_white_noise_rarely_reaches_the_threshold(make: Factory) -> None:
    flagged = 0
    for seed in range(4):
        det = make()
        flagged += sum(det.update(v) >= DEFAULT_THRESHOLD for v in _noise(seed, 5_000))
    assert flagged <= 4  # 20,000 points: at most 1 in 5,000


def test_side_up_ignores_drops_and_down_ignores_rises() -> None:
    up, down = RobustBaseline(side="up"), RobustBaseline(side="down")
    for v in _noise(1, 60):
        up.update(v)
        down.update(v)
    assert up.update(50.0) == 0.0 and down.update(50.0) > 0.99
    assert up.update(150.0) > 0.99 and down.update(150.0) == 0.0


def test_constant_series_does_not_divide_by_zero() -> None:
    det = RobustBaseline()
    assert [det.update(7.0) for _ in range(100)] == [0.0] * 100
    assert det.update(7.0001) == 0.0  # within the 0.1 % relative scale floor
    assert det.update(8.0) > 0.99


def test_sparse_series_uses_the_mean_deviation_when_the_mad_is_zero() -> None:
    # More than half zeros: the MAD is 0, the mean absolute deviation keeps an occasional 1 unremarkable.
    det = RobustBaseline()
    rng = random.Random(3)
    values = [float(rng.random() < 0.3) for _ in range(300)]
    scores = [det.update(v) for v in values]
    assert max(scores) < DEFAULT_THRESHOLD


def test_seasonal_baseline_sees_a_value_that_is_only_wrong_for_its_phase() -> None:
    period = 24
    rng = random.Random(4)
    wave = [100 + 30 * math.sin(2 * math.pi * i / period) + rng.gauss(0, 1) for i in range(24 * 8)]
    seasonal, plain = RobustBaseline(period=period, window=48), RobustBaseline(window=48)
    for v in wave:
        seasonal.update(v)
        plain.update(v)
    # The next point's phase expects 100; 128 is normal for the wave overall but not at this phase.
    assert seasonal.update(128.0) > 0.99
    assert plain.update(128.0) == 0.0


def test_page_hinkley_catches_a_sustained_shift_too_small_for_the_baseline() -> None:
    baseline, drift = RobustBaseline(), RiverDrift("page_hinkley", params={"threshold": 25.0, "delta": 0.5})
    values = _noise(6, 200) + _noise(7, 40, level=102.5)  # +2.5 sigma, held
    base_scores = [baseline.update(v) for v in values]
    drift_scores = [drift.update(v) for v in values]
    assert max(base_scores[200:]) < DEFAULT_THRESHOLD
    assert max(drift_scores[:200]) == 0.0
    assert 1.0 in drift_scores[200:]


def test_adwin_side_filters_the_direction_of_the_change() -> None:
    values = _noise(8, 300) + _noise(9, 200, level=104.0)
    up, down = RiverDrift("adwin", side="up"), RiverDrift("adwin", side="down")
    assert 1.0 in [up.update(v) for v in values][300:]
    assert 1.0 not in [down.update(v) for v in values][300:]


def test_ensemble_is_the_max_of_its_members() -> None:
    members: list[SeriesDetector] = [RobustBaseline(), RiverDrift("page_hinkley")]
    twins: list[SeriesDetector] = [RobustBaseline(), RiverDrift("page_hinkley")]
    ensemble = EnsembleDetector(members)
    for v in _series(9):
        assert ensemble.update(v) == max(m.update(v) for m in twins)


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="side must be one of"):
        RobustBaseline(side="sideways")
    with pytest.raises(ValueError, match="need k >= 0 and softness > 0"):
        RobustBaseline(softness=0)
    with pytest.raises(ValueError, match="method must be one of"):
        RiverDrift("kswin")
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleDetector([])


def test_drift_detector_does_not_report_the_reference_catching_up_after_a_recovery() -> None:
    # A drop, held long enough for the reference to adapt, then a recovery: a "down" detector may fire
    # during the drop, never after the recovery (when the z-scores fall back from positive to 0).
    values = _noise(10, 200) + _noise(11, 150, level=96.0) + _noise(12, 200)
    det = RiverDrift("page_hinkley", side="down", params={"threshold": 20.0, "delta": 0.5})
    scores = [det.update(v) for v in values]
    assert 1.0 in scores[200:350]
    assert 1.0 not in scores[350:]


# -- sampling noise (part of the contract) ------------------------------------------------------------------


def test_noise_must_be_a_finite_non_negative_standard_error(factory: Factory) -> None:
    det = factory()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="noise"):
            det.update(1.0, bad)


def _share_noise(n: float) -> float:
    """The anomaly layer's binomial standard error of a share expected at 0 (one request's worth)."""
    return math.sqrt(1 / n * (1 - 1 / n) / n)


def test_one_request_in_a_sparse_share_is_not_an_anomaly_once_its_noise_is_known(factory: Factory) -> None:
    """A segment of 176 requests a window whose error rate was 0 in every window: one error is within
    what its count can show (the spread learnt from zeros is nil, so without the noise it is not)."""
    det = factory()
    for _ in range(200):
        det.update(0.0, _share_noise(176))
    assert det.update(1 / 176, _share_noise(176)) < DEFAULT_THRESHOLD


@pytest.mark.parametrize("make", [RobustBaseline, CalibratedDetector, default_detector])
def test_a_share_far_beyond_its_noise_still_alerts(make: Factory) -> None:
    det = make()
    for i in range(200):
        det.update(1 / 176 if i % 40 == 0 else 0.0, _share_noise(176))
    assert det.update(30 / 176, _share_noise(176)) >= DEFAULT_THRESHOLD
