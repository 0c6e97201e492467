"""One closed window's entry in the diagnosis log: its signal values and the alerts it fired or resolved.

The closer writes one entry per closed window into the state store, in the same atomic step that marks
the window closed (``StateStore.close_window``), so ``stream-monitor diagnose`` without ``--from`` has the
per-window history that a replay of a recording has (docs/diagnose.md "Live mode"). This module only
encodes and decodes entries; it imports the standard library, orjson and the core signal types.

The entry keeps what :class:`~stream_monitor.diagnosing.DiagnosisRecorder` keeps of a window in a replay:
the evaluator's values and the label values. Error-budget burn rates, anomaly scores and dataset arrival
values are left out (the recorder does not see them either), so a live and a replayed diagnosis of the
same traffic rank from the same series. Encoded, an entry is zlib-compressed JSON with each distinct
series key written once: about 4.7 KB (5.4 KB of Redis memory) per one-minute window of the default
topology at 30 requests/s (docs/benchmarks.md "Diagnosis on the real path").
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_monitor.core.anomaly import ANOMALY_SIGNAL
from stream_monitor.core.datasets import SIGNAL as DATASET_SIGNAL
from stream_monitor.core.series import SignalValue
from stream_monitor.core.slo import SIGNAL as SLO_SIGNAL

__all__ = ["FORMAT", "NOT_LOGGED", "WindowEntry", "WindowLogError"]

FORMAT = 1
# Signals computed beside the evaluator's values, which a replayed diagnosis does not record either.
NOT_LOGGED = frozenset({SLO_SIGNAL, ANOMALY_SIGNAL, DATASET_SIGNAL})


class WindowLogError(ValueError):
    """A stored window entry that cannot be read (corrupt, or written by an unknown format)."""


@dataclass(slots=True)
class WindowEntry:
    """One closed window: its signal values and the alert documents it emitted.

    >>> key = ("m", "v1", "control", "home", "*", "eu", "*")
    >>> e = WindowEntry(0, 60_000, [SignalValue("error_rate", "rate", key, 0.25)],
    ...                 [{"id": "a1", "status": "firing"}])
    >>> back = WindowEntry.decode(e.encode())
    >>> back.start, back.values[0].value, back.values[0].key == key, back.alerts[0]["id"]
    (0, 0.25, True, 'a1')
    """

    start: int
    end: int
    values: list[SignalValue] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(
        cls, start: int, end: int, values: Iterable[SignalValue], alerts: Iterable[Mapping[str, Any]] = ()
    ) -> WindowEntry:
        """The entry of a window as the closer sees it (drops the signals in ``NOT_LOGGED``)."""
        kept = [v for v in values if v.signal not in NOT_LOGGED and math.isfinite(v.value)]
        return cls(start, end, kept, [dict(a) for a in alerts])

    def encode(self) -> bytes:
        """Compressed JSON: ``{"f", "s", "e", "k": [key, ...], "x": {signal: {metric: [[k, v]]}}, "a"}``."""
        keys: dict[tuple[str, ...], int] = {}
        grouped: dict[str, dict[str, list[list[float]]]] = {}
        for v in self.values:
            if not math.isfinite(v.value):
                continue  # JSON has no NaN; a replayed history drops them too
            index = keys.setdefault(v.key, len(keys))
            grouped.setdefault(v.signal, {}).setdefault(v.metric, []).append([index, v.value])
        doc = {"f": FORMAT, "s": self.start, "e": self.end, "k": list(keys), "x": grouped, "a": self.alerts}
        return zlib.compress(orjson.dumps(doc), 6)

    @classmethod
    def decode(cls, raw: bytes) -> WindowEntry:
        """The entry from :meth:`encode`'s bytes; :class:`WindowLogError` when they are not one."""
        try:
            doc = orjson.loads(zlib.decompress(raw))
        except (zlib.error, orjson.JSONDecodeError) as exc:
            raise WindowLogError(f"window log entry is not compressed JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("f") != FORMAT:
            found = doc.get("f") if isinstance(doc, dict) else type(doc).__name__
            raise WindowLogError(f"window log entry format {found!r}, expected {FORMAT}")
        try:
            keys = [tuple(str(part) for part in k) for k in doc["k"]]
            values = [
                SignalValue(str(signal), str(metric), keys[int(i)], float(value))
                for signal, metrics in doc["x"].items()
                for metric, points in metrics.items()
                for i, value in points
            ]
            alerts = [dict(a) for a in doc["a"]]
            return cls(int(doc["s"]), int(doc["e"]), values, alerts)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise WindowLogError(f"window log entry is malformed: {exc!r}") from exc
