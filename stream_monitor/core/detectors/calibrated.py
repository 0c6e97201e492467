"""CalibratedDetector: a seasonal, re-learning baseline whose score is a calibrated tail probability.

Three steps per value, each answering one question:

1. **What was expected?** The median of the last ``level_window`` values, or, when the series has a cycle
   (one of the candidate ``periods``, e.g. a day of five-minute rows), the median of the values at the same
   phase (plus or minus ``phase_width`` rows) in the last ``cycles`` cycles, shifted by the median recent
   offset from those phase values, so the level can move while the shape stays. A period is used only
   while it explains the series: once ``min_cycles`` cycles are held, its residuals must be less spread than
   the plain level's (by ``season_gain``), so a cycle that stops being one stops being used, and a series
   without one never uses it. The residual is divided by the robust spread of the recent residuals of the
   same expectation.
2. **How much evidence is there?** For each horizon ``h`` (default 1, 5 and 25 rows) the mean of the last
   ``h`` standardised residuals, each clipped to +-``clip`` (3) sigmas, and no larger than the current
   row's own deviation: one row shows a spike, the mean of five a shift within a few rows, the mean of 25
   a small lasting shift; an isolated spike moves a mean of five by at most 0.6 sigmas, and evidence of a
   shift that has ended does not outlive it. A clipped mean rather than a median, because it moves
   smoothly on a discrete series (an error count of 0 or 1 a window), where a median jumps.
3. **How unusual is that evidence for this series?** Each horizon's statistic gets its tail probability
   against its own last ``calibration`` values (:class:`~stream_monitor.core.stats.tail.TailCalibrator`),
   and the smallest of the horizons is corrected for the number of horizons looked at (Sidak). The score is
   ``1 - p ** gamma``, with ``gamma`` such that ``p = half_p`` scores 0.5: with the default ``half_p`` of
   1e-5, a score of 0.5 means "as unusual as a 1-in-100,000 event for this series", 0.29 one in 1,000,
   0.75 one in 10^10 and 0.94 one in 10^20. The score is continuous, rises with the evidence and does not
   saturate, so a threshold has something to choose between at any level.

Everything that happens enters the calibration, so what recurs (a routine spike that makes up 2 % of the
rows) becomes expected at the rate it recurs. A lasting shift is **re-learnt**: once ``relearn_after`` rows
in a row are beyond ``relearn_p`` on the same side, the level (or the seasonal offset) restarts from those
rows, so a level shift alerts early, then stops instead of scoring 1 until a rolling median catches up.

The state is plain JSON data (:meth:`CalibratedDetector.to_state`): the values, residuals and
calibration histories it holds (z-scores and statistics to 4 significant digits, residuals to 6, so that
it stays short); loading it rebuilds exactly the detector that wrote it.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

from stream_monitor.core.detectors.base import (
    DETECTOR_STATE_VERSION,
    DetectorStateError,
    _build,
    _check_header,
    _check_noise,
    _check_side,
    _check_value,
    _count,
    _floats,
)
from stream_monitor.core.stats.robust import robust_location_scale
from stream_monitor.core.stats.tail import TailCalibrator

__all__ = ["CalibratedDetector", "periods_for_interval", "usual_step"]

_DAY_S = 86_400.0


def periods_for_interval(interval_s: float, max_rows: int = 10_000) -> tuple[int, ...]:
    """Candidate cycle lengths in rows for a series sampled every ``interval_s`` seconds: a day and a week,
    when they are a whole number of at least 4 rows (a cycle of fewer rows has no shape) and at most
    ``max_rows`` rows (the history a period costs).

    >>> periods_for_interval(300.0)  # five-minute rows: 288 a day, 2016 a week
    (288, 2016)
    >>> periods_for_interval(60.0, max_rows=5000)  # a week of minutes is too long to hold
    (1440,)
    >>> periods_for_interval(7 * 86_400.0)
    ()
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        return ()
    periods = []
    for cycle in (_DAY_S, 7 * _DAY_S):
        rows = cycle / interval_s
        if abs(rows - round(rows)) < 1e-6 and 4 <= round(rows) <= max_rows:
            periods.append(round(rows))
    return tuple(periods)


def usual_step(times: Sequence[float]) -> float:
    """The most common forward step between timestamps (the smallest of equally common ones; nan with
    fewer than two increasing ones): a series' interval, which repeated, backward or missing rows do not
    change.

    >>> usual_step([0.0, 300.0, 600.0, 600.0, 1500.0, 1800.0])
    300.0
    """
    steps = [b - a for a, b in itertools.pairwise(times) if b > a]
    return min(statistics.multimode(steps)) if steps else math.nan


