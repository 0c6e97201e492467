"""The anomaly layer (core/anomaly.py): detectors on per-window series, localisation, alarm budget, state."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from stream_monitor.core.alerts import DetectorState
from stream_monitor.core.anomaly import ANOMALY_SIGNAL, AnomalyLayer
from stream_monitor.core.series import Breach, SignalValue
from stream_monitor.core.topology import AnomalyRule, AnomalySeries
from stream_monitor.topology import TopologyError, parse_topology

DIMS = ("model", "model_version", "arm", "surface", "region")
MIN = 60_000
LATENCY = AnomalySeries("latency", "p99.*", "up")


def key(region: str = "*") -> tuple[str, ...]:
    return ("m", "v1", "control", "home", region)


def layer(**rule: Any) -> AnomalyLayer:
    return AnomalyLayer(AnomalyRule(series=(LATENCY,), **rule), DIMS, MIN)


def clean(rng: random.Random, level: float = 200.0) -> float:
    return level + rng.gauss(0.0, 5.0)


def run(
    anomaly: AnomalyLayer,
    state: dict[str, Any],
    windows: range,
    value_of: Any,
    breaches: list[Breach] | None = None,
    open_alerts: tuple[str, ...] = (),
) -> list[list[Breach]]:
    out = []
    for i in windows:
        values = [SignalValue("latency", "p99.total", k, v) for k, v in value_of(i).items()]
        _, found = anomaly.evaluate(values, breaches or [], state, (i + 1) * MIN, open_alerts)
        out.append(found)
    return out


def test_clean_series_stays_quiet_and_a_shift_is_found() -> None:
    rng = random.Random(1)
    anomaly, state = layer(), {}
    quiet = run(anomaly, state, range(200), lambda i: {key(): clean(rng)})
    assert not any(quiet)
    found = run(anomaly, state, range(200, 203), lambda i: {key(): clean(rng, 280.0)})
    first = next(b for window in found for b in window)
    assert (first.signal, first.metric, first.key) == (ANOMALY_SIGNAL, "latency.p99.total", key())
    assert first.threshold == 0.6 and first.observed >= 0.6
    assert "latency p99.total" in first.message and "expected about 2" in first.message


def test_a_sparse_error_rate_is_judged_on_its_request_count() -> None:
    """A segment of about 176 requests a minute with no errors for hours: one error is 1.4 standard
    errors of its count (an alert on every stray error was the layer's commonest false alarm); 15 errors
    in a window are an anomaly however few requests there are."""
    rule = AnomalyRule(series=(AnomalySeries("error_rate", "*", "up"),))
    anomaly, state = AnomalyLayer(rule, DIMS, MIN), {}

    def window(i: int, errors: int) -> list[Breach]:
        value = SignalValue("error_rate", "ratio", key(), errors / 176, trials=176)
        return anomaly.evaluate([value], [], state, (i + 1) * MIN, ())[1]

    assert not any(window(i, 1 if i % 37 == 36 else 0) for i in range(300))
    assert window(300, 15)


def test_unwatched_signals_and_deep_slices_are_ignored() -> None:
    anomaly, state = layer(max_segment_dims=0), {}
    values = [
        SignalValue("error_rate", "ratio", key(), 0.5),
        SignalValue("latency", "p50.total", ("m", "v1", "control", "home", "eu"), 1.0),
    ]
    scores, found = anomaly.evaluate(values, [], state, MIN, ())
    assert scores == [] and found == [] and state["detectors"] == {}


def test_a_threshold_breach_on_the_same_series_group_makes_the_anomaly_redundant() -> None:
    rng = random.Random(2)
    anomaly, state = layer(), {}
    run(anomaly, state, range(100), lambda i: {key(): clean(rng)})
    sla = Breach("latency", "p99.total", key("eu"), 900.0, None, 300.0, "ms", "warning", "over SLA")
    found = run(anomaly, state, range(100, 103), lambda i: {key(): 900.0}, breaches=[sla])
    assert not any(found)


def test_a_slice_anomaly_is_reported_on_the_slice_not_on_its_roll_up() -> None:
    rng = random.Random(3)
    anomaly, state = layer(), {}

    def values(i: int, eu: float = 200.0) -> dict[tuple[str, ...], float]:
        return {key(): clean(rng), key("eu"): clean(rng, eu), key("us"): clean(rng)}

    run(anomaly, state, range(100), values)
    # eu quadruples and drags the total up with it; us stays as it was.
    found = run(anomaly, state, range(100, 102), lambda i: {**values(i, 800.0), key(): 500.0})
    keys = {b.key for window in found for b in window}
    assert keys == {key("eu")}


def test_the_budget_caps_new_alerts_and_counts_the_rest() -> None:
    rng = random.Random(4)
    anomaly, state = layer(burst=2.0, budget_per_day=1.0), {}
    regions = [f"r{i}" for i in range(10)]

    def values(level: float) -> dict[tuple[str, ...], float]:
        # Per-model totals of ten models: no roll-up relation, so localisation keeps them all.
        return {("m", f"v{r}", "control", "home", "*"): clean(rng, level) for r in regions}

    run(anomaly, state, range(100), lambda i: values(200.0))
    found = run(anomaly, state, range(100, 101), lambda i: values(2000.0))[0]
    assert len(found) == 2  # the burst
    assert anomaly.suppressed == 8 and state["suppressed"] == 8
    # A day later one token is back (refill 1/day): one more alert opens, the others stay suppressed.
    day = 24 * 60
    run(anomaly, state, range(101, 101 + day), lambda i: values(200.0))
    again = run(anomaly, state, range(101 + day, 102 + day), lambda i: values(5000.0))[0]
    assert len(again) == 1


def test_an_alert_already_open_costs_no_token() -> None:
    rng = random.Random(5)
    anomaly, state = layer(burst=1.0, budget_per_day=0.0), {}
    run(anomaly, state, range(100), lambda i: {key(): clean(rng)})
    first = run(anomaly, state, range(100, 101), lambda i: {key(): 900.0})[0]
    assert len(first) == 1 and state["tokens"] == 0.0
    dedupe = f"{ANOMALY_SIGNAL}|latency.p99.total|{'|'.join(key())}"
    kept = run(anomaly, state, range(101, 102), lambda i: {key(): 950.0}, open_alerts=(dedupe,))[0]
    assert len(kept) == 1  # still breaching, so its alert stays open
    assert anomaly.suppressed == 0


def test_max_series_bounds_the_detectors() -> None:
    anomaly, state = layer(max_series=3), {}
    values = [SignalValue("latency", "p99.total", ("m", f"v{i}", "c", "h", "*"), 1.0) for i in range(10)]
    anomaly.evaluate(values, [], state, MIN, ())
    assert len(state["detectors"]) == 3 and anomaly.untracked == 7


def test_a_checkpoint_restores_the_same_detectors() -> None:
    """A second worker (or a restart) continues from the JSON checkpoint with the same scores."""
    rng = random.Random(6)
    series = [clean(rng) for _ in range(150)] + [clean(rng, 260.0) for _ in range(10)]
    first, state = layer(), {}
    scores_first = []
    for i, v in enumerate(series):
        scores, _ = first.evaluate(
            [SignalValue("latency", "p99.total", key(), v)], [], state, (i + 1) * MIN, ()
        )
        scores_first.append(scores[0].value)
        if i == 120:
            checkpoint = orjson.loads(orjson.dumps(DetectorState(anomaly=state).to_json_dict()))
    restored = DetectorState.from_json_dict(checkpoint).anomaly
    second = layer()
    scores_second = []
    for i, v in enumerate(series[121:], start=121):
        scores, _ = second.evaluate(
            [SignalValue("latency", "p99.total", key(), v)], [], restored, (i + 1) * MIN, ()
        )
        scores_second.append(scores[0].value)
    assert scores_second == scores_first[121:]
    assert max(scores_second) >= 0.6  # the shift at the end is in the compared stretch


def test_a_corrupt_detector_entry_restarts_that_series_only() -> None:
    anomaly, state = layer(), {}
    values = [SignalValue("latency", "p99.total", key(r), 1.0) for r in ("eu", "us")]
    anomaly.evaluate(values, [], state, MIN, ())
    doc = orjson.loads(orjson.dumps(state))
    ident = next(iter(doc["detectors"]))
    doc["detectors"][ident] = {"kind": "ensemble", "version": 1, "members": "pickle me"}
    fresh = layer()
    fresh.evaluate(values, [], doc, 2 * MIN, ())
    assert set(doc["detectors"]) == set(state["detectors"])
    kept = next(i for i in doc["detectors"] if i != ident)
    assert doc["detectors"][kept]["seen"] == 2 and doc["detectors"][kept]["level"] == [1.0, 1.0]
    assert doc["detectors"][ident]["seen"] == 1
    # A compact entry that does not add up is refused the same way.
    doc["detectors"][ident] = {"side": "up", "seen": 1, "inputs": [1.0, "2"]}
    layer().evaluate(values, [], doc, 3 * MIN, ())
    assert doc["detectors"][ident]["seen"] == 1 and doc["detectors"][kept]["seen"] == 3


def test_an_entry_holds_its_side_instead_of_the_shared_parameters() -> None:
    anomaly, state = layer(), {}
    for i in range(300):
        anomaly.evaluate(
            [SignalValue("latency", "p99.total", key(), 200.0 + i % 7)], [], state, (i + 1) * MIN, ()
        )
    (entry,) = state["detectors"].values()
    assert entry["side"] == "up" and entry["seen"] == 300 and "params" not in entry
    full = next(iter(anomaly._detectors.values())).to_state()
    assert len(orjson.dumps(entry)) < len(orjson.dumps(full)) - 250
    assert len(orjson.dumps(entry)) < 8_000  # the topology's max_series comment: about 7 KB a series
    entry["side"] = "sideways"
    layer().evaluate([SignalValue("latency", "p99.total", key(), 200.0)], [], state, 301 * MIN, ())
    assert state["detectors"][next(iter(state["detectors"]))]["seen"] == 1  # refused, started afresh


def test_an_entry_of_the_previous_stack_is_learnt_again() -> None:
    """An upgrade keeps each series' recent history: the previous stack's compact entry (side, count,
    last inputs) is fed to today's detector."""
    inputs = [200.0 + i % 7 for i in range(135)]
    state = {"version": 1, "end": 135 * MIN, "detectors": {}}
    ident = f"latency|p99.total|{'|'.join(key())}"
    state["detectors"][ident] = {"side": "up", "seen": 500, "inputs": inputs}
    anomaly = layer()
    anomaly.evaluate([SignalValue("latency", "p99.total", key(), 201.0)], [], state, 136 * MIN, ())
    entry = state["detectors"][ident]
    assert entry["side"] == "up" and entry["seen"] == 136 and entry["level"][-1] == 201.0


def test_the_topology_section_is_parsed_and_checked() -> None:
    doc = {
        "name": "t",
        "anomaly": {"threshold": 0.8, "series": [{"signal": "volume", "side": "down"}]},
    }
    rule = parse_topology(doc).anomaly
    assert rule.threshold == 0.8 and rule.watch("volume", "count") == AnomalySeries("volume", "*", "down")
    assert rule.watch("latency", "p99.total") is None
    with pytest.raises(TopologyError, match="side 'sideways'"):
        parse_topology({"anomaly": {"series": [{"signal": "volume", "side": "sideways"}]}})
    with pytest.raises(TopologyError, match=r"anomaly.series\[0\]: unknown keys \['k'\]"):
        parse_topology({"anomaly": {"series": [{"signal": "volume", "k": 1}]}})
    with pytest.raises(TopologyError, match="threshold must be in"):
        parse_topology({"anomaly": {"threshold": 2}})
