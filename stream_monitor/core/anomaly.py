"""Adaptive detectors on the per-window signal series, localised and under an alarm budget.

Thresholds and SLAs (core/signals.py) catch what a team has declared bad. The anomaly layer watches the
same per-window values for what nobody declared: a p99 that doubles but stays under its SLA, a source
share that falls by a third. Each watched series (topology ``anomaly.series``: signal, metric, side) gets
a :class:`~stream_monitor.core.detectors.CalibratedDetector` (recent level, no season, four hours of
calibration), updated once per closed window: its score is a tail probability calibrated on the series'
own past deviations. A share of requests (an error rate, a source share) also passes its sampling noise
(:func:`sampling_noise`), so a segment of a few requests a minute is judged on what its counts can show.

Thousands of series would drown people in alerts, so three things stand between a detector's score and
an alert:

1. **Redundancy.** A series whose signal already breaches its threshold on the same (model, version, arm,
   surface) is left to that alert.
2. **Localisation.** A slice's anomaly shows through every roll-up that contains it; the breaches go
   through :func:`stream_monitor.core.signals.localise`, which keeps the level that explains them.
3. **Budget.** New anomaly alerts spend tokens from one bucket (``burst`` tokens, refilled at
   ``budget_per_day``): whatever the number of series, at most ``burst + budget_per_day x days`` anomaly
   alerts open. The strongest scores go first; the rest are counted in ``suppressed``. This is a
   per-layer alarm-rate budget rather than a multiple-testing correction: each score is calibrated on its
   own series, but windows are autocorrelated and hundreds of series are watched at once, so a cap is the
   guarantee that holds whatever they are (docs/signals.md, "Anomaly detectors").

State is JSON, kept in the engine's :class:`~stream_monitor.core.alerts.DetectorState`: each detector's
:meth:`~stream_monitor.core.detectors.SeriesDetector.to_state`, its parameters replaced by its side when
they are the layer's own. An entry of the previous default stack (side, count, last inputs) is rebuilt by
feeding today's detector those inputs. The layer keeps its detectors in memory between windows and
rebuilds them from the checkpoint only when the checkpoint is not the one it wrote (another worker closed
windows in between, or a restart).

Imports: the standard library and core only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from stream_monitor.core.detectors import (
    SIDES,
    CalibratedDetector,
    DetectorStateError,
    EnsembleDetector,
    RobustBaseline,
    SeriesDetector,
    load_detector,
)
from stream_monitor.core.fields import join_series
from stream_monitor.core.series import Breach, SignalValue
from stream_monitor.core.signals import localise
from stream_monitor.core.topology import KEY_DIMS, AnomalyRule

__all__ = ["ANOMALY_SIGNAL", "ANOMALY_STATE_VERSION", "AnomalyLayer", "sampling_noise"]

log = logging.getLogger(__name__)

ANOMALY_SIGNAL = "anomaly"
ANOMALY_STATE_VERSION = 1
_DAY_MS = 86_400_000
_ALL = "*"


# Spread floor as a share of the level: per-window quantiles move in sketch buckets (2 % wide) and a
# rolling spread of a quiet series can be smaller than one bucket, which made single-bucket steps look like
# 10-sigma events (false alerts on clean traffic in tests/unit/test_engine_inprocess.py).
_MIN_REL_SCALE = 0.05
# Four hours of one-minute windows per horizon: the calibration the worker can afford to checkpoint for
# every watched series (about 900 numbers each, against 2,000 per horizon for score-series).
_CALIBRATION = 240


def _worker_detector(side: str) -> SeriesDetector:
    """The calibrated detector without a season (a daily cycle of one-minute windows would cost 4,320
    values a series), with a four-hour calibration and the spread floored at 5 % of the level."""
    return CalibratedDetector(
        side=side, calibration=_CALIBRATION, scale_window=120, min_rel_scale=_MIN_REL_SCALE
    )


class AnomalyLayer:
    """Detectors on the watched per-window series; anomaly breaches out, under the rule's alarm budget.

    >>> from stream_monitor.core.topology import AnomalyRule, AnomalySeries
    >>> rule = AnomalyRule(series=(AnomalySeries("latency", "p99.*", "up"),), threshold=0.6)
    >>> layer = AnomalyLayer(rule, ("model", "model_version", "arm", "surface"), window_ms=60_000)
    >>> key = ("m", "v1", "control", "home")
    >>> state: dict = {}
    >>> for i in range(120):  # clean history: 200 ms give or take a few
    ...     _, found = layer.evaluate([SignalValue("latency", "p99.total", key, 200.0 + i * 7 % 11)], [],
    ...                               state, (i + 1) * 60_000, open_alerts=())
    ...     assert not found
    >>> values, found = layer.evaluate([SignalValue("latency", "p99.total", key, 290.0)], [], state,
    ...                                121 * 60_000, open_alerts=())
    >>> [(b.signal, b.metric, round(b.observed, 2)) for b in found]
    [('anomaly', 'latency.p99.total', 0.86)]
    >>> found[0].message
    'latency p99.total 290 is anomalous (expected about 205, score 0.86)'
    """

    def __init__(
        self,
        rule: AnomalyRule,
        key_dims: tuple[str, ...],
        window_ms: int,
        factory: Callable[[str], SeriesDetector] = _worker_detector,
    ) -> None:
        self.rule = rule
        self.key_dims = key_dims
        self.window_ms = window_ms
        self.factory = factory
        self._detectors: dict[str, SeriesDetector] = {}
        self._sides: dict[str, str] = {}
        self._params: dict[str, Any] = {}
        # The window end of the checkpoint this layer last wrote: its detectors are that checkpoint.
        self._written_end: int | None = None
        self.suppressed = 0
        self.untracked = 0

    @property
    def enabled(self) -> bool:
        return bool(self.rule.series)

    def forget(self) -> None:
        """Drop the in-memory detectors: the next window rebuilds them from the checkpoint."""
        self._detectors = {}
        self._written_end = None

    def evaluate(
        self,
        values: Sequence[SignalValue],
        breaches: Sequence[Breach],
        state: dict[str, Any],
        window_end: int,
        open_alerts: Collection[str],
    ) -> tuple[list[SignalValue], list[Breach]]:
        """Update every watched series with this window's value; anomaly scores and new breaches.

        ``breaches`` are the threshold layer's (localised) breaches of the same window; ``open_alerts``
        the dedupe ids of the open alerts (an anomaly already alerting needs no new token). ``state`` is
        the layer's checkpoint (a JSON object), updated in place.
        """
        if not self.enabled:
            return [], []
        self._load(state)
        tokens = self._refill(state, window_end)
        alerting = {(b.signal, b.key[: len(KEY_DIMS)]) for b in breaches}
        scores: list[SignalValue] = []
        candidates: list[tuple[float, Breach]] = []
        for value in values:
            spec = self.rule.watch(value.signal, value.metric)
            if spec is None or not self._level_watched(value.key):
                continue
            ident = f"{value.signal}|{value.metric}|{join_series(value.key)}"
            detector = self._detectors.get(ident)
            if detector is None:
                if len(self._detectors) >= self.rule.max_series:
                    self.untracked += 1
                    continue
                detector = self._detectors[ident] = self.factory(spec.side)
                self._sides[ident] = spec.side
            expected = _expected(detector)
            score = detector.update(_significant(value.value), sampling_noise(value, expected))
            metric = f"{value.signal}.{value.metric}"
            scores.append(SignalValue(ANOMALY_SIGNAL, metric, value.key, score))
            if score < self.rule.threshold or (value.signal, value.key[: len(KEY_DIMS)]) in alerting:
                continue
            about = "" if expected is None else f"expected about {_num(expected)}, "
            candidates.append(
                (
                    score,
                    Breach(
                        ANOMALY_SIGNAL,
                        metric,
                        value.key,
                        observed=score,
                        expected=None,
                        threshold=self.rule.threshold,
                        unit="score",
                        severity=self.rule.severity,
                        message=(
                            f"{value.signal.replace('_', ' ')} {value.metric} {_num(value.value)} "
                            f"is anomalous ({about}score {score:.2f})"
                        ),
                    ),
                )
            )
        kept = localise([b for _, b in candidates], scores, self.key_dims)
        strength = {id(b): s for s, b in candidates}
        out: list[Breach] = []
        for breach in sorted(kept, key=lambda b: -strength[id(b)]):
            dedupe = f"{breach.signal}|{breach.metric}|{join_series(breach.key)}"
            if dedupe in open_alerts:
                out.append(breach)  # already alerting: keeps its alert open, costs nothing
            elif tokens >= 1.0:
                tokens -= 1.0
                out.append(breach)
            else:
                self.suppressed += 1
                state["suppressed"] = int(state.get("suppressed", 0)) + 1
        state["tokens"] = tokens
        self._save(state, window_end)
        return scores, out

    # -- budget and levels ------------------------------------------------------------------------------

    def _refill(self, state: Mapping[str, Any], window_end: int) -> float:
        burst = self.rule.burst
        tokens = float(state.get("tokens", burst))
        last = state.get("end")
        if isinstance(last, int) and window_end > last:
            tokens += (window_end - last) * self.rule.budget_per_day / _DAY_MS
        return min(max(tokens, 0.0), burst)

    def _level_watched(self, key: tuple[str, ...]) -> bool:
        set_dims = sum(1 for v in key[len(KEY_DIMS) :] if v != _ALL)
        return set_dims <= self.rule.max_segment_dims

    # -- checkpoint -------------------------------------------------------------------------------------

    def _load(self, state: Mapping[str, Any]) -> None:
        end = state.get("end")
        if self._written_end is not None and end == self._written_end:
            return  # the checkpoint is the one this layer wrote: its detectors are in memory
        self._detectors = {}
        self._sides = {}
        raw = state.get("detectors", {})
        if state.get("version", ANOMALY_STATE_VERSION) != ANOMALY_STATE_VERSION or not isinstance(raw, dict):
            log.error("anomaly detector state version %r unknown: starting afresh", state.get("version"))
            return
        for ident, doc in raw.items():
            try:
                if isinstance(doc, dict) and "inputs" in doc and "kind" not in doc:
                    # An entry of the previous stack (side, count, last inputs): today's detector
                    # learns those inputs again, so an upgrade keeps the series' recent history.
                    self._detectors[str(ident)] = self._replayed(doc)
                    self._sides[str(ident)] = str(doc.get("side"))
                elif isinstance(doc, dict) and "side" in doc and "params" not in doc:
                    side = doc["side"]
                    if side not in SIDES:
                        raise DetectorStateError(f"anomaly entry side {side!r} is not one of {SIDES}")
                    full = {k: v for k, v in doc.items() if k != "side"}
                    full["params"] = self._factory_params(side)
                    self._detectors[str(ident)] = load_detector(full)
                    self._sides[str(ident)] = side
                else:
                    self._detectors[str(ident)] = load_detector(doc)
            except ValueError as exc:  # DetectorStateError: one bad series does not lose the others
                log.error("anomaly detector %s unreadable (%s): starting it afresh", ident, exc)

    def _replayed(self, doc: Mapping[str, Any]) -> SeriesDetector:
        """Today's detector fed the inputs of a previous-stack entry (side, seen, last inputs)."""
        side, seen, inputs = doc.get("side"), doc.get("seen"), doc.get("inputs")
        if side not in SIDES or not isinstance(seen, int) or not isinstance(inputs, list):
            raise DetectorStateError("compact anomaly entry needs side, seen (int) and inputs (list)")
        if len(inputs) > seen or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in inputs
        ):
            raise DetectorStateError(f"compact anomaly entry holds {len(inputs)} inputs for seen={seen}")
        detector = self.factory(str(side))
        for value in inputs:
            detector.update(float(value))
        return detector

    def _save(self, state: dict[str, Any], window_end: int) -> None:
        state["version"] = ANOMALY_STATE_VERSION
        state["end"] = window_end
        state["detectors"] = {ident: self._entry(ident, det) for ident, det in self._detectors.items()}
        self._written_end = window_end

    def _entry(self, ident: str, detector: SeriesDetector) -> dict[str, Any]:
        """The detector's state, with its parameters replaced by its side when they are the factory's
        (they are the same for every series, and a large share of a small entry)."""
        entry = detector.to_state()
        side = self._sides.get(ident)
        if side is not None and entry.get("params") == self._factory_params(side):
            del entry["params"]
            entry["side"] = side
        return entry

    def _factory_params(self, side: str) -> Any:
        if side not in self._params:
            self._params[side] = self.factory(side).to_state().get("params")
        return self._params[side]


