"""Online anomaly detectors for one per-window signal series (a p99, a rate, a count per window).

A :class:`SeriesDetector` takes the values of one series in time order, one :meth:`~SeriesDetector.update`
per window, and returns an anomaly score in ``[0, 1]`` for that value: 0 is "as usual", 1 is "certainly
not". A score depends only on the values seen so far (no look-ahead), is exactly 0 during the warm-up
(the first :attr:`~SeriesDetector.warmup` values), and is deterministic. A value counts as anomalous when
its score reaches :data:`DEFAULT_THRESHOLD`.

Implementations:

* :class:`RobustBaseline`: robust z-score of the value against the median and spread of the last
  ``window`` values (or, with a ``period``, against the values at the same phase of earlier cycles),
  squashed into ``[0, 1]``. Quick on jumps (one window) and on shifts of more than ``k_run`` robust
  sigmas (two windows), blind to smaller shifts.
* :class:`RiverDrift`: river's ADWIN or Page-Hinkley change detectors, fed with the robust z-score of the
  value so their thresholds mean the same on any scale. Slower (a few to tens of windows) but they
  accumulate evidence, so they see sustained shifts too small for a per-value test.
* :class:`EnsembleDetector`: several detectors on the same series, scored by the maximum of their scores.

:func:`default_detector` builds the stack the project uses by default (tuned on the simulator's clean
traffic: see docs/benchmarks.md), and :func:`load_detector` restores any detector from its state.

State (:meth:`~SeriesDetector.to_state`) is a plain JSON-safe dict with a ``kind`` and a ``version``, checked
field by field on load (:class:`DetectorStateError` says what is wrong): a checkpoint is data, never code,
so nothing here uses pickle.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from river import drift

from stream_monitor.core.alerts import StateFormatError
from stream_monitor.core.stats.robust import robust_location_scale

__all__ = [
    "DEFAULT_THRESHOLD",
    "DETECTOR_STATE_VERSION",
    "SIDES",
    "DetectorStateError",
    "EnsembleDetector",
    "RiverDrift",
    "RobustBaseline",
    "SeriesDetector",
    "default_detector",
    "load_detector",
]

DETECTOR_STATE_VERSION = 1
# A value whose score reaches this is anomalous (alerts, the `alert` column of score-series).
DEFAULT_THRESHOLD = 0.5
# Which deviations count: above the baseline ("up": latency, error rates), below it ("down": traffic
# volume), or either ("both": a series whose meaning is unknown).
SIDES = ("both", "up", "down")


class DetectorStateError(StateFormatError):
    """A detector state that this version cannot load (wrong kind, version or shape)."""


@runtime_checkable
class SeriesDetector(Protocol):
    """An online detector for one series; see the module docstring for the contract."""

    kind: ClassVar[str]

    @property
    def warmup(self) -> int:
        """How many first values are scored 0 whatever they are."""
        ...

    def update(self, value: float) -> float:
        """Score ``value`` (in ``[0, 1]``) against the values before it, then learn it."""
        ...

    def to_state(self) -> dict[str, Any]:
        """A JSON-safe, versioned snapshot from which :meth:`from_state` rebuilds the detector."""
        ...

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild a detector from :meth:`to_state` output; raises :class:`DetectorStateError`."""
        ...


def _squash(excess: float, softness: float) -> float:
    """0 at or below 0, rising smoothly towards 1 (0.5 at 0.69 softness, 0.9 at 2.3 softness)."""
    return 1.0 - math.exp(-excess / softness) if excess > 0 else 0.0


