"""Window aggregates and the per-batch accumulator (stream_monitor.core.aggregates).

Aggregates are flat ``"<series>#<metric>" -> sum`` maps per window, per input partition. Everything is a
sum, so accumulating events in one batch or in several and adding the results must give the same window.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.aggregates import (
    ENGAGEMENT_SERIES,
    OTHER,
    SEP_METRIC,
    SEP_SERIES,
    PartitionDelta,
    SeriesKeyer,
    WindowAccumulator,
)
from stream_monitor.core.events import EngagementEvent, ServingEvent
from stream_monitor.core.series import parse_window
from stream_monitor.core.signals import WindowEvaluator
from stream_monitor.core.sketch import LogBuckets
from stream_monitor.core.topology import LatencyRule, Topology
from stream_monitor.core.windows import WindowSpec

pytestmark = pytest.mark.unit

HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=150)

T0 = 1_764_086_400_000  # a whole minute
MINUTE = 60_000
SERVING = "recs.serving/0"
SERVING_1 = "recs.serving/1"
ENGAGEMENT = "recs.engagement/0"


def _topology(**kw: Any) -> Topology:
    base: dict[str, Any] = {
        "name": "t",
        "window": WindowSpec(MINUTE, 30_000),
        "segment_dims": ("platform", "region"),
        "latency": LatencyRule(slas_ms={"total": {0.99: 250.0}, "ranking": {0.99: 100.0}}),
    }
    base.update(kw)
    return Topology(**base)


def _serving(
    ts: int = T0,
    *,
    platform: str = "ios",
    region: str = "eu",
    latency: dict[str, float] | None = None,
    error: str | None = None,
    fallback: bool = False,
    returned: int | None = 20,
    model: str = "m",
    version: str = "v1",
    arm: str = "control",
) -> ServingEvent:
    return ServingEvent(
        request_id="r",
        ts=ts,
        model=model,
        model_version=version,
        arm=arm,
        surface="home",
        segment={"platform": platform, "region": region},
        latency_ms={"total": 80.0} if latency is None else latency,
        funnel={} if returned is None else {"returned": returned},
        items=[{"id": "s1"}],
        fallback=fallback,
        error=error,
    )


def _series(platform: str = "ios", region: str = "eu", version: str = "v1") -> str:
    return SEP_SERIES.join(("m", version, "control", "home", platform, region))


# -- SeriesKeyer ----------------------------------------------------------------------------------------


def test_keyer_joins_values_in_dimension_order() -> None:
    keyer = SeriesKeyer(("model", "region"), max_values=8)
    assert keyer.key(("m", "eu")) == "m|eu"
    assert keyer.split("m|eu") == {"model": "m", "region": "eu"}
    assert keyer.folded == 0


def test_keyer_cardinality_cap_folds_newcomers_into_other() -> None:
    keyer = SeriesKeyer(("model", "region"), max_values=2)
    assert [keyer.key(("m", r)) for r in ("us", "eu", "apac", "latam", "us", "eu")] == [
        "m|us",
        "m|eu",
        f"m|{OTHER}",
        f"m|{OTHER}",
        "m|us",
        "m|eu",
    ]
    assert keyer.folded == 2
    # Folding is stable: a folded value stays folded (and is counted each time it is seen).
    assert keyer.key(("m", "apac")) == f"m|{OTHER}"
    assert keyer.folded == 3


def test_keyer_cap_is_per_dimension() -> None:
    keyer = SeriesKeyer(("model", "region"), max_values=1)
    assert keyer.key(("a", "x")) == "a|x"
    assert keyer.key(("b", "x")) == f"{OTHER}|x"  # model is full, region still has x
    assert keyer.key(("a", "y")) == f"a|{OTHER}"
    assert keyer.key(("b", "y")) == f"{OTHER}|{OTHER}"
    assert keyer.folded == 3


@pytest.mark.parametrize(
    ("value", "clean"),
    [
        ("a|b", "a_b"),
        ("a#b", "a_b"),
        ("|#|", "___"),
        ("#n", "_n"),
        ("*", "_"),  # the roll-up marker is not a value
        ("a*b", "a*b"),
        ("plain-value.1", "plain-value.1"),
    ],
)
def test_keyer_neutralises_separators(value: str, clean: str) -> None:
    keyer = SeriesKeyer(("model", "region"), max_values=8)
    series = keyer.key(("m", value))
    assert series == f"m{SEP_SERIES}{clean}"
    assert SEP_METRIC not in series
    assert keyer.split(series) == {"model": "m", "region": clean}


@HYPOTHESIS
@given(
    rows=st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6), st.text(max_size=6)), max_size=60),
    cap=st.integers(min_value=1, max_value=5),
)
def test_keyer_properties(rows: list[tuple[str, str, str]], cap: int) -> None:
    keyer = SeriesKeyer(("a", "b", "c"), max_values=cap)
    seen: dict[tuple[str, str, str], str] = {}
    for row in rows:
        series = keyer.key(row)
        # Always exactly one part per dimension, and never a metric separator: the flat field name
        # "<series>#<metric>" can always be split back.
        parts = series.split(SEP_SERIES)
        assert len(parts) == 3
        assert SEP_METRIC not in series
        assert keyer.split(series) == dict(zip(("a", "b", "c"), parts, strict=True))
        # Stable: the same values always give the same series.
        assert seen.setdefault(row, series) == series
    for i in range(3):
        values = {s.split(SEP_SERIES)[i] for s in seen.values()}
        assert len(values - {OTHER}) <= cap


def test_keyer_cache_does_not_hide_folding() -> None:
    keyer = SeriesKeyer(("model",), max_values=1)
    for _ in range(3):
        assert keyer.key(("a",)) == "a"
        assert keyer.key(("b",)) == OTHER
    assert keyer.folded == 3


# -- WindowAccumulator: offsets and counts --------------------------------------------------------------


def test_offsets_first_and_next_per_partition() -> None:
    acc = WindowAccumulator(_topology())
    assert not acc.pending()
    acc.add_serving(SERVING, 41, _serving())
    acc.add_serving(SERVING, 42, _serving())
    acc.add_rejected(SERVING, 45, "invalid_json")  # gaps (compacted or filtered offsets) are fine
    acc.add_serving(SERVING_1, 7, _serving())
    acc.add_engagement(ENGAGEMENT, 0, EngagementEvent("r", T0, "click"))
    acc.add_other(ENGAGEMENT, 1)
    assert acc.pending()
    parts = acc.take()
    assert not acc.pending()
    assert acc.take() == {}
    assert {tp: (d.first_offset, d.next_offset) for tp, d in parts.items()} == {
        SERVING: (41, 46),
        SERVING_1: (7, 8),
        ENGAGEMENT: (0, 2),
    }
    assert all(d.partition == tp for tp, d in parts.items())


def test_counts_reconcile() -> None:
    acc = WindowAccumulator(_topology())
    offset = 0
    for i in range(10):
        acc.add_serving(SERVING, offset, _serving(T0 + i))
        offset += 1
    for reason in ("invalid_json", "invalid_json", "late_event"):
        acc.add_rejected(SERVING, offset, reason)
        offset += 1
    acc.add_other(SERVING, offset)
    delta = acc.take()[SERVING]
    assert delta.counts == {
        "consumed": 14,
        "accepted": 11,
        "rejected": 3,
        "rejected.invalid_json": 2,
        "rejected.late_event": 1,
    }
    assert delta.counts["consumed"] == delta.counts["accepted"] + delta.counts["rejected"]
    # Rejected and window-less messages do not touch windows.
    assert sum(delta.window_events.values()) == 10


def test_window_events_and_max_event_ms_per_window() -> None:
    acc = WindowAccumulator(_topology())
    stamps = [T0, T0 + 59_999, T0 + MINUTE, T0 + 3 * MINUTE + 5, T0 + 1]
    for offset, ts in enumerate(stamps):
        acc.add_serving(SERVING, offset, _serving(ts))
    delta = acc.take()[SERVING]
    assert delta.window_events == {T0: 3, T0 + MINUTE: 1, T0 + 3 * MINUTE: 1}
    assert sorted(delta.windows) == [T0, T0 + MINUTE, T0 + 3 * MINUTE]
    assert delta.max_event_ms == T0 + 3 * MINUTE + 5  # out of order input: the maximum, not the last
    for start, n in delta.window_events.items():
        assert delta.windows[start][f"{_series()}#n"] == n


def test_rejected_only_partition_has_no_event_time() -> None:
    acc = WindowAccumulator(_topology())
    acc.add_rejected(SERVING, 3, "invalid_field")
    delta = acc.take()[SERVING]
    assert delta.windows == {} and delta.window_events == {}
    assert delta.max_event_ms == 0


# -- WindowAccumulator: what is counted -----------------------------------------------------------------


def test_latency_buckets_for_configured_stages_only() -> None:
    topo = _topology()
    acc = WindowAccumulator(topo)
    lb = LogBuckets(topo.relative_accuracy)
    acc.add_serving(SERVING, 0, _serving(latency={"total": 80.0, "ranking": 20.0, "retrieval": 5.0}))
    acc.add_serving(SERVING, 1, _serving(latency={"total": 0.0}))  # no ranking: nothing for that stage
    window = acc.take()[SERVING].windows[T0]
    prefix = f"{_series()}#"
    latency = {k: v for k, v in window.items() if k.startswith(prefix + "lat.")}
    assert latency == {
        f"{prefix}lat.total.{lb.bucket(80.0)}": 1,
        f"{prefix}lat.total.{lb.bucket(0.0)}": 1,
        f"{prefix}lat.ranking.{lb.bucket(20.0)}": 1,
    }
    assert not any(".retrieval." in k for k in window)


def test_flag_counters() -> None:
    acc = WindowAccumulator(_topology())
    events = [
        _serving(),  # ok
        _serving(error="timeout", returned=0),  # error (with an empty funnel): an error, not an empty slate
        _serving(fallback=True),  # fallback
        _serving(returned=0),  # empty slate
        _serving(error="timeout", fallback=True, returned=0),  # errored fallback: error and fallback
    ]
    for offset, event in enumerate(events):
        acc.add_serving(SERVING, offset, event)
    window = acc.take()[SERVING].windows[T0]
    prefix = f"{_series()}#"
    counters = {
        k[len(prefix) :]: v for k, v in window.items() if not k[len(prefix) :].startswith(("lat.", "fun."))
    }
    assert counters == {"n": 5, "err": 2, "fb": 2, "empty": 1}
    # Funnel stage counts are summed over successful responses only (3 of the 5 here).
    assert window[f"{prefix}fun.returned"] == 20 + 20 + 0  # ok, fallback, empty slate


def test_series_key_uses_segment_dims_and_unknown_for_missing() -> None:
    acc = WindowAccumulator(_topology())
    event = _serving()
    event.segment = {"region": "us", "tenure": "new"}  # no platform; tenure is not a segment dim here
    acc.add_serving(SERVING, 0, event)
    window = acc.take()[SERVING].windows[T0]
    assert f"{_series(platform='unknown', region='us')}#n" in window


def test_engagement_counted_under_the_engagement_series() -> None:
    acc = WindowAccumulator(_topology())
    for offset, action in enumerate(["impression", "impression", "click", "play", "complete"]):
        acc.add_engagement(ENGAGEMENT, offset, EngagementEvent("r", T0 + offset, action))
    acc.add_engagement(ENGAGEMENT, 9, EngagementEvent("r", T0 + MINUTE, "click"))
    delta = acc.take()[ENGAGEMENT]
    assert ENGAGEMENT_SERIES == "*"
    assert delta.windows[T0] == {
        "*#eng.impression": 2,
        "*#eng.click": 1,
        "*#eng.play": 1,
        "*#eng.complete": 1,
    }
    assert delta.windows[T0 + MINUTE] == {"*#eng.click": 1}
    assert delta.window_events == {T0: 5, T0 + MINUTE: 1}


def test_cardinality_cap_applies_to_accumulated_series() -> None:
    acc = WindowAccumulator(_topology(max_values_per_dim=2))
    for offset, region in enumerate(["us", "eu", "apac", "latam", "mars", "us"]):
        acc.add_serving(SERVING, offset, _serving(region=region))
    window = acc.take()[SERVING].windows[T0]
    counts = {k: v for k, v in window.items() if k.endswith("#n")}
    assert counts == {
        f"{_series(region='us')}#n": 2,
        f"{_series(region='eu')}#n": 1,
        f"{_series(region=OTHER)}#n": 3,
    }
    assert acc.keyer.folded == 3


def test_separators_in_values_cannot_forge_fields() -> None:
    acc = WindowAccumulator(_topology())
    acc.add_serving(SERVING, 0, _serving(region="eu#err", model="m|x"))
    window = acc.take()[SERVING].windows[T0]
    series, _ = parse_window(window, n_dims=6)
    # One series, with its n and no phantom error counter.
    assert list(series) == [("m_x", "v1", "control", "home", "ios", "eu_err")]
    stats = series[("m_x", "v1", "control", "home", "ios", "eu_err")]
    assert stats.n == 1
    assert {k: v for k, v in stats.counters.items() if not k.startswith("fun.")} == {}


def test_roll_up_marker_in_a_segment_value_does_not_corrupt_roll_ups() -> None:
    # Regression: "*" was kept as a value, so the region="*" slice replaced the global roll-up in levels().
    topo = _topology()
    acc = WindowAccumulator(topo)
    for offset in range(100):
        acc.add_serving(SERVING, offset, _serving(region="eu"))
    for offset in range(100, 200):
        acc.add_serving(SERVING, offset, _serving(region="*", error="boom" if offset < 150 else None))
    window = acc.take()[SERVING].windows[T0]
    series, _ = parse_window(window, n_dims=len(topo.key_dims))
    levels = WindowEvaluator(topo).levels(series, with_version=True)
    top = levels[("m", "v1", "control", "home", "*", "*")]
    assert top.n == 200
    assert top.counters["err"] == 50
    assert levels[("m", "v1", "control", "home", "*", "_")].n == 100


# -- restore / take -------------------------------------------------------------------------------------


def test_restore_puts_deltas_back_and_refuses_after_new_events() -> None:
    acc = WindowAccumulator(_topology())
    acc.add_serving(SERVING, 0, _serving())
    parts = acc.take()
    acc.restore(parts)
    assert acc.take() == parts
    acc.add_serving(SERVING, 1, _serving())
    with pytest.raises(RuntimeError, match="restore"):
        acc.restore(parts)


def test_discard_forgets_only_the_given_partitions() -> None:
    acc = WindowAccumulator(_topology())
    acc.add_serving(SERVING, 0, _serving())
    acc.add_serving(SERVING_1, 0, _serving())
    acc.discard([SERVING, "recs.serving/9"])  # unknown partitions are fine
    assert list(acc.take()) == [SERVING_1]
    acc.add_serving(SERVING, 5, _serving())  # counting restarts from scratch after a discard
    assert acc.take()[SERVING].first_offset == 5


def test_partition_delta_count_helper() -> None:
    delta = PartitionDelta("p", 0, 1)
    delta.count("consumed")
    delta.count("consumed", by=4)
    assert delta.counts == {"consumed": 5}


# -- merge property: one batch or many, same sums -------------------------------------------------------

_event = st.one_of(
    st.builds(
        lambda dt, platform, region, total, ranking, flag, version: _serving(
            T0 + dt,
            platform=platform,
            region=region,
            latency={"total": total} if ranking is None else {"total": total, "ranking": ranking},
            error="e" if flag == 1 else None,
            fallback=flag == 2,
            returned=0 if flag == 3 else 20,
            version=version,
        ),
        dt=st.integers(min_value=-MINUTE, max_value=3 * MINUTE),
        platform=st.sampled_from(["ios", "android", "web"]),
        region=st.sampled_from(["us", "eu", "apac", "latam"]),
        total=st.floats(min_value=0.0, max_value=5_000.0),
        ranking=st.none() | st.floats(min_value=0.0, max_value=1_000.0),
        flag=st.integers(min_value=0, max_value=3),
        version=st.sampled_from(["v1", "v2"]),
    ),
    st.builds(
        lambda dt, action: EngagementEvent("r", T0 + dt, action),
        dt=st.integers(min_value=0, max_value=2 * MINUTE),
        action=st.sampled_from(["impression", "click", "play", "complete"]),
    ),
    st.sampled_from(["invalid_json", "late_event", "other"]),
)


def _feed(acc: WindowAccumulator, partition: str, offset: int, item: Any) -> None:
    if isinstance(item, ServingEvent):
        acc.add_serving(partition, offset, item)
    elif isinstance(item, EngagementEvent):
        acc.add_engagement(partition, offset, item)
    elif item == "other":
        acc.add_other(partition, offset)
    else:
        acc.add_rejected(partition, offset, item)


def _sum_windows(
    deltas: list[PartitionDelta],
) -> tuple[dict[int, dict[str, float]], Counter[str], Counter[int]]:
    windows: dict[int, dict[str, float]] = {}
    counts: Counter[str] = Counter()
    events: Counter[int] = Counter()
    for delta in deltas:
        for start, sums in delta.windows.items():
            target = windows.setdefault(start, {})
            for name, value in sums.items():
                target[name] = target.get(name, 0) + value
        counts.update(delta.counts)
        events.update(delta.window_events)
    return windows, counts, events


@HYPOTHESIS
@given(
    items=st.lists(st.tuples(st.sampled_from([SERVING, SERVING_1]), _event), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=5),
)
def test_one_batch_or_many_gives_identical_sums(items: list[tuple[str, Any]], cuts: list[int]) -> None:
    topo = _topology(max_values_per_dim=3)  # small cap so folding is exercised too
    offsets: dict[str, int] = {}
    numbered = []
    for partition, item in items:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        numbered.append((partition, offset, item))

    whole = WindowAccumulator(topo)
    for partition, offset, item in numbered:
        _feed(whole, partition, offset, item)
    one = list(whole.take().values())

    split = WindowAccumulator(topo)
    batches: list[PartitionDelta] = []
    boundaries = sorted({c for c in cuts if c < len(numbered)})
    for i, (partition, offset, item) in enumerate(numbered):
        if i in boundaries:
            batches.extend(split.take().values())
        _feed(split, partition, offset, item)
    batches.extend(split.take().values())

    assert _sum_windows(one) == _sum_windows(batches)
    # Offsets: the batches of one partition tile exactly the range the single batch covers.
    for partition in offsets:
        mine = sorted((d.first_offset, d.next_offset) for d in batches if d.partition == partition)
        (single,) = [(d.first_offset, d.next_offset) for d in one if d.partition == partition]
        assert mine[0][0] == single[0] and mine[-1][1] == single[1]
        assert all(a[1] == b[0] for a, b in pairwise(mine))
    _, counts, events = _sum_windows(one)
    assert counts["consumed"] == counts["accepted"] + counts["rejected"] == len(items)
    assert sum(events.values()) == sum(1 for _, item in items if not isinstance(item, str))