def _expected(detector: SeriesDetector) -> float | None:
    """The detector's expected value before this update (None while it warms up)."""
    if isinstance(detector, CalibratedDetector):
        return detector.expected()
    members = detector.members if isinstance(detector, EnsembleDetector) else [detector]
    for member in members:
        if isinstance(member, RobustBaseline):
            expected = member.expected()
            return None if expected is None else expected[0]
    return None


def sampling_noise(value: SignalValue, expected: float | None) -> float:
    """The standard error of a share of requests from its count alone (0 for any other value).

    A binomial share of ``trials`` requests at the expected rate, taken as at least one request's worth
    (``1 / trials``): a sparse segment's error rate is 0 in most windows, and a spread learnt from those
    makes one stray error infinitely many sigmas, where its count says it is one standard error. A night
    window of 20 requests is judged on its 20, whatever the day's windows taught the detector.

    >>> round(sampling_noise(SignalValue("error_rate", "ratio", (), 1 / 176, trials=176), 0.0) * 176, 3)
    0.997
    >>> sampling_noise(SignalValue("latency", "p99.total", (), 250.0), 200.0)
    0.0
    """
    if value.trials is None or value.trials <= 0:
        return 0.0
    least = min(1.0 / value.trials, 0.5)
    rate = min(max(value.value if expected is None else expected, least), 1.0 - least)
    return math.sqrt(rate * (1.0 - rate) / value.trials)


def _significant(value: float) -> float:
    """``value`` to 6 significant digits: checkpoints stay short (about 8 bytes a number in JSON), and the
    detector sees exactly what it will see again when it is rebuilt from them."""
    return float(f"{value:.6g}")


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