def _check_value(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        # A NaN would poison every median after it; gaps are the caller's to handle (skip or impute).
        raise ValueError(f"detector input must be a finite number, got {value!r}")
    return value


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
    return side


def _directed(z: float, side: str) -> float:
    """The part of a signed z-score that counts for ``side``."""
    if side == "up":
        return max(z, 0.0)
    if side == "down":
        return max(-z, 0.0)
    return abs(z)


class RobustBaseline:
    """Robust z-score against the recent median, squashed to ``[0, 1]``.

    The expected value is the median of the last ``window`` values and the spread their robust standard
    deviation (:func:`robust_location_scale`, floored at ``min_scale`` and ``min_rel_scale`` x |median|
    so a constant series does not divide by zero). With ``z`` the robust z-score of the value in the
    direction ``side`` watches, the score is the larger of

    * ``squash(z - k)`` for the value alone, and
    * ``squash(min(z over the last run values) - k_run)`` for a run of ``run`` values that all deviate,

    with ``squash(e) = 1 - exp(-max(0, e) / softness)``. With the defaults (k=6, k_run=3.5, run=2,
    softness=0.35) one value alone scores 0.5 at 6.24 sigmas and 0.9 at 6.8, two values in a row 0.5 at
    3.74 and 0.9 at 4.3. Noise rarely produces either: tuned on two simulated clean days, this gives
    about 4 false alarms a day over the 265 per-window series of the default topology, i.e. one per
    series every two months (docs/benchmarks.md), while a level shift of five sigmas usually scores
    above 0.9 at its second value. ``min_delta`` ignores deviations smaller than that absolute amount
    (e.g. a rate change of less than a percentage point).

    With ``period`` (in windows, e.g. 1440 for a daily cycle of one-minute windows), once at least
    ``min_cycles`` earlier cycles are stored the expected value is the median of the values at the same
    phase in the last ``cycles`` cycles, and the spread is that of the recent residuals against those
    seasonal expectations; until then the plain rolling median is used.

    Every value, anomalous or not, enters the history: a lasting level shift becomes the new normal after
    about ``window / 2`` values (the median needs half its window to move), which ends its alert.

    >>> det = RobustBaseline(window=20, min_history=10)
    >>> [det.update(v) for v in [10.0, 11.0, 9.0, 10.5, 9.5] * 3][-1]  # warm-up, then ordinary values
    0.0
    >>> round(det.update(30.0), 3)  # far above the usual 9-11
    1.0
    >>> RobustBaseline.from_state(det.to_state()).update(10.0) == det.update(10.0)
    True
    """

    kind: ClassVar[str] = "robust_baseline"

    def __init__(
        self,
        window: int = 120,
        min_history: int = 20,
        k: float = 6.0,
        softness: float = 0.35,
        side: str = "both",
        k_run: float | None = 3.5,
        run: int = 2,
        min_scale: float = 1e-9,
        min_rel_scale: float = 1e-3,
        min_delta: float = 0.0,
        period: int | None = None,
        cycles: int = 3,
        min_cycles: int = 2,
    ) -> None:
        if window < 3 or not 3 <= min_history <= window:
            raise ValueError(f"need window >= 3 and 3 <= min_history <= window, got {window}, {min_history}")
        if not (math.isfinite(k) and k >= 0 and math.isfinite(softness) and softness > 0):
            raise ValueError(f"need k >= 0 and softness > 0, got k={k!r}, softness={softness!r}")
        if k_run is not None and not (math.isfinite(k_run) and k_run >= 0 and run >= 2):
            raise ValueError(f"need k_run >= 0 and run >= 2, got k_run={k_run!r}, run={run!r}")
        if min_scale <= 0 or min_rel_scale < 0 or min_delta < 0:
            raise ValueError("need min_scale > 0, min_rel_scale >= 0 and min_delta >= 0")
        if period is not None and (period < 2 or not 1 <= min_cycles <= cycles):
            raise ValueError(f"need period >= 2 and 1 <= min_cycles <= cycles, got {period}, {cycles}")
        self.window = int(window)
        self.min_history = int(min_history)
        self.k = float(k)
        self.softness = float(softness)
        self.side = _check_side(side)
        self.k_run = None if k_run is None else float(k_run)
        self.run = int(run)
        self.min_scale = float(min_scale)
        self.min_rel_scale = float(min_rel_scale)
        self.min_delta = float(min_delta)
        self.period = None if period is None else int(period)
        self.cycles = int(cycles)
        self.min_cycles = int(min_cycles)
        depth = self.window if self.period is None else max(self.window, self.period * self.cycles)
        self._values: deque[float] = deque(maxlen=depth)
        # Residuals against the seasonal expectation, for the seasonal spread (only with a period).
        self._residuals: deque[float] = deque(maxlen=self.window)
        # Directed z-scores of the latest values (for the run rule); cleared when a value is not scored.
        self._recent: deque[float] = deque(maxlen=self.run - 1)
        self.seen = 0

    @property
    def warmup(self) -> int:
        return self.min_history

    def params(self) -> dict[str, Any]:
        """Constructor arguments (part of the state)."""
        return {
            "window": self.window,
            "min_history": self.min_history,
            "k": self.k,
            "softness": self.softness,
            "side": self.side,
            "k_run": self.k_run,
            "run": self.run,
            "min_scale": self.min_scale,
            "min_rel_scale": self.min_rel_scale,
            "min_delta": self.min_delta,
            "period": self.period,
            "cycles": self.cycles,
            "min_cycles": self.min_cycles,
        }

    def expected(self) -> tuple[float, float] | None:
        """(expected value, spread) for the next value, or None while warming up."""
        if len(self._values) < self.min_history:
            return None
        seasonal = self._seasonal_expected()
        if seasonal is not None and len(self._residuals) >= self.min_history:
            _, spread = robust_location_scale(list(self._residuals), self.min_scale)
            return seasonal, max(spread, self.min_rel_scale * abs(seasonal))
        recent = list(self._values)[-self.window :]
        center, spread = robust_location_scale(recent, self.min_scale)
        return center, max(spread, self.min_rel_scale * abs(center))

    def _seasonal_expected(self) -> float | None:
        if self.period is None:
            return None
        n = len(self._values)
        same_phase = [
            self._values[n - j * self.period] for j in range(1, self.cycles + 1) if j * self.period <= n
        ]
        if len(same_phase) < self.min_cycles:
            return None
        return statistics.median(same_phase)

    def update(self, value: float) -> float:
        value = _check_value(value)
        score = 0.0
        baseline = self.expected()
        if baseline is not None:
            center, spread = baseline
            delta = value - center
            z = _directed(delta / spread, self.side) if abs(delta) >= self.min_delta else 0.0
            score = _squash(z - self.k, self.softness)
            if self.k_run is not None and len(self._recent) == self.run - 1:
                score = max(score, _squash(min(z, *self._recent) - self.k_run, self.softness))
            self._recent.append(z)
        seasonal = self._seasonal_expected()
        if seasonal is not None:
            self._residuals.append(value - seasonal)
        self._values.append(value)
        self.seen += 1
        return score

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": DETECTOR_STATE_VERSION,
            "params": self.params(),
            "values": list(self._values),
            "residuals": list(self._residuals),
            "recent": list(self._recent),
            "seen": self.seen,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild exactly the detector that wrote ``state``.

        >>> RobustBaseline.from_state({"kind": "robust_baseline", "version": 2})
        Traceback (most recent call last):
        ...
        stream_monitor.core.detectors.DetectorStateError: robust_baseline state version 2 is not 1
        """
        _check_header(state, cls.kind, ("params", "values", "residuals", "recent", "seen"))
        det = _build(cls, cls.kind, state)
        values = _floats(state, "values", cls.kind)
        residuals = _floats(state, "residuals", cls.kind)
        recent = _floats(state, "recent", cls.kind)
        for held, room in ((values, det._values), (residuals, det._residuals), (recent, det._recent)):
            if len(held) > (room.maxlen or 0):
                raise DetectorStateError(f"{cls.kind} state holds more history than its params allow")
            room.extend(held)
        det.seen = _count(state, "seen", cls.kind)
        if det.seen < len(values):
            raise DetectorStateError(
                f"{cls.kind} state seen={det.seen} is less than its {len(values)} values"
            )
        return det


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

    def update(self, value: float) -> float:
        value = _check_value(value)
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
            self._history.append(value)
        else:
            fed = value
        detector = self._detector
        before = detector.estimation if isinstance(detector, drift.ADWIN) else 0.0
        detector.update(fed)
        if not detector.drift_detected:
            return 0.0
        if self.standardize:
            return 1.0 if _directed(fed, self.side) >= self.confirm else 0.0
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
        stream_monitor.core.detectors.DetectorStateError: river_drift state params are invalid: method must \
be one of ['adwin', 'page_hinkley'], got 'cusum'
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


class EnsembleDetector:
    """Several detectors on one series; the score is the maximum of theirs (every member always learns).

    The maximum keeps each member's meaning: an ensemble alert is an alert of at least one member, so
    its false alarms are at most the sum of the members' and its delay the smallest of theirs.

    >>> ens = EnsembleDetector([RobustBaseline(window=10, min_history=5), RiverDrift(min_history=5)])
    >>> ens.warmup, [ens.update(1.0) for _ in range(3)]
    (5, [0.0, 0.0, 0.0])
    >>> load_detector(ens.to_state()).to_state() == ens.to_state()
    True
    """

    kind: ClassVar[str] = "ensemble"

    def __init__(self, members: Iterable[SeriesDetector]) -> None:
        self.members: list[SeriesDetector] = list(members)
        if not self.members:
            raise ValueError("an ensemble needs at least one member")

    @property
    def warmup(self) -> int:
        return min(m.warmup for m in self.members)

    def update(self, value: float) -> float:
        value = _check_value(value)
        return max([m.update(value) for m in self.members])

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": DETECTOR_STATE_VERSION,
            "members": [m.to_state() for m in self.members],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        _check_header(state, cls.kind, ("members",))
        members = state["members"]
        if not isinstance(members, list) or not members:
            raise DetectorStateError(f"{cls.kind} state members must be a non-empty list")
        return cls(load_detector(m) for m in members)


def default_detector(side: str = "both", replay: int = 1000, min_rel_scale: float = 1e-3) -> EnsembleDetector:
    """The project's default detector stack for one per-window series.

    * :class:`RobustBaseline` with its defaults (two-hour rolling median and spread for one-minute
      windows; a value alone alerts from 6.24 robust sigmas, two in a row from 3.74): jumps and shifts.
    * :class:`RiverDrift` Page-Hinkley on the robust z-scores against a reference lagged by 15 values
      (``delta`` 1 sigma, ``threshold`` 30, no forgetting): sustained shifts of two to three sigmas,
      after 15-30 values.

    Tuned on two simulated clean days (265 series of the default topology): about 6.5 false alarms a
    day in all, mostly Page-Hinkley on traffic volume while the daily curve falls fastest, and the
    Poisson tail of small slices' error counts (docs/benchmarks.md).

    ``replay`` bounds the Page-Hinkley member's checkpoint (its last ``replay`` inputs, at least 135):
    the worker keeps it at 135 so a watched series costs about 255 numbers of state. ``min_rel_scale``
    floors both members' spread at that share of the level: the worker uses 0.05, so a change under 5 %
    of the level (a quantile moving by one sketch bucket) is never anomalous on its own.

    >>> det = default_detector(side="up")
    >>> [m.kind for m in det.members], det.warmup
    (['robust_baseline', 'river_drift'], 20)
    """
    return EnsembleDetector(
        [
            RobustBaseline(side=side, min_rel_scale=min_rel_scale),
            RiverDrift(
                "page_hinkley",
                params={"min_instances": 30, "delta": 1.0, "threshold": 30.0, "alpha": 1.0},
                side=side,
                window=120,
                min_history=20,
                lag=15,
                replay=replay,
                min_rel_scale=min_rel_scale,
            ),
        ]
    )


_KINDS: Mapping[str, type[RobustBaseline] | type[RiverDrift] | type[EnsembleDetector]] = {
    cls.kind: cls for cls in (RobustBaseline, RiverDrift, EnsembleDetector)
}


def load_detector(state: object) -> SeriesDetector:
    """Rebuild any detector from its :meth:`~SeriesDetector.to_state` output (dispatch on ``kind``).

    >>> load_detector({"kind": "pickle", "version": 1})
    Traceback (most recent call last):
    ...
    stream_monitor.core.detectors.DetectorStateError: unknown detector kind 'pickle'; expected one of \
['ensemble', 'river_drift', 'robust_baseline']
    """
    if not isinstance(state, Mapping):
        raise DetectorStateError(f"detector state must be a JSON object, got {type(state).__name__}")
    cls = _KINDS.get(state.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise DetectorStateError(
            f"unknown detector kind {state.get('kind')!r}; expected one of {sorted(_KINDS)}"
        )
    return cls.from_state(state)


_Built = TypeVar("_Built")

# -- state checks ----------------------------------------------------------------------------------------


def _check_header(state: object, kind: str, fields: tuple[str, ...]) -> None:
    if not isinstance(state, Mapping):
        raise DetectorStateError(f"{kind} state must be a JSON object, got {type(state).__name__}")
    if state.get("kind") != kind:
        raise DetectorStateError(f"{kind} state has kind {state.get('kind')!r}")
    version = state.get("version")
    if isinstance(version, bool) or version != DETECTOR_STATE_VERSION:
        raise DetectorStateError(f"{kind} state version {version!r} is not {DETECTOR_STATE_VERSION}")
    missing = [name for name in fields if name not in state]
    if missing:
        raise DetectorStateError(f"{kind} state lacks {missing}")


def _build(make: Callable[..., _Built], kind: str, state: Mapping[str, Any]) -> _Built:
    """The detector described by a state's ``params``; the constructor's checks become state errors."""
    params = state["params"]
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise DetectorStateError(f"{kind} state params must be a JSON object")
    try:
        return make(**params)
    except (TypeError, ValueError) as exc:
        raise DetectorStateError(f"{kind} state params are invalid: {exc}") from None


def _floats(state: Mapping[str, Any], name: str, kind: str) -> list[float]:
    values = state[name]
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise DetectorStateError(f"{kind} state {name} must be a list of finite numbers")
    return [float(v) for v in values]


def _count(state: Mapping[str, Any], name: str, kind: str) -> int:
    value = state[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DetectorStateError(f"{kind} state {name} must be a non-negative integer, got {value!r}")
    return value
