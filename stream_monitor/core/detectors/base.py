"""What every series detector shares: the contract, its constants, and the checks of a saved state.

A :class:`SeriesDetector` takes the values of one series in time order, one
:meth:`~SeriesDetector.update` per window, and returns an anomaly score in ``[0, 1]`` for that value. A
state (:meth:`~SeriesDetector.to_state`) is a plain JSON-safe dict with a ``kind`` and a ``version``,
checked field by field on load: a checkpoint is data, never code, so nothing here uses pickle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from stream_monitor.core.state_format import StateFormatError

__all__ = [
    "DEFAULT_THRESHOLD",
    "DETECTOR_STATE_VERSION",
    "SIDES",
    "DetectorStateError",
    "SeriesDetector",
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

    def update(self, value: float, noise: float = 0.0) -> float:
        """Score ``value`` (in ``[0, 1]``) against the values before it, then learn it.

        ``noise`` is the standard error ``value`` carries from its own sample (a rate of 1 error in 176
        requests is known to about +-0.006): a deviation of that order is no evidence, however steady
        the series was before. Detectors that standardise take it as the least spread of this value (the
        spread they learnt already holds the noise of typical windows); it is not learnt.
        """
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


def _check_noise(noise: float) -> float:
    noise = float(noise)
    if not (math.isfinite(noise) and noise >= 0.0):
        raise ValueError(f"noise must be a finite standard error >= 0, got {noise!r}")
    return noise


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
