"""Dataset / partition arrival: is each batch dataset on time, and did its newest partition hold enough rows?

Batch jobs announce each partition they land with a ``dataset`` event (``name``, ``partition``, ``ts``,
``rows``; see docs/events.md). The state store keeps the newest arrival of each configured dataset (by
``ts``), written with the batch's commit. At every window close the closer judges each dataset against its
:class:`~stream_monitor.core.topology.DatasetRule`, in event time:

* ``late.<name>``: age of the newest partition at the window's end, in seconds; late above
  ``every + grace``. A partition whose ``ts`` is past the window's end counts as age 0 (it had landed by
  the time the window closed). A dataset with no partition seen yet is not judged.
* ``rows.<name>``: rows of the newest partition; short below ``min_rows``.

Pure: standard library, orjson and other ``core`` modules only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from stream_monitor.core.fields import ALL
from stream_monitor.core.series import Breach, SignalValue
from stream_monitor.core.topology import DatasetRule

__all__ = ["SIGNAL", "DatasetArrival", "check_datasets"]

SIGNAL = "dataset_arrival"


@dataclass(frozen=True, slots=True)
class DatasetArrival:
    """The newest partition of one dataset, as stored (JSON bytes in the state store).

    >>> a = DatasetArrival("user_features_hourly", "2025-11-25T15", 1_764_086_400_000, 120_000)
    >>> DatasetArrival.from_json(a.to_json()) == a
    True
    """

    name: str
    partition: str
    ts: int
    rows: int

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"name": self.name, "partition": self.partition, "ts": self.ts, "rows": self.rows}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> DatasetArrival:
        """Parse a stored record; ValueError names what is wrong."""
        try:
            doc = orjson.loads(raw)
            arrival = cls(str(doc["name"]), str(doc["partition"]), int(doc["ts"]), int(doc["rows"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"stored dataset arrival {raw[:80]!r} is malformed: {exc!r}") from exc
        return arrival


def check_datasets(
    rules: Sequence[DatasetRule], latest: Mapping[str, DatasetArrival], window_end: int, n_dims: int
) -> tuple[list[SignalValue], list[Breach]]:
    """Values and breaches of every configured dataset at the close of the window ending at ``window_end``.

    >>> rule = DatasetRule("user_features_hourly", every_ms=3_600_000, grace_ms=1_800_000, min_rows=1000)
    >>> newest = {rule.name: DatasetArrival(rule.name, "2025-11-25T12", 0, 500)}
    >>> values, breaches = check_datasets([rule], newest, window_end=6_000_000, n_dims=4)
    >>> [(v.metric, v.value) for v in values]
    [('late.user_features_hourly', 6000.0), ('rows.user_features_hourly', 500.0)]
    >>> [(b.metric, b.threshold) for b in breaches]
    [('late.user_features_hourly', 5400.0), ('rows.user_features_hourly', 1000.0)]
    """
    key = (ALL,) * n_dims
    values: list[SignalValue] = []
    breaches: list[Breach] = []
    for rule in rules:
        arrival = latest.get(rule.name)
        if arrival is None:
            continue  # never seen: nothing to measure lateness from
        age_s = max(0, window_end - arrival.ts) / 1000
        deadline_s = rule.deadline_ms / 1000
        values.append(SignalValue(SIGNAL, f"late.{rule.name}", key, age_s))
        values.append(SignalValue(SIGNAL, f"rows.{rule.name}", key, float(arrival.rows)))
        if age_s > deadline_s:
            breaches.append(
                Breach(
                    SIGNAL,
                    f"late.{rule.name}",
                    key,
                    age_s,
                    rule.every_ms / 1000,
                    deadline_s,
                    "s",
                    rule.severity,
                    f"dataset {rule.name} is late: its newest partition {arrival.partition!r} landed "
                    f"{_age(age_s)} ago, a partition is due every {_age(rule.every_ms / 1000)} "
                    f"(+{_age(rule.grace_ms / 1000)} grace)",
                )
            )
        if arrival.rows < rule.min_rows:
            breaches.append(
                Breach(
                    SIGNAL,
                    f"rows.{rule.name}",
                    key,
                    float(arrival.rows),
                    None,
                    float(rule.min_rows),
                    "rows",
                    rule.severity,
                    f"dataset {rule.name} partition {arrival.partition!r} has {arrival.rows} rows, "
                    f"fewer than the {rule.min_rows} expected",
                )
            )
    return values, breaches


def _age(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
