"""What a window close hands to observers: the seam offline tools and benches watch the closer through.

The closer evaluates each window once (signals, SLO burn rates, dataset arrivals, labels, the anomaly
layer), judges the breaches into alerts and commits the close. Then every :class:`WindowObserver` given
to the engine gets one :class:`ClosedWindow`: the values grouped by the family that produced them, the
signal breaches *before* localisation (what a baseline without localisation would have alerted on) and
the alerts. ``diagnose`` records its signal history this way and ``bench detection`` runs its baselines
on the same windows the monitor judged, so neither patches the engine and both see exactly what the
worker computes.

>>> from stream_monitor.core.series import SignalValue
>>> seen = []
>>> class Counter:
...     def on_closed(self, window: ClosedWindow) -> None:
...         seen.append((window.start, len(window.values_of(SIGNALS, LABELS))))
>>> window = ClosedWindow(0, 60_000, 61_000, {SIGNALS: (SignalValue("volume", "count", ("m",), 3.0),)})
>>> Counter().on_closed(window)
>>> seen, window.values_of(SLO)
([(0, 1)], [])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from stream_monitor.core.series import Breach, SignalValue

if TYPE_CHECKING:
    from stream_monitor.core.alerts import Alert

__all__ = ["ANOMALY", "DATASETS", "FAMILIES", "LABELS", "SIGNALS", "SLO", "ClosedWindow", "WindowObserver"]

# The families of values a close produces, in the order the closer computes them.
SIGNALS = "signals"  # the window's own signals (rates, latency, freshness, funnel, volume, profiles)
SLO = "slo"  # error-budget burn rates
DATASETS = "datasets"  # dataset arrival checks
LABELS = "labels"  # online metrics from engagement joined to serving
ANOMALY = "anomaly"  # the anomaly layer's scores of watched series
FAMILIES = (SIGNALS, SLO, DATASETS, LABELS, ANOMALY)


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """One window as the closer evaluated and committed it."""

    start: int
    end: int
    # The closer's clock when it closed the window (what alert timestamps use).
    now_ms: int
    values: Mapping[str, tuple[SignalValue, ...]] = field(default_factory=dict)
    # The signal family's breaches before localisation; the localised ones became ``alerts``.
    raw_breaches: tuple[Breach, ...] = ()
    alerts: tuple[Alert, ...] = ()

    def values_of(self, *families: str) -> list[SignalValue]:
        """The values of ``families`` (all of them when none is named), in close order."""
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown value families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
        wanted = families or FAMILIES
        return [v for family in FAMILIES if family in wanted for v in self.values.get(family, ())]


class WindowObserver(Protocol):
    """Told of each window the engine closes, after the close is committed (in window order)."""

    def on_closed(self, window: ClosedWindow) -> None: ...
