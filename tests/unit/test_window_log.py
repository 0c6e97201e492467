"""The diagnosis log entry of a closed window (core/window_log.py): round trip, what is left out, errors."""

from __future__ import annotations

import math
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.series import SignalValue
from stream_monitor.core.window_log import NOT_LOGGED, WindowEntry, WindowLogError

pytestmark = pytest.mark.unit

KEY = ("m", "v1", "control", "home", "*", "eu", "*")

_part = st.text(min_size=1, max_size=6)
_value = st.builds(
    SignalValue,
    st.sampled_from(["error_rate", "latency", "freshness", "volume"]),
    st.sampled_from(["rate", "p99.total", "p95_age_s.x", "count"]),
    st.tuples(*[_part] * 7),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_value, max_size=40), st.integers(0, 2**40))
def test_an_entry_round_trips_every_finite_value(values: list[SignalValue], start: int) -> None:
    # One value per series (as the evaluator gives): the round trip keeps them all, key parts included.
    unique = list({(v.signal, v.metric, v.key): v for v in values}.values())
    back = WindowEntry.decode(WindowEntry(start, start + 60_000, unique, [{"id": "a"}]).encode())
    assert (back.start, back.end, back.alerts) == (start, start + 60_000, [{"id": "a"}])
    assert sorted(back.values, key=repr) == sorted(unique, key=repr)


def test_of_leaves_out_what_a_replay_does_not_record_and_non_finite_values() -> None:
    values = [SignalValue(signal, "m", KEY, 1.0) for signal in sorted(NOT_LOGGED)]
    values += [SignalValue("error_rate", "rate", KEY, math.nan), SignalValue("error_rate", "rate", KEY, 0.1)]
    entry = WindowEntry.of(0, 60_000, values, [{"id": "x", "status": "firing"}])
    assert entry.values == [SignalValue("error_rate", "rate", KEY, 0.1)]
    assert WindowEntry.decode(entry.encode()).alerts == [{"id": "x", "status": "firing"}]


def test_a_window_of_default_traffic_is_small() -> None:
    # 500 series of 7-part keys (about a default-topology window): each key is written once, compressed.
    values = [
        SignalValue(f"s{i % 20}", f"m{i % 7}", (*KEY[:4], f"p{i % 4}", f"r{i % 5}", "*"), i / 7)
        for i in range(500)
    ]
    assert len(WindowEntry.of(0, 60_000, values).encode()) < 8_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not compressed", "not compressed JSON"),
        (zlib.compress(b"[1, 2]"), "format 'list'"),
        (zlib.compress(orjson.dumps({"f": 99})), "format 99, expected 1"),
        (
            zlib.compress(
                orjson.dumps({"f": 1, "s": 0, "e": 1, "k": [], "x": {"a": {"b": [[3, 1.0]]}}, "a": []})
            ),
            "malformed",
        ),
        (zlib.compress(orjson.dumps({"f": 1, "s": 0})), "malformed"),
    ],
)
def test_unreadable_entries_raise_a_precise_error(raw: bytes, message: str) -> None:
    with pytest.raises(WindowLogError, match=message):
        WindowEntry.decode(raw)
