"""Error-budget burn rates (stream_monitor.core.slo): hand-computed burn rates and alert decisions, the
bounded history, the topology section, and properties against a brute-force reference."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.alerts import AlertBook, DetectorState
from stream_monitor.core.series import Breach, SeriesStats, SignalValue
from stream_monitor.core.signals import WindowEvaluator
from stream_monitor.core.sketch import LogBuckets
from stream_monitor.core.slo import BurnRateTracker, burn_rate, good_and_bad
from stream_monitor.core.topology import (
    DEFAULT_BURN_ALERTS,
    BurnAlert,
    SloObjective,
    SloRule,
    Topology,
)
from stream_monitor.core.windows import WindowSpec
from stream_monitor.topology import TopologyError, load_topology, parse_topology

pytestmark = pytest.mark.unit

MINUTE = 60_000
TOP = ("m", "v1", "control", "home", "*")
AVAILABILITY = SloObjective("availability", "availability", 0.999)
LATENCY = SloObjective("latency", "latency", 0.99, threshold_ms=300.0)
BUCKETS = LogBuckets(0.02)


def _tracker(**rule: Any) -> BurnRateTracker:
    spec: dict[str, Any] = {"objectives": (AVAILABILITY,), "min_events": 0, **rule}
    return BurnRateTracker(SloRule(**spec), window_ms=MINUTE, buckets=BUCKETS)


def _feed(
    tracker: BurnRateTracker,
    history: dict[str, list[int]],
    windows: list[tuple[int, int]],
    key: tuple[str, ...] = TOP,
) -> tuple[list[SignalValue], list[Breach]]:
    out: tuple[list[SignalValue], list[Breach]] = ([], [])
    for n, errors in windows:
        out = tracker.update({key: SeriesStats(n=n, counters={"err": errors})}, history)
    return out


def _values(values: list[SignalValue]) -> dict[str, float]:
    return {v.metric: round(v.value, 9) for v in values}


# -- the maths, by hand ----------------------------------------------------------------------------------


def test_burn_rate_by_hand() -> None:
    assert burn_rate(1, 1000, 0.999) == 1.0  # exactly the budget
    assert burn_rate(30, 1000, 0.999) == 30.0
    assert burn_rate(5, 100, 0.99) == 5.0
    assert burn_rate(0, 1000, 0.999) == 0.0
    assert burn_rate(0, 0, 0.999) is None


def test_latency_good_and_bad_from_buckets() -> None:
    # 97 fast requests, 3 slow ones: 3 % bad against a 1 % budget.
    stats = SeriesStats(n=100, latency={"total": {BUCKETS.bucket(120.0): 97, BUCKETS.bucket(900.0): 3}})
    assert good_and_bad(LATENCY, stats, BUCKETS) == (100, 3)
    # Within the sketch's accuracy of the threshold: 290 ms is good, 310 ms bad (buckets are +/- 2 %).
    near = SeriesStats(n=2, latency={"total": {BUCKETS.bucket(290.0): 1, BUCKETS.bucket(310.0): 1}})
    assert good_and_bad(LATENCY, near, BUCKETS) == (2, 1)
    # Another stage, or none recorded: nothing judged.
    assert good_and_bad(SloObjective("r", "latency", 0.99, 100.0, "ranking"), stats, BUCKETS) == (0, 0)


def test_page_and_ticket_decisions_by_hand() -> None:
    """1000 requests a window; 40 clean windows, then 3 % errors (burn 30)."""
    tracker, history = _tracker(), {}
    values, breaches = _feed(tracker, history, [(1000, 0)] * 40 + [(1000, 30)] * 20)
    # 60 windows: 1 h burn = 20 x 30 / 60,000 / 0.001 = 10; 5 m = 150 / 5,000 / 0.001 = 30;
    # 30 m = 600 / 30,000 / 0.001 = 20; 6 h (60 windows so far) = 10.
    assert _values(values) == {
        "availability.burn_5m": 30.0,
        "availability.burn_30m": 20.0,
        "availability.burn_1h": 10.0,
        "availability.burn_6h": 10.0,
        "availability.page": 10.0,  # min(10, 30): below 14.4, no page yet
        "availability.ticket": 10.0,  # min(10, 20): above 6
    }
    assert [(b.metric, b.severity, b.threshold) for b in breaches] == [
        ("availability.ticket", "warning", 6.0)
    ]
    # 10 more bad windows: the last hour holds 30 bad windows, 900 / 60,000 / 0.001 = 15 > 14.4.
    values, breaches = _feed(tracker, history, [(1000, 30)] * 10)
    assert _values(values)["availability.page"] == 15.0
    assert {b.metric: b.severity for b in breaches} == {
        "availability.page": "critical",
        "availability.ticket": "warning",
    }
    (page,) = [b for b in breaches if b.metric == "availability.page"]
    assert "burns 15.0x over 1h and 30.0x over 5m" in page.message
    assert "30d budget lasts 48.0 h" in page.message  # 720 h / 15
    # The errors stop: the 5 m burn is 4 x 30 / 5000 / 0.001 = 24, then 18, then 12 (< 14.4: the page ends).
    pages = []
    for _ in range(3):
        values, breaches = _feed(tracker, history, [(1000, 0)])
        pages.append(_values(values)["availability.page"])
    assert pages == [15.0, 15.0, 12.0]  # min(1 h = 15, 5 m = 24 / 18 / 12)
    # Ticket: the last 30 windows hold 27 bad ones, 27 x 30 / 30,000 / 0.001 = 27; 6 h: 900 / 73,000 = 12.3.
    assert [b.metric for b in breaches] == ["availability.ticket"]


def test_the_alert_book_opens_and_resolves_on_the_short_window() -> None:
    tracker, history = _tracker(), {}
    book = AlertBook(("model", "model_version", "arm", "surface", "region"), "t", {"error_budget_burn": 1.0})
    state = DetectorState()
    statuses: list[tuple[int, str, str]] = []
    windows = [(1000, 0)] * 30 + [(1000, 60)] * 20 + [(1000, 0)] * 10
    for i, (n, errors) in enumerate(windows):
        values, breaches = _feed(tracker, history, [(n, errors)])
        evaluated = {(v.signal, v.metric, v.key): v.value for v in values}
        for alert in book.update(state, breaches, (i * MINUTE, (i + 1) * MINUTE), i, evaluated):
            statuses.append((i, alert.metric, alert.status))
    # Page: 1 h burn (30 + k windows of history) = 60k / (30 + k) > 14.4 from k = 10 (window 39);
    # it resolves when the 5 m burn drops to 60 x 2 / 5 = 24 ... 60 x 1 / 5 = 12 < 14.4 (window 53).
    # Ticket: 30 m burn = 60k / 30 > 6 and 6 h (all the history) = 60k / (30 + k) > 6 from k = 4 (window
    # 33: 8 and 7.06); after the errors stop, the 30 m window still holds them: it stays open.
    assert statuses == [
        (33, "availability.ticket", "firing"),
        (39, "availability.page", "firing"),
        (53, "availability.page", "resolved"),
    ]


def test_min_events_holds_back_thin_series() -> None:
    tracker, history = _tracker(min_events=5000), {}
    values, breaches = _feed(tracker, history, [(100, 50)] * 10)  # burn 500, but 1000 requests an hour
    metrics = _values(values)
    assert metrics["availability.burn_5m"] == 500.0 and "availability.page" not in metrics
    assert breaches == []


def test_only_top_level_series_by_default_and_every_level_with_all() -> None:
    eu, top = ("m", "v1", "control", "home", "eu"), TOP
    levels = {eu: SeriesStats(n=10, counters={"err": 5}), top: SeriesStats(n=20, counters={"err": 5})}
    history: dict[str, list[int]] = {}
    _tracker().update(levels, history)
    assert list(history) == ["availability|m|v1|control|home|*"]
    history = {}
    _tracker(levels="all").update(levels, history)
    assert sorted(history) == ["availability|m|v1|control|home|*", "availability|m|v1|control|home|eu"]


def test_the_series_cap_keeps_the_largest_newcomers() -> None:
    levels = {
        ("m", v, "control", "home", "*"): SeriesStats(n=n, counters={"err": 0})
        for v, n in (("a", 10), ("b", 300), ("c", 200))
    }
    history: dict[str, list[int]] = {}
    tracker = _tracker(max_series=2)
    tracker.update(levels, history)
    assert sorted(history) == ["availability|m|b|control|home|*", "availability|m|c|control|home|*"]
    # A tracked series keeps its place; the newcomer gets none while the cap is full.
    levels[("m", "d", "control", "home", "*")] = SeriesStats(n=10_000)
    tracker.update(levels, history)
    assert len(history) == 2 and "availability|m|d|control|home|*" not in history


def test_history_is_bounded_and_an_idle_series_is_forgotten() -> None:
    tracker, history = _tracker(), {}
    assert tracker.max_windows == 360  # 6 h of 60 s windows
    _feed(tracker, history, [(1000, 1)] * 400)
    assert len(history["availability|m|v1|control|home|*"]) == 720
    for _ in range(359):
        tracker.update({}, history)
    assert "availability|m|v1|control|home|*" in history  # one window of traffic still in the 6 h
    values, _ = tracker.update({}, history)
    assert history == {} and values == []


def test_series_without_requests_in_the_short_window_keep_their_alert_state() -> None:
    tracker, history = _tracker(), {}
    _feed(tracker, history, [(1000, 100)] * 10)
    values, breaches = _feed(tracker, history, [(0, 0)] * 5)
    metrics = _values(values)
    # No request in the last 5 minutes: no short burn, so no page value (the AlertBook keeps it open).
    assert "availability.burn_5m" not in metrics and "availability.page" not in metrics
    assert metrics["availability.burn_1h"] == 100.0
    # The ticket's windows (6 h, 30 m) still hold requests: it is judged.
    assert metrics["availability.ticket"] == 100.0 and [b.metric for b in breaches] == ["availability.ticket"]


def test_window_sizes_that_do_not_divide_the_alert_windows_round_up() -> None:
    rule = SloRule(objectives=(AVAILABILITY,), alerts=(BurnAlert("p", 3_600_000, 300_000, 14.4, "critical"),))
    tracker = BurnRateTracker(rule, window_ms=7 * MINUTE, buckets=BUCKETS)
    assert tracker.max_windows == 9  # 60 / 7 = 8.6 -> 9 windows
    assert BurnRateTracker(rule, window_ms=MINUTE, buckets=BUCKETS).max_windows == 60


# -- properties ------------------------------------------------------------------------------------------


window_counts = st.lists(
    st.integers(min_value=0, max_value=5000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
    min_size=1,
    max_size=80,
)


def _reference(windows: list[tuple[int, int]], span: int, objective: float) -> float | None:
    tail = windows[-span:]
    return burn_rate(sum(b for _, b in tail), sum(n for n, _ in tail), objective)


@settings(max_examples=60, deadline=None)
@given(windows=window_counts)
def test_burn_rates_match_a_brute_force_reference(windows: list[tuple[int, int]]) -> None:
    alerts = (BurnAlert("page", 10 * MINUTE, 2 * MINUTE, 14.4, "critical"),)
    tracker, history = _tracker(alerts=alerts), {}
    values, breaches = _feed(tracker, history, windows)
    metrics = _values(values)
    long_burn, short_burn = _reference(windows, 10, 0.999), _reference(windows, 2, 0.999)
    if sum(n for n, _ in windows[-10:]) == 0:
        assert metrics == {} and history == {}  # idle for the whole longest window: forgotten
        return
    assert metrics.get("availability.burn_10m") == (None if long_burn is None else round(long_burn, 9))
    assert metrics.get("availability.burn_2m") == (None if short_burn is None else round(short_burn, 9))
    if long_burn is not None and short_burn is not None:
        assert metrics["availability.page"] == round(min(long_burn, short_burn), 9)
        assert bool(breaches) == (min(long_burn, short_burn) > 14.4)
    else:
        assert breaches == []
    assert len(history["availability|m|v1|control|home|*"]) <= 20


@settings(max_examples=30, deadline=None)
@given(windows=window_counts, cut=st.integers(min_value=0, max_value=80))
def test_a_checkpoint_round_trip_mid_stream_changes_nothing(windows: list[tuple[int, int]], cut: int) -> None:
    """The history is restart-safe: saving it in the detector checkpoint and loading it back is invisible."""
    straight, straight_history = _tracker(), {}
    expected = _feed(straight, straight_history, windows)
    restarted, history = _tracker(), {}
    _feed(restarted, history, windows[:cut])
    state = DetectorState(slo_history=history)
    loaded = DetectorState.from_json_dict(orjson.loads(orjson.dumps(state.to_json_dict())))
    got = _feed(_tracker(), loaded.slo_history, windows[cut:]) if windows[cut:] else expected
    assert got == expected and loaded.slo_history == straight_history


# -- wiring: the evaluator hook and the topology ---------------------------------------------------------


def test_the_evaluator_computes_burn_rates_only_with_a_history() -> None:
    topology = Topology(
        "t", WindowSpec(MINUTE), segment_dims=("region",), slo=SloRule(objectives=(AVAILABILITY, LATENCY))
    )
    evaluator = WindowEvaluator(topology)
    fields = {"m|v1|control|home|eu#n": 200.0, "m|v1|control|home|eu#err": 100.0}
    fields[f"m|v1|control|home|eu#lat.total.{BUCKETS.bucket(50.0)}"] = 200.0
    found = evaluator.evaluate(fields, {}, {})
    values, breaches = found.all_values, found.breaches
    assert not [v for v in values if v.signal == "error_budget_burn"]
    history: dict[str, list[int]] = {}
    found = evaluator.evaluate(fields, {}, {}, {}, slo_history=history)
    values, breaches = found.all_values, found.breaches
    burns = {(v.metric, v.key): v.value for v in values if v.signal == "error_budget_burn"}
    top = ("m", "v1", "control", "home", "*")
    assert burns[("availability.page", top)] == 500.0  # 50 % errors against 0.1 %
    assert burns[("latency.page", top)] == 0.0
    assert {k for _, k in burns} == {top}  # the eu slice is not an SLO series by default
    assert {(b.signal, b.metric) for b in breaches if b.signal == "error_budget_burn"} == {
        ("error_budget_burn", "availability.page"),
        ("error_budget_burn", "availability.ticket"),
    }
    assert history == {
        "availability|m|v1|control|home|*": [200, 100],
        "latency|m|v1|control|home|*": [200, 0],
    }


def test_the_default_topology_declares_the_workbook_slos() -> None:
    slo = load_topology().slo
    assert [(o.name, o.kind, o.objective, o.threshold_ms) for o in slo.objectives] == [
        ("availability", "availability", 0.999, None),
        ("latency", "latency", 0.99, 300),
    ]
    assert slo.alerts == DEFAULT_BURN_ALERTS
    assert (slo.levels, slo.max_series, slo.budget_period_ms) == ("top", 64, 30 * 86_400_000)


@pytest.mark.parametrize(
    ("slo", "fragment"),
    [
        ({"objectives": {"availability": {"objective": 1.5}}}, "not in (0, 1)"),
        ({"objectives": {"latency": {"objective": 0.99}}}, "needs threshold_ms"),
        ({"objectives": {"fast": {"objective": 0.99}}}, "slo.objectives.fast: give its kind"),
        ({"objectives": {"availability": {}}}, "objective is required"),
        ({"objectives": {"availability": {"objective": 0.9, "colour": 1}}}, "unknown keys ['colour']"),
        ({"alerts": {"page": {"long": "5m", "short": "1h", "factor": 2, "severity": "critical"}}}, "short"),
        ({"alerts": {"page": {"long": "1h", "short": "5m", "factor": 2}}}, "exactly long, short, factor"),
        ({"alerts": {"page": {"long": "1h", "short": "5m", "factor": 2, "severity": "page"}}}, "severity"),
        ({"levels": "some"}, "levels 'some'"),
        ({"budget_period": "a month"}, "slo.budget_period"),
        ({"window": 3}, "slo: unknown keys ['window']"),
    ],
)
def test_bad_slo_sections_are_refused_precisely(slo: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TopologyError, match=re.escape(fragment)):
        parse_topology({"name": "t", "slo": slo})


def test_bytes_per_series() -> None:
    """A full history of one series under the default topology (two objectives, 6 h of 60 s windows, 2,400
    requests a window): what the detector checkpoint holds for it. docs/signals.md quotes the printed line
    (``pytest tests/unit/test_slo.py -k bytes -s``)."""
    topology = load_topology()
    tracker = BurnRateTracker(topology.slo, topology.window.size_ms, BUCKETS)
    key = ("home-ranker", "2026.11.20-3", "control", "home", "*", "*", "*")
    stats = SeriesStats(
        n=2400,
        counters={"err": 5},
        latency={"total": {BUCKETS.bucket(100.0): 2397, BUCKETS.bucket(400.0): 3}},
    )
    history: dict[str, list[int]] = {}
    for _ in range(tracker.max_windows + 10):
        tracker.update({key: stats}, history)
    assert tracker.max_windows == 360 and all(len(v) == 720 for v in history.values())
    size = len(orjson.dumps(history))
    print(
        f"\nSLO history: {size} bytes of checkpoint JSON per series ({len(history)} objectives, 360 windows)"
    )
    assert 4_000 < size < 8_000, size


def test_burn_rates_reach_prometheus_with_bounded_labels() -> None:
    from prometheus_client import CollectorRegistry

    from stream_monitor.sinks.metrics import MonitorMetrics

    topology = load_topology()
    evaluator = WindowEvaluator(topology)
    fields: dict[str, float] = {}
    # 64 regions x 4 platforms of traffic: the SLO gauges still exist once per top-level series.
    for i in range(64):
        for platform in ("ios", "android", "web", "tv"):
            fields[f"m|v1|control|home|{platform}|r{i}|new#n"] = 50.0
            fields[f"m|v1|control|home|{platform}|r{i}|new#lat.total.{BUCKETS.bucket(80.0)}"] = 50.0
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, topology.segment_dims)
    history: dict[str, list[int]] = {}
    values = evaluator.evaluate(fields, {}, {}, {}, slo_history=history).all_values
    metrics.set_signals(values)
    samples = [
        s.labels
        for family in registry.collect()
        for s in family.samples
        if s.name == "stream_monitor_signal_value" and s.labels["signal"] == "error_budget_burn"
    ]
    assert len(samples) == 12  # 2 SLOs x (4 windows + 2 rules)
    assert {(s["model"], s["model_version"], s["segment"]) for s in samples} == {("m", "v1", "*")}
    assert (
        registry.get_sample_value(
            "stream_monitor_signal_value",
            {
                "signal": "error_budget_burn",
                "metric": "availability.page",
                "model": "m",
                "model_version": "v1",
                "arm": "control",
                "surface": "home",
                "segment": "*",
            },
        )
        == 0.0
    )
