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

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

from stream_monitor.core.detectors.base import (
    DEFAULT_THRESHOLD,
    DETECTOR_STATE_VERSION,
    SIDES,
    DetectorStateError,
    SeriesDetector,
    _check_header,
    _check_noise,
    _check_value,
)
from stream_monitor.core.detectors.calibrated import CalibratedDetector
from stream_monitor.core.detectors.river_drift import RiverDrift
from stream_monitor.core.detectors.robust import RobustBaseline

__all__ = [
    "DEFAULT_THRESHOLD",
    "DETECTOR_STATE_VERSION",
    "SIDES",
    "CalibratedDetector",
    "DetectorStateError",
    "EnsembleDetector",
    "RiverDrift",
    "RobustBaseline",
    "SeriesDetector",
    "default_detector",
    "load_detector",
]


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

    def update(self, value: float, noise: float = 0.0) -> float:
        value, noise = _check_value(value), _check_noise(noise)
        return max([m.update(value, noise) for m in self.members])

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


_KINDS: Mapping[str, type[SeriesDetector]] = {
    cls.kind: cls for cls in (RobustBaseline, RiverDrift, EnsembleDetector, CalibratedDetector)
}


def load_detector(state: object) -> SeriesDetector:
    """Rebuild any detector from its :meth:`~SeriesDetector.to_state` output (dispatch on ``kind``).

    >>> load_detector({"kind": "pickle", "version": 1})
    Traceback (most recent call last):
    ...
    stream_monitor.core.detectors.base.DetectorStateError: unknown detector kind 'pickle'; expected one of \
['calibrated', 'ensemble', 'river_drift', 'robust_baseline']
    """
    if not isinstance(state, Mapping):
        raise DetectorStateError(f"detector state must be a JSON object, got {type(state).__name__}")
    cls = _KINDS.get(state.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise DetectorStateError(
            f"unknown detector kind {state.get('kind')!r}; expected one of {sorted(_KINDS)}"
        )
    return cls.from_state(state)
