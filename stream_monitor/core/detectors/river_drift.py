"""RiverDrift: river's ADWIN or Page-Hinkley change detectors on robust z-scores."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

from river import drift

from stream_monitor.core.detectors.base import (
    DETECTOR_STATE_VERSION,
    DetectorStateError,
    _build,
    _check_header,
    _check_noise,
    _check_side,
    _check_value,
    _count,
    _directed,
    _floats,
)
from stream_monitor.core.stats.robust import robust_location_scale

__all__ = ["RiverDrift"]

# river detectors RiverDrift can wrap, with the parameters each accepts (numbers only: a state is data).
_RIVER_METHODS: Mapping[str, tuple[str, ...]] = {
    "adwin": ("delta", "clock", "max_buckets", "min_window_length", "grace_period"),
    "page_hinkley": ("min_instances", "delta", "threshold", "alpha"),
}


class RiverDrift:
    """A river change detector (``"adwin"`` or ``"page_hinkley"``) on a series, score 1 where it fires.

    With ``standardize`` (the default) the detector sees the robust z-score of each value (clipped to
    +-``clip``) against a reference: the median and spread (:func:`robust_location_scale`) of the
    ``window`` values before the last ``lag`` ones. The z-score makes the detector's thresholds
    (Page-Hinkley's ``threshold`` and ``delta``) robust sigmas whatever the series' unit, and a slow
    trend of the raw series is not a change. The lag matters: a reference that included the newest
    values would absorb a shift (its spread widens as soon as a few shifted values enter it) before a
    cumulative test has gathered the evidence; with a lag it has ``lag`` values to do so. ``side`` keeps
    only increases ("up") or decreases ("down"): Page-Hinkley is run in that mode, and a detection
    counts only when the value that triggers it is at least ``confirm`` robust sigmas off the reference
    in that direction. The confirmation matters because the reference follows the series: once it has
    caught up with a shift, the z-scores fall back to 0, which is itself a change (the other way) that
    would otherwise be reported as a new one, e.g. right after a traffic drop recovers. Without
    ``standardize`` an ADWIN detection counts when ADWIN's mean moved in the watched direction.

    State: river's detectors are not serialisable as data, so the state is the parameters plus the last
    ``replay`` raw inputs, and :meth:`from_state` rebuilds the detector by feeding them again. The rebuilt
    detector is *identical* to the original when the original has seen at most ``replay`` values (the
    replay starts from the same empty state); after more, it is the detector that started ``replay``
    values ago (warm-up included), which forgets whatever older evidence the original had accumulated.
    That bound is the price of not pickling river objects.

    >>> det = RiverDrift("page_hinkley", params={"threshold": 20.0})
    >>> scores = [det.update(v) for v in [10.0, 10.4, 9.6, 10.1, 9.9] * 20 + [13.0] * 10]
    >>> scores.index(1.0) >= 100, max(scores[:100])
    (True, 0.0)
    """

    kind: ClassVar[str] = "river_drift"

    def __init__(
        self,
        method: str = "page_hinkley",
        params: Mapping[str, float] | None = None,
        side: str = "both",
        standardize: bool = True,
        window: int = 120,
        min_history: int = 20,
        lag: int = 15,
        clip: float = 10.0,
        confirm: float = 1.0,
        replay: int = 1000,
        min_rel_scale: float = 1e-3,
    ) -> None:
        if method not in _RIVER_METHODS:
            raise ValueError(f"method must be one of {sorted(_RIVER_METHODS)}, got {method!r}")
        params = dict(params or {})
        unknown = set(params) - set(_RIVER_METHODS[method])
        if unknown:
            raise ValueError(
                f"unknown {method} params {sorted(unknown)}; known: {list(_RIVER_METHODS[method])}"
            )
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{method} param {name} must be a finite number, got {value!r}")
        if not (math.isfinite(confirm) and confirm >= 0):
            raise ValueError(f"need confirm >= 0, got {confirm!r}")
        if not (math.isfinite(min_rel_scale) and min_rel_scale >= 0):
            raise ValueError(f"need min_rel_scale >= 0, got {min_rel_scale!r}")
        if window < 3 or not 3 <= min_history <= window or lag < 0 or clip <= 0 or replay < window + lag:
            raise ValueError(
                "need window >= 3, 3 <= min_history <= window, lag >= 0, clip > 0 and replay >= window + lag"
            )
        self.method = method
        self.river_params = params
        self.side = _check_side(side)
        self.standardize = bool(standardize)
        self.window = int(window)
        self.min_history = int(min_history)
        self.lag = int(lag)
        self.clip = float(clip)
        self.confirm = float(confirm)
        self.replay = int(replay)
        self.min_rel_scale = float(min_rel_scale)
        self._history: deque[float] = deque(maxlen=self.window + self.lag)
        self._inputs: deque[float] = deque(maxlen=self.replay)
        self._detector = self._make()
        self.seen = 0

    def _make(self) -> Any:
        # river is untyped: go through Callable[..., Any] so mypy --strict accepts the calls.
        if self.method == "adwin":
            adwin: Callable[..., Any] = drift.ADWIN
            return adwin(**self.river_params)
        page_hinkley: Callable[..., Any] = drift.PageHinkley
        return page_hinkley(**self.river_params, mode=self.side)

    @property
    def warmup(self) -> int:
        return self.min_history + self.lag if self.standardize else 0

    def params(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": dict(self.river_params),
            "side": self.side,
            "standardize": self.standardize,
            "window": self.window,
            "min_history": self.min_history,
            "lag": self.lag,
            "clip": self.clip,
            "confirm": self.confirm,
            "replay": self.replay,
            "min_rel_scale": self.min_rel_scale,
        }

    def update(self, value: float, noise: float = 0.0) -> float:
        value, noise = _check_value(value), _check_noise(noise)
        confirmed = 0.0
        self._inputs.append(value)
        self.seen += 1
        if self.standardize:
            if len(self._history) < self.min_history + self.lag:
                self._history.append(value)
                return 0.0
            history = list(self._history)
            center, spread = robust_location_scale(history[: len(history) - self.lag], 1e-9)
            spread = max(spread, self.min_rel_scale * abs(center))
            fed = min(max((value - center) / spread, -self.clip), self.clip)
            # The drift test runs on the values alone (so a replay of the inputs is exact); only the
            # confirmation of a change discounts the value's own sampling noise.
            confirmed = (value - center) / max(spread, noise)
            self._history.append(value)
        else:
            fed = value
        detector = self._detector
        before = detector.estimation if isinstance(detector, drift.ADWIN) else 0.0
        detector.update(fed)
        if not detector.drift_detected:
            return 0.0
        if self.standardize:
            return 1.0 if _directed(confirmed, self.side) >= self.confirm else 0.0
        if isinstance(detector, drift.ADWIN) and self.side != "both":
            moved = detector.estimation - before
            if (moved > 0) != (self.side == "up"):
                return 0.0
        return 1.0

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": DETECTOR_STATE_VERSION,
            "params": self.params(),
            "inputs": list(self._inputs),
            "seen": self.seen,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild by replaying the stored inputs (exact within the ``replay`` bound; see the class doc).

        >>> RiverDrift.from_state({"kind": "river_drift", "version": 1, "params": {"method": "cusum"},
        ...                        "inputs": [], "seen": 0})
        Traceback (most recent call last):
        ...
        stream_monitor.core.detectors.base.DetectorStateError: river_drift state params are invalid: \
method must be one of ['adwin', 'page_hinkley'], got 'cusum'
        """
        _check_header(state, cls.kind, ("params", "inputs", "seen"))
        det = _build(cls, cls.kind, state)
        inputs = _floats(state, "inputs", cls.kind)
        seen = _count(state, "seen", cls.kind)
        if len(inputs) > det.replay or seen < len(inputs):
            raise DetectorStateError(
                f"{cls.kind} state holds {len(inputs)} inputs for seen={seen} and replay={det.replay}"
            )
        for value in inputs:
            det.update(value)
        det.seen = seen
        return det