class _Season:
    """One candidate period: the offsets of recent values from their same-phase expectation, and the
    residuals of that expectation (for its spread)."""

    __slots__ = ("offsets", "period", "residuals", "scale")

    def __init__(self, period: int, level_window: int, scale_window: int) -> None:
        self.period = period
        self.offsets: deque[float] = deque(maxlen=level_window)
        self.residuals: deque[float] = deque(maxlen=scale_window)
        self.scale: float | None = None


class CalibratedDetector:
    """A seasonal, re-learning baseline scored by calibrated tail probabilities (see the module docstring).

    >>> import random
    >>> rng = random.Random(1)
    >>> det = CalibratedDetector()
    >>> clean = [det.update(10.0 + rng.gauss(0.0, 1.0)) for _ in range(600)]
    >>> max(clean) < 0.5 < det.update(18.0)  # noise stays below the default threshold; 8 sigmas do not
    True
    >>> round(det.update(10.2), 2) < 0.3  # back to normal
    True
    >>> CalibratedDetector.from_state(det.to_state()).update(11.0) == det.update(11.0)
    True
    """

    kind: ClassVar[str] = "calibrated"

    def __init__(
        self,
        side: str = "both",
        periods: Sequence[int] = (),
        cycles: int = 3,
        min_cycles: int = 1,
        phase_width: int = 2,
        season_gain: float = 0.8,
        level_window: int = 30,
        scale_window: int = 400,
        horizons: Sequence[int] = (1, 5, 25),
        calibration: int = 2000,
        min_history: int = 10,
        prior_weight: float = 30.0,
        relearn_after: int = 6,
        relearn_p: float = 1e-3,
        half_p: float = 1e-5,
        min_scale: float = 1e-9,
        min_rel_scale: float = 1e-3,
        min_tail: float = 0.25,
        clip: float = 6.0,
    ) -> None:
        periods = sorted({int(p) for p in periods})
        if any(p < 4 for p in periods) or not 1 <= min_cycles <= cycles or phase_width < 0:
            raise ValueError(f"need periods >= 4 and 1 <= min_cycles <= cycles, got {periods}, {cycles}")
        if any(2 * phase_width + 1 > p for p in periods):
            raise ValueError(f"phase_width {phase_width} is too wide for periods {periods}")
        if not 0.0 < season_gain <= 1.0:
            raise ValueError(f"need 0 < season_gain <= 1, got {season_gain!r}")
        horizons = sorted({int(h) for h in horizons})
        if not horizons or horizons[0] < 1 or level_window < 3 or scale_window < 10:
            raise ValueError("need horizons >= 1, level_window >= 3 and scale_window >= 10")
        if not 3 <= min_history <= calibration or relearn_after < 2:
            raise ValueError("need 3 <= min_history <= calibration and relearn_after >= 2")
        if not (math.isfinite(prior_weight) and prior_weight >= 0):
            raise ValueError(f"need prior_weight >= 0, got {prior_weight!r}")
        if not (0.0 < relearn_p < 1.0 and 0.0 < half_p < 1.0 and min_scale > 0 and min_rel_scale >= 0):
            raise ValueError("need 0 < relearn_p, half_p < 1, min_scale > 0 and min_rel_scale >= 0")
        self.side = _check_side(side)
        self.periods = tuple(periods)
        self.cycles = int(cycles)
        self.min_cycles = int(min_cycles)
        self.phase_width = int(phase_width)
        self.season_gain = float(season_gain)
        self.level_window = int(level_window)
        self.scale_window = int(scale_window)
        self.horizons = tuple(horizons)
        self.calibration = int(calibration)
        self.min_history = int(min_history)
        self.prior_weight = float(prior_weight)
        self.relearn_after = int(relearn_after)
        self.relearn_p = float(relearn_p)
        self.half_p = float(half_p)
        self._gamma = math.log(2.0) / -math.log(self.half_p)
        self.min_scale = float(min_scale)
        self.min_rel_scale = float(min_rel_scale)
        if not (math.isfinite(min_tail) and min_tail > 0):
            raise ValueError(f"need min_tail > 0, got {min_tail!r}")
        self.min_tail = float(min_tail)
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"need clip > 0, got {clip!r}")
        self.clip = float(clip)
        depth = max([self.level_window, *(p * self.cycles + self.phase_width for p in self.periods)])
        self._values: deque[float] = deque(maxlen=depth)
        # The plain level's window: the last values, restarted from the shifted ones by a re-learn.
        self._level: deque[float] = deque(maxlen=self.level_window)
        self._level_residuals: deque[float] = deque(maxlen=self.scale_window)
        self._level_scale: float | None = None
        self._seasons = [_Season(p, self.level_window, self.scale_window) for p in self.periods]
        self._season: _Season | None = None  # the period in use, if any
        self._z: deque[float] = deque(maxlen=self.horizons[-1])
        # The tail of a statistic is never taken as thinner than min_tail x the spread of a mean of h
        # normal values (1 / sqrt(h) sigmas): a history of identical statistics (a sparse error rate is
        # 0 in most windows) would otherwise make the first ordinary non-zero value look impossibly rare.
        self._calibrators = [
            TailCalibrator(
                size=self.calibration,
                min_history=self.min_history,
                min_excess=self.min_tail / math.sqrt(h),
            )
            for h in self.horizons
        ]
        self._run = 0  # rows in a row beyond relearn_p on the side of _run_sign
        self._run_sign = 0
        self.seen = 0
        self._expected: float | None = None

    @property
    def warmup(self) -> int:
        # The level's spread needs 10 residuals, i.e. 11 values, before the first z-score.
        return 11

    @property
    def period(self) -> int | None:
        """The cycle length in use (None: the plain recent level)."""
        return None if self._season is None else self._season.period

    def params(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "periods": list(self.periods),
            "cycles": self.cycles,
            "min_cycles": self.min_cycles,
            "phase_width": self.phase_width,
            "season_gain": self.season_gain,
            "level_window": self.level_window,
            "scale_window": self.scale_window,
            "horizons": list(self.horizons),
            "calibration": self.calibration,
            "min_history": self.min_history,
            "prior_weight": self.prior_weight,
            "relearn_after": self.relearn_after,
            "relearn_p": self.relearn_p,
            "half_p": self.half_p,
            "min_scale": self.min_scale,
            "min_rel_scale": self.min_rel_scale,
            "min_tail": self.min_tail,
            "clip": self.clip,
        }

    def expected(self) -> float | None:
        """The value expected next (None while too little is held)."""
        if len(self._values) < 3:
            return None
        if self._season is not None:
            base = self._phase_value(self._season.period)
            if base is not None and self._season.offsets:
                return base + statistics.median(self._season.offsets)
        return statistics.median(self._level)

    # -- scoring ---------------------------------------------------------------------------------------

    def update(self, value: float, noise: float = 0.0) -> float:
        value, noise = _check_value(value), _check_noise(noise)
        level = statistics.median(self._level) if self._level else value
        phases = [self._phase_value(season.period) for season in self._seasons]
        self._choose_season()
        score = 0.0
        if self._season is None:
            center, spread = level, self._level_scale
        else:
            base = phases[self._seasons.index(self._season)]
            assert base is not None  # a season is chosen only once its cycles are held
            center = base + (statistics.median(self._season.offsets) if self._season.offsets else 0.0)
            spread = self._season.scale
        self._expected = center
        if spread is not None:
            spread = max(spread, self.min_rel_scale * abs(center), self.min_scale, noise)
            self._z.append(_rounded((value - center) / spread, 4))
            score = self._score()
        self._learn(value, level, phases)
        return score

    def _score(self) -> float:
        z = list(self._z)
        now = z[-1]
        smallest = 1.0
        looked = 0
        sign = (now > 0) - (now < 0)
        for horizon, calibrator in zip(self.horizons, self._calibrators, strict=True):
            if len(z) < horizon:
                continue
            centre = _winsorised_mean(z[-horizon:], self.clip) if horizon > 1 else now
            if horizon > 1:
                sign = (centre > 0) - (centre < 0)
            statistic = _rounded(self._evidence(centre, now), 4)
            p = self._survival(calibrator, statistic, horizon)
            calibrator.add(statistic, cap=self.relearn_p)
            if p is not None:
                looked += 1
                smallest = min(smallest, p)
        self._track_run(smallest if looked else None, sign)
        if not looked or smallest >= 1.0:
            return 0.0
        # Sidak: the chance that the most unusual of `looked` horizons is this unusual.
        p = -math.expm1(looked * math.log1p(-smallest))
        return -math.expm1(self._gamma * math.log(p)) if p > 0.0 else 1.0

    def _survival(self, calibrator: TailCalibrator, statistic: float, horizon: int) -> float | None:
        """The statistic's tail probability from its own history. A row's own deviation (horizon 1) is
        also judged while that history is young: against the tail of a normal residual of twice the
        estimated spread (a young series' spread is a rough estimate, and sparse or skewed series
        deviate in steps), worth ``prior_weight`` values at first and fading out once the history holds
        three times as many. Longer horizons wait for their own history: the mean of a
        skewed series' residuals from its median is not 0 (an error count of 0 most windows and 1-3 in
        some), which no prior centred on 0 knows."""
        held = calibrator.survival(statistic)
        if horizon > 1:
            return held
        n = len(calibrator)
        weight = (
            self.prior_weight * max(0.0, 1.0 - n / (3.0 * self.prior_weight)) if self.prior_weight else 0.0
        )
        if weight <= 0.0:
            return held
        tail = math.erfc(statistic / (2.0 * math.sqrt(2.0)))  # a normal of twice the estimated spread
        prior = min(tail if self.side == "both" else tail / 2.0, 1.0)
        if held is None:
            return prior
        return (n * held + weight * prior) / (n + weight)

    def _evidence(self, centre: float, now: float) -> float:
        """How far the last rows' median deviates on the watched side, no further than the current row
        does in that direction: evidence of a shift that has ended does not outlive it. One-sided
        statistics stay signed (not clipped at 0), so that their scores stay continuous."""
        if self.side == "up":
            return min(centre, now)
        if self.side == "down":
            return min(-centre, -now)
        return min(abs(centre), now if centre >= 0 else -now)

    def _track_run(self, p: float | None, sign: int) -> None:
        if p is None or p >= self.relearn_p or sign == 0:
            self._run, self._run_sign = 0, 0
            return
        self._run = self._run + 1 if sign == self._run_sign else 1
        self._run_sign = sign

    # -- learning --------------------------------------------------------------------------------------

    def _learn(self, value: float, level: float, phases: list[float | None]) -> None:
        if self._level:
            self._level_residuals.append(_rounded(value - level, 6))
        self._level.append(value)
        for season, base in zip(self._seasons, phases, strict=True):
            if base is None:
                continue
            offset = statistics.median(season.offsets) if season.offsets else 0.0
            season.residuals.append(_rounded(value - base - offset, 6))
            season.offsets.append(_rounded(value - base, 6))
        self._values.append(value)
        self.seen += 1
        if self.seen % 10 == 0 or self._level_scale is None:
            self._rescale()
        if self._run >= self.relearn_after:
            self._relearn()

    def _rescale(self) -> None:
        """Refresh the spreads (every 10 rows: a spread over hundreds of residuals moves slowly)."""
        if len(self._level_residuals) >= 10:
            self._level_scale = robust_location_scale(self._level_residuals, self.min_scale)[1]
        for season in self._seasons:
            if len(season.residuals) >= 10:
                season.scale = robust_location_scale(season.residuals, self.min_scale)[1]

    def _relearn(self) -> None:
        """A lasting shift: the level (and every season's offset) restarts from the shifted rows."""
        keep = self._run
        recent = list(self._level)[-keep:]
        self._level.clear()
        self._level.extend(recent)
        for season in self._seasons:
            shifted = list(season.offsets)[-keep:]
            season.offsets.clear()
            season.offsets.extend(shifted)
        self._z.clear()
        self._run, self._run_sign = 0, 0

    def _phase_value(self, period: int) -> float | None:
        """The median of the values at the same phase (+- phase_width) in the last cycles, once
        min_cycles cycles are held."""
        n = len(self._values)
        if n < period * self.min_cycles + self.phase_width:
            return None
        same_phase = [
            self._values[n - j * period + d]
            for j in range(1, self.cycles + 1)
            for d in range(-self.phase_width, self.phase_width + 1)
            if 0 <= n - j * period + d < n
        ]
        return statistics.median(same_phase)

    def _choose_season(self) -> None:
        """Use the period whose residuals are least spread, if it beats the plain level (or a shorter
        period) by season_gain; the one in use is kept while it beats them at all (no flapping)."""
        if self._level_scale is None:
            return
        best: _Season | None = None
        best_scale = self._level_scale
        for season in self._seasons:  # shortest first: a week is used only if it explains more than a day
            if season.scale is None or len(season.residuals) < min(season.period // 2, self.scale_window):
                continue
            gain = 1.0 if season is self._season else self.season_gain
            if season.scale < gain * best_scale:
                best, best_scale = season, season.scale
        self._season = best

    # -- state -----------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": DETECTOR_STATE_VERSION,
            "params": self.params(),
            "values": list(self._values),
            "level": list(self._level),
            "level_residuals": list(self._level_residuals),
            "level_scale": self._level_scale,
            "seasons": [
                {"offsets": list(s.offsets), "residuals": list(s.residuals), "scale": s.scale}
                for s in self._seasons
            ],
            "season": self.period,
            "z": list(self._z),
            "calibration": [c.values for c in self._calibrators],
            "run": [self._run, self._run_sign],
            "seen": self.seen,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild exactly the detector that wrote ``state``.

        >>> CalibratedDetector.from_state({"kind": "calibrated", "version": 1, "params": {}})
        Traceback (most recent call last):
        ...
        stream_monitor.core.detectors.base.DetectorStateError: calibrated state lacks ['values', \
'level', 'level_residuals', 'level_scale', 'seasons', 'season', 'z', 'calibration', 'run', 'seen']
        """
        fields = (
            *("params", "values", "level", "level_residuals", "level_scale", "seasons", "season"),
            *("z", "calibration", "run", "seen"),
        )
        _check_header(state, cls.kind, fields)
        det = _build(cls, cls.kind, state)
        kind = cls.kind
        _fill(det._values, _floats(state, "values", kind), kind)
        _fill(det._level, _floats(state, "level", kind), kind)
        _fill(det._level_residuals, _floats(state, "level_residuals", kind), kind)
        det._level_scale = _scale(state.get("level_scale"), kind)
        seasons, calibration = state["seasons"], state["calibration"]
        if not isinstance(seasons, list) or len(seasons) != len(det._seasons):
            raise DetectorStateError(f"{kind} state needs one season entry per period")
        for season, doc in zip(det._seasons, seasons, strict=True):
            if not isinstance(doc, Mapping) or not {"offsets", "residuals", "scale"} <= set(doc):
                raise DetectorStateError(f"{kind} state season entries need offsets, residuals and scale")
            season.scale = _scale(doc["scale"], kind)
            _fill(season.offsets, _floats(doc, "offsets", kind), kind)
            _fill(season.residuals, _floats(doc, "residuals", kind), kind)
        if not isinstance(calibration, list) or len(calibration) != len(det._calibrators):
            raise DetectorStateError(f"{kind} state needs one calibration history per horizon")
        for calibrator, held in zip(det._calibrators, calibration, strict=True):
            values = _floats({"calibration": held}, "calibration", kind)
            if len(values) > calibrator.size:
                raise DetectorStateError(f"{kind} state holds more calibration than its params allow")
            calibrator.extend(values)
        _fill(det._z, _floats(state, "z", kind), kind)
        run = state["run"]
        if not (isinstance(run, list) and len(run) == 2 and all(type(v) is int for v in run)):
            raise DetectorStateError(f"{kind} state run must be [count, sign]")
        det._run, det._run_sign = run
        det.seen = _count(state, "seen", kind)
        period = state["season"]
        det._season = next((s for s in det._seasons if s.period == period), None)
        if period is not None and det._season is None:
            raise DetectorStateError(f"{kind} state uses period {period!r}, not one of {det.periods}")
        return det


def _winsorised_mean(values: Sequence[float], clip: float) -> float:
    """The mean of ``values`` each clipped to +-``clip``: one spike moves it by at most ``clip / n``, and,
    unlike a median, it moves smoothly on a discrete series (an error count of 0 or 1 a window)."""
    return math.fsum(min(max(v, -clip), clip) for v in values) / len(values)


def _rounded(value: float, digits: int) -> float:
    """``value`` to ``digits`` significant digits: what the detector holds is short in a checkpoint (a
    z-score needs no more than 4 digits, a residual 6), and a restored detector holds exactly the same."""
    return float(f"{value:.{digits}g}")


def _fill(room: deque[float], held: list[float], kind: str) -> None:
    if len(held) > (room.maxlen or 0):
        raise DetectorStateError(f"{kind} state holds more history than its params allow")
    room.extend(held)


def _scale(value: object, kind: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DetectorStateError(f"{kind} state scales must be positive numbers or null, got {value!r}")
    return float(value)
